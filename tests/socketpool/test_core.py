"""Tests for netsip.socketpool over real loopback sockets (IPv4 and, where cheap, IPv6).

Settings, UDP and TCP exchange, idle expiry, scale and lifecycle, and the
per-connection shortcuts; the other modules of this package cover the rest.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import gc
import logging
import select
import socket
import struct
import time
from typing import Any

import pytest

from netsip import _settings, socketpool
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.packet import Packet, Request, Response
from netsip.socketpool import SocketPool, get_settings, import_settings
from netsip.util import Addr
from tests.support import (
    LOOPBACKS,
    FakeClock,
    addr_of,
    collector,
    connect,
    datagrams,
    drive,
    family,
    is_eof,
    is_uvloop,
    length_is,
    open_fds,
    pkt,
    spin,
    tcp_listener,
    udp_socket,
)
from tests.support import sip_request as request

# --------------------------------------------------------------------- helpers


pytestmark = [pytest.mark.usefixtures("restore_settings"), pytest.mark.both_loops]


@pytest.fixture(params=LOOPBACKS)
def ip(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def response(n: int = 1, callid: str = "c1", method: str = "OPTIONS") -> bytes:
    return (
        f"SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-{callid}-{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>;tag=b\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {n} {method}\r\n"
        f"Content-Length: 0\r\n"
        f"\r\n"
    ).encode()


def read_available(s: socket.socket, into: bytearray, limit: int = 1 << 20) -> int:
    """Non-blocking read of what ``s`` has (up to ``limit``); -1 at EOF."""
    try:
        data = s.recv(limit, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0
    if not data:
        return -1
    into += data
    return len(data)


# --------------------------------------------------------------------- settings


def test_default_settings() -> None:
    assert get_settings() == {
        "MAX_SIP_HEADER": 2**14,
        "MAX_SIP_BODY": 2**16,
        "MAX_TIDLIST": 30,
        "MIN_EXPIRE": 15,
        "MAX_EXPIRE": 120,
        "CONNECT_TIMEOUT": 10,
        "TCP_READSIZE": 2**16,
        "MAX_WBUF": 2**22,
        "MAX_WBUF_TOTAL": 2**26,
        "MAX_RESPONSE_CACHE": 2**25,
        "MAX_HEADERS": 1000,
        "MAX_HEADER_VALUES": 256,
        "KEEPALIVE_INTERVAL": 0,
    }
    assert get_settings() == socketpool.DEFAULT_SETTINGS


def test_import_settings_unknown_key_and_bad_values() -> None:
    with pytest.raises(ValueError, match="NO_SUCH_KEY"):
        import_settings(NO_SUCH_KEY=1)
    with pytest.raises(ValueError, match="MIN_EXPIRE"):
        import_settings(MIN_EXPIRE=-1)
    with pytest.raises(TypeError, match="TCP_READSIZE"):
        import_settings(TCP_READSIZE=1.5)
    with pytest.raises(TypeError, match="MAX_TIDLIST"):
        import_settings(MAX_TIDLIST="3")  # type: ignore[arg-type]  # deliberately wrong type
    assert get_settings()["MIN_EXPIRE"] == 15  # nothing half-applied


@pytest.mark.parametrize(
    "kw",
    [
        {"TCP_READSIZE": 2**40},  # stored, it made every later pool fail with MemoryError
        {"MAX_SIP_HEADER": 2**30},
        {"MAX_WBUF": 2**40},
        {"CONNECT_TIMEOUT": 10**9},
        {"MIN_EXPIRE": 10**9},
        {"MIN_EXPIRE": 200},  # above MAX_EXPIRE (120)
        {"MIN_EXPIRE": 10, "MAX_EXPIRE": 5},
        {"MAX_SIP_BODY": 100, "TCP_READSIZE": 0},  # one bad value: nothing stored
    ],
)
def test_import_settings_refuses_values_out_of_range(kw: dict[str, int]) -> None:
    before = get_settings()
    with pytest.raises(ValueError, match="|".join(kw)):
        import_settings(**kw)
    assert get_settings() == before
    with udp_socket("127.0.0.1") as s, pytest.raises(ValueError):
        SocketPool("udp", s, settings=kw)


def test_a_pool_override_and_the_module_setting_must_agree() -> None:
    with SocketPool("udp", udp_socket("127.0.0.1"), settings={"MAX_EXPIRE": 20}) as pool:
        with pytest.raises(ValueError, match="MIN_EXPIRE"):
            import_settings(MIN_EXPIRE=30)  # fine alone, not for this pool
        with pytest.raises(ValueError, match="MIN_EXPIRE"):
            pool.import_settings(MIN_EXPIRE=30)
        assert get_settings()["MIN_EXPIRE"] == 15 and pool.get_settings()["MIN_EXPIRE"] == 15


def test_stream_pool_needs_a_listening_or_connected_socket() -> None:
    """A bound, not listening TCP socket busy-looped on EINVAL; now a ValueError."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="listening"):
            SocketPool("tcp", s)


