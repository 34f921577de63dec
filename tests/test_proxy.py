"""Tests for netsip.proxy over loopback; the ends are raw sockets or netsip dispatchers.

Sections: forwarding and Via/branch handling; Max-Forwards and loops;
routing (loose, strict, Record-Route, registrar lookup, domains); bad input;
transports and families (UDP, TCP, TLS, IPv4, IPv6, the 1300-byte rule,
keep-alives); Contact rewriting; the NAT helper.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netsip._rewrite import ContactCrypt, decode_base32, encode_base32
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.proxy import MTU_LIMIT, NatBasic, StatelessProxy
from netsip.sdp import SDP
from netsip.util import Addr, Proto, Var, sip_hdrval2parts
from tests.support import (
    Kamailio,
    PipeReader,
    TlsFiles,
    connect,
    datagrams,
    drive,
    free_udp_tcp_port,
    have_ipv6,
    make_tls_files,
    pkt,
    require_kamailio,
    require_perl_netsip,
    require_sipp,
    sipp_stats,
    spin,
    start_perl_peer,
    udp_socket,
)

# ------------------------------------------------------------------ helpers


@dataclass
class Peer:
    """A netsip end: a dispatcher whose receiver records packets and answers requests."""

    disp: Dispatcher
    answer: int | None = 200
    contact: str | None = None
    got: list[tuple[Packet, Addr]] = field(default_factory=list)

    def leg(self, proto: Proto = "udp") -> Leg:
        return next(leg for leg in self.disp.legs if leg.proto == proto)

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        self.got.append((packet, from_))
        if isinstance(packet, Request) and packet.method() != "ACK" and self.answer is not None:
            hdrs = {"contact": self.contact} if self.contact else None
            resp = packet.create_response(self.answer, None, hdrs)
            self.disp.deliver(resp, leg=leg, dst_addr=from_)

    def requests(self) -> list[Request]:
        return [p for p, _ in self.got if isinstance(p, Request)]

    def responses(self) -> list[Response]:
        return [p for p, _ in self.got if isinstance(p, Response)]


@dataclass
class World:
    """What a test opened: closed at the end."""

    loop: EventLoop
    dispatchers: list[Dispatcher] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def proxy(
        self, *legs: Leg, outgoing_proxy: str | None = None, **kw: object
    ) -> tuple[StatelessProxy, Dispatcher]:
        disp = Dispatcher(
            list(legs), self.loop, do_retransmits=False, outgoing_proxy=outgoing_proxy
        )
        self.dispatchers.append(disp)
        proxy = StatelessProxy(dispatcher=disp, **kw)  # type: ignore[arg-type]  # test kwargs
        disp.set_receiver(proxy)
        return proxy, disp

    def peer(self, *legs: Leg, answer: int | None = 200, contact: str | None = None) -> Peer:
        disp = Dispatcher(list(legs), self.loop)
        self.dispatchers.append(disp)
        peer = Peer(disp, answer, contact)
        disp.set_receiver(peer)
        return peer

    def udp(self, ip: str = "127.0.0.1") -> socket.socket:
        s = udp_socket(ip)
        s.setblocking(False)
        self.sockets.append(s)
        return s

    def recv(self, s: socket.socket, n: int = 1, seconds: float = 5.0) -> list[Packet]:
        """Run the loop until ``s`` got ``n`` datagrams; they, parsed."""
        got: list[bytes] = []

        def more() -> bool:
            got.extend(datagrams(s))
            return len(got) >= n

        drive(self.loop, more, seconds)
        return [pkt(d) for d in got]

    def nothing(self, s: socket.socket) -> None:
        spin(self.loop, 0.2)
        assert datagrams(s) == []

    def until(self, cond: object, seconds: float = 5.0) -> None:
        drive(self.loop, cond, seconds)  # type: ignore[arg-type]  # a zero-argument callable


@pytest.fixture
def world(loop: EventLoop) -> Iterator[World]:
    w = World(loop)
    yield w
    for d in w.dispatchers:
        d.close()
    for s in w.sockets:
        s.close()


def udp_leg(ip: str = "127.0.0.1", port: int = 0) -> Leg:
    return Leg(addr=ip, port=port, proto="udp")


def tcp_leg(ip: str = "127.0.0.1", port: int = 0) -> Leg:
    return Leg(addr=ip, port=port, proto="tcp")


def hostport(a: Addr | Leg) -> str:
    src = a.src if isinstance(a, Leg) else a
    return f"[{src.addr}]:{src.port}" if ":" in src.addr else f"{src.addr}:{src.port}"


def sock_addr(s: socket.socket) -> Addr:
    return Addr.parse(s.getsockname()[:2])


def raw_request(
    method: str,
    uri: str,
    src: socket.socket,
    *,
    branch: str = "z9hG4bKclient1",
    callid: str = "call-1@test",
    cseq: int = 1,
    max_forwards: str | None = "70",
    headers: Sequence[str] = (),
    body: bytes = b"",
    to_tag: str | None = None,
    sent_by: str | None = None,
) -> bytes:
    """A request as a UA on ``src`` sends it (Via with rport)."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {sent_by or hostport(sock_addr(src))};branch={branch};rport",
        "From: <sip:alice@example.com>;tag=alice1",
        f"To: <sip:bob@example.com>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {callid}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@" + hostport(sock_addr(src)) + ">",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += list(headers)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def raw_response(request: Packet, code: int = 200, headers: Sequence[str] = ()) -> bytes:
    assert isinstance(request, Request)
    resp = request.create_response(code)
    for h in headers:
        name, _, value = h.partition(":")
        resp.add_header(name, value.strip())
    return resp.as_bytes()


def branch_of(via: str) -> str:
    return sip_hdrval2parts("via", via)[1]["branch"] or ""


def send(s: socket.socket, data: bytes, to: Addr | Leg) -> None:
    a = to.src if isinstance(to, Leg) else to
    s.sendto(data, (a.addr, a.port))


# ------------------------------------------------- forwarding, Via and branch


