#!/usr/bin/env python3
"""Hostile peers, floods and a soak at full size; the figures go to docs/robustness.md.

The CI tests (tests/socketpool/test_limits.py, test_faults.py and
test_flood.py, tests/test_tls.py, the floods of tests/test_dispatcher.py)
check the same properties at a smaller scale and without timing; this script measures. Phases:

``slowloris``
    The pool runs in this process; a forked client process first measures a
    well-behaved client's OPTIONS/200 latency alone, then opens ``--attackers``
    (1,000) connections that each send a partial header one byte per second,
    measures the same latency again while they trickle, and records when the
    pool closed the attackers (expiry, real clock, default settings).
``emfile``
    RLIMIT_NOFILE lowered so that accept() fails with EMFILE while connections
    wait in the backlog: CPU time of the loop over ``--seconds`` with the
    back-off, and without it (the old behaviour, for comparison), then the
    time to accept everything once the limit is restored.
``backpressure``
    A peer that never reads: 16 kB packets until sendto fails with ENOBUFS
    (default ``MAX_WBUF``, 4 MiB): how much was accepted, the largest write
    buffer, and a second connection's packets meanwhile.
``flood``
    ``--garbage`` (100,000) hostile UDP datagrams with a valid request after
    every tenth, in paced batches: valid ones delivered, datagrams/s, memory
    (tracemalloc), the largest gap between the ticks of a 10 ms timer, and
    the kernel's UDP receive-buffer drops (must stay 0 for the count to mean
    anything).
``soak``
    ``--conns`` (100,000) TCP connections in batches of 500 against one pool
    (fake clock for expiry): each sends a request and reads the answer, then
    a third close, a third reset, a third wait for the pool's expiry. fds,
    memory, timers before and after.

Run::

    python3 benchmarks/bench_hardening.py [phase ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import logging
import multiprocessing
import os
import random
import resource
import selectors
import socket
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

# Run from a checkout without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netsip._accept as socketpool_mod
from netsip.eventloop import EV_READ, EventLoop, TimerEvent
from netsip.framing import Message, frame
from netsip.packet import Packet, Request
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import (
    fd_limit,  # the RLIMIT_NOFILE squeeze of the CI test
    garbage,  # the generator of the CI flood test
)

Result = dict[str, Any]


# ------------------------------------------------------------------- helpers


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def listener(backlog: int = 1024, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s


def request(n: int, callid: str, body: bytes = b"", proto: str = "TCP") -> bytes:
    return (
        f"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto} 127.0.0.1:5060;branch=z9hG4bK-{callid}-{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"\r\n"
    ).encode() + body


def answering(pool: SocketPool, counter: list[int]) -> Callable[[Packet, Addr], None]:
    def cb(packet: Packet, from_: Addr) -> None:
        counter[0] += 1
        if isinstance(packet, Request):
            pool.sendto(packet.create_response(200), from_)

    return cb


def reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def run_until(loop: EventLoop, cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    loop.loop(None, lambda: cond() or time.monotonic() > deadline)
    return cond()


def quantiles_ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {
        "n": len(xs),
        "p50_ms": round(statistics.median(xs) * 1000, 3),
        "p99_ms": round(q[98] * 1000, 3),
        "max_ms": round(xs[-1] * 1000, 3),
    }


def udp_rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


# ----------------------------------------------------------------- slowloris


def _roundtrip(s: socket.socket, n: int) -> float:
    t0 = time.perf_counter()
    s.sendall(request(n, "good"))
    buf = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        if isinstance(frame(buf, 2**14, 2**16), Message):
            return time.perf_counter() - t0


def _slowloris_client(
    dst: tuple[str, int], attackers: int, seconds: float, rounds: int, out: Connection
) -> None:
    raise_nofile(attackers + 100)
    good = socket.create_connection(dst, timeout=10)
    base = [_roundtrip(good, i) for i in range(rounds)]
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    for _ in range(attackers):
        s = socket.create_connection(dst, timeout=10)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    partial = request(1, "slow")[:-3] * 4  # never a header end, long enough to trickle
    t0 = time.monotonic()
    alive = set(range(attackers))
    closed_at: list[float] = []
    under: list[float] = []
    sent = 0
    second = 0
    n = rounds
    while time.monotonic() - t0 < seconds:
        now = time.monotonic() - t0
        if now >= second:  # one byte per attacker per second
            for i in list(alive):
                with contextlib.suppress(OSError):
                    socks[i].send(partial[second % len(partial) : second % len(partial) + 1])
                    sent += 1
            second += 1
        n += 1
        under.append(_roundtrip(good, n))
        for key, _ in sel.select(0):
            sk = key.fileobj
            assert isinstance(sk, socket.socket)
            try:
                data = sk.recv(100)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sk)
                alive.discard(socks.index(sk))
                closed_at.append(time.monotonic() - t0)
        time.sleep(0.02)
    for s in socks:
        s.close()
    good.close()
    out.send(
        {
            "baseline": quantiles_ms(base),
            "under_attack": quantiles_ms(under),
            "attacker_bytes_sent": sent,
            "attackers_closed": len(closed_at),
            "first_closed_s": round(min(closed_at), 1) if closed_at else None,
            "last_closed_s": round(max(closed_at), 1) if closed_at else None,
        }
    )
    out.close()


def phase_slowloris(attackers: int, seconds: float, rounds: int) -> Result:
    raise_nofile(2 * attackers + 200)
    with EventLoop() as loop, SocketPool("tcp", listener(attackers + 64)) as pool:
        count = [0]
        pool.attach_eventloop(loop, answering(pool, count))
        peak = [0]

        def track(_t: TimerEvent) -> None:
            peak[0] = max(peak[0], pool.connection_count())

        loop.add_timer(0.5, track, repeat=0.5)
        parent, child = multiprocessing.get_context("fork").Pipe()
        proc = multiprocessing.get_context("fork").Process(
            target=_slowloris_client,
            args=(pool.master().getsockname(), attackers, seconds, rounds, child),
        )
        proc.start()
        child.close()
        result: list[Result] = []

        def on_pipe(_fd: object) -> None:
            loop.del_fd(parent)
            result.append(parent.recv())

        loop.add_fd(parent, EV_READ, on_pipe)
        cpu0 = time.process_time()
        run_until(loop, lambda: bool(result), seconds + 120)
        cpu = time.process_time() - cpu0
        proc.join(30)
        parent.close()
        res: Result = result[0] if result else {"error": "client did not report"}
        res.update(
            attackers=attackers,
            seconds=seconds,
            pool_cpu_s=round(cpu, 2),
            pool_peak_connections=peak[0],
            pool_connections_after=pool.connection_count(),
        )
        return res


# -------------------------------------------------------------------- emfile


def _emfile_once(waiting: int, seconds: float, backoff: bool) -> Result:
    saved = socketpool_mod._ACCEPT_RESOURCE_ERRORS
    if not backoff:  # the behaviour without the back-off: log and return, listener watched
        socketpool_mod._ACCEPT_RESOURCE_ERRORS = frozenset()  # type: ignore[misc]  # bench only
    try:
        with EventLoop() as loop, SocketPool("tcp", listener(waiting + 64)) as pool:
            count = [0]
            pool.attach_eventloop(loop, answering(pool, count))
            dst = pool.master().getsockname()
            clients = [socket.create_connection(dst, timeout=10) for _ in range(waiting)]
            try:
                with fd_limit(5):
                    cpu0, wall0 = time.process_time(), time.monotonic()
                    run_until(loop, lambda: False, seconds)
                    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                    accepted = pool.connection_count()
                t0 = time.monotonic()
                ok = run_until(loop, lambda: pool.connection_count() == waiting, 30)
                recover = time.monotonic() - t0
            finally:
                for c in clients:
                    c.close()
        return {
            "backoff": backoff,
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "cpu_fraction": round(cpu / wall, 3),
            "accepted_while_short": accepted,
            "all_accepted_after_restore": ok,
            "recovery_s": round(recover, 3),
        }
    finally:
        socketpool_mod._ACCEPT_RESOURCE_ERRORS = saved  # type: ignore[misc]  # bench only


def phase_emfile(seconds: float) -> Result:
    return {
        "with_backoff": _emfile_once(200, seconds, True),
        "without_backoff": _emfile_once(200, seconds, False),
    }


# -------------------------------------------------------------- backpressure


def phase_backpressure() -> Result:
    with (
        EventLoop() as loop,
        SocketPool("tcp", listener()) as pool,
        SocketPool("tcp", listener()) as reader,
        listener(rcvbuf=4096) as stuck_srv,
    ):
        pool.attach_eventloop(loop, None)
        good_got = [0]
        reader.attach_eventloop(loop, lambda p, f: good_got.__setitem__(0, good_got[0] + 1))
        stuck_res: list[int] = []
        good_res: list[int] = []
        body = b"x" * 16000
        pool.sendto(
            Packet.new_from_string(request(0, "stuck", body)),
            stuck_srv.getsockname(),
            stuck_res.append,
        )
        peer, _ = stuck_srv.accept()
        t0 = time.perf_counter()
        i = max_q = 0
        queued_total = 0
        while errno.ENOBUFS not in stuck_res and i < 100_000:
            i += 1
            p = Packet.new_from_string(request(i, "stuck", body))
            queued_total += len(p.as_bytes())
            pool.sendto(p, stuck_srv.getsockname(), stuck_res.append)
            if i % 8 == 0:
                pool.sendto(
                    Packet.new_from_string(request(i, "good")),
                    reader.master().getsockname(),
                    good_res.append,
                )
            max_q = max(max_q, pool.queued_bytes())
            loop.loop(0)
        elapsed = time.perf_counter() - t0
        run_until(loop, lambda: good_got[0] == len(good_res) and len(good_res) == i // 8, 10)
        peer.close()
        return {
            "max_wbuf": pool.get_settings()["MAX_WBUF"],
            "packets_until_enobufs": i,
            "bytes_offered": queued_total,
            "written_ok": stuck_res.count(0),
            "failed_enobufs": stuck_res.count(errno.ENOBUFS),
            "max_queued_bytes": max_q,
            "seconds": round(elapsed, 3),
            "good_delivered": good_got[0],
            "good_sent": i // 8,
            "connections_after": pool.connection_count(),
        }


# --------------------------------------------------------------------- flood


def phase_flood(garbage_total: int, trace: bool) -> Result:
    rng = random.Random(100_000)
    with EventLoop() as loop, SocketPool("udp", _udp()) as pool, _udp() as sender:
        pool.master().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        valid = [0]
        junk = [0]

        def cb(packet: Packet, from_: Addr) -> None:
            if (packet.callid() or "").startswith("valid-"):
                valid[0] += 1
            else:
                junk[0] += 1

        pool.attach_eventloop(loop, cb)
        ticks: list[float] = []
        gaps = [0.0]

        def tick(_t: TimerEvent) -> None:
            now = time.monotonic()
            if ticks:
                gaps[0] = max(gaps[0], now - ticks[0])
                ticks[0] = now
            else:
                ticks.append(now)

        timer = loop.add_timer(0.01, tick, repeat=0.01)
        dst = pool.master().getsockname()
        drops0 = udp_rcvbuf_errors()
        gc.collect()
        rss0 = rss_bytes()
        if trace:
            tracemalloc.start()
        mem0 = tracemalloc.get_traced_memory()[0] if trace else 0
        sent_valid = n = 0
        bytes_sent = 0
        mem_samples: list[int] = []
        t0 = time.perf_counter()
        while n < garbage_total:
            for _ in range(110):
                if n >= garbage_total:
                    break
                n += 1
                g = garbage(rng, n)
                bytes_sent += len(g)
                sender.sendto(g, dst)
                if n % 10 == 0:
                    sent_valid += 1
                    sender.sendto(request(sent_valid, f"valid-{sent_valid}", proto="UDP"), dst)
            run_until(loop, partial(_at_least, valid, sent_valid), 10)
            for _ in range(5):
                loop.loop(0)
            if trace and n % 11_000 == 0:
                mem_samples.append(tracemalloc.get_traced_memory()[0] - mem0)
        elapsed = time.perf_counter() - t0
        timer.cancel()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - mem0 if trace else None
        if trace:
            tracemalloc.stop()
        return {
            "garbage": garbage_total,
            "valid_sent": sent_valid,
            "valid_delivered": valid[0],
            "junk_that_parsed": junk[0],
            "bytes": bytes_sent,
            "seconds": round(elapsed, 2),
            "datagrams_per_s": round((garbage_total + sent_valid) / elapsed),
            "tracemalloc_growth_bytes": grown,
            "tracemalloc_samples": mem_samples,
            "rss_growth_bytes": rss_bytes() - rss0,
            "max_timer_gap_ms": round(gaps[0] * 1000, 1),
            "kernel_udp_rcvbuf_drops": udp_rcvbuf_errors() - drops0,
        }


def _at_least(counter: list[int], n: int) -> bool:
    return counter[0] >= n


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


# ---------------------------------------------------------------------- soak


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def phase_soak(total: int, batch: int, trace: bool) -> Result:
    clock = FakeClock()
    raise_nofile(4 * batch + 200)
    with EventLoop(clock=clock) as loop, SocketPool("tcp", listener(batch + 64)) as pool:
        count = [0]
        pool.attach_eventloop(loop, answering(pool, count))
        dst = pool.master().getsockname()
        errors = {"connect": 0}

        def run_batch(b: int) -> None:
            clients: list[socket.socket] = []
            for _ in range(batch):
                try:
                    clients.append(socket.create_connection(dst, timeout=10))
                except OSError:
                    errors["connect"] += 1
            for i, c in enumerate(clients):
                c.sendall(request(i, f"soak-{b}-{i}"))
            want = count[0] + len(clients)
            run_until(loop, lambda: count[0] >= want, 30)
            for _ in range(3):
                loop.loop(0)
            idle = []
            for i, c in enumerate(clients):
                c.settimeout(10)
                if not c.recv(65536).startswith(b"SIP/2.0 200 "):
                    raise AssertionError("no answer")
                if i % 3 == 0:
                    c.close()
                elif i % 3 == 1:
                    reset(c)
                else:
                    idle.append(c)
            run_until(loop, lambda: pool.connection_count() == len(idle), 30)
            clock.now += 130.0
            for _ in range(3):
                loop.loop(0)
            for c in idle:
                c.close()
            run_until(loop, lambda: pool.connection_count() == 0, 30)

        run_batch(0)
        gc.collect()
        base = {
            "fds": open_fds(),
            "watched_fds": loop.fd_count(),
            "timers": loop.timer_count(),
            "timer_heap": len(loop._heap),
            "rss": rss_bytes(),
        }
        if trace:
            tracemalloc.start()
        mem0 = tracemalloc.get_traced_memory()[0] if trace else 0
        t0 = time.perf_counter()
        for b in range(1, total // batch):
            run_batch(b)
        elapsed = time.perf_counter() - t0
        for _ in range(3):
            loop.loop(0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - mem0 if trace else None
        if trace:
            tracemalloc.stop()
        after = {
            "fds": open_fds(),
            "watched_fds": loop.fd_count(),
            "timers": loop.timer_count(),
            "timer_heap": len(loop._heap),
            "rss": rss_bytes(),
        }
        return {
            "connections": total,
            "batch": batch,
            "answered": count[0],
            "seconds": round(elapsed, 1),
            "connections_per_s": round((total - batch) / elapsed),
            "connect_errors": errors["connect"],
            "baseline": base,
            "after": after,
            "tracemalloc_growth_bytes": grown,
            "pool_connections_after": pool.connection_count(),
        }


# ---------------------------------------------------------------------- main

PHASES = ("slowloris", "emfile", "backpressure", "flood", "soak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="hardening runs (see module docstring)")
    ap.add_argument("phases", nargs="*", help=f"any of {', '.join(PHASES)} (default: all)")
    ap.add_argument("--attackers", type=int, default=1000)
    ap.add_argument("--slow-seconds", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=3.0, help="EMFILE phase length")
    ap.add_argument("--garbage", type=int, default=100_000)
    ap.add_argument("--conns", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--no-trace", action="store_true", help="skip tracemalloc (faster)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    # the phases provoke warnings by the thousand (dropped garbage, EMFILE)
    logging.getLogger("netsip").setLevel(logging.ERROR)
    out: Result = {}
    for phase in args.phases or PHASES:
        t0 = time.monotonic()
        if phase == "slowloris":
            out[phase] = phase_slowloris(args.attackers, args.slow_seconds, args.rounds)
        elif phase == "emfile":
            out[phase] = phase_emfile(args.seconds)
        elif phase == "backpressure":
            out[phase] = phase_backpressure()
        elif phase == "flood":
            out[phase] = phase_flood(args.garbage, not args.no_trace)
        elif phase == "soak":
            out[phase] = phase_soak(args.conns, args.batch, not args.no_trace)
        out[phase]["phase_seconds"] = round(time.monotonic() - t0, 1)
        if not args.json:
            print(phase, json.dumps(out[phase], indent=2), flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
