"""N parallel calls with RTP echo, reporting loss and delay (Net::SIP's bench/call.pl).

    python examples/bench/call.py -P 127.0.0.1:5070 -N 10 --duration 10

Each call sends 160-byte frames whose payload carries a sequence number and the send time;
the echoing peer (bench/listen.py, bench/listen.pl, `netsip answer --echo`) returns them.
Every S seconds a line `secs pkt=ok/lost/ignored delay(ms)=avg/min/max` is printed, as in
the Perl example. Differences from it: --duration ends the run (BYE to every call, exit 0
when no packet was lost); -d is a flag.
"""

from __future__ import annotations

import argparse
import logging
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FRAME = struct.Struct("!III")
PAD = b" " * 148  # 12 + 148 = 160 bytes, one 20 ms G.711 frame


@dataclass(slots=True)
class Stats:
    ok: int = 0
    lost: int = 0
    ignored: int = 0
    delays: list[float] = field(default_factory=list)

    def line(self, secs: float) -> str:
        head = f"{int(secs):5d} pkt={self.ok}/{self.lost}/{self.ignored}"
        if not self.delays:
            return head
        avg = sum(self.delays) / len(self.delays) * 1000
        lo, hi = min(self.delays) * 1000, max(self.delays) * 1000
        return f"{head} delay(ms)={avg:.2f}/{lo:.2f}/{hi:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("-F", "--from", dest="from_", metavar="FROM", default="sip:me@one.example.com")
    p.add_argument("-T", "--to", default="sip:me@two.example.com")
    p.add_argument("-P", "--proxy", default="127.0.0.1:5070", help="target or proxy to it")
    p.add_argument("-L", "--leg", default="127.0.0.1:0", help="local ip[:port]")
    p.add_argument("-N", "--parallel", type=int, default=10, help="number of parallel calls")
    p.add_argument("-S", "--stat-timer", type=float, default=2.0, help="statistics period (s)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip.simple import Simple  # noqa: PLC0415 (--help needs no stack)

    ua = Simple(from_=args.from_, leg=args.leg, outgoing_proxy=args.proxy)
    now = time.monotonic  # both ends of the delay are measured here (the peer only echoes)
    stats = Stats()
    total = Stats()
    started: list[bool] = []

    def media(index: int) -> tuple[Callable[[int, int], bytes], Callable[..., None]]:
        sent = [0]
        received = [0]

        def send(_seq: int, _channel: int) -> bytes:
            t = now()
            seq = 0
            if started:
                sent[0] += 1
                seq = sent[0]
            return FRAME.pack(seq, int(t), int((t - int(t)) * 1_000_000)) + PAD

        def recv(payload: bytes, *_info: object) -> None:
            if len(payload) < FRAME.size:
                return
            seq, sec, usec = FRAME.unpack_from(payload)
            if not seq:
                return  # sent before every call was connected
            diff = seq - received[0]
            if diff <= 0 or diff > 10000:
                stats.ignored += 1
                return
            stats.lost += diff - 1
            received[0] = seq
            stats.ok += 1
            stats.delays.append(now() - (sec + usec / 1e6))

        return send, recv

    connected: list[list[object]] = []
    calls = []
    for i in range(args.parallel):
        box: list[object] = []
        send, recv = media(i)
        calls.append(
            ua.invite(
                args.to,
                cb_final=lambda *a, box=box: box.append(a),
                init_media=ua.rtp("send_recv", send, 0, recv),
            )
        )
        connected.append(box)
    ua.loop(args.duration, lambda: all(connected))
    if not all(connected):
        print(
            f"only {sum(map(bool, connected))} of {args.parallel} calls connected", file=sys.stderr
        )
        return 1
    print(f"All {args.parallel} calls connected....", file=sys.stderr)
    started.append(True)
    start = now()

    def report(_timer: object = None) -> None:
        print(stats.line(now() - start), flush=True)
        total.ok += stats.ok
        total.lost += stats.lost
        total.ignored += stats.ignored
        total.delays += stats.delays
        stats.ok = stats.lost = stats.ignored = 0
        stats.delays.clear()

    ua.add_timer(args.stat_timer, report, args.stat_timer)
    ua.loop(args.duration)
    report()
    for call in calls:
        call.bye()
    print(f"total {total.line(now() - start).strip()}", flush=True)
    ua.cleanup()
    return 0 if total.ok and not total.lost else 1


if __name__ == "__main__":
    sys.exit(main())
