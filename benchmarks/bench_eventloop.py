"""Benchmark netsip.eventloop: timer throughput and fd dispatch rate.

Not a test: it only prints figures. Run ``PYTHONPATH=. python benchmarks/bench_eventloop.py``
(from the repository root, or without PYTHONPATH after ``pip install -e .``;
``--help`` for the sizes).

* timers: add N timers at random deadlines (fake clock), then fire them all
  with ``loop(0)`` polls; also with half of them cancelled before they fire.
* fds: N socketpairs whose read ends all have unread data; being level
  triggered, every ``loop(0)`` dispatches N callbacks.
"""

from __future__ import annotations

import argparse
import random
import resource
import socket
import time
from typing import Any

from netsip.eventloop import EV_READ, EventLoop, TimerEvent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def bench_timers(n: int, cancel_half: bool) -> None:
    rng = random.Random(1)
    clock = FakeClock()
    fired = 0

    def cb(timer: TimerEvent) -> None:
        nonlocal fired
        fired += 1

    with EventLoop(clock=clock) as ev:
        delays = [rng.random() * 100 for _ in range(n)]
        t0 = time.perf_counter()
        timers = [ev.add_timer(d, cb) for d in delays]
        t1 = time.perf_counter()
        if cancel_half:
            for t in timers[::2]:
                t.cancel()
        t2 = time.perf_counter()
        steps = 100
        for _ in range(steps + 1):
            ev.loop(0)
            clock.now += 1
        t3 = time.perf_counter()
    label = "timers (half cancelled)" if cancel_half else "timers"
    print(
        f"{label:24s} n={n:>8}  add {n / (t1 - t0):>11,.0f}/s"
        + (f"  cancel {n / 2 / (t2 - t1):>11,.0f}/s" if cancel_half else "")
        + f"  fire {fired / (t3 - t2):>11,.0f}/s  ({fired} fired in {steps + 1} polls)"
    )


def bench_fds(n: int, cycles: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * n + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    pairs: list[tuple[socket.socket, socket.socket]] = []
    calls = 0

    def cb(s: Any) -> None:
        nonlocal calls
        calls += 1

    try:
        with EventLoop() as ev:
            for _ in range(n):
                a, b = socket.socketpair()
                pairs.append((a, b))
                a.send(b"x")
                ev.add_fd(b, EV_READ, cb)
            t0 = time.perf_counter()
            for _ in range(cycles):
                ev.loop(0)
            t1 = time.perf_counter()
            # add/del churn, as SocketPool does when toggling EV_WRITE
            t2 = time.perf_counter()
            for _a, b in pairs:
                ev.del_fd(b)
                ev.add_fd(b, EV_READ, cb)
            t3 = time.perf_counter()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(
        f"{'fd dispatch':24s} n={n:>8}  {calls / (t1 - t0):>11,.0f} callbacks/s"
        f"  {cycles / (t1 - t0):>9,.0f} cycles/s  del+add {n / (t3 - t2):>11,.0f}/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--timers", type=int, default=200_000)
    ap.add_argument("--fds", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--cycles", type=int, default=200)
    args = ap.parse_args()
    bench_timers(args.timers, cancel_half=False)
    bench_timers(args.timers, cancel_half=True)
    for n in args.fds:
        bench_fds(n, args.cycles)


if __name__ == "__main__":
    main()
