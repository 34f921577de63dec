"""netsip.testing: the public test helpers do what their docstrings say."""

from __future__ import annotations

import doctest
import socket
import subprocess
import sys
import time

import pytest

import netsip.testing
import tests.support
from netsip.eventloop import EventLoop, TimerEvent
from netsip.packet import PacketError, Request
from netsip.socketpool import SocketPool
from netsip.testing import (
    LOOPBACK_IPS,
    FakeClock,
    addr_of,
    advance,
    collector,
    connect,
    datagrams,
    drive,
    family,
    have_ipv6,
    is_eof,
    length_is,
    loopbacks,
    open_fds,
    pkt,
    sip_request,
    spin,
    tcp_listener,
    udp_socket,
)
from tests.support import LOOPBACKS, python_env


def _never() -> bool:
    return False


# ------------------------------------------------------------ the module as a library


def test_docstring_example_runs() -> None:
    result = doctest.testmod(netsip.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_imports_neither_pytest_nor_cli() -> None:
    """A library module: usable under unittest, and below the cli layer."""
    code = (
        "import sys, netsip.testing; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pytest', '_pytest') or m.startswith('netsip.cli')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_not_reexported_from_netsip() -> None:
    assert "testing" not in netsip.__all__


def test_support_reexports_the_same_objects() -> None:
    for name in netsip.testing.__all__:
        if name in ("LOOPBACK_IPS", "advance", "loopbacks"):
            continue  # not needed by the project's tests under these names
        assert getattr(tests.support, name) is getattr(netsip.testing, name), name


# ------------------------------------------------------------ drive, spin, length_is


def test_drive_returns_once_condition_holds(loop: EventLoop) -> None:
    hits: list[TimerEvent] = []
    loop.add_timer(0.01, hits.append)
    t0 = time.monotonic()
    drive(loop, length_is(hits, 1), seconds=5.0)
    assert len(hits) == 1
    assert time.monotonic() - t0 < 2.0


def test_drive_times_out_with_clear_error(loop: EventLoop) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"condition _never not reached within 0\.3 s"):
        drive(loop, _never, seconds=0.3)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 2.0


def test_drive_times_out_under_fake_clock() -> None:
    """The bound is real time: a fake clock that never moves cannot make it hang."""
    clock = FakeClock()
    got: list[int] = []
    with EventLoop(clock=clock) as loop:
        loop.add_timer(1, lambda ev: got.append(1))  # never due: nobody moves the clock
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"length_is\(1\) \(length now 0\)"):
            drive(loop, length_is(got, 1), seconds=0.3)
        assert time.monotonic() - t0 < 2.0
    assert clock() == 1000.0


def test_drive_names_the_condition_as_told(loop: EventLoop) -> None:
    with pytest.raises(TimeoutError, match="the answer arrived"):
        drive(loop, _never, seconds=0.05, what="the answer arrived")


