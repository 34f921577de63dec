"""Tests for the WebSocket transports ``ws`` and ``wss`` (netsip._ws, RFC 7118), on loopback.

Round trips use two netsip pools (and a Leg, the CLI); the wire tests talk to
a pool through a plain socket with frames crafted here byte by byte
(:func:`ws_frame`), so that they test the wire and not wsproto against
itself. Certificates for ``wss`` come from a test CA (trustme).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import gc
import hashlib
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.handshake import H11Handshake

from netsip._ws import WSLayer, _hostport, frame, ws_options
from netsip.aio import AsyncioEventLoop, new_asyncio_loop
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet
from netsip.resolver import Resolver
from netsip.socketpool import SocketPool
from netsip.testing import advance
from netsip.util import Addr
from tests.support import (
    LOOPBACKS,
    FakeClock,
    Listen,
    collector,
    drive,
    family,
    open_fds,
    pkt,
    python_env,
    run_cli,
    skip_unless_native,
    spin,
    summary_counts,
    tcp_listener,
    write_certs,
)

pytestmark = [pytest.mark.usefixtures("restore_settings"), pytest.mark.both_loops]

TIMEOUT = 20.0  # bound of a blocking socket wait
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


# --------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Certs:
    ca: str
    server: str  # localhost, 127.0.0.1, ::1 (key and chain)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d: Path = tmp_path_factory.mktemp("wss")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    return Certs(str(d / "ca.pem"), str(d / "server.pem"))


@pytest.fixture(params=LOOPBACKS)
def ip(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(params=["ws", "wss"])
def proto(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def ws_pool(
    proto: str,
    ip: str,
    certs: Certs | None = None,
    ws: dict[str, object] | None = None,
    **settings: float,
) -> SocketPool:
    """A listening ws/wss pool on ``ip`` (wss: the test CA's server certificate, trusting it)."""
    listener = tcp_listener(ip)
    tls = None
    if proto == "wss":
        assert certs is not None
        tls = {"certfile": certs.server, "cafile": certs.ca}
    try:
        return SocketPool(proto, listener, tls=tls, ws=ws, settings=settings)  # type: ignore[arg-type]  # proto: a Proto value
    except BaseException:
        listener.close()
        raise


def addr_of(pool: SocketPool) -> Addr:
    a = Addr.parse(pool.master().getsockname()[:2])
    return Addr(a.addr, a.port, a.family)


def options(n: int = 1, via_host: str = "127.0.0.1:5060", body: bytes = b"") -> Packet:
    return pkt(
        (
            f"OPTIONS sip:bob@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/WS {via_host};branch=z9hG4bK-ws-{n}\r\n"
            f"From: <sip:alice@example.com>;tag=a{n}\r\n"
            f"To: <sip:bob@example.com>\r\n"
            f"Call-ID: ws-{n}@example.com\r\n"
            f"CSeq: {n} OPTIONS\r\n"
            f"Max-Forwards: 70\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"\r\n"
        ).encode()
        + body
    )


def answering(pool: SocketPool, got: list[tuple[Packet, Addr]]) -> object:
    """A receive callback that records requests and answers each with 200."""

    def cb(packet: Packet, from_: Addr) -> None:
        got.append((packet, from_))
        if packet.is_request():
            pool.sendto(packet.create_response(200, "OK"), from_)  # type: ignore[attr-defined]  # a Request

    return cb


# --------------------------------------------------------------------- round trips


def test_options_round_trip(loop: EventLoop, ip: str, proto: str, certs: Certs) -> None:
    srv = ws_pool(proto, ip, certs)
    cli = ws_pool(proto, ip, certs)
    with srv, cli:
        got: list[tuple[Packet, Addr]] = []
        srv.attach_eventloop(loop, answering(srv, got))
        answers, cb = collector()
        cli.attach_eventloop(loop, cb)
        written: list[int] = []
        for n in (1, 2, 3):
            cli.sendto(options(n), addr_of(srv), written.append)
        drive(loop, lambda: len(answers) == 3, 10)
        assert [p.cseq() for p, _ in answers] == ["1 OPTIONS", "2 OPTIONS", "3 OPTIONS"]
        assert all(p.code() == 200 for p, _ in answers)  # type: ignore[attr-defined]  # Responses
        assert written == [0, 0, 0]
        # one connection each way, the requests' source is the client's connection
        assert srv.connection_count() == 1 and cli.connection_count() == 1
        assert got[0][1].proto == proto and answers[0][1].proto == proto
        assert got[0][1].family == family(ip)
        # the reverse direction goes over the same connection
        srv.sendto(options(9), got[0][1])
        drive(loop, lambda: len(answers) == 4, 10)
        assert answers[3][0].is_request() and srv.connection_count() == 1


def test_large_message_and_binary_body(loop: EventLoop, proto: str, certs: Certs) -> None:
    """A message above 64 KiB (8-byte length) and a body that is not UTF-8 (binary frame)."""
    srv = ws_pool(proto, "127.0.0.1", certs, MAX_SIP_BODY=2**17)
    cli = ws_pool(proto, "127.0.0.1", certs)
    with srv, cli:
        got, cb = collector()
        srv.attach_eventloop(loop, cb)
        cli.attach_eventloop(loop, None)
        big = b"x" * 70000
        raw = bytes(range(256))
        cli.sendto(options(1, body=big), addr_of(srv))
        cli.sendto(options(2, body=raw), addr_of(srv))
        drive(loop, lambda: len(got) == 2, 10)
        assert got[0][0].body() == big and got[1][0].body() == raw


def test_response_to_invalid_via_host_goes_back_over_the_connection(
    loop: EventLoop, proto: str, certs: Certs
) -> None:
    """RFC 7118 5.2: a browser's Via host is ``xxx.invalid``: the answer uses its connection."""
    srv = ws_pool(proto, "127.0.0.1", certs)
    cli = ws_pool(proto, "127.0.0.1", certs)
    with srv, cli:
        got: list[tuple[Packet, Addr]] = []
        srv.attach_eventloop(loop, answering(srv, got))
        answers, cb = collector()
        cli.attach_eventloop(loop, cb)
        cli.sendto(options(1, via_host="abc.invalid"), addr_of(srv))
        drive(loop, lambda: answers, 10)
        assert answers[0][0].get_header("via").startswith("SIP/2.0/WS abc.invalid")  # type: ignore[union-attr]  # present
        assert srv.connection_count() == 1


def test_leg_ws(loop: EventLoop, ip: str, proto: str, certs: Certs) -> None:
    tls = {"certfile": certs.server, "cafile": certs.ca} if proto == "wss" else None
    with (
        Leg(addr=ip, port=0, proto=proto, tls=tls) as server,  # type: ignore[arg-type]  # a Proto value
        Leg(addr=ip, port=0, proto=proto, tls=tls) as client,  # type: ignore[arg-type]
    ):
        assert server.contact.endswith(f";transport={proto}")
        got: list[tuple[Packet, Addr]] = []
        server.socketpool().attach_eventloop(loop, answering(server.socketpool(), got))
        answers, cb = collector()
        client.socketpool().attach_eventloop(loop, cb)
        req = pkt(
            b"OPTIONS sip:bob@example.com SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:bob@example.com>\r\nCall-ID: leg\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        client.deliver(req, server.src)
        drive(loop, lambda: answers, 10)
        via = got[0][0].get_header("via")
        assert via is not None and via.startswith(f"SIP/2.0/{proto.upper()} ")
        assert client.check_via(answers[0][0])


def test_ws_options() -> None:
    assert ws_options(None).path == "/"
    assert ws_options({"path": "/sip", "ping_interval": 5}).ping_interval == 5.0
    for bad, exc in (
        ({"nope": 1}, ValueError),
        ({"path": "sip"}, ValueError),
        ({"path": 3}, TypeError),
        ({"ping_interval": -1}, ValueError),
        ({"ping_interval": True}, TypeError),
    ):
        with pytest.raises(exc):
            ws_options(bad)
    with tcp_listener() as t, pytest.raises(ValueError, match="ws options"):
        SocketPool("tcp", t, ws={"path": "/"})


def test_frame_encoding() -> None:
    assert frame(b"hi", mask=False) == b"\x81\x02hi"
    assert frame(b"\xff", mask=False) == b"\x82\x01\xff"  # not UTF-8: binary
    assert frame("\u00e9".encode(), mask=False)[0] == 0x81  # UTF-8: text
    assert frame(b"a" * 200, mask=False)[:4] == b"\x81\x7e\x00\xc8"
    assert frame(b"a" * 70000, mask=False)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    masked = frame(b"hello", mask=True)
    assert masked[:2] == b"\x81\x85"
    key = masked[2:6]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(masked[6:])) == b"hello"


# --------------------------------------------------------------------- the wire, by hand


def ws_frame(
    opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    """A client frame built byte by byte (RFC 6455 section 5.2), masked unless told not to."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # RFC 6455 4.2.2


def upgrade_request(
    key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==",
    protocol: str | None = "sip",
    version: str = "13",
    target: str = "/",
) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Raw:
    """A WebSocket client on a plain non-blocking socket, driven with the pool's loop."""

    def __init__(self, loop: EventLoop, dst: Addr, cafile: str | None = None) -> None:
        self.loop = loop
        self.sock = socket.socket(dst.family, socket.SOCK_STREAM)
        self.sock.connect(dst.sockaddr())
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.eof = False
        self.pending: list[tuple[int, bytes]] = []
        if cafile is not None:  # wss: TLS first, its handshake driven with the loop
            ctx = ssl.create_default_context(cafile=cafile)
            tls = ctx.wrap_socket(
                self.sock, server_hostname=dst.addr, do_handshake_on_connect=False
            )
            self.sock = tls

            def handshake() -> bool:
                try:
                    tls.do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return False
                return True

            drive(loop, handshake)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                data = b""
            if not data:
                self.eof = True
            self.buf += data

    def wait(self, cond: object, seconds: float = 5.0) -> None:
        def check() -> bool:
            self.pump()
            return bool(cond())  # type: ignore[operator]  # a callable

        drive(self.loop, check, seconds)

    def http(self) -> bytes:
        """The server's answer to the upgrade request (its head)."""
        self.wait(lambda: b"\r\n\r\n" in self.buf or self.eof)
        end = self.buf.find(b"\r\n\r\n")
        assert end >= 0, bytes(self.buf)
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        return head

    def upgrade(self, **kw: object) -> bytes:
        self.send(upgrade_request(**kw))  # type: ignore[arg-type]  # the keywords of upgrade_request
        return self.http()

    def frames(self) -> list[tuple[int, bytes]]:
        """The complete (unmasked) server frames received so far, consumed."""
        out: list[tuple[int, bytes]] = []
        buf = self.buf
        while len(buf) >= 2:
            assert not buf[1] & 0x80, "server frames are never masked"
            n, pos = buf[1] & 0x7F, 2
            if n == 126:
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                break
            out.append((buf[0] & 0x0F, bytes(buf[pos : pos + n])))
            del buf[: pos + n]
        return out

    def next_frame(self) -> tuple[int, bytes]:
        """The next server frame (waiting for it)."""

        def one() -> bool:
            self.pending.extend(self.frames())
            return bool(self.pending) or self.eof

        self.wait(one)
        assert self.pending, "no frame before EOF"
        return self.pending.pop(0)

    def closed_with(self) -> int:
        """Wait for the server's close frame and EOF; the close code."""
        opcode, payload = self.next_frame()
        while opcode != 0x8:
            opcode, payload = self.next_frame()
        self.wait(lambda: self.eof)
        return int.from_bytes(payload[:2], "big")


@pytest.fixture
def server(loop: EventLoop, ip: str) -> Iterator[tuple[SocketPool, list[tuple[Packet, Addr]]]]:
    pool = ws_pool("ws", ip, MAX_SIP_HEADER=4096, MAX_SIP_BODY=4096)
    got: list[tuple[Packet, Addr]] = []
    pool.attach_eventloop(loop, answering(pool, got))
    with pool:
        yield pool, got


def test_handshake_by_hand(
    loop: EventLoop, server: tuple[SocketPool, list[tuple[Packet, Addr]]]
) -> None:
    pool, got = server
    with Raw(loop, addr_of(pool)) as c:
        head = c.upgrade(key=b"x3JJHMbDL1EzLkh9GBhXDw==", target="/some/path")
        assert head.startswith(b"HTTP/1.1 101 ")
        low = head.lower()
        assert b"\r\nsec-websocket-protocol: sip\r\n" in low
        assert b"sec-websocket-accept: " + accept_token(b"x3JJHMbDL1EzLkh9GBhXDw==").lower() in low
        # a masked text frame with one SIP message; the answer is one unmasked text frame
        c.send(ws_frame(0x1, options(1).as_bytes()))
        opcode, payload = c.next_frame()
        assert opcode == 0x1 and payload.startswith(b"SIP/2.0 200 OK\r\n")
        assert got[0][0].method() == "OPTIONS"
        # binary frames carry SIP as well
        c.send(ws_frame(0x2, options(2).as_bytes()))
        opcode, payload = c.next_frame()
        assert opcode == 0x1 and b"CSeq: 2 OPTIONS" in payload
        # no Content-Length: the WebSocket message frames the SIP message (RFC 7118 5.2)
        no_length = options(3).as_bytes().replace(b"Content-Length: 0\r\n", b"")
        assert b"Content-Length" not in no_length
        c.send(ws_frame(0x1, no_length))
        opcode, payload = c.next_frame()
        assert b"CSeq: 3 OPTIONS" in payload and len(got) == 3
        # the client closes: the server answers the close and closes TCP (RFC 6455 5.5.1)
        c.send(ws_frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
        assert c.closed_with() == 1000
    drive(loop, lambda: pool.connection_count() == 0)


def test_fragments_with_interleaved_control_frames(
    loop: EventLoop, server: tuple[SocketPool, list[tuple[Packet, Addr]]]
) -> None:
    pool, got = server
    data = options(1).as_bytes()
    with Raw(loop, addr_of(pool)) as c:
        c.upgrade()
        c.send(ws_frame(0x1, data[:10], fin=False))
        c.send(ws_frame(0x9, b"are you there"))  # a ping between fragments (RFC 6455 5.4)
        c.send(ws_frame(0x0, data[10:50], fin=False))
        c.send(ws_frame(0xA, b"unsolicited pong"))  # ignored
        c.send(ws_frame(0x0, data[50:], fin=True))
        assert c.next_frame() == (0xA, b"are you there")
        opcode, payload = c.next_frame()
        assert opcode == 0x1 and payload.startswith(b"SIP/2.0 200")
        assert len(got) == 1 and got[0][0].as_bytes() == data
        # the same message one byte per write
        msg = ws_frame(0x1, options(2).as_bytes())
        for i in range(len(msg)):
            c.send(msg[i : i + 1])
            if i % 50 == 0:
                loop.loop(0)
        opcode, payload = c.next_frame()
        assert b"CSeq: 2 OPTIONS" in payload


def test_keepalive_crlf_message_gets_crlf(
    loop: EventLoop, server: tuple[SocketPool, list[tuple[Packet, Addr]]]
) -> None:
    """RFC 5626 4.4.1 over WebSocket (SIP.js sends it): CRLFCRLF in, CRLF out."""
    pool, got = server
    with Raw(loop, addr_of(pool)) as c:
        c.upgrade()
        c.send(ws_frame(0x1, b"\r\n\r\n"))
        assert c.next_frame() == (0x1, b"\r\n")
        c.send(ws_frame(0x1, b"\r\n"))  # a pong is activity only
        c.send(ws_frame(0x1, options(1).as_bytes()))
        assert c.next_frame()[1].startswith(b"SIP/2.0 200")
        assert len(got) == 1


BAD_UPGRADES: dict[str, tuple[dict[str, object], int]] = {
    "no sip subprotocol": ({"protocol": None}, 400),
    "other subprotocol": ({"protocol": "chat, superchat"}, 400),
    "key not base64": ({"key": b"not a key!!"}, 400),
    "key of 8 bytes": ({"key": base64.b64encode(b"12345678")}, 400),
    "version 8": ({"version": "8"}, 426),
}


@pytest.mark.parametrize("case", list(BAD_UPGRADES))
def test_bad_upgrade_is_refused(
    loop: EventLoop,
    server: tuple[SocketPool, list[tuple[Packet, Addr]]],
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool, got = server
    kw, status = BAD_UPGRADES[case]
    with caplog.at_level(logging.INFO, "netsip.socketpool"), Raw(loop, addr_of(pool)) as c:
        head = c.upgrade(**kw)
        assert head.startswith(f"HTTP/1.1 {status} ".encode())
        if status == 426:
            assert b"sec-websocket-version: 13" in head.lower()
        c.wait(lambda: c.eof)
    assert pool.connection_count() == 0 and not got
    assert any(f"WebSocket HTTP {status}" in r.getMessage() for r in caplog.records)


def test_not_a_get_or_not_http(
    loop: EventLoop, server: tuple[SocketPool, list[tuple[Packet, Addr]]]
) -> None:
    pool, _ = server
    with Raw(loop, addr_of(pool)) as c:
        c.send(upgrade_request().replace(b"GET ", b"POST ", 1))
        assert c.http().startswith(b"HTTP/1.1 400 ")
        c.wait(lambda: c.eof)
    with Raw(loop, addr_of(pool)) as c:
        c.send(options(1).as_bytes())  # SIP over plain TCP to a ws port
        assert c.http().startswith(b"HTTP/1.1 400 ")
        c.wait(lambda: c.eof)
    with Raw(loop, addr_of(pool)) as c:
        c.send(b"GET / HTTP/1.1\r\nX: " + b"y" * 10000)  # a head that never ends
        assert c.http().startswith(b"HTTP/1.1 431 ")
        c.wait(lambda: c.eof)
    assert pool.connection_count() == 0


BAD_FRAMES = {
    # name: (frames after the upgrade, close code)
    "not SIP": ([ws_frame(0x1, b"hello, is this the chat?")], 1008),
    "not SIP binary": ([ws_frame(0x2, b"\x00\x01\x02")], 1008),
    "unmasked": ([ws_frame(0x1, options(1).as_bytes(), mask=False)], 1002),
    "invalid UTF-8": ([ws_frame(0x1, b"OPTIONS sip:\xff\xfe SIP/2.0\r\n\r\n")], 1007),
    "UTF-8 split in a fragment then invalid": (
        [ws_frame(0x1, b"OPTIONS \xc3", fin=False), ws_frame(0x0, b"(")],
        1007,
    ),
    "too big in one frame": ([ws_frame(0x2, b"x" * 9000)], 1009),
    "too big in fragments": (
        [ws_frame(0x1, b"x" * 4000, fin=False)]
        + [ws_frame(0x0, b"x" * 4000, fin=False)] * 2
        + [ws_frame(0x0, b"x")],
        1009,
    ),
    "reserved bit": ([ws_frame(0x1, options(1).as_bytes(), rsv=4)], 1002),
    "reserved opcode": ([ws_frame(0x3, b"")], 1002),
    "continuation first": ([ws_frame(0x0, options(1).as_bytes())], 1002),
    "fragmented ping": ([ws_frame(0x9, b"x", fin=False)], 1002),
    "new message inside a fragmented one": (
        [ws_frame(0x1, b"OPT", fin=False), ws_frame(0x1, b"IONS")],
        1002,
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames_close_with_code(
    loop: EventLoop,
    server: tuple[SocketPool, list[tuple[Packet, Addr]]],
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool, got = server
    frames, code = BAD_FRAMES[case]
    with caplog.at_level(logging.INFO, "netsip.socketpool"), Raw(loop, addr_of(pool)) as c:
        c.upgrade()
        c.send(b"".join(frames))
        assert c.closed_with() == code
    assert pool.connection_count() == 0 and not got
    assert any(f"WebSocket close {code}" in r.getMessage() for r in caplog.records)


def test_slow_handshake_is_closed(
    clock_loop: EventLoop, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Slowloris: an upgrade not done within CONNECT_TIMEOUT closes the connection."""
    pool = ws_pool("ws", "127.0.0.1", CONNECT_TIMEOUT=3)
    with pool, caplog.at_level(logging.INFO, "netsip.socketpool"):
        pool.attach_eventloop(clock_loop, None)
        with Raw(clock_loop, addr_of(pool)) as slow, Raw(clock_loop, addr_of(pool)) as quick:
            slow.send(upgrade_request()[:40])  # ... and the rest never comes
            quick.upgrade()
            drive(clock_loop, lambda: pool.connection_count() == 2)
            advance(clock_loop, fake_clock, 2)
            slow.send(b"X-Slow: 1\r\n")  # trickling bytes do not extend the deadline
            advance(clock_loop, fake_clock, 1.5)
            slow.wait(lambda: slow.eof)
            assert pool.connection_count() == 1  # the upgraded one stays
            quick.send(ws_frame(0x9, b"still here"))
            assert quick.next_frame() == (0xA, b"still here")
    assert any("handshake not done within 3s" in r.getMessage() for r in caplog.records)


def test_close_sends_going_away(loop: EventLoop) -> None:
    pool = ws_pool("ws", "127.0.0.1")
    pool.attach_eventloop(loop, None)
    with Raw(loop, addr_of(pool)) as c:
        c.upgrade()
        drive(loop, lambda: pool.connection_count() == 1)
        pool.close()
        assert c.closed_with() == 1001


def test_server_pings(clock_loop: EventLoop, fake_clock: FakeClock) -> None:
    """The ping_interval option: a ping on every open connection; a pong is activity."""
    pool = ws_pool("ws", "127.0.0.1", ws={"ping_interval": 20})
    with pool, Raw(clock_loop, addr_of(pool)) as c:
        pool.attach_eventloop(clock_loop, None)
        c.upgrade()
        advance(clock_loop, fake_clock, 21)
        assert c.next_frame() == (0x9, b"")
        c.send(ws_frame(0xA, b""))
        advance(clock_loop, fake_clock, 20)
        assert c.next_frame() == (0x9, b"")
        assert pool.connection_count() == 1


def test_no_fd_or_connection_left_by_bad_input(loop: EventLoop) -> None:
    """Every kind of bad input, repeated: no descriptor and no connection stays behind."""
    pool = ws_pool("ws", "127.0.0.1", MAX_SIP_HEADER=4096, MAX_SIP_BODY=4096)
    got, cb = collector()
    pool.attach_eventloop(loop, cb)

    def one_round() -> None:
        for kw, _status in BAD_UPGRADES.values():
            with Raw(loop, addr_of(pool)) as c:
                c.upgrade(**kw)
                c.wait(partial(getattr, c, "eof"))
        for frames, _code in BAD_FRAMES.values():
            with Raw(loop, addr_of(pool)) as c:
                c.upgrade()
                c.send(b"".join(frames))
                c.closed_with()
        with Raw(loop, addr_of(pool)) as c:  # a client that just goes away mid-message
            c.upgrade()
            c.send(ws_frame(0x1, options(1).as_bytes())[:30])
        drive(loop, lambda: pool.connection_count() == 0)

    with pool:
        one_round()  # warm-up: lazy imports, caches
        before = open_fds()
        for _ in range(3):
            one_round()
        assert open_fds() == before
        assert pool.connection_count() == 0 and not got
        gc.collect()
        # no WebSocket state left behind either (per-connection layers, h11 handshakes)
        assert _instances(WSLayer) == 0 and _instances(H11Handshake) == 0
    assert open_fds() == before - 1  # the listener


def _instances(cls: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is cls)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255),  # first byte: FIN, RSV, opcode
            st.booleans(),  # masked
            st.binary(max_size=300),
            st.integers(0, 3),  # how to cut the bytes into writes
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_frames_never_break_the_pool(frames: list[tuple[int, bool, bytes, int]]) -> None:
    """Whatever frames come after the upgrade: nothing raises out of the loop, and the
    connection is either still usable (a later valid message is answered) or closed."""
    with EventLoop() as loop:
        pool = ws_pool("ws", "127.0.0.1", MAX_SIP_HEADER=512, MAX_SIP_BODY=512)
        got: list[tuple[Packet, Addr]] = []
        pool.attach_eventloop(loop, answering(pool, got))
        with pool, Raw(loop, addr_of(pool)) as c:
            c.upgrade()
            for first, mask, payload, cut in frames:
                data = ws_frame(first & 0x0F, payload, mask=mask, fin=bool(first & 0x80),
                                rsv=first >> 4 & 7)  # fmt: skip
                step = max(1, len(data) >> cut)
                for i in range(0, len(data), step):
                    try:
                        c.send(data[i : i + step])
                    except OSError:  # closed by the pool already
                        break
                    loop.loop(0)
            # then a valid message: answered, or (a fragmented message left open makes it
            # a protocol error, or the connection is gone already) a close and EOF
            with contextlib.suppress(OSError):
                c.send(ws_frame(0x1, options(99).as_bytes()))
            c.wait(
                lambda: c.eof or any(b"CSeq: 99 OPTIONS" in f for _, f in c.pending + c.frames())
            )
            drive(loop, lambda: pool.connection_count() <= 1)


# --------------------------------------------------------------------- the client side


class RawServer:
    """A WebSocket server by hand: accepts one connection of the pool under test."""

    def __init__(self, loop: EventLoop, ip: str = "127.0.0.1") -> None:
        self.loop = loop
        self.listener = tcp_listener(ip)
        self.listener.setblocking(False)
        self.addr = addr_of_socket(self.listener)
        self.conn: Raw | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def accept(self) -> Raw:
        socks: list[socket.socket] = []

        def accepted() -> bool:
            try:
                socks.append(self.listener.accept()[0])
            except BlockingIOError:
                return False
            return True

        drive(self.loop, accepted)
        raw = Raw.__new__(Raw)
        raw.loop, raw.sock, raw.buf, raw.eof, raw.pending = (
            self.loop,
            socks[0],
            bytearray(),
            False,
            [],
        )
        raw.sock.setblocking(False)
        self.conn = raw
        return raw

    def client_frames(self, raw: Raw) -> list[tuple[int, bytes]]:
        """The complete client frames received so far, unmasked (they must be masked)."""
        out: list[tuple[int, bytes]] = []
        buf = raw.buf
        while len(buf) >= 2:
            assert buf[1] & 0x80, "client frames are masked (RFC 6455 5.3)"
            n, pos = buf[1] & 0x7F, 2
            if n == 126:
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + 4 + n:
                break
            key = buf[pos : pos + 4]
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos + 4 : pos + 4 + n]))
            out.append((buf[0] & 0x0F, payload))
            del buf[: pos + 4 + n]
        return out


def addr_of_socket(s: socket.socket) -> Addr:
    return Addr.parse(s.getsockname()[:2])


def answer_upgrade(raw: Raw, protocol: str | None = "sip", status: int = 101) -> bytes:
    """Read the pool's upgrade request and answer it; returns the request head."""
    head = raw.http()
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    if status != 101:
        raw.send(f"HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\n\r\n".encode())
        return head
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_token(key),
    ]
    if protocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + protocol.encode())
    raw.send(b"\r\n".join(lines) + b"\r\n\r\n")
    return head


def test_client_holds_messages_until_the_upgrade(loop: EventLoop) -> None:
    pool = ws_pool("ws", "127.0.0.1", ws={"path": "/sip/ws"})
    with pool, RawServer(loop) as srv:
        pool.attach_eventloop(loop, None)
        written: list[int] = []
        for n in (1, 2, 3):
            pool.sendto(options(n), srv.addr, written.append)
        raw = srv.accept()
        head = answer_upgrade(raw)
        assert head.startswith(b"GET /sip/ws HTTP/1.1\r\n")
        low = head.lower()
        assert b"sec-websocket-protocol: sip\r\n" in low
        assert f"host: {srv.addr}\r\n".encode() in low
        frames: list[tuple[int, bytes]] = []

        def three() -> bool:
            raw.pump()
            frames.extend(srv.client_frames(raw))
            return len(frames) == 3

        drive(loop, three)
        assert [op for op, _ in frames] == [0x1, 0x1, 0x1]
        assert [pkt(p).cseq() for _, p in frames] == ["1 OPTIONS", "2 OPTIONS", "3 OPTIONS"]
        drive(loop, lambda: written == [0, 0, 0])


@pytest.mark.parametrize(
    ("protocol", "status"), [(None, 101), ("chat", 101), ("sip", 404)], ids=["none", "chat", "404"]
)
def test_client_refused_upgrade_fails_the_messages(
    loop: EventLoop, protocol: str | None, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    pool = ws_pool("ws", "127.0.0.1")
    with pool, RawServer(loop) as srv, caplog.at_level(logging.INFO, "netsip.socketpool"):
        pool.attach_eventloop(loop, None)
        failed: list[int] = []
        pool.sendto(options(1), srv.addr, failed.append)
        pool.sendto(options(2), srv.addr, failed.append)
        raw = srv.accept()
        answer_upgrade(raw, protocol, status)
        drive(loop, lambda: len(failed) == 2)
        assert failed == [errno.EPROTO, errno.EPROTO]
        raw.wait(lambda: raw.eof)
        assert pool.connection_count() == 0
    assert any("WebSocket" in r.getMessage() for r in caplog.records)


def test_client_keepalive_pings(clock_loop: EventLoop, fake_clock: FakeClock) -> None:
    """KEEPALIVE_INTERVAL on a ws pool: ping frames on the connections it opened."""
    pool = ws_pool("ws", "127.0.0.1", KEEPALIVE_INTERVAL=30)
    with pool, RawServer(clock_loop) as srv:
        pool.attach_eventloop(clock_loop, None)
        pool.sendto(options(1), srv.addr)
        raw = srv.accept()
        answer_upgrade(raw)
        frames: list[tuple[int, bytes]] = []

        def got(n: int) -> bool:
            raw.pump()
            frames.extend(srv.client_frames(raw))
            return len(frames) >= n

        drive(clock_loop, lambda: got(1))
        advance(clock_loop, fake_clock, 31)
        drive(clock_loop, lambda: got(2))
        assert frames[1] == (0x9, b"")
        raw.send(bytes((0x8A, 0)))  # the pong
        advance(clock_loop, fake_clock, 30)
        drive(clock_loop, lambda: got(3))
        assert frames[2] == (0x9, b"")


def test_tcp_client_keepalive_and_tls_pong(
    clock_loop: EventLoop, fake_clock: FakeClock, certs: Certs
) -> None:
    """RFC 5626 4.4.1 on streams: a TCP pool's opened connection sends CRLFCRLF
    every KEEPALIVE_INTERVAL; a TLS server answers CRLFCRLF with CRLF."""
    with tcp_listener() as t:
        t.setblocking(False)
        pool = SocketPool("tcp", tcp_listener(), settings={"KEEPALIVE_INTERVAL": 15})
        with pool:
            pool.attach_eventloop(clock_loop, None)
            pool.sendto(options(1), addr_of_socket(t))
            socks: list[socket.socket] = []

            def accepted() -> bool:
                try:
                    socks.append(t.accept()[0])
                except BlockingIOError:
                    return False
                return True

            drive(clock_loop, accepted)
            with socks[0] as s:
                s.setblocking(False)
                data = bytearray()

                def has(tail: bytes) -> bool:
                    with contextlib.suppress(BlockingIOError):
                        data.extend(s.recv(65536))
                    return data.endswith(tail)

                drive(clock_loop, lambda: has(b"\r\n\r\n"))  # the request
                size = len(data)
                advance(clock_loop, fake_clock, 16)
                drive(clock_loop, lambda: has(b"\r\n\r\n") and len(data) == size + 4)
    tls = {"certfile": certs.server, "cafile": certs.ca}
    with SocketPool("tls", tcp_listener(), tls=tls) as srv:
        srv.attach_eventloop(clock_loop, None)
        ctx = ssl.create_default_context(cafile=certs.ca)
        plain = socket.create_connection(srv.master().getsockname()[:2])
        plain.setblocking(False)
        with ctx.wrap_socket(
            plain, server_hostname="127.0.0.1", do_handshake_on_connect=False
        ) as c:

            def handshake() -> bool:
                try:
                    c.do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return False
                return True

            drive(clock_loop, handshake)
            c.sendall(b"\r\n\r\n")
            got = bytearray()

            def pong() -> bool:
                with contextlib.suppress(ssl.SSLWantReadError):
                    got.extend(c.recv(100))
                return bool(got)

            drive(clock_loop, pong)
            assert got == b"\r\n"


# --------------------------------------------------------------------- resolution


def test_resolver_naptr_d2w_and_invalid_hosts(loop: EventLoop) -> None:
    asked: list[tuple[str, str]] = []
    answers: dict[tuple[str, str], list[Any]] = {
        ("NAPTR", "ws.test"): [
            ["NAPTR", 10, 10, "s", "SIPS+D2W", "", "_sips._ws.ws.test"],
            ["NAPTR", 20, 10, "s", "SIP+D2W", "", "_sip._ws.ws.test"],
            ["NAPTR", 30, 10, "s", "SIP+D2U", "", "_sip._udp.ws.test"],
        ],
        ("SRV", "_sips._ws.ws.test"): [["SRV", 10, "wss.ws.test", 443]],
        ("SRV", "_sip._ws.ws.test"): [["SRV", 10, "plain.ws.test", 8080]],
        ("A", "wss.ws.test"): [["A", "127.0.0.7", "wss.ws.test"]],
        ("A", "plain.ws.test"): [["A", "127.0.0.8", "plain.ws.test"]],
    }

    def hook(typ: str, name: str, cb: Callable[[list[Any]], None]) -> None:
        asked.append((typ, name))
        cb(answers.get((typ, name), []))

    with Resolver(loop, dnsresolv=hook, addr_types=("A",)) as res:
        got: list[list[tuple[str, Addr]]] = []
        res.resolve("ws.test", ["wss", "ws"], got.append)
        drive(loop, lambda: got)
        assert [(p, a.addr, a.port) for p, a in got[0]] == [
            ("wss", "127.0.0.7", 443),
            ("ws", "127.0.0.8", 8080),
        ]
        # RFC 6761 6.4: no query at all for .invalid, and an empty answer
        asked.clear()
        got.clear()
        res.resolve("df7jal23ls0d.INVALID.", ["ws"], got.append)
        drive(loop, lambda: got)
        assert got == [[]] and asked == []


def test_dispatcher_resolves_transport_ws(loop: EventLoop) -> None:
    with Leg(addr="127.0.0.1", port=0, proto="ws") as ws_leg, Leg(addr="127.0.0.1", port=0) as udp:
        d = Dispatcher([udp, ws_leg], loop)
        try:
            got: list[object] = []
            d.resolve_uri("sip:127.0.0.1:8080;transport=ws", got.append)
            drive(loop, lambda: got)
            assert isinstance(got[0], list)
            (addr, leg), *rest = got[0]
            assert not rest and leg is ws_leg and addr.proto == "ws" and addr.port == 8080
            got.clear()
            d.resolve_uri("sip:bob@df7jal23ls0d.invalid;transport=ws", got.append)
            drive(loop, lambda: got)
            assert got == [errno.EHOSTUNREACH]
        finally:
            d.close()


# --------------------------------------------------------------------- the command line


def test_cli_listen_and_options_over_ws_and_wss(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = write_certs(tmp_path)
    srv = Listen(
        ["-l", "ws:127.0.0.1:0", "-l", "wss:127.0.0.1:0", "--tls-cert", str(certs["server"]), "-v"],
        tmp_path,
    )
    listen_factory.append(srv)
    addrs = srv.addresses(2)
    ws, wss = addrs["ws"], addrs["wss"]
    for argv in (
        [f"ws://{ws}/any/path"],
        [f"sip:{ws};transport=ws"],
        [f"sip:{ws}", "-t", "ws"],
        [f"wss://{wss}", "--tls-ca", str(certs["ca"])],
    ):
        status, out, err = run_cli(["options", *argv, "-n", "2", "-i", "0.01"], capsys)
        assert status == 0, out + err
        assert "2 requests sent, 2 responses received, 2 ok, 0% loss" in out, out
        assert re.search(r"^200 OK from wss?:127\.0\.0\.1:\d+: seq=1", out, re.M), out
    status, out, err = run_cli(["options", f"wss://{ws}", "-t", "ws"], capsys)
    assert status == 2 and "contradicts" in err
    # a browser-like client: Via host .invalid, the answer over its connection
    with socket.create_connection((ws.addr, ws.port), timeout=TIMEOUT) as s:
        s.sendall(upgrade_request())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        s.sendall(ws_frame(0x1, options(1, via_host="df7jal23ls0d.invalid").as_bytes()))
        data = head[head.index(b"\r\n\r\n") + 4 :]
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
            data += s.recv(4096)
        assert data[0] == 0x81 and b"SIP/2.0 200 OK\r\n" in data
        assert b"Via: SIP/2.0/WS df7jal23ls0d.invalid" in data
    stdout = srv.stop()
    assert srv.returncode == 0
    counts = summary_counts(stdout)
    assert counts == {"OPTIONS": 9}
    assert any("sockets open after closing: 0" in line for line in srv.err.lines), srv.err.lines


# --------------------------------------------------------------------- the rest


def test_wsproto_is_loaded_with_the_first_ws_pool() -> None:
    """As ssl for TLS: a process without WebSocket pools never imports wsproto (nor h11)."""
    code = (
        "import sys, netsip, netsip.socketpool, netsip.leg, netsip.dispatcher\n"
        "from netsip.testing import tcp_listener\n"
        "print(sorted(m for m in ('wsproto', 'h11', 'netsip._ws') if m in sys.modules))\n"
        "netsip.socketpool.SocketPool('ws', tcp_listener()).close()\n"
        "print(sorted(m for m in ('wsproto', 'h11', 'netsip._ws') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["[]", "['h11', 'netsip._ws', 'wsproto']"]


def test_callback_exception_resumes_with_the_next_messages(loop: EventLoop) -> None:
    """A receive callback that raises: the messages read behind it come in the next loop run."""
    skip_unless_native(loop, "an exception in a callback goes to asyncio's handler there")
    pool = ws_pool("ws", "127.0.0.1")
    seen: list[str] = []

    def cb(packet: Packet, _from: Addr) -> None:
        seen.append(str(packet.cseq()))
        if len(seen) == 1:
            raise RuntimeError("application bug")

    with pool, Raw(loop, addr_of(pool)) as c:
        pool.attach_eventloop(loop, cb)
        c.upgrade()
        c.send(b"".join(ws_frame(0x1, options(n).as_bytes()) for n in (1, 2, 3)))
        with pytest.raises(RuntimeError, match="application bug"):
            drive(loop, lambda: len(seen) == 3)
        drive(loop, lambda: len(seen) == 3)
        assert seen == ["1 OPTIONS", "2 OPTIONS", "3 OPTIONS"]
        assert pool.connection_count() == 1


def test_server_masked_frame_is_refused_by_the_client(loop: EventLoop) -> None:
    """RFC 6455 5.1: a client closes the connection on a masked server frame (1002)."""
    pool = ws_pool("ws", "127.0.0.1")
    with pool, RawServer(loop) as srv:
        pool.attach_eventloop(loop, None)
        pool.sendto(options(1), srv.addr)
        raw = srv.accept()
        answer_upgrade(raw)
        raw.send(ws_frame(0x1, b"SIP/2.0 200 OK\r\n\r\n"))  # masked: wrong for a server
        raw.wait(lambda: raw.eof)
        frames = srv.client_frames(raw)
        assert frames[-1][0] == 0x8 and int.from_bytes(frames[-1][1][:2], "big") == 1002
        assert pool.connection_count() == 0


def test_connected_master(loop: EventLoop, proto: str, certs: Certs) -> None:
    """A pool on a connected socket (``connected=True``) upgrades it when attached."""
    srv = ws_pool(proto, "127.0.0.1", certs)
    with srv:
        got: list[tuple[Packet, Addr]] = []
        srv.attach_eventloop(loop, answering(srv, got))
        sock = socket.create_connection(srv.master().getsockname()[:2])
        tls = {"cafile": certs.ca} if proto == "wss" else None
        with SocketPool(proto, sock, connected=True, tls=tls) as cli:  # type: ignore[arg-type]  # a Proto value
            answers, cb = collector()
            cli.attach_eventloop(loop, cb)
            cli.sendto(options(1), addr_of(srv))
            drive(loop, lambda: answers, 10)
            assert answers[0][0].cseq() == "1 OPTIONS" and cli.connection_count() == 0


def test_server_holds_messages_for_a_connection_being_upgraded(loop: EventLoop) -> None:
    """A message for a peer whose connection is still upgrading waits for the upgrade."""
    pool = ws_pool("ws", "127.0.0.1")
    with pool, Raw(loop, addr_of(pool)) as c:
        pool.attach_eventloop(loop, None)
        drive(loop, lambda: pool.connection_count() == 1)
        peer = pool.peers()[0]
        written: list[int] = []
        pool.sendto(options(7), peer, written.append)
        spin(loop, 0.05)
        c.pump()
        assert not c.buf and not written  # nothing before the 101
        assert c.upgrade().startswith(b"HTTP/1.1 101 ")
        opcode, payload = c.next_frame()
        assert opcode == 0x1 and b"CSeq: 7 OPTIONS" in payload
        drive(loop, lambda: written == [0])


@pytest.mark.parametrize(
    "case", ["not SIP", "unmasked", "invalid UTF-8", "too big in one frame", "fragmented ping"]
)
def test_bad_frames_over_wss(loop: EventLoop, certs: Certs, case: str) -> None:
    """The same close codes through TLS (the close frame is written before the TLS close)."""
    pool = ws_pool("wss", "127.0.0.1", certs, MAX_SIP_HEADER=4096, MAX_SIP_BODY=4096)
    got: list[tuple[Packet, Addr]] = []
    pool.attach_eventloop(loop, answering(pool, got))
    frames, code = BAD_FRAMES[case]
    with pool, Raw(loop, addr_of(pool), certs.ca) as c:
        assert c.upgrade().startswith(b"HTTP/1.1 101 ")
        c.send(ws_frame(0x1, options(1).as_bytes()))
        assert c.next_frame()[1].startswith(b"SIP/2.0 200 OK")
        c.send(b"".join(frames))
        assert c.closed_with() == code
        drive(loop, lambda: pool.connection_count() == 0)
        assert len(got) == 1


# --------------------------------------------------------------------- another implementation


def test_interop_with_aiohttp_websockets(certs: Certs) -> None:
    """aiohttp's WebSocket client and server (an implementation of its own) against
    netsip's ws pools, on one asyncio loop (netsip through AsyncioEventLoop)."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web  # noqa: PLC0415  # only with aiohttp installed

    async def main() -> None:
        nloop = AsyncioEventLoop()
        srv = ws_pool("ws", "127.0.0.1")
        got: list[tuple[Packet, Addr]] = []
        srv.attach_eventloop(nloop, answering(srv, got))
        # aiohttp client -> netsip server: text and binary messages, a ping, the close
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{addr_of(srv).port}/", protocols=("sip",)) as ws,
        ):
            assert ws.protocol == "sip"
            await ws.send_str(options(1).as_bytes().decode())
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith("SIP/2.0 200 OK")
            await ws.send_bytes(options(2).as_bytes())
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert "CSeq: 2 OPTIONS" in msg.data
            await ws.ping(b"x")  # answered (aiohttp consumes the pong)
            await ws.close()
            assert ws.close_code == 1000
        # netsip client -> aiohttp server (which asks for the sip subprotocol too)
        received: list[str] = []

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(protocols=("sip",))
            await ws.prepare(request)
            async for m in ws:
                received.append(m.data)
                await ws.send_str("SIP/2.0 200 OK\r\n" + m.data.split("\r\n", 1)[1])
            return ws

        app = web.Application()
        app.router.add_get("/sip", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cli = ws_pool("ws", "127.0.0.1", ws={"path": "/sip"})
        answered: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        cli.attach_eventloop(nloop, lambda packet, _from: answered.set_result(packet))
        cli.sendto(options(3), Addr("127.0.0.1", port, socket.AF_INET))
        assert (await asyncio.wait_for(answered, 10)).cseq() == "3 OPTIONS"
        assert received[0].startswith("OPTIONS sip:bob@example.com SIP/2.0\r\n")
        cli.close()
        srv.close()
        await runner.cleanup()

    loop = new_asyncio_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_without_wsproto_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['wsproto'] = None\n"
        "from netsip.socketpool import SocketPool\n"
        "from netsip.testing import tcp_listener\n"
        "from netsip.util import NetSIPError\n"
        "t = tcp_listener()\n"
        "try:\n"
        "    SocketPool('ws', t)\n"
        "except NetSIPError as exc:\n"
        "    print(exc)\n"
        "t.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=python_env(), capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "the ws transport needs wsproto: pip install 'netsip[ws]'"


def test_host_header() -> None:
    assert _hostport(Addr("127.0.0.1", 80, socket.AF_INET), "ws") == "127.0.0.1"
    assert _hostport(Addr("127.0.0.1", 8080, socket.AF_INET), "ws") == "127.0.0.1:8080"
    assert _hostport(Addr("::1", 443, socket.AF_INET6), "wss") == "[::1]"
    assert _hostport(Addr("::1", 80, socket.AF_INET6), "wss") == "[::1]:80"
    named = Addr("127.0.0.1", 8443, socket.AF_INET, "sip.example.org")
    assert _hostport(named, "wss") == "sip.example.org:8443"