def test_pool_refuses_a_unix_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(ValueError, match="IPv4 or IPv6"):
        SocketPool("udp", a)


def test_settings_apply_to_existing_pools_and_overrides() -> None:
    with SocketPool("udp", udp_socket("127.0.0.1"), settings={"MAX_TIDLIST": 5}) as pool:
        import_settings(MAX_SIP_BODY=1000, MAX_TIDLIST=7)
        assert get_settings()["MAX_SIP_BODY"] == 1000
        assert pool.get_settings()["MAX_SIP_BODY"] == 1000  # module change reaches the pool
        assert pool.get_settings()["MAX_TIDLIST"] == 5  # but not an overridden key
        pool.import_settings(CONNECT_TIMEOUT=2)
        assert pool.get_settings()["CONNECT_TIMEOUT"] == 2
        assert get_settings()["CONNECT_TIMEOUT"] == 10
        with pytest.raises(ValueError, match="BOGUS"):
            pool.import_settings(BOGUS=1)
        with udp_socket("127.0.0.1") as s, pytest.raises(ValueError, match="BOGUS"):
            SocketPool("udp", s, settings={"BOGUS": 1})


def test_settings_tracking_holds_no_pool_or_dispatcher(loop: EventLoop) -> None:
    """import_settings follows pools and dispatchers while they live, and keeps neither alive.

    A pool dropped without close goes at once (by reference count, the cyclic
    GC off), and its record leaves the set import_settings walks: also in the
    compiled build, whose classes take no weak references themselves. A
    dispatcher (cyclic itself) goes with the cyclic GC.
    """
    gc.collect()  # (records of what earlier tests left in cycles)
    before = len(_settings._subscriptions)
    enabled = gc.isenabled()
    gc.disable()
    try:
        tcp = SocketPool("tcp", tcp_listener("127.0.0.1"), settings={"MAX_TIDLIST": 5})
        udp = SocketPool("udp", udp_socket("127.0.0.1"))
        disp = Dispatcher([], loop)
        assert len(_settings._subscriptions) == before + 3
        import_settings(MAX_TIDLIST=9, MAX_RESPONSE_CACHE=12345)
        assert tcp.get_settings()["MAX_TIDLIST"] == 5
        assert udp.get_settings()["MAX_TIDLIST"] == 9
        assert disp._cache.max_bytes == 12345  # followed by the dispatcher's cache
        for pool in (tcp, udp):
            pool.master().close()  # (not pool.close(): that would untrack it)
        del tcp, udp, pool
        assert len(_settings._subscriptions) == before + 1
        del disp
        gc.collect()
        assert len(_settings._subscriptions) == before
    finally:
        if enabled:
            gc.enable()


def test_constructor_checks() -> None:
    with udp_socket("127.0.0.1") as u, tcp_listener("127.0.0.1") as t:
        with pytest.raises(ValueError, match="sctp"):
            SocketPool("sctp", u)  # type: ignore[arg-type]  # deliberately wrong proto
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            SocketPool("tcp", u)
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            SocketPool("udp", t)
        with pytest.raises(TypeError):
            SocketPool("udp", u.fileno())  # type: ignore[arg-type]  # deliberately wrong type
        with pytest.raises(ValueError, match="non-TLS"):  # TLS: tests/test_tls.py
            SocketPool("tcp", t, tls={})


# --------------------------------------------------------------------- UDP


def test_udp_request_response(loop: EventLoop, ip: str) -> None:
    got_a, cb_a = collector()
    got_b, cb_b = collector()
    with SocketPool("udp", udp_socket(ip)) as a, SocketPool("udp", udp_socket(ip)) as b:
        a.attach_eventloop(loop, cb_a)
        b.attach_eventloop(loop, cb_b)
        errors: list[int] = []
        a.sendto(pkt(request()), addr_of(b.master()), errors.append)
        drive(loop, lambda: got_b)
        packet, from_ = got_b[0]
        assert packet.is_request() and packet.method() == "OPTIONS"
        assert from_.proto == "udp"
        assert from_.family == family(ip)
        assert (from_.addr, from_.port) == (ip, a.master().getsockname()[1])
        # answer to "from_" as a string, the form the Leg uses
        b.sendto(pkt(response()), str(from_))
        drive(loop, lambda: got_a)
        assert got_a[0][0].is_response()
        assert errors == []  # UDP: callback only on failure


