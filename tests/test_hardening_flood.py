"""Hardening (issue 8): floods and a long soak, scaled down for CI.

* 20,000 garbage UDP datagrams interleaved with 2,000 valid ones (the
  benchmark sends 100,000): every valid one is delivered, memory stays flat,
  timers keep firing;
* the same kind of flood through a Dispatcher, with hostile but parseable
  packets (stray responses, ACK/CANCEL for unknown transactions) on top;
* 5,000 TCP connections opened, used and closed (by the client, by a reset,
  by expiry) against one pool (the benchmark runs 100,000): fds, memory and
  timers back to where they were.

The datagrams are sent in paced batches and the loop is driven between them,
so the kernel never drops one for lack of receive buffer: "every valid one is
delivered" is then a property of netsip, not luck.
"""

from __future__ import annotations

import gc
import random
import socket
import tracemalloc
from collections.abc import Callable

import psutil
import pytest

from netsip import _cache as packet_mod
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop, TimerEvent
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.socketpool import SocketPool, import_settings
from netsip.util import Addr
from tests.support import (
    FakeClock,
    addr_of,
    connect,
    datagrams,
    drive,
    open_fds,
    tcp_listener,
    udp_socket,
)
from tests.test_hardening import peer_closed, poll, request, reset

# ------------------------------------------------------------------- garbage


def junk_request(rng: random.Random, n: int) -> bytes:
    """A well-formed request whose Call-ID marks it as junk (not counted as valid)."""
    return request(n, f"junk-{n}", proto="UDP")


def garbage(rng: random.Random, n: int) -> bytes:
    """One hostile datagram (kind chosen by ``rng``); may occasionally parse."""
    kind = rng.randrange(12)
    base = junk_request(rng, n)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(13, 1400))
    if kind == 1:  # truncated anywhere
        return base[: rng.randrange(1, len(base))]
    if kind == 2:  # a few bytes flipped, inserted or deleted
        b = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                b.insert(i, rng.choice(b'\r\n\0:;,<>" \t'))
            elif len(b) > 20:
                del b[i]
        return bytes(b)
    if kind == 3:  # header bomb: many tiny headers
        return base.replace(b"\r\n\r\n", b"\r\n" + b"X: a\r\n" * 300 + b"\r\n")
    if kind == 4:  # keep-alives and runts (< 13 bytes)
        return rng.choice([b"\r\n\r\n", b"\r\n", b"\0" * 4, b"jaK", b"OPTIONS sip"])
    if kind == 5:  # NULs
        return b"\0" * rng.randrange(13, 2000)
    if kind == 6:  # Content-Length beyond the datagram
        return base.replace(b"Content-Length: 0", b"Content-Length: 99999")
    if kind == 7:  # bad status lines
        return rng.choice(
            [b"SIP/2.0 999 Nope\r\n\r\n", b"SIP/2.0 20 OK\r\n\r\n", b"SIP/3.0 200 OK\r\n\r\n"]
        )
    if kind == 8:  # non-UTF-8 header names and values
        return base.replace(b"Max-Forwards", b"\xff\xfe\x80Max").replace(b"alice", b"\xc3\x28")
    if kind == 9:  # a huge value in one header (stays below the UDP maximum)
        return base.replace(b"To: <", b"To: " + b"x" * rng.randrange(1000, 60000) + b" <")
    if kind == 10:  # conflicting single-valued headers
        return base.replace(b"Call-ID: junk", b"Call-ID: a\r\nCall-ID: junk")
    # big random datagrams, rarely (they take much receive buffer)
    if rng.randrange(20) == 0:
        return rng.randbytes(rng.randrange(20000, 65000))
    return rng.randbytes(rng.randrange(13, 200))


def at_least(count: Callable[[], int], n: int) -> Callable[[], bool]:
    """A stop condition: ``count()`` reached ``n``."""
    return lambda: count() >= n


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


def big_rcvbuf(s: socket.socket) -> socket.socket:
    # 4 MiB (net.core.rmem_max on most systems) holds a whole batch
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    return s


# --------------------------------------------------------------------- floods