def test_request_and_response_through_one_leg(world: World) -> None:
    leg = udp_leg()
    _, _ = world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uas_uri = f"sip:bob@{hostport(sock_addr(uas))}"
    # the UAC's Via lies about its address: the response must still reach it (RFC 3581)
    send(uac, raw_request("OPTIONS", uas_uri, uac, sent_by="192.0.2.1:9"), leg)
    (req,) = world.recv(uas)
    assert isinstance(req, Request)
    assert req.uri() == uas_uri
    vias = req.get_headers("via")
    assert len(vias) == 2
    assert vias[0].startswith(f"SIP/2.0/UDP {hostport(leg)};branch={leg.branch}")
    # the dispatcher wrote where the request really came from into the UAC's Via
    assert f"received={sock_addr(uac).addr}" in vias[1]
    assert f"rport={sock_addr(uac).port}" in vias[1]
    assert req.get_header("max-forwards") == "69"
    assert req.get_headers("record-route") == [f"<{leg.contact};lr>"]
    # no Contact/Allow/Supported added by the proxy
    assert req.get_headers("allow") == []

    send(uas, raw_response(req, 200), leg)
    (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 200
    assert len(resp.get_headers("via")) == 1
    assert branch_of(resp.get_headers("via")[0]) == "z9hG4bKclient1"


def test_retransmission_cancel_and_ack_keep_the_branch(world: World) -> None:
    """RFC 3261 16.11: the branch is derived statelessly, so the downstream matches them."""
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    invite = raw_request("INVITE", uri, uac)
    send(uac, invite, leg)
    send(uac, invite, leg)  # a retransmission
    send(uac, raw_request("CANCEL", uri, uac), leg)
    send(uac, raw_request("ACK", uri, uac, to_tag="bob1"), leg)  # ACK of a non-2xx
    got = world.recv(uas, 4)
    branches = {branch_of(p.get_headers("via")[0]) for p in got}
    assert [p.method() for p in got] == ["INVITE", "INVITE", "CANCEL", "ACK"]
    assert len(branches) == 1
    # another transaction (another client branch) gets another branch
    send(uac, raw_request("INVITE", uri, uac, branch="z9hG4bKclient2", cseq=2), leg)
    (other,) = world.recv(uas)
    assert branch_of(other.get_headers("via")[0]) not in branches


def test_response_not_for_the_proxy_is_dropped(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    leg = udp_leg()
    world.proxy(leg)
    a, b = world.udp(), world.udp()
    req = pkt(raw_request("OPTIONS", "sip:bob@example.com", b))
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        send(a, raw_response(req, 200), leg)
        world.nothing(b)
    assert "not for me" in caplog.text


# ------------------------------------------------------- Max-Forwards, loops


@pytest.mark.parametrize(
    ("given", "forwarded"), [("70", "69"), ("1", "0"), ("200", "69"), (None, "70")]
)
def test_max_forwards(world: World, given: str | None, forwarded: str) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    send(uac, raw_request("OPTIONS", uri, uac, max_forwards=given), leg)
    (req,) = world.recv(uas)
    assert req.get_header("max-forwards") == forwarded


def test_max_forwards_zero_gets_483(world: World, caplog: pytest.LogCaptureFixture) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        send(uac, raw_request("INVITE", uri, uac, max_forwards="0"), leg)
        (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 483
    assert "483" in caplog.text
    assert datagrams(uas) == []


def test_garbage_max_forwards(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """From the network the parser refuses it: the socket pool answers 400 with a
    Warning, nothing is forwarded; handed in, the proxy answers 400."""
    leg = udp_leg()
    proxy, _ = world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    with caplog.at_level(logging.INFO):
        send(uac, raw_request("OPTIONS", uri, uac, max_forwards="lots"), leg)
        world.nothing(uas)
    assert "max-forwards" in caplog.text
    (refused,) = world.recv(uac)
    assert isinstance(refused, Response) and refused.code() == 400
    assert "max-forwards" in (refused.get_header("warning") or "")
    req = pkt(raw_request("OPTIONS", uri, uac))
    req.set_header("max-forwards", "-3")
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        assert proxy.receive(req, leg, sock_addr(uac))
        (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and (resp.code(), resp.msg()) == (400, "Bad Max-Forwards")
    assert datagrams(uas) == []
    # still forwarding
    send(uac, raw_request("OPTIONS", uri, uac, branch="z9hG4bKok"), leg)
    assert world.recv(uas)[0].method() == "OPTIONS"


def test_loop_between_two_proxies_gets_482(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 3261 16.3 step 4: P1 -> P2 -> P1 with the same Request-URI is a loop."""
    l1, l2 = udp_leg(), udp_leg()
    world.proxy(l1, outgoing_proxy=hostport(l2))
    world.proxy(l2, outgoing_proxy=hostport(l1))
    uac = world.udp()
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        send(uac, raw_request("INVITE", "sip:bob@example.com", uac), l1)
        (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 482
    assert len(resp.get_headers("via")) == 1  # every proxy Via was removed on the way back
    assert "loop" in caplog.text


def test_spiral_is_forwarded(world: World) -> None:
    """A request carrying the proxy's Via with another loop key is spiralling: forwarded."""
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    mine = f"Via: SIP/2.0/UDP {hostport(leg)};branch={leg.branch}{'0' * 20}"
    send(uac, raw_request("OPTIONS", uri, uac, headers=[mine]), leg)
    (req,) = world.recv(uas)
    assert len(req.get_headers("via")) == 3


# ------------------------------------------------------------------ routing


def test_loose_routing(world: World) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    routes = [f"Route: <{leg.contact};lr>", f"Route: <sip:{hostport(sock_addr(uas))};lr>"]
    send(uac, raw_request("BYE", "sip:bob@192.0.2.7", uac, headers=routes), leg)
    (req,) = world.recv(uas)
    assert isinstance(req, Request)
    assert req.uri() == "sip:bob@192.0.2.7"  # a loose router keeps the Request-URI
    assert req.get_headers("route") == [f"<sip:{hostport(sock_addr(uas))};lr>"]


def test_strict_router_before_the_proxy(world: World) -> None:
    """RFC 3261 16.4: the Request-URI is the proxy: the original URI is the last Route."""
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    target = f"sip:bob@{hostport(sock_addr(uas))}"
    send(uac, raw_request("BYE", leg.contact, uac, headers=[f"Route: <{target}>"]), leg)
    (req,) = world.recv(uas)
    assert isinstance(req, Request)
    assert req.uri() == target
    assert req.get_headers("route") == []


def test_strict_router_as_next_hop(world: World) -> None:
    """RFC 3261 16.6 step 6: a Route without lr becomes the Request-URI."""
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    strict = f"sip:{hostport(sock_addr(uas))}"
    send(uac, raw_request("BYE", "sip:bob@192.0.2.7", uac, headers=[f"Route: <{strict}>"]), leg)
    (req,) = world.recv(uas)
    assert isinstance(req, Request)
    assert req.uri() == strict
    assert req.get_headers("route") == ["<sip:bob@192.0.2.7>"]


def test_lookup_and_domains(world: World, caplog: pytest.LogCaptureFixture) -> None:
    leg = udp_leg()
    uac, uas = world.udp(), world.udp()
    bindings = {"sip:bob@example.com": [f"<sip:bob@{hostport(sock_addr(uas))}>"]}
    asked: list[str] = []

    def lookup(aor: str) -> list[str]:
        asked.append(aor)
        return bindings.get(aor, [])

    world.proxy(leg, lookup=lookup, domains=["example.com", "*.example.org"])
    send(uac, raw_request("INVITE", "sip:bob@example.com", uac), leg)
    (req,) = world.recv(uas)
    assert isinstance(req, Request)
    assert req.uri() == f"sip:bob@{hostport(sock_addr(uas))}"
    assert asked == ["sip:bob@example.com"]
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        # nobody registered in a served domain: 480 (RFC 3261 16.5)
        send(uac, raw_request("INVITE", "sip:carol@sub.example.org", uac, branch="z9hG4bK2"), leg)
        (r480,) = world.recv(uac)
        # another domain: not relayed
        foreign = raw_request("INVITE", "sip:dave@example.net", uac, branch="z9hG4bK3")
        send(uac, foreign.replace(b"alice@example.com", b"alice@example.net"), leg)
        (r403,) = world.recv(uac)
    assert isinstance(r480, Response) and r480.code() == 480
    assert isinstance(r403, Response) and (r403.code(), r403.msg()) == (403, "Relaying Forbidden")
    assert "403" in caplog.text and "480" in caplog.text
    assert datagrams(uas) == []
    # one of ours calling out is relayed (From in a served domain)
    out = raw_request("OPTIONS", f"sip:dave@{hostport(sock_addr(uas))}", uac, branch="z9hG4bK4")
    send(uac, out.replace(b"alice@example.com", b"alice@sub.example.org"), leg)
    assert world.recv(uas)[0].method() == "OPTIONS"


def test_lookup_with_a_registrar_query(world: World) -> None:
    """The hook fits a registrar's ``query(aor) -> list[str]``."""

    class Registrar:
        def query(self, aor: str) -> list[str]:
            return [f"sip:bob@{hostport(sock_addr(uas))}"] if aor == "sip:bob@example.com" else []

    leg = udp_leg()
    uac, uas = world.udp(), world.udp()
    world.proxy(leg, lookup=Registrar().query)
    send(uac, raw_request("MESSAGE", "sip:bob@example.com", uac), leg)
    (req,) = world.recv(uas)
    assert req.method() == "MESSAGE"


def test_requests_to_the_proxy_itself(world: World) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac = world.udp()
    send(uac, raw_request("OPTIONS", leg.contact, uac), leg)
    (r200,) = world.recv(uac)
    assert isinstance(r200, Response) and r200.code() == 200
    assert r200.get_headers("allow")
    # a user at the proxy's own address, nobody to look it up: not forwarded to itself
    send(uac, raw_request("INVITE", f"sip:bob@{hostport(leg)}", uac, branch="z9hG4bK2"), leg)
    (r404,) = world.recv(uac)
    assert isinstance(r404, Response) and r404.code() == 404


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Route: <http://example.com/x>", "Bad Route Header"),
        ("Route: <sip:>", "Bad Route Header"),
        ("Record-Route: <mailto:a@b>", "Bad Record-Route Header"),
    ],
)
def test_garbage_route_gets_400(
    world: World, caplog: pytest.LogCaptureFixture, header: str, reason: str
) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        send(uac, raw_request("INVITE", uri, uac, headers=[header]), leg)
        (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and (resp.code(), resp.msg()) == (400, reason)
    assert reason in caplog.text
    assert datagrams(uas) == []


def test_unparseable_route_is_dropped_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    with caplog.at_level(logging.INFO):
        send(uac, raw_request("INVITE", uri, uac, headers=["Route: <sip:x@y"]), leg)
        world.nothing(uas)
    assert "route" in caplog.text.lower()
    (refused,) = world.recv(uac)  # from the socket pool: the parser refused it
    assert isinstance(refused, Response) and refused.code() == 400


def test_proxy_require_and_scheme(world: World) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    send(uac, raw_request("INVITE", uri, uac, headers=["Proxy-Require: foo, bar"]), leg)
    (r420,) = world.recv(uac)
    assert isinstance(r420, Response) and r420.code() == 420
    assert r420.get_headers("unsupported") == ["foo", "bar"]
    send(uac, raw_request("INVITE", "tel:+4930123", uac, branch="z9hG4bK2"), leg)
    (r416,) = world.recv(uac)
    assert isinstance(r416, Response) and r416.code() == 416
    # ACK is never answered
    send(uac, raw_request("ACK", "tel:+4930123", uac, branch="z9hG4bK2", to_tag="x"), leg)
    world.nothing(uac)
    assert datagrams(uas) == []


def test_unreachable_next_hop_gets_503(world: World) -> None:
    leg = udp_leg()
    world.proxy(leg)
    uac = world.udp()
    # no TLS leg: nothing can reach it
    send(uac, raw_request("INVITE", "sip:bob@127.0.0.1:5999;transport=tls", uac), leg)
    (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 503


# ------------------------------------------------ transports and families


def test_udp_to_tcp_with_double_record_route(world: World) -> None:
    """RFC 5658: a request changing legs records both; responses go back over UDP."""
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    uas = world.peer(tcp_leg())
    uac = world.udp()
    uri = f"sip:bob@{hostport(uas.leg('tcp'))};transport=tcp"
    send(uac, raw_request("INVITE", uri, uac), pu)
    world.until(uas.requests)
    req = uas.requests()[0]
    assert uas.got[0][1].proto == "tcp"
    assert req.get_headers("record-route") == [f"<{pt.contact};lr>", f"<{pu.contact};lr>"]
    assert pt.contact.endswith(";transport=tcp")
    vias = req.get_headers("via")
    assert vias[0].startswith("SIP/2.0/TCP ") and vias[1].startswith("SIP/2.0/UDP ")
    (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 200
    assert len(resp.get_headers("via")) == 1
    # the callee's side of the dialog: a BYE with the route set goes back to the UAC
    bye = Request(
        "BYE",
        f"sip:alice@{hostport(sock_addr(uac))}",
        {
            "route": [f"<{pt.contact};lr>", f"<{pu.contact};lr>"],
            "from": "<sip:bob@example.com>;tag=b",
            "to": "<sip:alice@example.com>;tag=alice1",
            "call-id": "call-1@test",
            "cseq": "1 BYE",
            "max-forwards": "70",
        },
    )
    uas.disp.deliver(
        bye, leg=uas.leg("tcp"), dst_addr=Addr(pt.src.addr, pt.src.port, pt.src.family, None, "tcp")
    )
    (got,) = world.recv(uac)
    assert isinstance(got, Request) and got.method() == "BYE"
    assert got.get_headers("route") == []


def test_tcp_to_udp(world: World) -> None:
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    uac = world.peer(tcp_leg(), answer=None)
    uas = world.peer(udp_leg())
    req = Request(
        "OPTIONS",
        f"sip:bob@{hostport(uas.leg())}",
        {
            "route": f"<{pt.contact};lr>",
            "from": "<sip:alice@example.com>;tag=a",
            "to": "<sip:bob@example.com>",
            "call-id": "tcp-udp",
            "cseq": "1 OPTIONS",
            "max-forwards": "70",
        },
    )
    uac.disp.deliver(req)
    world.until(uac.responses)
    assert uac.responses()[0].code() == 200
    assert uac.got[0][1].proto == "tcp"
    assert uas.got[0][1].proto == "udp"


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_ipv4_to_ipv6_and_back(world: World) -> None:
    p4, p6 = udp_leg("127.0.0.1"), udp_leg("::1")
    world.proxy(p4, p6)
    uac, uas = world.udp("127.0.0.1"), world.udp("::1")
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    send(uac, raw_request("INVITE", uri, uac), p4)
    (req,) = world.recv(uas)
    vias = req.get_headers("via")
    assert vias[0].startswith(f"SIP/2.0/UDP [::1]:{p6.src.port};")
    assert vias[1].startswith(f"SIP/2.0/UDP 127.0.0.1:{p4.src.port};")
    assert req.get_headers("record-route") == [f"<{p6.contact};lr>", f"<{p4.contact};lr>"]
    send(uas, raw_response(req, 180), p6)
    (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 180


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory, "localhost", "127.0.0.1", "::1")


def tls_leg(files: TlsFiles) -> Leg:
    return Leg(
        addr="127.0.0.1",
        port=0,
        proto="tls",
        tls={"certfile": files.cert, "keyfile": files.key, "cafile": files.ca},
    )


def test_udp_to_tls(world: World, tls_files: TlsFiles) -> None:
    pu, ps = udp_leg(), tls_leg(tls_files)
    world.proxy(pu, ps)
    uas = world.peer(tls_leg(tls_files))
    uac = world.udp()
    uri = f"sip:bob@{hostport(uas.leg('tls'))};transport=tls"
    send(uac, raw_request("INVITE", uri, uac), pu)
    world.until(uas.requests)
    assert uas.got[0][1].proto == "tls"
    assert uas.requests()[0].get_headers("record-route")[0] == f"<{ps.contact};lr>"
    assert ps.contact.startswith("sips:")
    (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 200


def _big(n: int) -> bytes:
    return b"x" * n


def test_big_request_goes_over_tcp(world: World) -> None:
    """RFC 3261 18.1.1: above 1300 bytes over TCP when the next hop offers it."""
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    port = free_udp_tcp_port()
    uas = world.peer(udp_leg(port=port), tcp_leg(port=port))
    uac = world.udp()
    uri = f"sip:bob@127.0.0.1:{port}"
    headers = ["Content-Type: text/plain"]
    send(uac, raw_request("MESSAGE", uri, uac, headers=headers, body=_big(100)), pu)
    world.until(lambda: len(uas.requests()) == 1)
    assert uas.got[0][1].proto == "udp"
    big = raw_request(
        "MESSAGE", uri, uac, headers=headers, body=_big(MTU_LIMIT), branch="z9hG4bKb", cseq=2
    )
    send(uac, big, pu)
    world.until(lambda: len(uas.requests()) == 2)
    assert uas.got[-1][1].proto == "tcp"
    assert uas.requests()[1].get_headers("via")[0].startswith("SIP/2.0/TCP ")
    assert len(uas.requests()[1].body()) == MTU_LIMIT
    # the 200 goes back over UDP to the UAC
    got = world.recv(uac, 2)
    assert {p.code() for p in got if isinstance(p, Response)} == {200}


def test_big_request_falls_back_to_udp(world: World) -> None:
    """RFC 3261 18.1.1: a refused TCP connection: the request is sent over UDP."""
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    port = free_udp_tcp_port()
    uas = world.peer(udp_leg(port=port))  # nothing on TCP
    uac = world.udp()
    uri = f"sip:bob@127.0.0.1:{port}"
    big = raw_request("MESSAGE", uri, uac, headers=["Content-Type: text/plain"], body=_big(1500))
    send(uac, big, pu)
    world.until(uas.requests)
    assert uas.got[0][1].proto == "udp"
    assert uas.requests()[0].get_headers("via")[0].startswith("SIP/2.0/UDP ")


def test_crlf_keepalive_gets_pong(world: World) -> None:
    """RFC 5626 4.4.1: a CRLF CRLF ping on a TCP connection is answered with a CRLF pong."""
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    c = connect(pt.src)
    world.sockets.append(c)
    c.setblocking(False)
    c.send(b"\r\n\r\n")
    got = bytearray()

    def read() -> bool:
        with contextlib.suppress(BlockingIOError):
            got.extend(c.recv(100))
        return len(got) >= 2

    world.until(read)
    assert bytes(got) == b"\r\n"
    c.send(b"\r\n\r\n\r\n\r\n")  # two pings, two pongs
    world.until(lambda: read() and len(got) >= 6)
    assert bytes(got) == b"\r\n" * 3
    # the connection still carries SIP: a request gets forwarded, its answer comes back
    uas = world.udp()
    req = raw_request("OPTIONS", f"sip:bob@{hostport(sock_addr(uas))};transport=udp", uas)
    req = req.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    c.send(req)
    (fwd,) = world.recv(uas)
    assert fwd.method() == "OPTIONS"


# ------------------------------------------------------ Contact rewriting


def _contact_uri(p: Packet) -> str:
    value = p.get_header("contact")
    assert value is not None
    m = re.search(r"<([^>]*)>", value)
    assert m is not None
    return m.group(1)


def test_force_rewrite_and_back(world: World) -> None:
    leg = udp_leg()
    world.proxy(leg, force_rewrite=True)
    uac, uas = world.udp(), world.udp()
    original = f"sip:alice@{hostport(sock_addr(uac))}"
    send(uac, raw_request("INVITE", f"sip:bob@{hostport(sock_addr(uas))}", uac), leg)
    (req,) = world.recv(uas)
    rewritten = _contact_uri(req)
    m = re.fullmatch(rf"sip:(b[A-Z2-7]+)@{re.escape(hostport(leg))}", rewritten)
    assert m is not None, rewritten
    assert "alice" not in rewritten
    # the callee's request to that Contact goes back to the caller, URI restored
    bye = raw_request("BYE", rewritten, uas, branch="z9hG4bKbye")
    send(uas, bye, leg)
    (back,) = world.recv(uac)
    assert isinstance(back, Request) and back.uri() == original
    # a forged token is not ours: no rewriting, and the proxy does not forward to itself
    forged = "b" + m.group(1)[1:][::-1]
    send(uas, raw_request("BYE", f"sip:{forged}@{hostport(leg)}", uas, branch="z9hG4bKf"), leg)
    (resp,) = world.recv(uas)
    assert isinstance(resp, Response) and resp.code() == 404


def test_contact_rewritten_between_legs_and_back_in_the_response(world: World) -> None:
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    uas = world.peer(tcp_leg(), contact=None)
    uas.contact = f"<sip:bob@{hostport(uas.leg('tcp'))};transport=tcp>"
    uac = world.udp()
    uri = f"sip:bob@{hostport(uas.leg('tcp'))};transport=tcp"
    send(uac, raw_request("INVITE", uri, uac), pu)
    world.until(uas.requests)
    req = uas.requests()[0]
    # toward the TCP side the Contact is the TCP leg's URI with a token
    assert re.fullmatch(
        rf"sip:b[A-Z2-7]+@{re.escape(hostport(pt))};transport=tcp", _contact_uri(req)
    )
    (resp,) = world.recv(uac)
    # the callee's Contact toward the UDP side: a token at the UDP leg
    assert re.fullmatch(rf"sip:b[A-Z2-7]+@{re.escape(hostport(pu))}", _contact_uri(resp))
    # a REGISTER's 200 echoes the rewritten Contact: it is rewritten back
    reg = raw_request("REGISTER", uri, uac, branch="z9hG4bKreg", cseq=2)
    uas.answer = None
    send(uac, reg, pu)
    world.until(lambda: len(uas.requests()) == 2)
    reg_fwd = uas.requests()[1]
    assert reg_fwd.get_headers("record-route") == []  # RFC 3261 10.2: not for REGISTER
    token_contact = reg_fwd.get_header("contact")
    assert token_contact is not None
    uas.disp.deliver(
        reg_fwd.create_response(200, None, {"contact": token_contact}),
        leg=uas.leg("tcp"),
        dst_addr=uas.got[1][1],
    )
    got = world.recv(uac)
    assert _contact_uri(got[0]) == f"sip:alice@{hostport(sock_addr(uac))}"


def test_custom_rewrite_crypt(world: World) -> None:
    calls: list[int] = []
    crypt = ContactCrypt(b"shared secret")

    def my_crypt(data: bytes, dir: int, add2mac: bytes) -> bytes | None:
        calls.append(dir)
        return crypt(data, dir, add2mac)

    leg = udp_leg()
    world.proxy(leg, force_rewrite=True, rewrite_crypt=my_crypt)
    uac, uas = world.udp(), world.udp()
    send(uac, raw_request("INVITE", f"sip:bob@{hostport(sock_addr(uas))}", uac), leg)
    (req,) = world.recv(uas)
    assert calls == [1]
    send(uas, raw_request("BYE", _contact_uri(req), uas, branch="z9hG4bKbye"), leg)
    (back,) = world.recv(uac)
    assert back.method() == "BYE"
    # decrypted the URI, then encrypted the BYE's own Contact (force_rewrite)
    assert calls == [1, -1, 1]


def test_contact_crypt_rejects_tampering() -> None:
    crypt = ContactCrypt()
    token = crypt(b"sip:alice@10.0.0.1", 1, b"legs")
    assert token is not None
    assert crypt(token, -1, b"legs") == b"sip:alice@10.0.0.1"
    assert crypt(token, -1, b"other legs") is None
    flipped = bytes([token[0] ^ 1]) + token[1:]
    assert crypt(flipped, -1, b"legs") is None
    assert crypt(b"short", -1, b"") is None
    assert ContactCrypt(b"k1")(token, -1, b"legs") is None
    assert decode_base32(encode_base32(token)) == token
    assert decode_base32("1!") is None


def test_custom_rewrite_contact_callback(world: World) -> None:
    """A Perl-style callback: a word for a contact, ``user@host`` back."""
    table: dict[str, str] = {}

    def rewrite(contact: str, leg_in: Leg, leg_out: object, force: bool = False) -> str | None:
        if "@" in contact:
            key = f"k{len(table)}"
            table[key] = contact.split(":", 1)[1]  # without the scheme, as Perl's
            return key
        return table.get(contact)

    leg = udp_leg()
    world.proxy(leg, force_rewrite=True, rewrite_contact=rewrite)
    uac, uas = world.udp(), world.udp()
    send(uac, raw_request("INVITE", f"sip:bob@{hostport(sock_addr(uas))}", uac), leg)
    (req,) = world.recv(uas)
    assert _contact_uri(req) == f"sip:k0@{hostport(leg)}"
    send(uas, raw_request("BYE", f"sip:k0@{hostport(leg)}", uas, branch="z9hG4bKbye"), leg)
    (back,) = world.recv(uac)
    assert isinstance(back, Request) and back.uri() == f"sip:alice@{hostport(sock_addr(uac))}"


# ------------------------------------------------------------ NAT helper


@dataclass
class TrivialNAT:
    """Allocates one fixed address for every media, records what it was asked."""

    calls: list[tuple[str, NatBasic]] = field(default_factory=list)
    fail: bool = False

    def allocate_sockets(
        self, nat: NatBasic, side: int, addr: str, media: list[dict[str, object]]
    ) -> list[tuple[str, int]] | None:
        self.calls.append((f"allocate {side} {addr} {len(media)}", nat))
        if self.fail:
            return None
        return [("127.0.0.9", 40000 + 2 * i) for i in range(len(media))]

    def activate_session(self, nat: NatBasic) -> bool:
        self.calls.append(("activate", nat))
        return True

    def close_session(self, nat: NatBasic) -> list[object]:
        self.calls.append(("close", nat))
        return []


SDP_BODY = (
    b"v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\n"
    b"m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def test_nathelper(world: World) -> None:
    nat = TrivialNAT()
    pu, pt = udp_leg(), tcp_leg()
    proxy, _ = world.proxy(pu, pt, nathelper=nat)
    assert proxy.nathelper is nat
    uas = world.peer(tcp_leg(), answer=None)
    uac = world.udp()
    uri = f"sip:bob@{hostport(uas.leg('tcp'))};transport=tcp"
    sdp = ["Content-Type: application/sdp"]
    send(uac, raw_request("INVITE", uri, uac, headers=sdp, body=SDP_BODY), pu)
    world.until(uas.requests)
    media = SDP.new_from_string(uas.requests()[0].body()).get_media()
    assert (media[0]["addr"], media[0]["port"]) == ("127.0.0.9", 40000)
    kinds = [k for k, _ in nat.calls]
    assert kinds == [f"allocate 0 {pt.laddr(0)} 1", "activate"]
    basic = nat.calls[0][1]
    assert (basic.callid, basic.cseq) == ("call-1@test", 1)
    assert basic.uri_from == "sip:alice@example.com" and basic.uri_to == "sip:bob@example.com"
    assert basic.idfrom.endswith(pu.laddr(1)) and basic.idto.endswith(pt.laddr(1))
    # CANCEL closes the transaction's session, BYE the whole call
    send(uac, raw_request("CANCEL", uri, uac), pu)
    send(uac, raw_request("BYE", uri, uac, branch="z9hG4bKbye", cseq=2, to_tag="b"), pu)
    world.until(lambda: len(uas.requests()) == 3)
    closes = [n for k, n in nat.calls if k == "close"]
    assert [n.cseq for n in closes] == [1, None]
    # a 486 to the INVITE closes the session too
    invite = uas.requests()[0]
    uas.disp.deliver(invite.create_response(486), leg=uas.leg("tcp"), dst_addr=uas.got[0][1])
    (resp,) = world.recv(uac)
    assert isinstance(resp, Response) and resp.code() == 486
    assert [k for k, _ in nat.calls].count("close") == 3
    # a 200 with SDP: sockets on the caller's side (side 1, the UDP leg), then the ACK
    nat.calls.clear()
    reinvite = raw_request(
        "INVITE", uri, uac, headers=sdp, body=SDP_BODY, branch="z9hG4bKre", cseq=3
    )
    send(uac, reinvite, pu)
    world.until(lambda: len(uas.requests()) == 4)
    ok = uas.requests()[3].create_response(200, None, {"content-type": "application/sdp"})
    ok.set_body(SDP_BODY)
    uas.disp.deliver(ok, leg=uas.leg("tcp"), dst_addr=uas.got[-1][1])
    (answer,) = world.recv(uac)
    assert SDP.new_from_string(answer.body()).get_media()[0]["addr"] == "127.0.0.9"
    send(uac, raw_request("ACK", uri, uac, branch="z9hG4bKack", cseq=3, to_tag="b"), pu)
    world.until(lambda: len(uas.requests()) == 5)
    assert [k for k, _ in nat.calls] == [
        f"allocate 0 {pt.laddr(0)} 1",
        "activate",
        f"allocate 1 {pu.laddr(0)} 1",
        "activate",
        "activate",
    ]


def test_nathelper_out_of_sockets_drops(world: World, caplog: pytest.LogCaptureFixture) -> None:
    nat = TrivialNAT(fail=True)
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt, nathelper=nat)
    uas = world.peer(tcp_leg(), answer=None)
    uac = world.udp()
    uri = f"sip:bob@{hostport(uas.leg('tcp'))};transport=tcp"
    with caplog.at_level(logging.INFO, logger="netsip.proxy"):
        send(
            uac,
            raw_request(
                "INVITE", uri, uac, headers=["Content-Type: application/sdp"], body=SDP_BODY
            ),
            pu,
        )
        spin(world.loop, 0.3)
    assert uas.requests() == []
    assert "allocation of RTP sockets failed" in caplog.text


def test_no_nat_on_one_leg(world: World) -> None:
    nat = TrivialNAT()
    leg = udp_leg()
    world.proxy(leg, nathelper=nat)
    uac, uas = world.udp(), world.udp()
    uri = f"sip:bob@{hostport(sock_addr(uas))}"
    send(
        uac,
        raw_request("INVITE", uri, uac, headers=["Content-Type: application/sdp"], body=SDP_BODY),
        leg,
    )
    (req,) = world.recv(uas)
    assert req.body() == SDP_BODY
    assert nat.calls == []


# ------------------------------------------------------ netsip UAs end to end


def test_call_between_simple_uas_through_the_proxy(world: World) -> None:
    """alice (UDP) calls bob@example.com (TCP) through the proxy: echo, then bob hangs up."""
    from netsip.simple import Call, Simple  # noqa: PLC0415  # (only this test needs the UA)

    loop = world.loop
    pu, pt = udp_leg(), tcp_leg()
    bob = Simple(from_="sip:bob@example.com", leg="tcp:127.0.0.1:0", loop=loop)
    bob_contact = f"sip:bob@{hostport(bob.default_leg())};transport=tcp"
    world.proxy(
        pu,
        pt,
        lookup=lambda aor: [bob_contact] if aor == "sip:bob@example.com" else [],
        domains=["example.com"],
    )
    alice = Simple(
        from_="sip:alice@example.net",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=hostport(pu),
    )
    try:
        b_calls: list[Call] = []
        echoed: list[bytes] = []
        invites: list[Request] = []

        def created(call: Call, request: Request, *_rest: object) -> bool:
            b_calls.append(call)
            invites.append(request)
            return True

        bob.listen(
            init_media=bob.rtp("media_recv_echo"),
            cb_create=created,
        )
        final: list[str] = []
        bye = Var[bool]()
        payloads = [bytes([i]) * 160 for i in range(10)]
        it = iter(payloads)
        call = alice.invite(
            "sip:bob@example.com",
            init_media=alice.rtp(
                "media_send_recv", lambda *_: next(it, None), 1, lambda p, *_: echoed.append(p)
            ),
            cb_final=lambda status, call, info: final.append(status),
            recv_bye=lambda param: setattr(bye, "value", True),
        )
        drive(loop, lambda: len(echoed) >= len(payloads), what="the echo through the proxy")
        assert final == ["OK"]
        assert echoed[: len(payloads)] == payloads
        # bob saw both Record-Routes (RFC 5658) and alice's Contact hidden behind a token
        rr = invites[0].get_headers("record-route")
        assert rr[:2] == [f"<{pt.contact};lr>", f"<{pu.contact};lr>"]
        assert re.search(r"sip:b[A-Z2-7]+@", invites[0].get_header("contact") or "")
        # bob hangs up: the BYE takes the route set back through the proxy
        b_calls[0].bye()
        drive(loop, lambda: bool(bye) and call.closed, what="alice heard bob's BYE")
    finally:
        alice.cleanup()
        bob.cleanup()


# ------------------------------------------------------------ live peers


def _sipp(sipp: str, args: list[str], cwd: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sipp,
            *args,
            "-i",
            "127.0.0.1",
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-trace_stat",
            "-stf",
            str(cwd / f"{name}.csv"),
            "-trace_err",
        ],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_uac_through_the_proxy_to_sipp_uas(
    world: World, tmp_path: Path, transport: str
) -> None:
    """sipp -sn uac -> proxy -> sipp -sn uas: INVITE, ACK, BYE, every call successful."""
    sipp = require_sipp()
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    proxy_port = (pu if transport == "u1" else pt).src.port
    uas_port = free_udp_tcp_port()
    calls = 50
    uas = _sipp(sipp, ["-sn", "uas", "-p", str(uas_port), "-t", transport], tmp_path, "uas")
    try:
        uac = _sipp(
            sipp,
            [
                f"127.0.0.1:{uas_port}",
                "-sn",
                "uac",
                "-rsa",
                f"127.0.0.1:{proxy_port}",
                "-t",
                transport,
                "-p",
                str(free_udp_tcp_port()),
                "-m",
                str(calls),
                "-r",
                "100",
            ],
            tmp_path,
            "uac",
        )
        try:
            world.until(lambda: uac.poll() is not None, 40)
        finally:
            if uac.poll() is None:
                uac.kill()
            _, err = uac.communicate(timeout=10)
        stats = sipp_stats(tmp_path / "uac.csv")
        assert stats["SuccessfulCall(C)"] == str(calls), (stats, err)
        assert stats["FailedCall(C)"] == "0", (stats, err)
        assert uac.returncode == 0, err
    finally:
        uas.kill()
        uas.communicate(timeout=10)


@pytest.mark.interop
def test_perl_netsip_server_behind_the_proxy(world: World) -> None:
    """netsip UAC over UDP -> proxy -> Perl Net::SIP over TCP: every OPTIONS answered."""
    require_perl_netsip()
    pu, pt = udp_leg(), tcp_leg()
    world.proxy(pu, pt)
    uac = world.peer(udp_leg(), answer=None)
    proc = start_perl_peer(
        "--mode", "server", "--proto", "tcp", "--listen", "127.0.0.1:0",
        "--count", "3", "--timeout", "20",
    )  # fmt: skip
    assert proc.stdout is not None
    out = PipeReader(world.loop, proc.stdout.fileno())
    try:
        world.until(out.has_line, 20)
        first = out.lines()[0].split()
        assert first[0] == "LISTENING", out.lines()
        uri = f"sip:perl@{first[1]}:{first[2]};transport=tcp"
        for n in range(3):
            req = Request(
                "OPTIONS",
                uri,
                {
                    "route": f"<{pu.contact};lr>",
                    "from": f"<sip:alice@example.com>;tag=p{n}",
                    "to": f"<{uri}>",
                    "call-id": f"perl-{n}@test",
                    "cseq": "1 OPTIONS",
                    "max-forwards": "70",
                },
            )
            uac.disp.deliver(req)
        world.until(lambda: len(uac.responses()) >= 3, 20)
        assert [r.code() for r in uac.responses()] == [200, 200, 200]
        world.until(lambda: bool(out.eof), 20)
        assert proc.wait(timeout=10) == 0, out.lines()
        seen = [line for line in out.lines() if line.startswith("REQUEST OPTIONS")]
        assert len(seen) == 3 and all(" tcp:" in line for line in seen), out.lines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()


@pytest.mark.interop
def test_sipp_through_the_proxy_and_kamailio(world: World, tmp_path: Path) -> None:
    """sipp -> proxy -> Kamailio (record-routing) -> netsip UAS; ACK and BYE by the route set."""
    sipp = require_sipp()
    require_kamailio()
    pu = udp_leg()
    world.proxy(pu)
    uas = world.peer(udp_leg())
    kam = Kamailio("record_route.cfg", tmp_path, f"sip:{hostport(uas.leg())};transport=udp")
    calls = 20
    try:
        uac = _sipp(
            sipp,
            [
                f"127.0.0.1:{kam.port}",
                "-sf", str(Path(__file__).resolve().parent / "sipp" / "uac_route_set.xml"),
                "-rsa", hostport(pu),
                "-t", "u1",
                "-p", str(free_udp_tcp_port()),
                "-m", str(calls),
                "-r", "20",
            ],
            tmp_path,
            "uac",
        )  # fmt: skip
        try:
            world.until(lambda: uac.poll() is not None, 40)
        finally:
            if uac.poll() is None:
                uac.kill()
            _, err = uac.communicate(timeout=10)
        stats = sipp_stats(tmp_path / "uac.csv")
        assert stats["SuccessfulCall(C)"] == str(calls), (stats, err, kam.log.read_text()[-2000:])
        assert uac.returncode == 0, err
    finally:
        kam.close()
    methods = [p.method() for p in uas.requests()]
    assert methods.count("INVITE") == calls and methods.count("BYE") == calls
    assert methods.count("ACK") == calls
    rr = uas.requests()[0].get_headers("record-route")
    assert rr[-1] == f"<{pu.contact};lr>" and len(rr) == 2


def test_registrar_and_proxy_in_a_chain(world: World) -> None:
    """Net::SIP's test_registrar_and_proxy: bob registers, alice calls him through the proxy.

    The registrar sees only REGISTER (an inner chain), so the proxy's ``lookup``
    and ``domains`` decide for everything else.
    """
    from netsip.chain import ReceiveChain  # noqa: PLC0415
    from netsip.registrar import Registrar  # noqa: PLC0415
    from netsip.simple import Call, Simple  # noqa: PLC0415

    loop = world.loop
    pu = udp_leg()
    disp = Dispatcher([pu], loop)
    world.dispatchers.append(disp)
    registrar = Registrar(dispatcher=disp, domains=["example.com"])
    proxy = StatelessProxy(dispatcher=disp, lookup=registrar.query, domains=["example.com"])
    disp.set_receiver(ReceiveChain([ReceiveChain([registrar], methods=["REGISTER"]), proxy]))

    bob = Simple(from_="sip:bob@example.com", leg="udp:127.0.0.1:0", loop=loop)
    alice = Simple(
        from_="sip:alice@example.net",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=hostport(pu),
    )
    try:
        assert bob.register(registrar=hostport(pu)) is not None, bob.error()
        assert registrar.query("sip:bob@example.com")
        b_calls: list[Call] = []

        def created(call: Call, *_rest: object) -> bool:
            b_calls.append(call)
            return True

        bob.listen(init_media=bob.rtp("media_recv_echo"), cb_create=created)
        final: list[str] = []
        call = alice.invite(
            "sip:bob@example.com", cb_final=lambda status, call, info: final.append(status)
        )
        drive(loop, lambda: bool(final) and bool(b_calls), what="bob answered")
        assert final == ["OK"]
        call.bye()
        drive(loop, lambda: call.closed, what="the BYE through the proxy")
        # nobody registered as carol: 480 from the proxy
        info: list[object] = []
        alice.invite(
            "sip:carol@example.com",
            cb_final=lambda status, call, i: info.append((status, i.get("code"))),
        )
        drive(loop, lambda: bool(info), what="carol's final response")
        assert info == [("FAIL", 480)]
    finally:
        alice.cleanup()
        bob.cleanup()


def test_registrar_in_front_rewrites_and_the_proxy_relays(world: World) -> None:
    """A chain [registrar, proxy]: the registrar rewrites the URI to bob's contact;
    the proxy (``domains``) relays it for an outside caller because ``lookup`` has it."""
    from netsip.chain import ReceiveChain  # noqa: PLC0415
    from netsip.registrar import Registrar  # noqa: PLC0415

    pu = udp_leg()
    disp = Dispatcher([pu], world.loop)
    world.dispatchers.append(disp)
    registrar = Registrar(dispatcher=disp, domains=["example.com"])
    proxy = StatelessProxy(dispatcher=disp, lookup=registrar.query, domains=["example.com"])
    disp.set_receiver(ReceiveChain([registrar, proxy]))
    bob, caller = world.udp(), world.udp()
    contact = f"sip:bob@{hostport(sock_addr(bob))}"
    register = raw_request("REGISTER", "sip:example.com", bob, headers=["Expires: 60"])
    register = register.replace(b"From: <sip:alice@example.com>", b"From: <sip:bob@example.com>")
    register = register.replace(b"Contact: <sip:alice@", b"Contact: <sip:bob@")
    send(bob, register, pu)
    (ok,) = world.recv(bob)
    assert isinstance(ok, Response) and ok.code() == 200, ok.as_string()
    invite = raw_request("INVITE", "sip:bob@example.com", caller, branch="z9hG4bKx", cseq=5)
    send(caller, invite.replace(b"alice@example.com", b"alice@example.net"), pu)
    (req,) = world.recv(bob)
    assert isinstance(req, Request) and req.uri() == contact