def test_udp_keepalives_ignored(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("udp", udp_socket(ip)) as pool, udp_socket(ip) as peer:
        pool.attach_eventloop(loop, cb)
        dst = addr_of(pool.master()).sockaddr()
        peer.sendto(b"\r\n\r\n", dst)
        peer.sendto(b"x" * 12, dst)
        peer.sendto(b"", dst)
        peer.sendto(request(), dst)
        drive(loop, lambda: got)
        spin(loop, 0.05)
        assert len(got) == 1


def test_udp_garbage_dropped_next_delivered(
    loop: EventLoop, ip: str, caplog: pytest.LogCaptureFixture
) -> None:
    got, cb = collector()
    with SocketPool("udp", udp_socket(ip)) as pool, udp_socket(ip) as peer:
        pool.attach_eventloop(loop, cb)
        dst = addr_of(pool.master()).sockaddr()
        with caplog.at_level(logging.INFO, logger="netsip.socketpool"):
            peer.sendto(b"this is not a SIP packet at all\r\n\r\n", dst)
            peer.sendto(request(2), dst)
            drive(loop, lambda: got)
        assert [p.cseq() for p, _ in got] == ["2 OPTIONS"]
        assert "drop invalid packet" in caplog.text


def test_udp_dst_restriction(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with (
        udp_socket(ip) as allowed,
        udp_socket(ip) as other,
        SocketPool("udp", udp_socket(ip), dst=addr_of(allowed)) as pool,
    ):
        pool.attach_eventloop(loop, cb)
        dst = addr_of(pool.master()).sockaddr()
        other.sendto(request(1), dst)
        allowed.sendto(request(2), dst)
        drive(loop, lambda: got)
        spin(loop, 0.05)
        assert [p.cseq() for p, _ in got] == ["2 OPTIONS"]
        # sendto goes to dst whatever it is given
        pool.sendto(pkt(response(2)), addr_of(other))
        allowed.settimeout(5)
        data, _ = allowed.recvfrom(65536)
        assert data.startswith(b"SIP/2.0 200 OK")


def test_udp_connected_master_and_icmp_error(
    loop: EventLoop, ip: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ICMP port unreachable (ECONNREFUSED on recv/send) does not kill the master."""
    if is_uvloop(loop):
        pytest.xfail("libuv stops polling a fd once it reports POLLERR (uv_poll)")
    got, cb = collector()
    peer = udp_socket(ip)
    peer_addr = addr_of(peer)
    peer.close()  # nobody listens there now: the kernel answers with ICMP
    sock = udp_socket(ip)
    sock.connect(peer_addr.sockaddr())
    with SocketPool("udp", sock, dst=peer_addr, connected=True) as pool:
        pool.attach_eventloop(loop, cb)
        errors: list[int] = []
        # dst is ignored: a connected master always sends to its peer. The
        # ICMP error of the first datagram is reported by the second send...
        pool.sendto(pkt(request(1)), "192.0.2.1:5060", errors.append)
        pool.sendto(pkt(request(2)), "192.0.2.1:5060", errors.append)
        assert errors == [errno.ECONNREFUSED]
        # ... or by the next recv, in the pool's read handler, which shrugs it off
        with caplog.at_level(logging.DEBUG, logger="netsip.socketpool"):
            pool.sendto(pkt(request(3)), "192.0.2.1:5060", errors.append)
            spin(loop, 0.05)
        assert "Connection refused" in caplog.text
        assert errors == [errno.ECONNREFUSED]
        # the peer comes back on the same port and is heard
        with socket.socket(family(ip), socket.SOCK_DGRAM) as peer2:
            peer2.bind(peer_addr.sockaddr())
            peer2.sendto(request(9), addr_of(pool.master()).sockaddr())
            drive(loop, lambda: got)
        assert got[0][1] == Addr(peer_addr.addr, peer_addr.port, family(ip), None, "udp")


def test_udp_wrong_family_destination(loop: EventLoop) -> None:
    with SocketPool("udp", udp_socket("127.0.0.1")) as pool:
        errors: list[int] = []
        pool.sendto(pkt(request()), "[::1]:5060", errors.append)
        assert errors == [errno.EAFNOSUPPORT]


def test_detach_stops_delivery(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("udp", udp_socket(ip)) as pool, udp_socket(ip) as peer:
        pool.attach_eventloop(loop, cb)
        pool.attach_eventloop(None)
        assert loop.fd_count() == 0
        peer.sendto(request(), addr_of(pool.master()).sockaddr())
        spin(loop, 0.1)
        assert got == []
        pool.attach_eventloop(loop, cb)
        drive(loop, lambda: got)


# --------------------------------------------------------------------- TCP receive


def test_tcp_several_messages_in_one_read(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.sendall(
                b"\r\n\r\n" + request(1) + request(2, b"hello") + b"\r\n" + request(3) + b"\r\n"
            )
            drive(loop, lambda: len(got) == 3)
            assert [p.cseq() for p, _ in got] == ["1 OPTIONS", "2 OPTIONS", "3 OPTIONS"]
            assert got[1][0].body() == b"hello"
            from_ = got[0][1]
            assert from_.proto == "tcp"
            assert from_.family == family(ip)
            assert (from_.addr, from_.port) == (ip, c.getsockname()[1])
            assert pool.connection_count() == 1
            assert pool.peers() == [from_]


def test_tcp_message_split_byte_by_byte(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    data = request(1, b"v=0\r\n")
    with SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data) - 1):
                c.sendall(data[i : i + 1])
                loop.loop(0)
            spin(loop, 0.05)
            assert got == []
            c.sendall(data[-1:])
            drive(loop, lambda: got)
            assert got[0][0].as_bytes() == pkt(data).as_bytes()


def test_tcp_body_split_across_small_reads(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    body = bytes(range(256)) * 40  # 10 KiB of every byte value
    data = request(1, body) + request(2)
    with SocketPool("tcp", tcp_listener(ip), settings={"TCP_READSIZE": 16}) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.sendall(data)
            drive(loop, lambda: len(got) == 2)
    assert got[0][0].as_bytes() == pkt(request(1, body)).as_bytes()


BAD_STREAMS = {
    "header too big": b"OPTIONS sip:x SIP/2.0\r\nX-Pad: " + b"p" * 3000,
    "missing content-length": request().replace(b"Content-Length: 0\r\n", b""),
    "conflicting content-length": request().replace(
        b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 5\r\n"
    ),
    "body too big": request().replace(b"Content-Length: 0", b"Content-Length: 5000"),
    "not SIP": b"GARBAGE\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("bad", list(BAD_STREAMS), ids=list(BAD_STREAMS))
def test_tcp_violation_closes_only_that_connection(loop: EventLoop, ip: str, bad: str) -> None:
    got, cb = collector()
    settings = {"MAX_SIP_HEADER": 2048, "MAX_SIP_BODY": 4096}
    with SocketPool("tcp", tcp_listener(ip), settings=settings) as pool:
        pool.attach_eventloop(loop, cb)
        dst = addr_of(pool.master())
        with connect(dst) as good, connect(dst) as evil:
            good.sendall(request(1, callid="good"))
            drive(loop, lambda: len(got) == 1 and pool.connection_count() == 2)
            evil.sendall(BAD_STREAMS[bad])
            drive(loop, lambda: pool.connection_count() == 1)
            assert is_eof(evil)
            good.sendall(request(2, callid="good"))
            drive(loop, lambda: len(got) == 2)
            assert all(p.callid() == "good" for p, _ in got)
            assert not is_eof(good)


def test_tcp_refused_request_gets_400_then_close(loop: EventLoop, ip: str) -> None:
    """A request the parser refuses (here the Request-URI in angle brackets, as Perl's
    Net::SIP sends it to a registrar with ;transport=tcp) gets a 400 saying why, then
    the connection is closed: its framing is lost (RFC 3261 21.4.1)."""
    got, cb = collector()
    bad = request(1).replace(b"OPTIONS sip:", b"OPTIONS <sip:", 1)
    bad = bad.replace(b" SIP/2.0\r\n", b"> SIP/2.0\r\n", 1)
    with SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.sendall(bad)
            drive(loop, lambda: bool(select.select([c], [], [], 0)[0]))  # the 400, or EOF
            c.settimeout(5)
            answer = b""
            while chunk := c.recv(4096):
                answer += chunk
    resp = pkt(answer)
    assert isinstance(resp, Response) and resp.code() == 400
    assert "uri" in (resp.get_header("warning") or "").lower()
    assert got == []


def test_tcp_peer_reset_mid_message(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, cb)
        c = connect(addr_of(pool.master()))
        c.sendall(request(1, b"x" * 100)[:-50])
        drive(loop, lambda: pool.connection_count() == 1)
        spin(loop, 0.05)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
        drive(loop, lambda: pool.connection_count() == 0)
        assert got == []


def test_tcp_dst_restriction_refuses_connections(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with udp_socket(ip) as placeholder:
        only = addr_of(placeholder)  # an address no TCP client will have
    with SocketPool("tcp", tcp_listener(ip), dst=only) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.sendall(request())
            drive(loop, lambda: is_eof(c))
        assert pool.connection_count() == 0
        assert got == []


# --------------------------------------------------------------------- TCP send


def test_tcp_request_response_over_same_connection(loop: EventLoop, ip: str) -> None:
    got_a, cb_a = collector()
    got_b, cb_b = collector()
    with SocketPool("tcp", tcp_listener(ip)) as a, SocketPool("tcp", tcp_listener(ip)) as b:
        a.attach_eventloop(loop, cb_a)
        b.attach_eventloop(loop, cb_b)
        status: list[int] = []
        a.sendto(pkt(request(1)), addr_of(b.master()), status.append)
        drive(loop, lambda: got_b and status)
        assert status == [0]
        _req, from_ = got_b[0]
        assert from_.proto == "tcp" and from_.family == family(ip)
        assert from_.port != a.master().getsockname()[1]  # an ephemeral port of A
        # The Via says the listener of A; the response must use the request's connection.
        b.sendto(pkt(response(1)), addr_of(a.master()), status.append)
        drive(loop, lambda: got_a and len(status) == 2)
        assert status == [0, 0]
        assert got_a[0][0].is_response()
        assert got_a[0][1].port == b.master().getsockname()[1]
        assert a.connection_count() == 1
        assert b.connection_count() == 1
        # connection reuse: a second request to the same destination
        a.sendto(pkt(request(2)), addr_of(b.master()), status.append)
        drive(loop, lambda: len(got_b) == 2)
        assert got_b[1][1] == from_
        assert a.connection_count() == 1


def test_tcp_responses_routed_by_tid(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("tcp", tcp_listener(ip), settings={"MAX_TIDLIST": 2}) as pool:
        pool.attach_eventloop(loop, cb)
        dst = addr_of(pool.master())
        with connect(dst) as c1, connect(dst) as c2, tcp_listener(ip) as other:
            c1.sendall(request(1, callid="one"))
            c2.sendall(request(1, callid="two"))
            drive(loop, lambda: len(got) == 2)
            # a destination that is neither client: routing must come from the tid
            pool.sendto(pkt(response(1, callid="two")), addr_of(other))
            pool.sendto(pkt(response(1, callid="one")), addr_of(other))
            for c, callid in ((c1, b"one"), (c2, b"two")):
                c.settimeout(5)
                data = c.recv(65536)
                assert b"Call-ID: " + callid in data
            # MAX_TIDLIST=2: after two more requests on c1 the first tid is forgotten
            c1.sendall(request(2, callid="one") + request(3, callid="one"))
            drive(loop, lambda: len(got) == 4)
            status: list[int] = []
            pool.sendto(pkt(response(1, callid="one")), addr_of(other), status.append)
            drive(loop, lambda: status)
            assert status == [0]
            assert pool.connection_count() == 3  # a new connection to other
            with other.accept()[0] as conn:
                conn.settimeout(5)
                assert b"Call-ID: one" in conn.recv(65536)


def test_tcp_econnrefused(loop: EventLoop, ip: str) -> None:
    with tcp_listener(ip) as gone:
        dst = addr_of(gone)
    with SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, lambda *a: None)
        status: list[int] = []
        pool.sendto(pkt(request()), dst, status.append)
        drive(loop, lambda: status)
        assert status == [errno.ECONNREFUSED]
        assert pool.connection_count() == 0
        spin(loop, 0.05)
        assert status == [errno.ECONNREFUSED]  # exactly once


def test_tcp_connect_timeout(loop: EventLoop, ip: str) -> None:
    """A listener with a full backlog makes connects hang: ETIMEDOUT via the callback."""
    fillers: list[socket.socket] = []
    with tcp_listener(ip, backlog=0) as full:
        try:
            # fill the accept queue until a connect does not complete any more
            for _ in range(16):
                f = socket.socket(family(ip), socket.SOCK_STREAM)
                fillers.append(f)
                f.setblocking(False)
                f.connect_ex(full.getsockname())
                _, w, _ = select.select([], [f], [], 0.2)
                if not w:
                    break
            else:
                pytest.skip("could not fill the listen backlog")
            with SocketPool("tcp", tcp_listener(ip), settings={"CONNECT_TIMEOUT": 0.3}) as pool:
                pool.attach_eventloop(loop, lambda *a: None)
                status: list[int] = []
                loop.loop(0)  # fresh looptime: timers are relative to it
                t0 = time.monotonic()
                pool.sendto(pkt(request()), addr_of(full), status.append)
                pool.sendto(pkt(request(2)), addr_of(full), status.append)  # queued behind
                assert pool.connection_count() == 1
                drive(loop, lambda: len(status) == 2)
                assert time.monotonic() - t0 >= 0.25
                assert status == [errno.ETIMEDOUT, errno.ETIMEDOUT]
                assert pool.connection_count() == 0
                assert loop.fd_count() == 1  # only the listener is watched
        finally:
            for f in fillers:
                f.close()


def test_tcp_slow_reader_partial_writes(loop: EventLoop, ip: str) -> None:
    """Several MB queued to a peer that reads slowly arrive intact and in order."""
    bodies = [bytes([65 + i % 26]) * 60000 + str(i).encode() for i in range(100)]
    packets = [pkt(request(i, body)) for i, body in enumerate(bodies)]
    expected = b"".join(p.as_bytes() for p in packets)
    assert len(expected) > 6_000_000
    big = {"MAX_WBUF": 2**24}  # more than the default 4 MiB is queued here on purpose
    with (
        SocketPool("tcp", tcp_listener(ip), settings=big) as pool,
        tcp_listener(ip, rcvbuf=4096) as server,
    ):
        pool.attach_eventloop(loop, lambda *a: None)
        status: list[tuple[int, int]] = []
        for i, p in enumerate(packets):
            pool.sendto(p, addr_of(server), lambda err, i=i: status.append((i, err)))
        assert pool.queued_bytes() == len(expected)  # nothing written while connecting
        peer, _ = server.accept()
        with peer:
            drive(loop, lambda: pool.queued_bytes() < len(expected))
            max_queued = pool.queued_bytes()
            received = bytearray()
            deadline = time.monotonic() + 60
            # The peer reads only between loop cycles, at most what its small
            # window holds: the pool has to wait for EV_WRITE again and again.
            while len(received) < len(expected) or len(status) < len(packets):
                assert time.monotonic() < deadline, "slow reader did not finish"
                loop.loop(0)
                select.select([peer], [], [], 0.01)
                while read_available(peer, received, 65536) > 0:
                    pass
        assert max_queued > 1_000_000  # most of it had to wait in the write buffer
        assert received == expected
        assert status == [(i, 0) for i in range(len(packets))]
        assert pool.queued_bytes() == 0
        assert loop.fd_count() == 2  # the write watch is gone again


def test_tcp_pending_callbacks_fail_once_on_reset(loop: EventLoop, ip: str) -> None:
    packets = [pkt(request(i, b"z" * 60000)) for i in range(100)]
    total = sum(len(p.as_bytes()) for p in packets)
    big = {"MAX_WBUF": 2**24}  # more than the default 4 MiB is queued here on purpose
    with (
        SocketPool("tcp", tcp_listener(ip), settings=big) as pool,
        tcp_listener(ip, rcvbuf=4096) as server,
    ):
        pool.attach_eventloop(loop, lambda *a: None)
        status: list[tuple[int, int]] = []
        for i, p in enumerate(packets):
            pool.sendto(p, addr_of(server), lambda err, i=i: status.append((i, err)))
        peer, _ = server.accept()
        drive(loop, lambda: pool.queued_bytes() < total)  # connected, partly written
        assert pool.queued_bytes() > 0
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST: the pool's next write or read fails
        drive(loop, lambda: pool.connection_count() == 0)
        spin(loop, 0.05)
        assert sorted(i for i, _ in status) == list(range(len(packets)))  # each exactly once
        failed = [err for _, err in status if err]
        assert failed
        assert set(failed) <= {errno.ECONNRESET, errno.EPIPE}
        assert pool.queued_bytes() == 0


def test_tcp_connected_master(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with tcp_listener(ip) as server:
        client = connect(addr_of(server))
        peer, _ = server.accept()
        with peer, SocketPool("tcp", client, connected=True) as pool:
            pool.attach_eventloop(loop, cb)
            status: list[int] = []
            pool.sendto(pkt(request()), "192.0.2.1:5060", status.append)  # goes to the peer
            drive(loop, lambda: status)
            assert status == [0]
            peer.settimeout(5)
            assert peer.recv(65536).startswith(b"OPTIONS ")
            peer.sendall(response())
            drive(loop, lambda: got)
            assert got[0][1].proto == "tcp"
            assert pool.connection_count() == 0


# --------------------------------------------------------------------- expiry


def test_idle_expiry_with_fake_clock(ip: str) -> None:
    clock = FakeClock()
    got, cb = collector()
    with EventLoop(clock=clock) as loop, SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, cb)
        assert loop.timer_count() == 0  # no connections, no expiry timer
        dst = addr_of(pool.master())
        c1 = connect(dst)
        c1.sendall(request(1))
        drive(loop, lambda: got)
        assert loop.timer_count() == 1
        # one connection: it lives MAX_EXPIRE (120 s)
        for _ in range(14):
            clock.now += 8
            loop.loop(0)
        assert pool.connection_count() == 1  # 112 s idle
        c2 = connect(dst)
        c2.sendall(request(2))
        drive(loop, lambda: len(got) == 2)
        # two connections: MIN + (MAX-MIN)/2 = 67.5 s; c1 is long past it, c2 not
        clock.now += 8
        loop.loop(0)
        drive(loop, lambda: is_eof(c1))
        assert pool.connection_count() == 1
        # one again (120 s) ... c2 idle for 8 s so far
        for _ in range(13):
            clock.now += 8
            loop.loop(0)
        assert pool.connection_count() == 1
        clock.now += 16
        loop.loop(0)
        drive(loop, lambda: is_eof(c2))
        assert pool.connection_count() == 0
        assert loop.timer_count() == 0  # the timer went with the last connection
        c1.close()
        c2.close()


def test_traffic_keeps_connection_alive(ip: str) -> None:
    clock = FakeClock()
    got, cb = collector()
    with EventLoop(clock=clock) as loop, SocketPool("tcp", tcp_listener(ip)) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            for i in range(30):  # 30 * 8 s = 240 s > MAX_EXPIRE, but never idle for long
                c.sendall(request(i))
                drive(loop, length_is(got, i + 1))
                clock.now += 8
                loop.loop(0)
            assert pool.connection_count() == 1


# --------------------------------------------------------------------- scale, lifecycle


def test_thousand_clients_no_fd_leak(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("tcp", tcp_listener(ip, 1024)) as pool:
        pool.attach_eventloop(loop, cb)
        dst = pool.master().getsockname()[:2]
        fds_before = open_fds()
        for batch in range(10):
            clients = []
            for i in range(100):
                c = socket.create_connection(dst, timeout=5)
                clients.append(c)
                c.sendall(request(i, callid=f"b{batch}-{i}"))
            drive(loop, length_is(got, (batch + 1) * 100))
            for c in clients:
                c.close()
            drive(loop, lambda: pool.connection_count() == 0)
        assert len({p.callid() for p, _ in got}) == 1000
        assert all(f.family == family(ip) and f.proto == "tcp" for _, f in got)
        assert open_fds() == fds_before
        assert loop.fd_count() == 1
        assert loop.timer_count() == 0


def test_close_closes_every_socket(loop: EventLoop, ip: str) -> None:
    fds_before = open_fds()
    got, cb = collector()
    server = tcp_listener(ip)
    pool = SocketPool("tcp", tcp_listener(ip))
    pool.attach_eventloop(loop, cb)
    c = connect(addr_of(pool.master()))
    c.sendall(request())
    pool.sendto(pkt(request(2)), addr_of(server))  # an outgoing connection
    drive(loop, lambda: got and pool.connection_count() == 2)
    master = pool.master()
    pool.close()
    assert pool.closed
    assert master.fileno() == -1
    assert pool.connection_count() == 0
    assert loop.fd_count() == 0
    assert loop.timer_count() == 0
    pool.close()  # idempotent
    status: list[int] = []
    pool.sendto(pkt(request(3)), addr_of(server), status.append)
    assert status == [errno.EBADF]
    with pytest.raises(Exception, match="closed"):
        pool.attach_eventloop(loop, cb)
    c.close()
    server.close()
    assert open_fds() == fds_before


def test_sendto_before_attach_is_sent_after_attach(loop: EventLoop, ip: str) -> None:
    got, cb = collector()
    with SocketPool("tcp", tcp_listener(ip)) as a, SocketPool("tcp", tcp_listener(ip)) as b:
        b.attach_eventloop(loop, cb)
        status: list[int] = []
        a.sendto(pkt(request()), addr_of(b.master()), status.append)
        spin(loop, 0.05)
        a.attach_eventloop(loop, lambda *x: None)
        drive(loop, lambda: got and status)
        assert status == [0]


def test_receive_callback_shapes(loop: EventLoop) -> None:
    """The receive callback follows invoke_callback: here a (func, *bound) tuple."""
    seen: list[Any] = []
    with SocketPool("udp", udp_socket("127.0.0.1")) as pool, udp_socket("127.0.0.1") as peer:
        pool.attach_eventloop(loop, (lambda tag, p, f: seen.append((tag, p, f)), "leg1"))
        peer.sendto(request(), addr_of(pool.master()).sockaddr())
        drive(loop, lambda: seen)
        assert seen[0][0] == "leg1"


# ------------------------------------------------- per-connection shortcuts


@pytest.mark.parametrize("inherited", [None, False])
def test_accepted_connections_get_tcp_nodelay(loop: EventLoop, inherited: bool | None) -> None:
    """TCP_NODELAY on every accepted connection: copied from the listener where the
    system does that (asked once per pool), else set on each connection."""
    got, cb = collector()
    with SocketPool("tcp", tcp_listener("127.0.0.1")) as pool:
        assert pool._stream is not None and pool._stream.acceptor is not None
        acceptor = pool._stream.acceptor
        acceptor.nodelay_inherited = inherited  # None: find out; False: set it each time
        pool.attach_eventloop(loop, cb)
        clients = [connect(addr_of(pool.master())) for _ in range(3)]
        try:
            drive(loop, lambda: pool.connection_count() == 3)
            for conn in pool._conns.values():
                assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert acceptor.nodelay_inherited is not None
            for n, c in enumerate(clients):
                c.sendall(request(n + 1))
            drive(loop, length_is(got, 3))
        finally:
            for c in clients:
                c.close()


class _PublicAcceptOnly(socket.socket):
    """A listener without CPython's private ``_accept`` (as on other interpreters),
    whose public ``accept`` still works."""

    _accept = None  # hides the C method on purpose

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = _socket.socket._accept(self)  # type: ignore[attr-defined]  # the C method, not in typeshed
        return socket.socket(self.family, self.type, self.proto, fileno=fd), addr


def test_accept_without_the_private_c_method(loop: EventLoop) -> None:
    """Where socket objects have no ``_accept``, the pool accepts the public way."""
    listener = _PublicAcceptOnly(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    got, cb = collector()
    with SocketPool("tcp", listener) as pool:
        pool.attach_eventloop(loop, cb)
        clients = [connect(addr_of(pool.master())) for _ in range(2)]
        try:
            drive(loop, lambda: pool.connection_count() == 2)
            for n, c in enumerate(clients):
                c.sendall(request(n + 1))
            drive(loop, length_is(got, 2))
            assert sorted(p.cseq_number() or 0 for p, _ in got) == [1, 2]
        finally:
            for c in clients:
                c.close()


def test_accepted_connection_reads_and_writes_without_blocking(loop: EventLoop) -> None:
    """An accepted plain TCP socket may stay in blocking mode (every read and write
    passes MSG_DONTWAIT): a read with nothing there and a write to a full socket
    return to the loop instead of blocking it."""
    got, cb = collector()
    results: list[int] = []
    with SocketPool("tcp", tcp_listener("127.0.0.1")) as pool:
        pool.attach_eventloop(loop, cb)
        with socket.socket() as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            c.connect(pool.master().getsockname())
            c.sendall(request(1)[:20])  # readable, but no complete message
            drive(loop, lambda: pool.connection_count() == 1)
            (conn,) = pool._conns.values()
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            spin(loop, 0.05)
            assert got == []
            c.sendall(request(1)[20:])
            drive(loop, length_is(got, 1))
            # far more than the socket buffers take: queued, written as the peer reads
            big = pkt(request(2, b"x" * 30000))
            for _ in range(8):
                pool.sendto(big, got[0][1], results.append)
            spin(loop, 0.05)  # returns: the loop is not blocked in send()
            assert pool.queued_bytes() > 0
            received = 0
            deadline = time.monotonic() + 10
            while len(results) < 8 and time.monotonic() < deadline:
                loop.loop(0.001)
                with contextlib.suppress(BlockingIOError):
                    while chunk := c.recv(1 << 20, socket.MSG_DONTWAIT):
                        received += len(chunk)
            assert results == [0] * 8
            assert received > 8 * 30000


def test_one_message_per_read_leaves_no_framing_state(loop: EventLoop) -> None:
    """A read that is exactly one message is delivered without a second framing
    pass; the buffer and framing state are empty afterwards, and a message split
    over reads right after it is still put together."""
    got, cb = collector()
    with SocketPool("tcp", tcp_listener("127.0.0.1")) as pool:
        pool.attach_eventloop(loop, cb)
        with connect(addr_of(pool.master())) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.sendall(request(1))
            drive(loop, length_is(got, 1))
            (conn,) = pool._conns.values()
            assert (bytes(conn.rbuf), conn.scan, conn.need) == (b"", 0, 0)
            second = request(2, b"body")
            c.sendall(second[:30])
            drive(loop, lambda: len(conn.rbuf) == 30)
            c.sendall(second[30:])
            drive(loop, length_is(got, 2))
            assert got[1][0].body() == b"body"
            assert (bytes(conn.rbuf), conn.scan, conn.need) == (b"", 0, 0)


def test_receive_callback_var_and_none(loop: EventLoop) -> None:
    """The receive callback may be a Var (set to the packet) or None (dropped)."""
    from netsip.util import Var  # noqa: PLC0415

    var: Var[Any] = Var()
    with SocketPool("udp", udp_socket("127.0.0.1")) as pool, udp_socket("127.0.0.1") as peer:
        pool.attach_eventloop(loop, None)
        peer.sendto(request(1), addr_of(pool.master()).sockaddr())
        spin(loop, 0.05)  # read and dropped
        pool.attach_eventloop(loop, var)
        peer.sendto(request(2), addr_of(pool.master()).sockaddr())
        drive(loop, lambda: var.value is not None)
        value = var.value
        assert value is not None
        assert value.cseq() == "2 OPTIONS"


# ------------------------------------------- UDP: a body shorter than announced


def test_udp_request_with_a_short_body_gets_400_and_a_response_is_dropped(
    loop: EventLoop,
) -> None:
    """RFC 3261 18.3: a datagram that ends before its Content-Length says is
    an error: a request is answered with 400 (it was dropped silently), a
    response discarded; neither reaches the application."""
    got, cb = collector()
    with SocketPool("udp", udp_socket("127.0.0.1")) as pool, udp_socket("127.0.0.1") as peer:
        pool.attach_eventloop(loop, cb)
        dst = pool.master().getsockname()
        short = request(1, b"v=0\r\n", callid="short", proto="UDP").replace(
            b"Content-Length: 5", b"Content-Length: 50"
        )
        peer.sendto(short, dst)
        peer.sendto(
            short.replace(b"OPTIONS sip:", b"ACK sip:").replace(b"1 OPTIONS", b"1 ACK"), dst
        )
        req = Packet.new_from_string(request(2, callid="r", proto="UDP"))
        assert isinstance(req, Request)
        resp = req.create_response(200)
        peer.sendto(resp.as_bytes().replace(b"Content-Length: 0", b"Content-Length: 9"), dst)
        peer.sendto(request(3, callid="good", proto="UDP"), dst)
        drive(loop, length_is(got, 1))
        assert [p.callid() for p, _ in got] == ["good"]
        answers = [Packet.new_from_string(d) for d in datagrams(peer)]
        assert [(a.code(), a.msg(), a.callid()) for a in answers if isinstance(a, Response)] == [
            (400, "Content-Length Exceeds Body", "short")
        ]