def test_udp_garbage_flood_delivers_every_valid_packet_memory_flat() -> None:
    rng = random.Random(8)
    with (
        EventLoop() as loop,
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


def test_dispatcher_flood_with_hostile_but_parseable_packets() -> None:
    """Garbage plus packets that parse but belong to nothing: stray responses,
    ACK and CANCEL for unknown transactions, requests without Via or with a
    hundred Vias. The receiver gets every valid request (and the hostile
    packets that parse: the application's business); nothing is queued."""
    rng = random.Random(4475)
    with EventLoop() as loop:
        leg = Leg(addr="127.0.0.1", port=0, proto="udp")
        disp = Dispatcher([leg], loop)
        try:
            big_rcvbuf(leg.socketpool().master())
            got: list[str] = []
            valid_got = 0

            def receiver(packet: Packet, leg_: Leg, from_: Addr) -> None:
                nonlocal valid_got
                cid = packet.callid() or ""
                got.append(cid)
                valid_got += cid.startswith("valid-")

            disp.set_receiver(receiver)
            dst = leg.socketpool().master().getsockname()
            hostile = [
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\n"
                b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\n"
                b"Call-ID: stray\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                request(1, "ack-unknown", method="ACK", proto="UDP"),
                request(1, "cancel-unknown", method="CANCEL", proto="UDP"),
                request(1, "no-via", proto="UDP").replace(b"Via: SIP/2.0/UDP", b"X-Via: x"),
                request(1, "many-via", proto="UDP").replace(
                    b"Via: ", b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKv\r\n" * 100 + b"Via: ", 1
                ),
            ]
            valid = 0
            with udp_socket() as sender:
                for n in range(1, 5001):
                    sender.sendto(garbage(rng, n), dst)
                    if n % 10 == 0:
                        sender.sendto(hostile[n // 10 % len(hostile)], dst)
                    if n % 10 == 5:
                        valid += 1
                        sender.sendto(request(valid, f"valid-{valid}", proto="UDP"), dst)
                    if n % 100 == 0:
                        drive(loop, at_least(lambda: valid_got, valid))
                        poll(loop, 5)
            assert [c for c in got if c.startswith("valid-")] == [
                f"valid-{i}" for i in range(1, valid + 1)
            ]
            # the hostile ones that parse reach the application (its business)
            assert {"stray", "ack-unknown", "cancel-unknown", "many-via"} <= set(got)
            assert disp.queue_size() == 0
        finally:
            disp.close()


# ----------------------------------------------------------------------- soak


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


# ------------------------------------------------------------ response cache


@pytest.mark.usefixtures("restore_settings")
def test_flood_of_unique_large_requests_keeps_the_response_cache_bounded() -> None:
    """1,500 unique requests of ~60 KB, each answered (responses copy the big
    From): the cache keeps at most MAX_RESPONSE_CACHE bytes, the process grows
    by little more, and a good client is still served."""
    limit = 4 * 1024 * 1024
    big = "x" * 60_000
    proc = psutil.Process()
    with EventLoop() as loop:
        import_settings(MAX_RESPONSE_CACHE=limit)
        disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
        try:
            leg = disp.legs[0]
            big_rcvbuf(leg.socketpool().master())
            answered = 0

            def uas(packet: Packet, leg_: Leg, from_: Addr) -> None:
                nonlocal answered
                if isinstance(packet, Request):
                    disp.deliver(packet.create_response(200), leg=leg_, dst_addr=from_)
                    answered += 1

            disp.set_receiver(uas)
            dst = leg.socketpool().master().getsockname()
            gc.collect()
            rss_before = proc.memory_info().rss
            peak_cache = 0
            with udp_socket() as sender:
                sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
                for n in range(1, 1501):
                    display = big[: 60_000 - n % 7]  # unique sizes too
                    req = request(n, f"flood-{n}", proto="UDP").replace(
                        b"From: ", f'From: "{display}" '.encode(), 1
                    )
                    sender.sendto(req, dst)
                    if n % 20 == 0:
                        drive(loop, at_least(lambda: answered, n))
                        peak_cache = max(peak_cache, disp._cache.bytes)
                        datagrams(sender)  # the responses, not kept
            assert answered == 1500
            assert peak_cache <= limit
            grown = proc.memory_info().rss - rss_before
            assert grown < limit + 40 * 1024 * 1024, grown  # 90 MB of responses unbounded
            # a good client is still answered
            with udp_socket() as good:
                good.sendto(request(1, "good", proto="UDP"), dst)
                drive(loop, at_least(lambda: answered, 1501))
        finally:
            disp.close()
