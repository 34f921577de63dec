"""SocketPool against hostile peers: slow and idle attackers, header and body
limits, fd exhaustion on accept, write backpressure; over loopback.

Figures from the longer runs of ``benchmarks/bench_hardening.py`` are in
docs/robustness.md. No timing targets here: only correctness, plus one
generous CPU-time bound that a busy loop cannot meet. Every test with a loop
runs on the native and the asyncio loop (the fake-clock ones on an asyncio
loop whose time is the fake clock).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import time
from functools import partial

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Packet, Request, Response
from netsip.socketpool import SocketPool, get_settings, import_settings
from netsip.util import Addr
from tests.support import (
    FakeClock,
    Received,
    addr_of,
    answering,
    collector,
    connect,
    drive,
    fd_limit,
    free_port,
    is_uvloop,
    open_fds,
    peer_closed,
    pkt,
    poll,
    roundtrip,
    tcp_listener,
    udp_socket,
)
from tests.support import call_request as request

# (on the native and the asyncio loop: the `loop` and `clock_loop` fixtures)
pytestmark = [pytest.mark.usefixtures("restore_settings"), pytest.mark.both_loops]


# ------------------------------------------------------ slow and idle attackers


def test_slow_partial_headers_neither_delay_a_good_client_nor_live_forever(
    clock_loop: EventLoop, fake_clock: FakeClock
) -> None:
    """200 connections trickle a header one byte per (fake) second: a good client's
    transaction still takes a handful of loop cycles, and the attackers are closed
    by expiry although they keep sending (only complete messages count as activity).

    The benchmark runs 1,000 attackers on the real clock and measures the good
    client's latency (docs/robustness.md).
    """
    n = 200
    loop, clock = clock_loop, fake_clock
    before = open_fds()
    with SocketPool("tcp", tcp_listener(backlog=n + 16)) as pool:
        got: Received = []
        pool.attach_eventloop(loop, answering(pool, got))
        server = addr_of(pool.master())
        attackers = [connect(server) for _ in range(n)]
        try:
            drive(loop, lambda: pool.connection_count() == n)
            # one byte short of a message: the header never ends
            partial_hdr = request(1, "slow")[:-3]
            with connect(server) as good:
                baseline_answer, baseline_cycles = roundtrip(loop, good, request(1, "good"))
                for second in range(1, 21):
                    clock.now += 1.0
                    for s in attackers:
                        with contextlib.suppress(OSError):  # closed by the pool already
                            s.send(partial_hdr[second - 1 : second], socket.MSG_DONTWAIT)
                    poll(loop, 2)
                    if second == 5:
                        answer, cycles = roundtrip(loop, good, request(2, "good"))
                        assert pkt(answer).tid() == "good 2"
                        assert cycles <= baseline_cycles + 2
                # MIN_EXPIRE 15 + (120-15)/201 connections = 15.5 s idle, checked every 8 s
                assert pool.connection_count() == 1  # only the good client is left
                assert all(peer_closed(s) for s in attackers)
                assert [p.tid() for p, _ in got] == ["good 1", "good 2"]
                first = pkt(baseline_answer)
                assert isinstance(first, Response) and first.code() == 200
        finally:
            for s in attackers:
                s.close()
        poll(loop)
    assert open_fds() == before


def test_idle_connections_expire_with_a_fake_clock(
    clock_loop: EventLoop, fake_clock: FakeClock
) -> None:
    """Connections that never send anything are closed after MAX_EXPIRE (few connections)."""
    loop, clock = clock_loop, fake_clock
    with SocketPool("tcp", tcp_listener()) as pool:
        pool.attach_eventloop(loop, None)
        idle = [connect(addr_of(pool.master())) for _ in range(3)]
        try:
            drive(loop, lambda: pool.connection_count() == 3)
            # 3 connections: 15 + 105/3 = 50 s
            for _ in range(45):
                clock.now += 1.0
                poll(loop, 1)
            assert pool.connection_count() == 3
            for _ in range(20):
                clock.now += 1.0
                poll(loop, 1)
            assert pool.connection_count() == 0
            assert all(peer_closed(s) for s in idle)
            assert loop.timer_count() == 0  # the expiry timer is gone with the connections
        finally:
            for s in idle:
                s.close()


# ------------------------------------------------------ header and body limits


def test_endless_header_is_dropped_at_max_sip_header(loop: EventLoop) -> None:
    """Header lines that never end in CRLF CRLF: the connection is closed as soon
    as the buffer holds MAX_SIP_HEADER + 4 bytes without a header end, not later."""
    limit = int(get_settings()["MAX_SIP_HEADER"])
    with SocketPool("tcp", tcp_listener()) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            drive(loop, lambda: pool.connection_count() == 1)
            first = b"OPTIONS sip:x SIP/2.0\r\n"
            c.sendall(first)
            sent = len(first)
            line = b"X-Junk: " + b"a" * 990 + b"\r\n"
            while pool.connection_count() == 1:
                assert sent <= limit + 4 + len(line), "not dropped at the limit"
                try:
                    c.sendall(line)
                except OSError:
                    break
                sent += len(line)
                poll(loop, 2)
            assert sent >= limit + 4  # ... and not before
            assert peer_closed(c)
        assert got == []


def test_one_endless_line_is_dropped_at_max_sip_header(loop: EventLoop) -> None:
    """The same with no line break at all, with a small per-pool limit."""
    with SocketPool("tcp", tcp_listener(), settings={"MAX_SIP_HEADER": 1000}) as pool:
        pool.attach_eventloop(loop, None)
        with connect(addr_of(pool.master())) as c:
            drive(loop, lambda: pool.connection_count() == 1)
            c.sendall(b"x" * 1003)  # 1000 + 4 bytes are needed to hold a header end
            poll(loop)
            assert pool.connection_count() == 1
            c.sendall(b"x")
            drive(loop, lambda: pool.connection_count() == 0)
            assert peer_closed(c)


def test_announced_body_above_max_sip_body_is_dropped_at_once(loop: EventLoop) -> None:
    """Content-Length above MAX_SIP_BODY: closed when the header is complete,
    before a byte of the body arrives; exactly MAX_SIP_BODY is fine."""
    limit = int(get_settings()["MAX_SIP_BODY"])
    with SocketPool("tcp", tcp_listener()) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        server = addr_of(pool.master())
        too_big = request(1, "big", b"x" * (limit + 1))
        header = too_big[: too_big.index(b"\r\n\r\n") + 4]
        with connect(server) as c:
            c.sendall(header)
            drive(loop, lambda: peer_closed(c))
        fits = request(2, "fits", b"y" * limit)
        with connect(server) as c:
            c.sendall(fits)
            drive(loop, lambda: len(got) == 1)
        assert got[0][0].body() == b"y" * limit
        drive(loop, lambda: pool.connection_count() == 0)


# ------------------------------------------------------------- fd exhaustion


def test_accept_backs_off_on_emfile_and_recovers(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """With RLIMIT_NOFILE lowered, connections waiting in the backlog make accept()
    fail with EMFILE while the listener stays readable. The pool must stop
    watching it for a while (a level-triggered loop would otherwise spin at 100%
    CPU), keep serving accepted connections, and accept the rest once fds are
    available again."""
    if is_uvloop(loop):
        pytest.skip("uvloop: libuv itself needs fds when RLIMIT_NOFILE is exhausted")
    caplog.set_level(logging.DEBUG, logger="netsip.socketpool")
    n = 60
    with SocketPool("tcp", tcp_listener(backlog=n + 16)) as pool:
        got: Received = []
        pool.attach_eventloop(loop, answering(pool, got))
        server = addr_of(pool.master())
        good = connect(server)
        waiting: list[socket.socket] = []
        try:
            drive(loop, lambda: pool.connection_count() == 1)
            waiting = [connect(server) for _ in range(n)]  # queued in the backlog
            errs: list[int] = []
            closed_port = free_port(socket.SOCK_STREAM)
            with fd_limit(3):
                cpu0, wall0 = time.process_time(), time.monotonic()
                deadline = wall0 + 1.0
                loop.loop(None, lambda: time.monotonic() > deadline)
                cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                accepted_while_short = pool.connection_count()
                # an accepted connection is still served while accept() fails
                answer, _ = roundtrip(loop, good, request(1, "during"))
                # a new outgoing connection fails cleanly through the callback
                pool.sendto(pkt(request(2)), ("127.0.0.1", closed_port), errs.append)
            assert pkt(answer).tid() == "during 1"
            assert errs == [errno.EMFILE]
            assert accepted_while_short == 1 + 3
            # A busy loop burns about all of the wall time; backing off, the
            # loop wakes up a handful of times (0.05 s doubling to 1 s).
            assert cpu < 0.5 * wall, f"{cpu:.3f}s CPU in {wall:.3f}s: the loop spins"
            # recovery: all waiting connections are accepted (the pause is at most 1 s)
            drive(loop, lambda: pool.connection_count() == n + 1, seconds=10)
            answer, _ = roundtrip(loop, waiting[-1], request(3, "after"))
            assert pkt(answer).tid() == "after 3"
        finally:
            good.close()
            for s in waiting:
                s.close()
    failures = [r for r in caplog.records if "accept on" in r.getMessage()]
    assert failures, "accept never failed: the limit was not low enough"
    assert sum(r.levelno >= logging.WARNING for r in failures) == 1  # then DEBUG only
    assert len(failures) < 20


def test_accept_pause_is_cancelled_by_detach_and_close(loop: EventLoop) -> None:
    """A pool detached or closed while its listener is paused leaves no timer behind."""
    if is_uvloop(loop):
        pytest.skip("uvloop: libuv itself needs fds when RLIMIT_NOFILE is exhausted")
    pool = SocketPool("tcp", tcp_listener())
    pool.attach_eventloop(loop, None)
    waiting = [connect(addr_of(pool.master())) for _ in range(5)]
    try:
        with fd_limit(0):
            poll(loop)
        assert pool.connection_count() == 0
        assert loop.timer_count() == 1  # the accept pause
        pool.attach_eventloop(None)
        assert loop.timer_count() == 0
        pool.attach_eventloop(loop, None)  # watching the listener again at once
        drive(loop, lambda: pool.connection_count() == 5)
        pool.close()
        assert loop.timer_count() == 0 and loop.fd_count() == 0
    finally:
        pool.close()
        for s in waiting:
            s.close()


# ---------------------------------------------------------- write backpressure


def test_write_buffer_limit_fails_sendto_with_enobufs_and_closes(loop: EventLoop) -> None:
    """A peer that never reads: once MAX_WBUF bytes wait, the connection is
    closed, every packet queued on it (and the one that did not fit) fails with
    ENOBUFS exactly once; a connection to a reading peer is not affected."""
    limit = 256 * 1024
    body = b"x" * 16000
    with (
        SocketPool("tcp", tcp_listener(), settings={"MAX_WBUF": limit}) as pool,
        SocketPool("tcp", tcp_listener()) as reader,
        tcp_listener(rcvbuf=4096) as stuck_server,
    ):
        pool.attach_eventloop(loop, None)
        good_got, good_cb = collector()
        reader.attach_eventloop(loop, good_cb)
        stuck: dict[int, list[int]] = {}
        good: dict[int, list[int]] = {}

        def record(into: dict[int, list[int]], i: int, err: int) -> None:
            into.setdefault(i, []).append(err)

        stuck_dst, good_dst = addr_of(stuck_server), addr_of(reader.master())
        pool.sendto(pkt(request(0, "stuck", body)), stuck_dst, partial(record, stuck, 0))
        peer, _ = stuck_server.accept()
        with peer:
            i = 0
            max_queued = 0
            while not any(errno.ENOBUFS in v for v in stuck.values()):
                i += 1
                assert i < 2000, "the write buffer grows without bound"
                pool.sendto(pkt(request(i, "stuck", body)), stuck_dst, partial(record, stuck, i))
                if i % 8 == 0:
                    pool.sendto(pkt(request(i, "good")), good_dst, partial(record, good, i))
                max_queued = max(max_queued, pool.queued_bytes())
                loop.loop(0)
            # the stuck connection is gone, the good one is still there
            assert pool.connection_count() == 1
            assert max_queued <= limit + 4096  # plus at most a small good packet
            assert sorted(stuck) == list(range(i + 1))
            assert all(len(v) == 1 for v in stuck.values())  # each callback exactly once
            results = [stuck[k][0] for k in range(i + 1)]
            first_fail = results.index(errno.ENOBUFS)
            assert first_fail > 0  # what the kernel took counted as written
            assert results == [0] * first_fail + [errno.ENOBUFS] * (i + 1 - first_fail)
            # the peer gets what was written, then EOF
            deadline = time.monotonic() + 5
            while not peer_closed(peer):
                assert time.monotonic() < deadline
                select.select([peer], [], [], 0.05)
        drive(loop, lambda: len(good_got) == len(good) and all(v == [0] for v in good.values()))
        assert [p.tid() for p, _ in good_got] == [f"good {k}" for k in sorted(good)]


def test_pool_wide_write_limit_closes_the_worst_reader(loop: EventLoop) -> None:
    """Peers that never read, each under MAX_WBUF but together over
    MAX_WBUF_TOTAL: the connection with the most queued is closed (ENOBUFS),
    the pool's write buffers never hold much more than the limit, and a
    reading peer keeps getting its packets."""
    per_conn, total = 256 * 1024, 384 * 1024
    body = b"x" * 16000
    settings = {"MAX_WBUF": per_conn, "MAX_WBUF_TOTAL": total}
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(SocketPool("tcp", tcp_listener(), settings=settings))
        reader = stack.enter_context(SocketPool("tcp", tcp_listener()))
        stuck_servers = [stack.enter_context(tcp_listener(rcvbuf=4096)) for _ in range(4)]
        pool.attach_eventloop(loop, None)
        good_got, good_cb = collector()
        reader.attach_eventloop(loop, good_cb)
        failed: list[int] = []
        good: dict[int, list[int]] = {}
        peers = []
        for k, server in enumerate(stuck_servers):
            pool.sendto(pkt(request(0, f"stuck{k}", body)), addr_of(server), failed.append)
            peers.append(stack.enter_context(server.accept()[0]))
        max_queued = 0
        i = 0
        while errno.ENOBUFS not in failed:
            i += 1
            assert i < 3000, "the write buffers grow without bound"
            server = stuck_servers[i % 4]
            pool.sendto(pkt(request(i, f"stuck{i % 4}", body)), addr_of(server), failed.append)
            if i % 8 == 0:
                pool.sendto(
                    pkt(request(i, "good")),
                    addr_of(reader.master()),
                    lambda err, i=i: good.setdefault(i, []).append(err),
                )
            max_queued = max(max_queued, pool.queued_bytes())
            loop.loop(0)
        assert max_queued <= total + len(body) + 4096
        # the running total the limit is checked against is the real one
        assert pool._stream is not None and pool._stream.wbuf_total == pool.queued_bytes()
        # one connection closed, by the pool-wide limit (each is far below its own)
        assert pool.connection_count() == 4
        drive(loop, lambda: len(good_got) == len(good) and all(v == [0] for v in good.values()))
        assert [p.tid() for p, _ in good_got] == [f"good {k}" for k in sorted(good)]


def test_max_wbuf_setting_default_and_checks() -> None:
    assert get_settings()["MAX_WBUF"] == 4 * 1024 * 1024
    with pytest.raises(ValueError, match="MAX_WBUF"):
        import_settings(MAX_WBUF=0)
    with pytest.raises(TypeError, match="MAX_WBUF"):
        import_settings(MAX_WBUF=1.5)
    import_settings(MAX_WBUF=1000)
    with SocketPool("udp", udp_socket()) as pool:
        assert pool.get_settings()["MAX_WBUF"] == 1000


def test_packet_larger_than_max_wbuf_fails_on_an_idle_connection(loop: EventLoop) -> None:
    with SocketPool("tcp", tcp_listener(), settings={"MAX_WBUF": 1000}) as pool:
        got, cb = collector()
        with SocketPool("tcp", tcp_listener()) as server:
            server.attach_eventloop(loop, cb)
            pool.attach_eventloop(loop, None)
            errs: list[int] = []
            pool.sendto(pkt(request(1)), addr_of(server.master()), errs.append)
            drive(loop, lambda: errs == [0] and len(got) == 1)
            pool.sendto(pkt(request(2, body=b"z" * 1000)), addr_of(server.master()), errs.append)
            assert errs == [0, errno.ENOBUFS]
            assert pool.connection_count() == 0


def test_pool_wide_write_limit_also_bounds_responses_to_pipelined_requests(
    loop: EventLoop,
) -> None:
    """Peers that pipeline requests and never read, answered through the
    corked path (written after the read batch): the pool's running total of
    queued bytes stays exact, and within MAX_WBUF_TOTAL."""
    total = 256 * 1024
    settings = {"MAX_WBUF_TOTAL": total}
    body = b"x" * 20_000
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(SocketPool("tcp", tcp_listener(), settings=settings))
        assert pool._stream is not None
        answered = [0]

        def answer(packet: Packet, from_: Addr) -> None:
            assert isinstance(packet, Request)
            pool.sendto(packet.create_response(200, None, None, body), from_)
            answered[0] += 1

        pool.attach_eventloop(loop, answer)
        dst = addr_of(pool.master())
        clients = []
        for _ in range(8):
            c = stack.enter_context(connect(dst))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            clients.append(c)
        max_total = 0
        for n in range(1, 200):
            for k, c in enumerate(clients):
                with contextlib.suppress(BlockingIOError):
                    c.send(request(n, f"pipe{k}"))
            loop.loop(0)
            max_total = max(max_total, pool._stream.wbuf_total)
            assert pool._stream.wbuf_total == pool.queued_bytes()
        assert answered[0] > 0
        assert max_total <= total + 3 * (len(body) + 1024)
