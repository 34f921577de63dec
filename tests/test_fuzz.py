"""Bounded runs of the fuzz harnesses in ``fuzz/`` (the parser and the framer).

The harnesses' ``check`` functions hold the invariants (only ``PacketError``
out of the parser, re-parseable wire form; only ``FramingError`` out of the
framer, no message beyond the limits, chunked framing equal to whole-buffer
framing). Here they run

* over the seed corpora (RFC 4475 and the test vectors) and deterministic
  mutations of them, always;
* on hypothesis-generated input, always;
* under atheris (coverage guided, a fixed number of runs in a subprocess),
  when atheris is installed (``pip install netsip[fuzz]``).

The long runs and their results are in docs/robustness.md.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import harness_framing, harness_packet, seeds
from netsip import framing
from netsip.packet import Packet

ROOT = Path(__file__).resolve().parent.parent

_TOKENS = (
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b" ", b"\t", b"\0", b":", b";", b",", b"\"", b"<", b">",
    b"\\", b"@", b"=", b"SIP/2.0", b"Content-Length: ", b"l:", b"Call-ID:", b"CSeq: 1 INVITE",
    b"Via: SIP/2.0/UDP h", b"\r\n ", b"99999999999999", b"-1", b"\xff", b"\xc3\x28",
)  # fmt: skip


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """A libFuzzer-like mutation: flips, token inserts, erasures, splices, repeats."""
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(7)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = rng.choice(_TOKENS)
        elif op == 2 and b:
            del b[i : i + rng.randrange(1, 40)]
        elif op == 3:
            j = rng.randrange(len(other) + 1)
            b[i:] = other[j:]
        elif op == 4 and b:
            k = rng.randrange(len(b))
            b[i:i] = b[k : k + rng.randrange(1, 60)] * rng.randrange(1, 4)
        elif op == 5:
            b = b[:i]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return bytes(b)


def run_mutations(check: Callable[[bytes], None], corpus: list[bytes], per_seed: int) -> int:
    rng = random.Random(4475)
    runs = 0
    for data in corpus:
        check(data)
        runs += 1
        for _ in range(per_seed):
            case = mutate(rng, data, rng.choice(corpus))
            try:
                check(case)
            except Exception as exc:
                raise AssertionError(f"invariant broken for {case!r}") from exc
            runs += 1
    return runs


# ------------------------------------------------------------ corpus + mutations


def test_packet_harness_on_seeds_and_mutations() -> None:
    corpus = seeds.packet_seeds()
    assert len(corpus) > 50  # RFC 4475 (49 messages) and the test vectors
    assert run_mutations(harness_packet.check, corpus, 300) > 18000


def test_framing_harness_on_seeds_and_mutations() -> None:
    corpus = seeds.framing_seeds()
    assert len(corpus) > 50
    assert run_mutations(harness_framing.check, corpus, 100) > 7000


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_packet_harness_on_random_bytes(data: bytes) -> None:
    harness_packet.check(data)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from((*_TOKENS, b"INVITE sip:a SIP/2.0", b"x", b"0", b"12")), max_size=60
    ).map(b"".join)
)
def test_packet_harness_on_random_tokens(data: bytes) -> None:
    harness_packet.check(data)


@settings(max_examples=200)
@given(st.binary(min_size=3, max_size=600))
def test_framing_harness_on_random_bytes(data: bytes) -> None:
    harness_framing.check(data)


def test_framing_harness_decodes_its_limits() -> None:
    assert harness_framing.limits(b"") == (8, 0, 1, b"")
    assert harness_framing.limits(b"\xff\xff\xffabc") == (8 + 4 * 255, 8 * 255, 256, b"abc")


def test_framing_harness_catches_a_broken_framer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness would notice a framer that ignores the body limit."""

    def lax(
        buf: bytes | bytearray, max_header: int, max_body: int, start: int = 0, scan: int = 0
    ) -> framing.Message | framing.NeedMore:
        return framing.frame(buf, max_header, 1 << 30, start, scan)

    monkeypatch.setattr(harness_framing, "frame", lax)
    stream = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    with pytest.raises(AssertionError, match="body of 100 bytes"):
        harness_framing.check(b"\xff\x01\x00" + stream)


def test_packet_harness_catches_a_foreign_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but PacketError escaping the parser fails the harness."""

    def broken(data: bytes | str) -> Packet:
        raise IndexError("boom")

    monkeypatch.setattr(Packet, "new_from_string", staticmethod(broken))
    with pytest.raises(IndexError):
        harness_packet.check(b"OPTIONS sip:x SIP/2.0\r\n\r\n")


# ------------------------------------------------------------------- atheris

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris not installed (pip install netsip[fuzz])")
@pytest.mark.parametrize(("target", "runs"), [("packet", 30000), ("framing", 5000)])
def test_atheris_bounded_run(target: str, runs: int, tmp_path: Path) -> None:
    """libFuzzer with a fixed seed and run count; a crash writes an artifact and fails."""
    corpus = tmp_path / "corpus"
    seed_dir = tmp_path / "seeds"
    make = seeds.packet_seeds if target == "packet" else seeds.framing_seeds
    seeds.write_corpus(seed_dir, make())
    corpus.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.run", target, f"-runs={runs}", "-seed=1",
         "-max_len=8192", "-timeout=2", f"-artifact_prefix={tmp_path}/",
         str(corpus), str(seed_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    # libFuzzer may count one run more than asked (the last input it tried)
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done is not None and int(done.group(1)) >= runs, tail
    assert not list(tmp_path.glob("crash-*")), tail


def test_a_message_at_the_header_bound_passes_the_harness() -> None:
    """Found by the bounded atheris run: 1,000 header lines parse; the wire
    form with its Content-Length, and the harness's modified copy, have a
    line more and are refused, rightly."""
    msg = b"OPTIONS sip:x@h SIP/2.0\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
    msg += b"a: b\r\n" * 998 + b"\r\n"
    harness_packet.check(msg)