def test_drive_reports_a_loop_closed_under_it() -> None:
    with EventLoop() as loop:
        loop.add_timer(0.01, lambda ev: loop.close())
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="event loop ended"):
            drive(loop, _never, seconds=5.0)
        assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_drive_rejects_bad_bounds(loop: EventLoop, seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        drive(loop, _never, seconds=seconds)


def test_spin_runs_for_the_time_given(loop: EventLoop) -> None:
    hits: list[TimerEvent] = []
    loop.add_timer(0.05, hits.append)
    loop.add_timer(60, hits.append)
    t0 = time.monotonic()
    spin(loop, 0.2)
    elapsed = time.monotonic() - t0
    assert len(hits) == 1
    assert 0.2 <= elapsed < 2.0


def test_length_is() -> None:
    items: list[int] = []
    cond = length_is(items, 2)
    assert not cond()
    items += [1, 2]
    assert cond()
    items.append(3)
    assert not cond()  # exactly n: too many is a failure too
    assert repr(cond) == "length_is(2) (length now 3)"


# ------------------------------------------------------------ fake clock


def test_fake_clock_drives_timers() -> None:
    clock = FakeClock(1000.0)
    fired: list[float] = []
    with EventLoop(clock=clock) as loop:
        loop.add_timer(5, lambda ev: fired.append(clock()))
        loop.add_timer(2, lambda ev: fired.append(clock()), repeat=2)
        advance(loop, clock, 4.9)
        assert fired == [1002.0, 1004.0]
        advance(loop, clock, 0.1)
        assert fired == [1002.0, 1004.0, 1005.0]
        assert clock() == loop.looptime == 1005.0
        loop.reset()


def test_fake_clock_by_hand() -> None:
    clock = FakeClock()
    assert clock() == 1000.0
    clock.advance(2.5)
    assert clock() == 1002.5
    clock.now = 7.0
    assert clock() == 7.0
    assert repr(clock) == "FakeClock(now=7.0)"


def test_advance_polls_at_the_current_time_first() -> None:
    clock = FakeClock()
    with EventLoop(clock=clock) as loop:
        fired: list[TimerEvent] = []
        loop.add_timer(0, fired.append)
        advance(loop, clock, 0)
        assert len(fired) == 1
        assert clock() == 1000.0


@pytest.mark.parametrize(
    ("seconds", "step", "polls"), [(-1, 0.0625, 3), (1, 0, 3), (1, -1, 3), (1, 0.0625, 0)]
)
def test_advance_rejects_bad_arguments(seconds: float, step: float, polls: int) -> None:
    clock = FakeClock()
    with EventLoop(clock=clock) as loop, pytest.raises(ValueError):
        advance(loop, clock, seconds, step=step, polls=polls)


# ------------------------------------------------------------ sockets and collecting


@pytest.mark.parametrize("ip", LOOPBACKS)
def test_collector_collects_from_udp_socketpool(loop: EventLoop, ip: str) -> None:
    with SocketPool("udp", udp_socket(ip)) as pool, udp_socket(ip) as peer:
        got, receive = collector()
        pool.attach_eventloop(loop, receive)
        server = addr_of(pool.master())
        for n in (1, 2):
            peer.sendto(sip_request(n, proto="UDP"), server.sockaddr())
        drive(loop, length_is(got, 2))
        assert [p.cseq() for p, _ in got] == ["1 OPTIONS", "2 OPTIONS"]
        assert {(f.addr, f.port, f.proto) for _, f in got} == {
            (addr_of(peer).addr, addr_of(peer).port, "udp")
        }


@pytest.mark.parametrize("ip", LOOPBACKS)
def test_collector_collects_from_tcp_socketpool(loop: EventLoop, ip: str) -> None:
    with SocketPool("tcp", tcp_listener(ip)) as pool:
        got, receive = collector()
        pool.attach_eventloop(loop, receive)
        with connect(addr_of(pool.master())) as c:  # no accept needed: the backlog
            c.sendall(sip_request(1, body=b"hello") + sip_request(2))
            drive(loop, length_is(got, 2))
        assert [p.body() for p, _ in got] == [b"hello", b""]
        assert got[0][1].proto == "tcp"


def test_datagrams_drains_in_order_without_blocking() -> None:
    with udp_socket() as rx, udp_socket() as tx:
        assert datagrams(rx) == []
        for d in (b"a", b"bb", b"ccc"):
            tx.sendto(d, addr_of(rx).sockaddr())
        deadline = time.monotonic() + 5
        got: list[bytes] = []
        while len(got) < 3 and time.monotonic() < deadline:
            got += datagrams(rx)
        assert got == [b"a", b"bb", b"ccc"]
        assert datagrams(rx) == []


def test_is_eof_sees_the_peer_close() -> None:
    with tcp_listener() as lsock, connect(addr_of(lsock)) as c:
        server, _ = lsock.accept()
        with server:
            server.sendall(b"x")
            assert not is_eof(c)  # data waiting is not EOF, and stays unread
        deadline = time.monotonic() + 5
        while not is_eof(c) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.recv(1) == b"x"
        assert is_eof(c)


def test_connect_refused() -> None:
    with tcp_listener() as lsock:
        dst = addr_of(lsock)
    with pytest.raises(ConnectionRefusedError):
        connect(dst, timeout=5.0)


def test_connect_takes_address_forms() -> None:
    with tcp_listener() as lsock:
        a = addr_of(lsock)
        for dst in (a, str(a), (a.addr, a.port)):
            with connect(dst) as c:
                assert c.gettimeout() is None
                assert c.getpeername()[:2] == (a.addr, a.port)


def test_open_fds_counts_a_new_socket() -> None:
    before = open_fds()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert open_fds() == before + 1
    finally:
        s.close()
    assert open_fds() == before


def test_family_and_loopbacks() -> None:
    assert family("127.0.0.1") == socket.AF_INET
    assert family("::1") == socket.AF_INET6
    with pytest.raises(ValueError, match="not an IP address"):
        family("localhost")
    ips = loopbacks()
    assert ips[0] == LOOPBACK_IPS[0]
    assert ("::1" in ips) == (have_ipv6(socket.SOCK_DGRAM) and have_ipv6(socket.SOCK_STREAM))
    for ip in ips:
        with udp_socket(ip) as u, tcp_listener(ip) as t:
            assert addr_of(u).addr == addr_of(t).addr == ip


def test_udp_socket_rejects_a_host_name() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        udp_socket("localhost")


# ------------------------------------------------------------ messages


def test_sip_request_is_a_valid_request() -> None:
    p = pkt(sip_request(3, body=b"v=0\r\n", callid="x9", method="INVITE", proto="UDP"))
    assert isinstance(p, Request)
    assert p.method() == "INVITE"
    assert p.cseq() == "3 INVITE"
    assert p.callid() == "x9"
    assert p.body() == b"v=0\r\n"
    assert p.get_header("content-length") == "5"
    assert p.get_header("via") == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x9-3"


def test_pkt_raises_packet_error() -> None:
    with pytest.raises(PacketError):
        pkt(b"not sip\r\n\r\n")
