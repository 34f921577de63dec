"""SocketPool under floods and a long soak, scaled down for CI.

* 20,000 garbage UDP datagrams interleaved with 2,000 valid ones (the
  benchmark sends 100,000): every valid one is delivered, memory stays flat,
  timers keep firing;
* 5,000 TCP connections opened, used and closed (by the client, by a reset,
  by expiry) against one pool (the benchmark runs 100,000): fds, memory and
  timers back to where they were.

The datagrams are sent in paced batches and the loop is driven between them,
so the kernel never drops one for lack of receive buffer: "every valid one is
delivered" is then a property of netsip, not luck. The garbage flood runs on
the native and the asyncio loop. The same kind of flood
through a Dispatcher is in ``tests/test_dispatcher.py``.
"""

from __future__ import annotations

import gc
import random
import socket
import tracemalloc
from collections.abc import Callable

import pytest

from netsip import _cache as packet_mod
from netsip.eventloop import EventLoop, TimerEvent
from netsip.packet import Packet, Request
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import (
    FakeClock,
    addr_of,
    at_least,
    big_rcvbuf,
    connect,
    drive,
    garbage,
    open_fds,
    peer_closed,
    poll,
    reset,
    tcp_listener,
    udp_socket,
)
from tests.support import call_request as request

# (the garbage flood runs on both loops; the soak moves a fake clock, which only
# the native loop's timers follow)
pytestmark = pytest.mark.both_loops

# ------------------------------------------------------------ flood helpers


