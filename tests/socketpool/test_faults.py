"""SocketPool under faults: peers that reset at awkward moments, destinations
that go away, ICMP errors on UDP, and exceptions raised by user callbacks;
over loopback.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Packet, Request
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import (
    Received,
    addr_of,
    answering,
    collector,
    connect,
    drive,
    free_port,
    is_uvloop,
    pkt,
    poll,
    reset,
    roundtrip,
    tcp_listener,
    udp_socket,
)
from tests.support import call_request as request

# (the tests up to the callback exceptions run on both loops; an exception from
# a callback leaves EventLoop.loop, where the asyncio loop hands it to its handler)
pytestmark = [pytest.mark.usefixtures("restore_settings"), pytest.mark.both_loops]


# ---------------------------------------------------- resets and closes


def test_peer_reset_mid_message_closes_only_that_connection(loop: EventLoop) -> None:
    with SocketPool("tcp", tcp_listener()) as pool:
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


def test_peer_reset_mid_write_fails_the_queued_callbacks(loop: EventLoop) -> None:
    """The pool answers with a large response that a client resets half way:
    the sendto callback gets the socket's error, nothing leaks."""
    big = b"b" * 200_000
    errs: list[int] = []
    with (
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


def test_destination_gone_before_the_write_fails_and_is_not_reused(loop: EventLoop) -> None:
    """The listener goes away while the pool's connection waits in its backlog:
    the queued packet fails with an errno, and the next sendto does not reuse
    the dead connection (it gets ECONNREFUSED)."""
    with SocketPool("tcp", tcp_listener()) as pool:
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


def test_destination_that_accepts_and_closes_at_once_gets_a_new_connection(loop: EventLoop) -> None:
    """The peer accepts and closes before the pool wrote: the write may still
    succeed (the kernel took it), but the pool notices the close, drops the
    connection, and a later sendto opens a new one."""
    with SocketPool("tcp", tcp_listener()) as pool, tcp_listener() as lst:
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


# ---------------------------------------------------- ICMP errors on UDP


def test_udp_econnrefused_does_not_kill_a_connected_master(loop: EventLoop) -> None:
    """ICMP port unreachable surfaces on the next recv (or send) of a connected
    UDP socket on Linux: logged and ignored, the socket keeps working."""
    if is_uvloop(loop):
        pytest.xfail("libuv stops polling a fd once it reports POLLERR (uv_poll)")
    port = free_port()
    s = udp_socket()
    s.connect(("127.0.0.1", port))
    with SocketPool("udp", s, connected=True) as pool:
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


def test_udp_icmp_errors_with_ip_recverr_do_not_spin_the_loop(loop: EventLoop) -> None:
    """A UDP socket with IP_RECVERR queues ICMP errors; unread, epoll reports the
    socket readable forever. The pool drains that queue instead of spinning."""
    if is_uvloop(loop):
        pytest.xfail("libuv stops polling a fd once it reports POLLERR (uv_poll)")
    ip_recverr = getattr(socket, "IP_RECVERR", 11)  # Linux value, missing in Python 3.11
    s = udp_socket()
    try:
        s.setsockopt(socket.IPPROTO_IP, ip_recverr, 1)
    except OSError:
        s.close()
        pytest.skip("no IP_RECVERR")
    rounds = 0  # the loop's rounds: each checks the stop condition once

    def over(deadline: float) -> bool:
        nonlocal rounds
        rounds += 1
        return time.monotonic() > deadline

    with SocketPool("udp", s) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        for i in range(5):
            pool.sendto(pkt(request(i, proto="UDP")), ("127.0.0.1", free_port()))
        deadline = time.monotonic() + 0.3
        loop.loop(None, lambda: over(deadline))
        # idle, a round ends every STOPVAR_POLL_INTERVAL (0.25 s): a few; spinning, thousands
        assert rounds < 50, f"{rounds} rounds of the loop without data: it spins"
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
