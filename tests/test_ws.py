"""Tests for the WebSocket transports ``ws`` and ``wss`` (netsip._ws, RFC 7118), on loopback.

Round trips use two netsip pools (and a Leg, the CLI); the wire tests talk to
a pool through a plain socket with frames crafted here byte by byte
(:func:`ws_frame`), so that they test the wire and not wsproto against
itself. Certificates for ``wss`` come from a test CA (trustme).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from netsip._ws import frame, ws_options
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import (
    LOOPBACKS,
    collector,
    drive,
    family,
    pkt,
    tcp_listener,
)

pytestmark = [pytest.mark.usefixtures("restore_settings")]

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