def flood(
    loop: EventLoop,
    sender: socket.socket,
    dst: tuple[str, int],
    valid_count: Callable[[], int],
    *,
    garbage_total: int,
    per_valid: int,
    batch: int,
    rng: random.Random,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Send ``garbage_total`` garbage datagrams with a valid one every ``per_valid``,
    ``batch`` datagrams at a time, driving ``loop`` until each batch's valid ones
    arrived. Returns the number of valid datagrams sent."""
    sent_valid = 0
    n = 0
    batch_no = 0
    while n < garbage_total:
        for _ in range(batch):
            if n >= garbage_total:
                break
            n += 1
            sender.sendto(garbage(rng, n), dst)
            if n % per_valid == 0:
                sent_valid += 1
                sender.sendto(request(sent_valid, f"valid-{sent_valid}", proto="UDP"), dst)
        drive(loop, at_least(valid_count, sent_valid))
        poll(loop, 5)  # the garbage after the last valid one
        batch_no += 1
        if on_batch is not None:
            on_batch(batch_no)
    return sent_valid


def parser_caches() -> dict[str, dict[object, object]]:
    """netsip.packet's module-level caches (``*_CACHE`` dicts: header names, lines).

    Each is bounded; garbage keeps bringing new keys, so they fill up (or
    churn) during a flood, which would show as growth in a memory measurement.
    The flood test checks their bound and measures everything else.
    """
    return {
        name: obj
        for name, obj in vars(packet_mod).items()
        if name.endswith("_CACHE") and isinstance(obj, dict)
    }


def clear_parser_caches() -> None:
    for cache in parser_caches().values():
        cache.clear()


# --------------------------------------------------------- UDP garbage flood


def test_udp_garbage_flood_delivers_every_valid_packet_memory_flat(loop: EventLoop) -> None:
    rng = random.Random(8)
    with (
        SocketPool("udp", big_rcvbuf(udp_socket())) as pool,
        udp_socket() as sender,
    ):
        # counters only: the test itself must not hold memory per datagram
        valid = out_of_order = junk = 0

        def cb(packet: Packet, from_: Addr) -> None:
            nonlocal valid, out_of_order, junk
            cid = packet.callid() or ""
            if cid.startswith("valid-"):
                valid += 1
                out_of_order += cid != f"valid-{valid}"  # exactly once, in order
            else:
                junk += 1

        pool.attach_eventloop(loop, cb)
        ticks = 0

        def tick(_t: TimerEvent) -> None:
            nonlocal ticks
            ticks += 1

        timer = loop.add_timer(0.005, tick, repeat=0.005)
        dst = pool.master().getsockname()
        # warm up (buffers, free lists), then measure
        flood(
            loop, sender, dst, lambda: valid, garbage_total=2000, per_valid=10, batch=110, rng=rng
        )
        valid = out_of_order = 0
        cache_sizes: list[int] = []

        def measure() -> int:
            # the parser's bounded caches are checked, then left out; a full
            # collection also empties the allocator's free lists
            cache_sizes.extend(len(c) for c in parser_caches().values())
            clear_parser_caches()
            gc.collect()
            return tracemalloc.get_traced_memory()[0]

        tracemalloc.start()
        try:
            mem0 = measure()
            samples: list[int] = []

            def sample(batch_no: int) -> None:
                if batch_no % 20 == 0:
                    samples.append(measure() - mem0)

            sent = flood(
                loop,
                sender,
                dst,
                lambda: valid,
                garbage_total=20_000,
                per_valid=10,
                batch=110,
                rng=rng,
                on_batch=sample,
            )
            grown = measure() - mem0
        finally:
            tracemalloc.stop()
        timer.cancel()
        assert sent == 2000
        assert valid == sent and out_of_order == 0  # every valid datagram, once, in order
        # flat: no per-datagram state stays behind
        assert grown < 64 * 1024, f"memory grew by {grown} bytes ({samples})"
        assert max(samples) < 64 * 1024, samples
        # the caches are bounded: the ~2,200 garbage datagrams between two
        # samples carry far more distinct header lines than 4,096
        assert parser_caches() and max(cache_sizes) <= 4096, cache_sizes
        assert ticks > 10  # timers kept firing during the flood
        assert junk > 0  # some garbage parses (e.g. the header bombs): delivered, harmless
        assert loop.fd_count() == 1


# -------------------------------------------------------- TCP connection soak


def test_soak_5000_tcp_connections_back_to_baseline() -> None:
    """5,000 connections in batches of 100: each sends a request and reads the
    answer, then a third close, a third reset and a third stay idle until the
    pool expires them. At the end fds, memory and timers are back to baseline."""
    total, batch = 5000, 100
    clock = FakeClock(1_000_000.0)
    with (
        EventLoop(clock=clock) as loop,
        SocketPool("tcp", tcp_listener(backlog=batch + 16)) as pool,
    ):
        answered = 0

        def answer(packet: Packet, from_: Addr) -> None:
            nonlocal answered
            assert isinstance(packet, Request)
            pool.sendto(packet.create_response(200), from_)
            answered += 1  # a count, not the packets: the test must not hold memory

        pool.attach_eventloop(loop, answer)
        server = addr_of(pool.master())

        def run_batch(b: int) -> None:
            clients = [connect(server) for _ in range(batch)]
            try:
                for i, c in enumerate(clients):
                    c.sendall(request(i, f"soak-{b}-{i}"))
                want = (b + 1) * batch
                drive(loop, lambda: answered == want)
                poll(loop)
                idle = []
                for i, c in enumerate(clients):
                    c.settimeout(5)
                    assert c.recv(65536).startswith(b"SIP/2.0 200 ")
                    if i % 3 == 0:
                        c.close()
                    elif i % 3 == 1:
                        reset(c)
                    else:
                        idle.append(c)
                drive(loop, lambda: pool.connection_count() == len(idle))
                clock.now += 130.0  # beyond MAX_EXPIRE (120 s) and one check interval
                poll(loop)
                assert pool.connection_count() == 0
                assert all(peer_closed(c) for c in idle)
            finally:
                for c in clients:
                    c.close()

        run_batch(0)  # warm up
        poll(loop)
        gc.collect()
        fds0, timers0, heap0 = open_fds(), loop.timer_count(), len(loop._heap)
        tracemalloc.start()
        try:
            mem0 = tracemalloc.get_traced_memory()[0]
            for b in range(1, total // batch):
                run_batch(b)
            poll(loop)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - mem0
        finally:
            tracemalloc.stop()
        assert answered == total
        assert open_fds() == fds0
        assert loop.fd_count() == 1  # the listener
        assert loop.timer_count() == timers0 == 0
        assert len(loop._heap) <= heap0 + 1  # cancelled timers do not pile up
        assert pool.connection_count() == 0 and pool.queued_bytes() == 0
        assert grown < 256 * 1024, f"memory grew by {grown} bytes"
