"""Hardening (issue 8): hostile peers, faults and resource exhaustion on loopback.

Slow and idle attackers, endless headers and huge bodies, fd exhaustion on
accept, write backpressure, resets at awkward moments, ICMP errors on UDP and
exceptions raised by user callbacks. Floods and the long soak are in
``test_hardening_flood.py``, the fuzz harness runs in ``test_hardening_fuzz.py``;
figures from the longer runs of ``benchmarks/bench_hardening.py`` are in
docs/robustness.md. No timing targets here: only correctness, plus one
generous CPU-time bound that a busy loop cannot meet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from netsip.eventloop import EventLoop
from netsip.framing import Message, frame
from netsip.packet import Packet, Request, Response
from netsip.socketpool import Conn, SocketPool, get_settings, import_settings
from netsip.util import Addr
from tests.support import (
    FakeClock,
    Received,
    TlsFiles,
    addr_of,
    collector,
    connect,
    drive,
    make_tls_files,
    open_fds,
    pkt,
    sip_request,
    tcp_listener,
    udp_socket,
)

# --------------------------------------------------------------------- helpers

pytestmark = pytest.mark.usefixtures("restore_settings")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that nobody listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def reset(s: socket.socket) -> None:
    """Close ``s`` with a RST instead of a FIN (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@contextlib.contextmanager
def fd_limit(spare: int) -> Iterator[None]:
    """Lower RLIMIT_NOFILE so that exactly ``spare`` more fds can be opened.

    The holes below the highest open fd are filled first (the kernel always
    hands out the lowest free number). Everything is restored on exit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd > highest:
                os.close(fd)
                break
            fillers.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + spare, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        for fd in fillers:
            os.close(fd)


def poll(loop: EventLoop, times: int = 3) -> None:
    """A few non-blocking loop cycles: loopback delivers at once."""
    for _ in range(times):
        loop.loop(0)


def request(
    n: int = 1, callid: str = "c1", body: bytes = b"", method: str = "OPTIONS", proto: str = "TCP"
) -> bytes:
    return sip_request(n, body, callid, method, proto)


def answering(pool: SocketPool, got: Received) -> Callable[[Packet, Addr], None]:
    """A receive callback that records packets and answers requests with 200."""

    def cb(packet: Packet, from_: Addr) -> None:
        got.append((packet, from_))
        if isinstance(packet, Request):
            pool.sendto(packet.create_response(200), from_)

    return cb


def peer_closed(s: socket.socket) -> bool:
    """True if the other end closed ``s`` (EOF after any pending data, or a reset)."""
    while True:
        try:
            data = s.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True


def roundtrip(
    loop: EventLoop, s: socket.socket, data: bytes, seconds: float = 5.0
) -> tuple[bytes, int]:
    """Send ``data`` over ``s`` and drive ``loop`` until a whole SIP message comes back.

    Returns:
        The message and the number of loop cycles it took.
    """
    s.sendall(data)
    buf = bytearray()
    deadline = time.monotonic() + seconds
    cycles = 0
    while time.monotonic() < deadline:
        loop.loop(0)
        cycles += 1
        try:
            chunk = s.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            select.select([s], [], [], 0.001)
            continue
        assert chunk, "connection closed instead of an answer"
        buf += chunk
        r = frame(buf, 2**14, 2**16)
        if isinstance(r, Message):
            return bytes(buf[r.start : r.end]), cycles
    raise AssertionError("no answer in time")


# ------------------------------------------------------ slow and idle attackers


def test_slow_partial_headers_neither_delay_a_good_client_nor_live_forever() -> None:
    """200 connections trickle a header one byte per (fake) second: a good client's
    transaction still takes a handful of loop cycles, and the attackers are closed
    by expiry although they keep sending (only complete messages count as activity).

    The benchmark runs 1,000 attackers on the real clock and measures the good
    client's latency (docs/robustness.md).
    """
    n = 200
    clock = FakeClock(1_000_000.0)
    before = open_fds()
    with (
        EventLoop(clock=clock) as loop,
        SocketPool("tcp", tcp_listener(backlog=n + 16)) as pool,
    ):
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


def test_idle_connections_expire_with_a_fake_clock() -> None:
    """Connections that never send anything are closed after MAX_EXPIRE (few connections)."""
    clock = FakeClock(1_000_000.0)
    with EventLoop(clock=clock) as loop, SocketPool("tcp", tcp_listener()) as pool:
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


def test_endless_header_is_dropped_at_max_sip_header() -> None:
    """Header lines that never end in CRLF CRLF: the connection is closed as soon
    as the buffer holds MAX_SIP_HEADER + 4 bytes without a header end, not later."""
    limit = int(get_settings()["MAX_SIP_HEADER"])
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool:
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


def test_one_endless_line_is_dropped_at_max_sip_header() -> None:
    """The same with no line break at all, with a small per-pool limit."""
    with (
        EventLoop() as loop,
        SocketPool("tcp", tcp_listener(), settings={"MAX_SIP_HEADER": 1000}) as pool,
    ):
        pool.attach_eventloop(loop, None)
        with connect(addr_of(pool.master())) as c:
            drive(loop, lambda: pool.connection_count() == 1)
            c.sendall(b"x" * 1003)  # 1000 + 4 bytes are needed to hold a header end
            poll(loop)
            assert pool.connection_count() == 1
            c.sendall(b"x")
            drive(loop, lambda: pool.connection_count() == 0)
            assert peer_closed(c)


def test_announced_body_above_max_sip_body_is_dropped_at_once() -> None:
    """Content-Length above MAX_SIP_BODY: closed when the header is complete,
    before a byte of the body arrives; exactly MAX_SIP_BODY is fine."""
    limit = int(get_settings()["MAX_SIP_BODY"])
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool:
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


def test_accept_backs_off_on_emfile_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    """With RLIMIT_NOFILE lowered, connections waiting in the backlog make accept()
    fail with EMFILE while the listener stays readable. The pool must stop
    watching it for a while (a level-triggered loop would otherwise spin at 100%
    CPU), keep serving accepted connections, and accept the rest once fds are
    available again."""
    caplog.set_level(logging.DEBUG, logger="netsip.socketpool")
    n = 60
    with EventLoop() as loop, SocketPool("tcp", tcp_listener(backlog=n + 16)) as pool:
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


def test_accept_pause_is_cancelled_by_detach_and_close() -> None:
    """A pool detached or closed while its listener is paused leaves no timer behind."""
    with EventLoop() as loop:
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


def test_write_buffer_limit_fails_sendto_with_enobufs_and_closes() -> None:
    """A peer that never reads: once MAX_WBUF bytes wait, the connection is
    closed, every packet queued on it (and the one that did not fit) fails with
    ENOBUFS exactly once; a connection to a reading peer is not affected."""
    limit = 256 * 1024
    body = b"x" * 16000
    with (
        EventLoop() as loop,
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


def test_pool_wide_write_limit_closes_the_worst_reader() -> None:
    """Peers that never read, each under MAX_WBUF but together over
    MAX_WBUF_TOTAL: the connection with the most queued is closed (ENOBUFS),
    the pool's write buffers never hold much more than the limit, and a
    reading peer keeps getting its packets."""
    per_conn, total = 256 * 1024, 384 * 1024
    body = b"x" * 16000
    settings = {"MAX_WBUF": per_conn, "MAX_WBUF_TOTAL": total}
    with contextlib.ExitStack() as stack:
        loop = stack.enter_context(EventLoop())
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
        # one connection closed, by the pool-wide limit (each is far below its own)
        assert pool.connection_count() == 4
        drive(loop, lambda: len(good_got) == len(good) and all(v == [0] for v in good.values()))
        assert [p.tid() for p, _ in good_got] == [f"good {k}" for k in sorted(good)]


def test_max_wbuf_setting() -> None:
    assert get_settings()["MAX_WBUF"] == 4 * 1024 * 1024
    with pytest.raises(ValueError, match="MAX_WBUF"):
        import_settings(MAX_WBUF=0)
    with pytest.raises(TypeError, match="MAX_WBUF"):
        import_settings(MAX_WBUF=1.5)
    import_settings(MAX_WBUF=1000)
    with SocketPool("udp", udp_socket()) as pool:
        assert pool.get_settings()["MAX_WBUF"] == 1000


def test_packet_larger_than_max_wbuf_fails_on_an_idle_connection() -> None:
    with (
        EventLoop() as loop,
        SocketPool("tcp", tcp_listener(), settings={"MAX_WBUF": 1000}) as pool,
    ):
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


# ------------------------------------------------------------------- faults


def test_peer_reset_mid_message() -> None:
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool:
        got: Received = []
        pool.attach_eventloop(loop, answering(pool, got))
        server = addr_of(pool.master())
        with connect(server) as other:
            c = connect(server)
            drive(loop, lambda: pool.connection_count() == 2)
            data = request(1, "half")
            c.sendall(data[: len(data) // 2])
            poll(loop)
            reset(c)
            drive(loop, lambda: pool.connection_count() == 1)
            answer, _ = roundtrip(loop, other, request(1, "other"))
            assert pkt(answer).tid() == "other 1"
        assert [p.tid() for p, _ in got] == ["other 1"]


def test_peer_reset_mid_write_as_server() -> None:
    """The pool answers with a large response that a client resets half way:
    the sendto callback gets the socket's error, nothing leaks."""
    big = b"b" * 200_000
    errs: list[int] = []
    with (
        EventLoop() as loop,
        SocketPool("tcp", tcp_listener(), settings={"MAX_WBUF": 2**24}) as pool,
    ):

        def on_request(packet: Packet, from_: Addr) -> None:
            assert isinstance(packet, Request)
            for _ in range(20):
                pool.sendto(packet.create_response(200, body=big), from_, errs.append)

        pool.attach_eventloop(loop, on_request)
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(pool.master().getsockname())
        c.sendall(request(1, "reset"))
        drive(loop, lambda: pool.queued_bytes() > 0)
        c.recv(1000)
        reset(c)
        drive(loop, lambda: len(errs) == 20)
        assert pool.connection_count() == 0
        assert pool.queued_bytes() == 0
        assert errs[-1] in (errno.ECONNRESET, errno.EPIPE)
        assert set(errs) <= {0, errno.ECONNRESET, errno.EPIPE}


def test_destination_closes_between_connect_and_write() -> None:
    """The listener goes away while the pool's connection waits in its backlog:
    the queued packet fails with an errno, and the next sendto does not reuse
    the dead connection (it gets ECONNREFUSED)."""
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool:
        pool.attach_eventloop(loop, None)
        lst = tcp_listener()
        dst = addr_of(lst)
        errs: list[int] = []
        pool.sendto(pkt(request(1)), dst, errs.append)
        lst.close()  # the connection in the backlog is reset
        drive(loop, lambda: len(errs) == 1)
        assert errs[0] in (errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED)
        assert pool.connection_count() == 0
        pool.sendto(pkt(request(2)), dst, errs.append)
        drive(loop, lambda: len(errs) == 2)
        assert errs[1] == errno.ECONNREFUSED
        assert pool.connection_count() == 0


def test_destination_accepts_and_closes_at_once() -> None:
    """The peer accepts and closes before the pool wrote: the write may still
    succeed (the kernel took it), but the pool notices the close, drops the
    connection, and a later sendto opens a new one."""
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool, tcp_listener() as lst:
        pool.attach_eventloop(loop, None)
        dst = addr_of(lst)
        errs: list[int] = []
        pool.sendto(pkt(request(1)), dst, errs.append)
        s, _ = lst.accept()
        reset(s)
        drive(loop, lambda: len(errs) == 1 and pool.connection_count() == 0)
        assert errs[0] in (0, errno.ECONNRESET, errno.EPIPE)
        pool.sendto(pkt(request(2)), dst, errs.append)
        s, _ = lst.accept()
        with s:
            drive(loop, lambda: len(errs) == 2)
            assert errs[1] == 0
            assert pool.connection_count() == 1
            s.settimeout(5)
            assert s.recv(65536).startswith(b"OPTIONS")


def test_udp_econnrefused_does_not_kill_a_connected_master() -> None:
    """ICMP port unreachable surfaces on the next recv (or send) of a connected
    UDP socket on Linux: logged and ignored, the socket keeps working."""
    port = free_port()
    s = udp_socket()
    s.connect(("127.0.0.1", port))
    with EventLoop() as loop, SocketPool("udp", s, connected=True) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        errs: list[int] = []
        for i in range(3):
            pool.sendto(pkt(request(i, proto="UDP")), ("127.0.0.1", port), errs.append)
            poll(loop)
        assert set(errs) <= {errno.ECONNREFUSED}
        assert loop.fd_count() == 1  # still watched
        # the peer comes up on that port and talks to us
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", port))
            peer.sendto(request(9, "back", proto="UDP"), s.getsockname())
            drive(loop, lambda: len(got) == 1)
            pool.sendto(pkt(request(10, proto="UDP")), ("127.0.0.1", port), errs.append)
            peer.settimeout(5)
            assert peer.recv(65536).startswith(b"OPTIONS")
        assert got[0][0].tid() == "back 9"


def test_udp_icmp_errors_with_ip_recverr_do_not_spin_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A UDP socket with IP_RECVERR queues ICMP errors; unread, epoll reports the
    socket readable forever. The pool drains that queue instead of spinning."""
    ip_recverr = getattr(socket, "IP_RECVERR", 11)  # Linux value, missing in Python 3.11
    s = udp_socket()
    try:
        s.setsockopt(socket.IPPROTO_IP, ip_recverr, 1)
    except OSError:
        s.close()
        pytest.skip("no IP_RECVERR")
    reads = 0
    with EventLoop() as loop, SocketPool("udp", s) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        udp = pool._udp
        assert udp is not None
        orig = udp.read  # count the read callbacks (a private hook, for this check only)

        def counting(conn: Conn, fd: object = None) -> None:
            nonlocal reads
            reads += 1
            orig(conn, fd)

        monkeypatch.setattr(udp, "read", counting)
        pool.attach_eventloop(None)
        pool.attach_eventloop(loop, cb)
        for i in range(5):
            pool.sendto(pkt(request(i, proto="UDP")), ("127.0.0.1", free_port()))
        deadline = time.monotonic() + 0.3
        loop.loop(None, lambda: time.monotonic() > deadline)
        assert reads < 50, f"{reads} reads without data: the loop spins"
        with udp_socket() as peer:
            peer.sendto(request(1, "ok", proto="UDP"), s.getsockname())
            drive(loop, lambda: len(got) == 1)


# ------------------------------------------------- exceptions from user callbacks


class BoomError(Exception):
    """Raised by a test callback."""


def test_receive_callback_exception_udp_loop_continues() -> None:
    with EventLoop() as loop, SocketPool("udp", udp_socket()) as pool:
        got: list[str] = []

        def cb(packet: Packet, from_: Addr) -> None:
            got.append(packet.tid())
            if packet.callid() == "boom":
                raise BoomError(packet.tid())

        pool.attach_eventloop(loop, cb)
        with udp_socket() as c:
            for n, cid in enumerate(["a", "boom", "b", "c"]):
                c.sendto(request(n, cid, proto="UDP"), pool.master().getsockname())
            with pytest.raises(BoomError):
                drive(loop, lambda: len(got) == 4)
            drive(loop, lambda: len(got) == 4)
        assert got == ["a 0", "boom 1", "b 2", "c 3"]  # nothing lost, nothing twice


def test_receive_callback_exception_tcp_rest_of_buffer_delivered() -> None:
    """Three messages arrive in one segment; the callback raises on the second.
    The third is already read from the socket (no readiness will come for it),
    yet calling loop() again delivers it, exactly once."""
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool:
        got: list[str] = []

        def cb(packet: Packet, from_: Addr) -> None:
            got.append(packet.tid())
            if packet.callid() == "boom":
                raise BoomError(packet.tid())

        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.sendall(request(1, "a") + request(2, "boom") + request(3, "b"))
            with pytest.raises(BoomError):
                drive(loop, lambda: len(got) == 3)
            drive(loop, lambda: len(got) == 3, seconds=2)
            poll(loop)
            assert got == ["a 1", "boom 2", "b 3"]
            # the connection is still fine
            c.sendall(request(4, "c"))
            drive(loop, lambda: len(got) == 4)
        assert got[-1] == "c 4"


def test_sendto_callback_exception_after_write_keeps_other_callbacks() -> None:
    """Two packets queued while connecting are written together; the first
    callback raises. The second still gets its 0 in the next loop cycle."""
    with (
        EventLoop() as loop,
        SocketPool("tcp", tcp_listener()) as pool,
        SocketPool("tcp", tcp_listener()) as server,
    ):
        got, cb = collector()
        server.attach_eventloop(loop, cb)
        pool.attach_eventloop(loop, None)
        results: list[int] = []

        def raising(err: int) -> None:
            results.append(err)
            raise BoomError(err)

        dst = addr_of(server.master())
        pool.sendto(pkt(request(1)), dst, raising)
        pool.sendto(pkt(request(2)), dst, results.append)
        with pytest.raises(BoomError):
            drive(loop, lambda: len(results) == 2)
        drive(loop, lambda: len(results) == 2 and len(got) == 2, seconds=2)
        assert results == [0, 0]


def test_sendto_callback_exception_on_failure_keeps_other_callbacks() -> None:
    """Two packets to a refused destination; the first failure callback raises.
    The second still gets its errno in the next loop cycle."""
    with EventLoop() as loop, SocketPool("tcp", tcp_listener()) as pool:
        pool.attach_eventloop(loop, None)
        results: list[int] = []

        def raising(err: int) -> None:
            results.append(err)
            raise BoomError(err)

        dst = ("127.0.0.1", free_port(socket.SOCK_STREAM))
        pool.sendto(pkt(request(1)), dst, raising)
        pool.sendto(pkt(request(2)), dst, results.append)
        with pytest.raises(BoomError):
            drive(loop, lambda: len(results) == 2)
        drive(loop, lambda: len(results) == 2, seconds=2)
        assert results == [errno.ECONNREFUSED, errno.ECONNREFUSED]
        assert loop.timer_count() == 0


# ------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory, "localhost", "127.0.0.1")


def tls_pool(files: TlsFiles, **kw: object) -> SocketPool:
    """A TLS pool on a fresh listener, or skip while SocketPool has no TLS."""
    lst = tcp_listener()
    opts = {"certfile": files.cert, "keyfile": files.key, "cafile": files.ca}
    try:
        return SocketPool("tls", lst, tls=opts, **kw)  # type: ignore[arg-type]  # settings
    except NotImplementedError:
        lst.close()
        pytest.skip("SocketPool has no TLS transport yet")


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello record)."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_tls_peer_reset_mid_handshake(tls_files: TlsFiles) -> None:
    """Half a ClientHello and a RST, garbage instead of TLS, and a client that
    never starts the handshake (closed by CONNECT_TIMEOUT): none of them
    disturbs a real TLS client of the same pool."""
    clock = FakeClock(1_000_000.0)
    with EventLoop(clock=clock) as loop, tls_pool(tls_files) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        server = addr_of(pool.master())
        hello = client_hello()
        half = connect(server)
        half.sendall(hello[: len(hello) // 2])
        garbage = connect(server)
        garbage.sendall(request(1, "not-tls"))
        silent = connect(server)
        try:
            poll(loop)
            reset(half)
            drive(loop, lambda: peer_closed(garbage))
            drive(loop, lambda: pool.connection_count() == 1)
            # a real client (another pool) completes its handshake and delivers
            with tls_pool(tls_files) as client:
                client.attach_eventloop(loop, None)
                errs: list[int] = []
                client.sendto(pkt(request(2, "tls")), server, errs.append)
                drive(loop, lambda: errs == [0] and len(got) == 1)
            assert got[0][0].tid() == "tls 2" and got[0][1].proto == "tls"
            clock.now += float(get_settings()["CONNECT_TIMEOUT"]) + 1
            drive(loop, lambda: peer_closed(silent))
        finally:
            garbage.close()
            silent.close()
