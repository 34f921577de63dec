"""Seed corpora for the fuzz harnesses.

Packet seeds: the RFC 4475 torture messages (``tests/data/rfc4475/*.dat``)
and the SIP messages of the test suite (module-level ``bytes`` constants of
``tests.test_packet`` and ``tests.test_framing``), plus a few built here
(folding, compact forms, LF-only lines, bodies).

Framing seeds are framing inputs as :mod:`fuzz.harness_framing` reads them:
two bytes selecting the limits, then a stream of messages, keep-alives and
partial messages.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RFC4475 = ROOT / "tests" / "data" / "rfc4475"

_EXTRA: tuple[bytes, ...] = (
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    b"Call-ID: x@y\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"SIP/2.0 180 Ringing\nv: SIP/2.0/TCP h\ni: abc\nCSeq: 7 INVITE\nl: 3\n\nabc",
    b"MESSAGE sip:a@b SIP/2.0\r\nSubject: folded\r\n  over\r\n\tlines\r\n"
    b'Contact: "Q, \\"x\\"" <sip:a@b;x=1>;q=0.5, <sip:c@d>\r\nl: 5\r\n\r\nhello',
    b"\r\n\r\nINVITE sip:%61@[2001:db8::1]:5060;transport=tcp SIP/2.0\r\nCSeq: 0 INVITE\r\n",
    b'SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm="a,b", nonce="1"\r\n'
    b"Content-Length: 0\r\n\r\n",
)


_BIG_HEAD = b"OPTIONS sip:x@h SIP/2.0\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\n"
# Hostile shapes as big as a UDP datagram (65,507 bytes): one header with
# 32,000 list values, 10,000 lines of one header, one header folded over
# 16,000 lines. With the harness's CPU budget, a parser that turns
# quadratic on any of them fails.
_BIG: tuple[bytes, ...] = (
    _BIG_HEAD + b"Accept: " + b"a," * 32_000 + b"a\r\n\r\n",
    _BIG_HEAD + b"a: b\r\n" * 10_000 + b"\r\n",
    _BIG_HEAD + b"Subject: s\r\n" + b" x\r\n" * 16_000 + b"\r\n",
)


def packet_seeds(big: bool = True) -> list[bytes]:
    """All packet seeds, deduplicated, in a stable order."""
    seeds: list[bytes] = [p.read_bytes() for p in sorted(RFC4475.glob("*.dat"))]
    for name in ("tests.test_packet", "tests.test_framing"):
        mod = importlib.import_module(name)
        for key, value in sorted(vars(mod).items()):
            if key.isupper() and isinstance(value, bytes) and b" " in value[:64]:
                seeds.append(value)
    seeds.extend(_EXTRA)
    if big:
        seeds.extend(_BIG)
    return list(dict.fromkeys(seeds))


def framing_seeds() -> list[bytes]:
    """Framing seeds: limit selector bytes followed by a stream."""
    msgs = [s for s in packet_seeds(big=False) if b"\r\n\r\n" in s][:24]
    out: list[bytes] = []
    for i, m in enumerate(msgs):
        nxt = msgs[(i + 1) % len(msgs)]
        out.append(b"\xff\xff" + m)
        out.append(b"\xff\xff\r\n\r\n" + m + b"\r\n" + nxt[: len(nxt) // 2])
        out.append(bytes([i * 7 % 256, i * 13 % 256]) + m + m)
    out.append(b"\x10\x00INVITE sip:x SIP/2.0\r\nl: 1\r\n l: 2\r\nContent-Length: 1\r\n\r\nx")
    out.append(b"\x04\x01OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999999999\r\n\r\n")
    return list(dict.fromkeys(out))


def write_corpus(directory: Path, seeds: list[bytes]) -> int:
    """Write ``seeds`` into ``directory`` as libFuzzer corpus files; return the count."""
    directory.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (directory / hashlib.sha1(s).hexdigest()).write_bytes(s)
    return len(seeds)
