#!/usr/bin/env python3
"""The DTMF extractor alone: CPU per RTP packet of 20 ms PCMU, by kind of audio.

What ``netsip answer --echo`` pays per echoed packet for looking for DTMF
(a caller that offers no telephone-event gets in-band detection): the
extractor of :mod:`netsip.dtmf` fed with 500 consecutive packets (10 s of
audio) of each kind, timed with :mod:`timeit` (best of ``--repeats``):

``silence``       PCMU digital silence (0xFF)
``comfort``       white noise at -60 dBm0
``noise``         white noise at -10 dBm0
``speech``        a speech-like signal (harmonics on a wandering pitch, breath)
``bench echo``    the payload the UA benchmark's caller sends
                  (:mod:`benchmarks.ua_caller`): 16 bytes of call, window and
                  send time, then 144 zero bytes (PCMU 0x00, -32124)
``dtmf``          the digits 0-9*# of 100 ms each, 100 ms apart, at -10 dBm0
``none``          the extractor with RFC 4733 events only (no in-band work)

and the Python part of echoing a packet in :class:`netsip.rtp.MediaSession`
(``_packet`` with a send that does nothing) with and without the extractor,
the echo payload: what the DTMF detection adds to ``netsip answer --echo``
per packet over ``examples/bench/listen.py``.

    python -m benchmarks.bench_dtmf [--repeats N] [--packets N]

Nothing fails on a number.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import struct
import sys
import timeit
from collections.abc import Callable

# Run from a checkout without installing: the benchmarks package is in the parent.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.ua_caller import PACKET
from netsip._g711 import ulaw_encode
from netsip.dtmf import dtmf_extractor
from netsip.eventloop import EventLoop
from netsip.rtp import MediaArgs, create_rtp_sockets, media_recv_echo

_HEADER = struct.Struct("!BBHII")
_PEAK_0DBM0 = 32767 * 10 ** (-3.17 / 20)
_TONES = {
    d: (r, c)
    for r, keys in zip((697, 770, 852, 941), ("123A", "456B", "789C", "*0#D"), strict=True)
    for d, c in zip(keys, (1209, 1336, 1477, 1633), strict=True)
}


def _pcmu(samples: list[float]) -> list[bytes]:
    """160-sample PCMU payloads of ``samples``."""
    out = []
    for k in range(0, len(samples) - 159, 160):
        block = [max(-32768, min(32767, round(v))) for v in samples[k : k + 160]]
        out.append(ulaw_encode(struct.pack("<160h", *block)))
    return out


def _noise(n: int, dbm0: float, rng: random.Random) -> list[float]:
    sigma = _PEAK_0DBM0 / math.sqrt(2) * 10 ** (dbm0 / 20)
    return [rng.gauss(0, sigma) for _ in range(n)]


def _speech(n: int, rng: random.Random) -> list[float]:
    out: list[float] = []
    phase = 0.0
    while len(out) < n:
        f0 = rng.uniform(80, 300)
        weights = [rng.uniform(0, 1) / (h**0.7) for h in range(1, 30)]
        for _ in range(320):
            phase += 2 * math.pi * f0 / 8000
            v = sum(w * math.sin(h * phase) for h, w in enumerate(weights, 1) if h * f0 < 3800)
            out.append(3000 * v + rng.gauss(0, 300))
    return out[:n]


def _dtmf(n: int) -> list[float]:
    out: list[float] = []
    a = _PEAK_0DBM0 * 10 ** (-10 / 20)
    while len(out) < n:
        for digit in "0123456789*#":
            low, high = _TONES[digit]
            out += [
                a
                * (math.sin(2 * math.pi * low * k / 8000) + math.sin(2 * math.pi * high * k / 8000))
                for k in range(800)
            ]
            out += [0.0] * 800
    return out[:n]


def _bench_echo(n: int) -> list[bytes]:
    buf = bytearray(172)
    out = []
    t = 1_234_567_890_123
    for i in range(n):
        PACKET.pack_into(buf, 0, 0x80, 0, i, 160 * i, 7, 7, 3, t + 20_000_000 * i)
        out.append(bytes(buf[12:]))
    return out


def payloads(kind: str, packets: int) -> list[bytes]:
    """``packets`` PCMU payloads of 160 samples of the kind of audio named."""
    rng = random.Random(1)
    n = 160 * packets
    if kind == "silence":
        return [b"\xff" * 160] * packets
    if kind == "comfort":
        return _pcmu(_noise(n, -60, rng))
    if kind == "noise":
        return _pcmu(_noise(n, -10, rng))
    if kind == "speech":
        return _pcmu(_speech(n, rng))
    if kind == "bench echo":
        return _bench_echo(packets)
    if kind == "dtmf":
        return _pcmu(_dtmf(n))
    raise ValueError(kind)


KINDS = ("silence", "comfort", "noise", "speech", "bench echo", "dtmf")


def per_packet_us(
    make: Callable[[], Callable[[bytes], object]], packets: list[bytes], repeats: int
) -> float:
    """Best of ``repeats``: µs per packet of a fresh extractor fed ``packets``."""

    def run() -> None:
        x = make()
        for p in packets:
            x(p)

    best = min(timeit.repeat(run, number=1, repeat=repeats))
    return best / len(packets) * 1e6


def rtp(payloads_: list[bytes]) -> list[bytes]:
    return [
        _HEADER.pack(0x80, 0, i & 0xFFFF, (160 * i) & 0xFFFFFFFF, 0x1234) + p
        for i, p in enumerate(payloads_)
    ]


class _Call:
    def bye(self) -> None:
        pass


class _NoSend:
    def sendto(self, data: bytes, addr: object) -> int:
        return len(data)


def echo_us(with_dtmf: bool, packets: list[bytes], repeats: int) -> float:
    """µs per packet of MediaSession._packet echoing ``packets`` (the send a no-op)."""
    loop = EventLoop()
    _, pairs = create_rtp_sockets("127.0.0.1")
    args = MediaArgs(
        loop=loop,
        lsocks=[pairs[0]],
        raddr=[(("127.0.0.1", 9), ("127.0.0.1", 10))],
        dtmf_xtract=[(None, 0)] if with_dtmf else [],
        cb_dtmf=(lambda _e, _d: None) if with_dtmf else None,
    )
    sess = media_recv_echo(None, 0)(_Call(), args)
    st = sess.streams[0]
    st.send_sock = _NoSend()  # type: ignore[assignment]
    src = ("127.0.0.1", 9)

    def run() -> None:
        for p in packets:
            sess._packet(st, p, src)

    try:
        run()  # (latches the source)
        return min(timeit.repeat(run, number=1, repeat=repeats)) / len(packets) * 1e6
    finally:
        sess.close()
        loop.close()
        for s in pairs[0]:
            s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--packets", type=int, default=500)
    args = ap.parse_args(argv)
    print("| audio | µs per packet (in-band + RFC 4733) | digits found |")
    print("|---|---:|---|")
    for kind in KINDS:
        pkts = rtp(payloads(kind, args.packets))
        found = []
        x = dtmf_extractor(rfc2833_type=101, audio_type=0)
        for p in pkts:
            r = x(p)
            if r is not None:
                found.append(r.event)
        us = per_packet_us(
            lambda: dtmf_extractor(rfc2833_type=101, audio_type=0), pkts, args.repeats
        )
        print(f"| {kind} | {us:.2f} | {''.join(found) or '-'} |")
    pkts = rtp(payloads("bench echo", args.packets))
    us = per_packet_us(lambda: dtmf_extractor(rfc2833_type=101), pkts, args.repeats)
    print(f"| bench echo, RFC 4733 only | {us:.2f} | - |")
    print()
    print("| echo in MediaSession (Python part) | µs per packet |")
    print("|---|---:|")
    for with_dtmf in (False, True):
        us = echo_us(with_dtmf, pkts, args.repeats)
        print(f"| {'with' if with_dtmf else 'without'} the DTMF extractor | {us:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
