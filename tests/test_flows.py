"""Flows (:mod:`netsip.flows`): a registered client is reached over its connection.

RFC 5626 (outbound) and RFC 7118 5: a client whose Contact is
``...invalid`` (a browser over WebSocket; here the same case over TCP)
accepts no connections. The registrar remembers the connection its REGISTER
came on, the proxy sends requests for it over that connection and
record-routes with a flow token so that in-dialog requests find it. Real
loopback sockets; netsip user agents (Simple) on both sides of the proxy.
Also: the 1,300-byte rule of RFC 3261 18.1.1 in the dispatcher.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netsip.chain import ReceiveChain
from netsip.dispatcher import MTU_LIMIT, Dispatcher
from netsip.eventloop import EventLoop
from netsip.flows import Flow, FlowTable, FlowTokens, contact_key, needs_flow
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.proxy import StatelessProxy
from netsip.registrar import Registrar
from netsip.simple import Call, Simple
from netsip.stateful_proxy import StatefulProxy
from netsip.testing import FakeClock, advance, connect, open_fds
from netsip.util import Addr
from tests.support import (
    Listen,
    RedisServer,
    datagrams,
    drive,
    free_udp_tcp_port,
    netsip_command,
    pkt,
    spin,
    udp_socket,
)

#: the transports of the client side: TCP, and WebSocket (RFC 7118) as a browser's
STREAMS = ["tcp", "ws"]

# ------------------------------------------------------------------ a proxy


@dataclass
class Server:
    """A registrar and a proxy for example.com on a UDP and a TCP leg."""

    loop: EventLoop
    disp: Dispatcher
    registrar: Registrar
    proxy: StatelessProxy
    pu: Leg
    pt: Leg
    replies: list[Response] = field(default_factory=list)

    @property
    def udp_uri(self) -> str:
        return f"sip:127.0.0.1:{self.pu.src.port}"

    @property
    def tcp_uri(self) -> str:
        """The URI of the stream leg (TCP or WS)."""
        return f"sip:127.0.0.1:{self.pt.src.port};transport={self.pt.proto}"

    def close(self) -> None:
        self.registrar.close()
        if isinstance(self.proxy, StatefulProxy):
            self.proxy.close()
        self.disp.close()


def make_server(loop: EventLoop, stateful: bool = False, proto: str = "tcp") -> Server:
    """The server with a UDP leg and a ``proto`` leg (TCP or WS)."""
    pu = Leg(addr="127.0.0.1", port=0, proto="udp")
    pt = Leg(addr="127.0.0.1", port=0, proto=proto)  # type: ignore[arg-type]  # a Proto
    disp = Dispatcher([pu, pt], loop, do_retransmits=False)
    reg = Registrar(dispatcher=disp, domains=["example.com"])
    proxy: StatelessProxy
    if stateful:
        proxy = StatefulProxy(
            dispatcher=disp, lookup=reg.lookup, domains=["example.com"], flows=reg.flows
        )
    else:
        proxy = StatelessProxy(
            dispatcher=disp, lookup=reg.query, domains=["example.com"], flows=reg.flows
        )
    disp.set_receiver(ReceiveChain([ReceiveChain([reg], methods=["REGISTER"]), proxy]))
    return Server(loop, disp, reg, proxy, pu, pt)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


def bob_on_tcp(loop: EventLoop, srv: Server, host: str = "bob1") -> Simple:
    """bob: a UA over the server's stream transport whose Contact nobody can
    connect to (``sip:bob@HOST.invalid;transport=ws``: a browser's)."""
    proto = srv.pt.proto
    # the leg's URI is what its Contacts say (its Via keeps the real address)
    leg = Leg(
        addr="127.0.0.1",
        port=0,
        proto=proto,
        contact=f"sip:{host}.invalid;transport={proto}",
        host=f"{host}.invalid",  # (its Via's sent-by too, as a browser's)
    )
    return Simple(
        from_="sip:bob@example.com",
        leg=leg,
        loop=loop,
        outgoing_proxy=srv.tcp_uri,
        registrar=srv.tcp_uri,
    )


def alice_on_udp(loop: EventLoop, srv: Server) -> Simple:
    return Simple(
        from_="sip:alice@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=f"127.0.0.1:{srv.pu.src.port}",
    )


def answer(ua: Simple) -> tuple[list[Call], list[Request]]:
    calls: list[Call] = []
    invites: list[Request] = []

    def created(call: Call, request: Request, *_rest: object) -> bool:
        calls.append(call)
        invites.append(request)
        return True

    ua.listen(cb_create=created)
    return calls, invites


def invite(loop: EventLoop, caller: Simple, to: str) -> tuple[str, int | None, Call]:
    final: list[tuple[str, int | None]] = []
    c = caller.invite(
        to, cb_final=lambda status, _c, info: final.append((status, info.get("code")))
    )
    drive(loop, lambda: bool(final), what=f"the final response to {to}")
    return final[0][0], final[0][1], c


def in_dialog(loop: EventLoop, call: Call, method: str = "INFO") -> int | None:
    """Send ``method`` in the call; the final response code."""
    got: list[int | None] = []
    call.request(method, cb_final=lambda _status, _c, info: got.append(info.get("code")))
    drive(loop, lambda: bool(got), what=f"the response to {method}")
    return got[0]


def connections(ua: Simple) -> int:
    return ua.default_leg().socketpool().connection_count()


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("proto", STREAMS)
@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_call_to_and_from_a_client_reached_only_over_its_connection(
    loop: EventLoop, stateful: bool, proto: str
) -> None:
    """alice (UDP) calls bob (TCP or WS, Contact .invalid) and back; BYE from both sides."""
    fds = open_fds()
    srv = make_server(loop, stateful, proto)
    bob = bob_on_tcp(loop, srv)
    alice = alice_on_udp(loop, srv)
    try:
        assert bob.register(expires=300) == 300
        (binding,) = srv.registrar.lookup("sip:bob@example.com")
        flow = srv.registrar.flows.find(binding.contact, loop.looptime)
        assert flow is not None and flow.leg is srv.pt
        bob_conn = srv.pt.socketpool().peers()
        assert [(flow.peer.addr, flow.peer.port)] == [(p.addr, p.port) for p in bob_conn]
        calls, invites = answer(bob)

        # alice -> bob: over bob's connection, the Request-URI never resolved
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK"
        assert invites[0].uri() == f"sip:bob@bob1.invalid;transport={proto}"
        assert invites[0].get_headers("via")[0].startswith(f"SIP/2.0/{proto.upper()} ")
        rr = invites[0].get_headers("record-route")
        assert re.fullmatch(rf"<sip:f[a-z2-7]{{20,}}@127\.0\.0\.1:\d+;transport={proto};lr>", rr[0])
        assert rr[1] == f"<{srv.pu.contact};lr>"
        # in-dialog from the UDP side: over the flow named by the token
        assert in_dialog(loop, call) == 200
        call.bye()
        drive(loop, lambda: calls[0].closed and call.closed, what="bob got alice's BYE")

        # again, and bob hangs up: his BYE goes out over his connection
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK"
        calls[1].bye()
        drive(loop, lambda: call.closed and calls[1].closed, what="alice got bob's BYE")

        # bob -> alice: bob's INVITE carries his .invalid Contact
        alice_calls, alice_invites = answer(alice)
        status, _code, back = invite(loop, bob, f"sip:alice@127.0.0.1:{alice_port(alice)}")
        assert status == "OK"
        # (bob's Via names no host either: the proxy answers over the connection)
        assert (
            alice_invites[0]
            .get_headers("via")[-1]
            .startswith(f"SIP/2.0/{proto.upper()} bob1.invalid")
        )
        assert in_dialog(loop, alice_calls[0]) == 200  # UDP side -> bob over the token
        alice_calls[0].bye()
        drive(loop, lambda: back.closed, what="bob got alice's BYE")
        # bob never accepted a connection: his only one is the one he opened
        assert connections(bob) == 1
        assert srv.pt.socketpool().connection_count() == 1
    finally:
        alice.cleanup()
        bob.cleanup()
        srv.close()
    assert open_fds() == fds


def alice_port(ua: Simple) -> int:
    return ua.default_leg().src.port


@pytest.mark.parametrize("proto", STREAMS)
@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_a_flow_whose_connection_closed_loses_its_binding(
    loop: EventLoop, stateful: bool, proto: str
) -> None:
    """RFC 5626 5.3 at a registrar-proxy: the binding goes, the next is tried, else 480."""
    srv = make_server(loop, stateful, proto)
    bob = bob_on_tcp(loop, srv)
    bob2 = bob_on_tcp(loop, srv, "bob2")
    alice = alice_on_udp(loop, srv)
    try:
        assert bob.register(expires=300) == 300
        assert bob2.register(expires=600) == 600
        calls2, _ = answer(bob2)
        assert len(srv.registrar.lookup("sip:bob@example.com")) == 2
        bob2.cleanup()  # bob2's connection closes; the newest binding is his
        drive(loop, lambda: srv.pt.socketpool().connection_count() == 1, what="bob2 gone")
        (left,) = srv.registrar.lookup("sip:bob@example.com")
        assert left.contact == f"sip:bob@bob1.invalid;transport={proto}"
        gone = f"sip:bob@bob2.invalid;transport={proto}"
        assert not srv.registrar.flows.known(gone, loop.looptime)
        calls, _ = answer(bob)
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK" and len(calls) == 1 and not calls2
        call.bye()
        drive(loop, lambda: call.closed, what="the BYE")
        bob.cleanup()
        drive(loop, lambda: srv.pt.socketpool().connection_count() == 0, what="bob gone")
        status, code, _call = invite(loop, alice, "sip:bob@example.com")
        assert (status, code) == ("FAIL", 480)
        assert srv.registrar.lookup("sip:bob@example.com") == []
        assert list(srv.registrar.store.aors()) == []
    finally:
        alice.cleanup()
        bob.cleanup()
        bob2.cleanup()
        srv.close()


@pytest.mark.parametrize("proto", STREAMS)
@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_in_dialog_request_to_a_gone_flow_gets_430(
    loop: EventLoop, stateful: bool, proto: str
) -> None:
    srv = make_server(loop, stateful, proto)
    bob = bob_on_tcp(loop, srv)
    alice = alice_on_udp(loop, srv)
    try:
        assert bob.register(expires=300) == 300
        answer(bob)
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK"
        bob.cleanup()
        drive(loop, lambda: srv.pt.socketpool().connection_count() == 0, what="bob gone")
        assert in_dialog(loop, call) == 430  # RFC 5626 5.3: Flow Failed
        # nothing was sent to bob's .invalid host, no connection opened for it
        assert srv.pt.socketpool().connection_count() == 0
    finally:
        alice.cleanup()
        bob.cleanup()
        srv.close()


def test_an_in_dialog_request_takes_the_new_flow_of_a_contact_registered_again(
    loop: EventLoop,
) -> None:
    """The token's connection closed, the contact registered again over a new one:
    the request goes over the new flow (a browser that reconnected its WebSocket)."""
    srv = make_server(loop)
    bob = bob_on_tcp(loop, srv)
    alice = alice_on_udp(loop, srv)
    again = bob_on_tcp(loop, srv)  # (the same Contact, another connection)
    try:
        assert bob.register(expires=300) == 300
        answer(bob)
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK"
        assert again.register(expires=300) == 300
        got: list[Packet] = []
        again.dispatcher.set_receiver(lambda p, _leg, _from: got.append(p))
        bob.cleanup()
        drive(loop, lambda: srv.pt.socketpool().connection_count() == 1, what="bob gone")
        call.request("INFO")
        drive(loop, lambda: bool(got), what="the INFO over the new flow")
        assert [p.method() for p in got] == ["INFO"]
    finally:
        alice.cleanup()
        bob.cleanup()
        again.cleanup()
        srv.close()


def test_simple_registrar_and_proxy_in_a_chain_share_the_flows(loop: EventLoop) -> None:
    """Net::SIP's chain (the registrar rewrites, the proxy forwards), from ``Simple``."""
    server = Simple(legs=["udp:127.0.0.1:0", "tcp:127.0.0.1:0"], loop=loop)
    registrar = server.create_registrar(domains=["example.com"])
    assert isinstance(registrar, Registrar)
    proxy = server.create_stateless_proxy(lookup=registrar.query, domains=["example.com"])
    assert isinstance(proxy, StatelessProxy)
    server.create_chain([registrar, proxy])
    assert registrar.flows is server.flows
    pu, pt = server.dispatcher.legs
    srv = Server(loop, server.dispatcher, registrar, proxy, pu, pt)  # (not closed: server is)
    bob = bob_on_tcp(loop, srv)
    alice = alice_on_udp(loop, srv)
    try:
        assert bob.register(expires=300) == 300
        calls, _ = answer(bob)
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK" and len(calls) == 1
        call.bye()
        drive(loop, lambda: call.closed and calls[0].closed, what="the BYE")
    finally:
        alice.cleanup()
        bob.cleanup()
        server.cleanup()


@pytest.mark.parametrize("path", [True, False], ids=["path", "no-path"])
def test_an_edge_proxy_reaches_its_client_for_a_registrar_behind_it(
    loop: EventLoop, path: bool
) -> None:
    """RFC 5626 5.2, RFC 3327: the edge adds a Path with a flow token (when the
    client supports path) and remembers the flow; a call from the registrar's
    side reaches the client over its connection to the edge."""
    core = Simple(leg="udp:127.0.0.1:0", loop=loop)
    registrar = core.create_registrar(domains=["example.com"])
    assert isinstance(registrar, Registrar)
    core.create_chain([registrar, core.create_stateless_proxy()])
    core_addr = core.default_leg().src
    edge_tcp = Leg(addr="127.0.0.1", port=0, proto="tcp")
    edge_udp = Leg(addr="127.0.0.1", port=0, proto="udp")
    edge = Dispatcher(
        [edge_tcp, edge_udp],
        loop,
        do_retransmits=False,
        outgoing_proxy=f"{core_addr.addr}:{core_addr.port}",
    )
    edge.set_receiver(StatelessProxy(dispatcher=edge))
    alice = Simple(
        from_="sip:alice@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=f"{core_addr.addr}:{core_addr.port}",
    )
    client = connect(Addr("127.0.0.1", edge_tcp.src.port, socket.AF_INET))
    client.setblocking(False)
    try:
        port = client.getsockname()[1]
        supported = "Supported: path, outbound\r\n" if path else ""
        client.sendall(
            register_bytes("<sip:carol@e1.invalid;transport=tcp>", sport=port, extra=supported)
        )
        assert read_response(loop, client).code() == 200
        (binding,) = registrar.lookup("sip:carol@example.com")
        assert len(binding.path) == (1 if path else 0)
        if path:
            assert re.fullmatch(r"<sip:f[a-z2-7]{20,}@127\.0\.0\.1:\d+;lr>", binding.path[0])
        final: list[tuple[str, int | None]] = []
        alice.invite(
            "sip:carol@example.com",
            cb_final=lambda status, _c, info: final.append((status, info.get("code"))),
        )
        invite_req = read_response_or_request(loop, client)
        assert isinstance(invite_req, Request) and invite_req.method() == "INVITE"
        assert invite_req.uri() == "sip:carol@e1.invalid;transport=tcp"
        client.sendall(invite_req.create_response(486, "Busy Here").as_bytes())
        drive(loop, lambda: bool(final), what="alice's final response")
        assert final == [("FAIL", 486)]
    finally:
        client.close()
        alice.cleanup()
        edge.close()
        core.cleanup()


# ------------------------------------------------------------------ the command


@pytest.fixture
def started() -> Iterator[list[Listen]]:
    procs: list[Listen] = []
    yield procs
    for p in procs:
        p.close()


@pytest.mark.parametrize("proto", STREAMS)
@pytest.mark.parametrize("mode", [[], ["--stateful"]], ids=["stateless", "stateful"])
def test_netsip_proxy_bridges_udp_and_a_client_on_its_connection(
    loop: EventLoop, started: list[Listen], tmp_path: Path, mode: list[str], proto: str
) -> None:
    """``netsip proxy -l PROTO:127.0.0.1:0 -l udp:127.0.0.1:0``: the UDP caller reaches
    the TCP/WS client whose Contact is .invalid, and each side's BYE reaches the other."""
    proc = Listen(
        [],
        tmp_path,
        command=[
            *netsip_command(),
            "proxy",
            "-l",
            f"{proto}:127.0.0.1:0",
            "-l",
            "udp:127.0.0.1:0",
            "--domain",
            "example.com",
            *mode,
        ],
    )
    started.append(proc)
    addrs = proc.addresses(2)
    stream, udp = addrs[proto], addrs["udp"]
    stream_uri = f"sip:{stream.addr}:{stream.port};transport={proto}"
    bob = Simple(
        from_="sip:bob@example.com",
        leg=Leg(
            addr="127.0.0.1",
            port=0,
            proto=proto,  # type: ignore[arg-type]  # a Proto
            contact=f"sip:b9x2.invalid;transport={proto}",
        ),
        loop=loop,
        outgoing_proxy=stream_uri,
        registrar=stream_uri,
    )
    alice = Simple(
        from_="sip:alice@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=f"{udp.addr}:{udp.port}",
    )
    try:
        assert bob.register(expires=300) == 300, bob.error()
        calls, invites = answer(bob)
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK", _code
        assert invites[0].uri() == f"sip:bob@b9x2.invalid;transport={proto}"
        assert in_dialog(loop, call) == 200
        call.bye()
        drive(loop, lambda: call.closed and calls[0].closed, what="alice's BYE")
        status, _code, call = invite(loop, alice, "sip:bob@example.com")
        assert status == "OK"
        calls[1].bye()
        drive(loop, lambda: call.closed and calls[1].closed, what="bob's BYE")
        assert connections(bob) == 1  # the one bob opened: nothing connected to him
    finally:
        alice.cleanup()
        bob.cleanup()
    out = proc.stop(signal.SIGTERM)
    assert proc.returncode == 0, out


# ------------------------------------------------------------------ the registrar


def register_bytes(
    contact: str, *, sport: int, proto: str = "TCP", vias: int = 1, extra: str = "", cseq: int = 1
) -> bytes:
    via = f"Via: SIP/2.0/{proto} 127.0.0.1:{sport};branch=z9hG4bK-r{cseq}\r\n"
    if vias > 1:
        via = f"Via: SIP/2.0/{proto} 127.0.0.1:{sport};branch=z9hG4bK-p{cseq}\r\n" + (
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-far\r\n"
        )
    return (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"{via}"
        "From: <sip:carol@example.com>;tag=c1\r\n"
        "To: <sip:carol@example.com>\r\n"
        "Call-ID: reg-carol\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: {contact}\r\n"
        f"{extra}"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def read_response_or_request(loop: EventLoop, s: socket.socket) -> Packet:
    """The next message on a TCP socket (one at a time: the tests wait for each)."""
    buf = bytearray()

    def got() -> bool:
        with contextlib.suppress(BlockingIOError):
            buf.extend(s.recv(65536))
        head, sep, body = bytes(buf).partition(b"\r\n\r\n")
        if not sep:
            return False
        m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
        return len(body) >= (int(m.group(1)) if m else 0)

    drive(loop, got, what="a message")
    return pkt(bytes(buf))


def read_response(loop: EventLoop, s: socket.socket) -> Response:
    resp = read_response_or_request(loop, s)
    assert isinstance(resp, Response)
    return resp


@pytest.fixture
def srv(loop: EventLoop) -> Iterator[Server]:
    s = make_server(loop)
    yield s
    s.close()


def tcp_client(srv: Server) -> socket.socket:
    s = connect(Addr("127.0.0.1", srv.pt.src.port, socket.AF_INET))
    s.setblocking(False)
    return s


def test_register_over_tcp_remembers_the_flow_and_unregister_forgets_it(
    loop: EventLoop, srv: Server
) -> None:
    flows = srv.registrar.flows
    with tcp_client(srv) as s:
        port = s.getsockname()[1]
        contact = f"<sip:carol@127.0.0.1:{port};transport=tcp>"
        s.sendall(register_bytes(contact, sport=port))
        assert read_response(loop, s).code() == 200
        flow = flows.find(contact, loop.looptime)
        assert flow is not None and flow.leg is srv.pt and flow.peer.port == port
        # a plain contact: reached over the flow while it lives, else the RFC 3261 way
        assert not needs_flow(contact)
        s.sendall(register_bytes(contact + ";expires=0", sport=port, cseq=2))
        assert read_response(loop, s).code() == 200
        assert not flows.known(contact, loop.looptime)
        assert len(flows) == 0


def test_register_over_udp_keeps_a_flow_only_for_contacts_that_need_one(
    loop: EventLoop, srv: Server
) -> None:
    flows = srv.registrar.flows
    s = udp_socket()
    try:
        port = s.getsockname()[1]
        dst = ("127.0.0.1", srv.pu.src.port)
        plain = f"<sip:carol@127.0.0.1:{port}>"
        s.sendto(register_bytes(plain, sport=port, proto="UDP"), dst)
        drive(loop, lambda: len(srv.registrar.lookup("sip:carol@example.com")) == 1)
        assert not flows.known(plain, loop.looptime)
        nat = "<sip:carol@c4.invalid>"
        s.sendto(register_bytes(nat, sport=port, proto="UDP", cseq=2), dst)
        drive(loop, lambda: flows.known(nat, loop.looptime), what="the UDP flow")
        flow = flows.find(nat, loop.looptime)
        assert flow is not None and flow.leg is srv.pu and flow.peer.port == port
    finally:
        s.close()


def test_register_through_another_proxy_keeps_no_flow(loop: EventLoop, srv: Server) -> None:
    """Two Vias: the connection is the other proxy's; the way back is its business."""
    with tcp_client(srv) as s:
        port = s.getsockname()[1]
        contact = "<sip:carol@c5.invalid;transport=tcp>"
        s.sendall(register_bytes(contact, sport=port, vias=2))
        assert read_response(loop, s).code() == 200
        assert not srv.registrar.flows.known(contact, loop.looptime)
        # nobody here can reach it: the binding is skipped, not dropped
        assert srv.registrar.lookup("sip:carol@example.com") == []
        assert len(list(srv.registrar.store.aors())) == 1


def test_outbound_register_gets_require_outbound_and_one_flow_per_reg_id(
    loop: EventLoop, srv: Server
) -> None:
    """RFC 5626 6: ob, +sip.instance and reg-id: flows keyed by instance and reg-id."""
    flows = srv.registrar.flows
    inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    uri = "<sip:carol@c6.invalid;transport=tcp;ob>"
    with tcp_client(srv) as s1, tcp_client(srv) as s2:
        for n, s in enumerate((s1, s2), 1):
            port = s.getsockname()[1]
            contact = f"{uri};+sip.instance={inst};reg-id={n}"
            s.sendall(register_bytes(contact, sport=port, cseq=n, extra="Supported: outbound\r\n"))
            resp = read_response(loop, s)
            assert resp.code() == 200
            assert resp.get_header("require") == "outbound"
        assert len(srv.registrar.lookup("sip:carol@example.com")) == 2
        newest = flows.find(uri, loop.looptime)
        assert newest is not None and newest.peer.port == s2.getsockname()[1]
        s2.close()
        drive(loop, lambda: srv.pt.socketpool().connection_count() == 1, what="s2 closed")
        # the other flow of the instance is used; the dead one's binding is dropped
        other = flows.find(uri, loop.looptime)
        assert other is not None and other.peer.port == s1.getsockname()[1]
        (left,) = srv.registrar.lookup("sip:carol@example.com")
        assert left.reg_id == 1


def test_a_flow_connection_outlives_the_idle_timeout(
    clock_loop: EventLoop, fake_clock: FakeClock
) -> None:
    """The pool's idle expiry leaves a registered flow open while its binding lives."""
    loop = clock_loop
    srv = make_server(loop)
    try:
        srv.pt.socketpool().import_settings(MIN_EXPIRE=1, MAX_EXPIRE=2)
        with tcp_client(srv) as flow_sock, tcp_client(srv) as idle_sock:
            port = flow_sock.getsockname()[1]
            contact = "<sip:carol@c7.invalid;transport=tcp>;expires=60"
            flow_sock.sendall(register_bytes(contact, sport=port))
            assert read_response(loop, flow_sock).code() == 200
            idle_sock.sendall(b"\r\n\r\n")  # (a keep-alive: the pool knows the connection)
            advance(loop, fake_clock, 10, step=0.5)
            peers = [p.port for p in srv.pt.socketpool().peers()]
            assert peers == [port]  # the idle one is closed, the flow is not
            advance(loop, fake_clock, 60, step=1)
            assert srv.pt.socketpool().connection_count() == 0  # the binding expired
    finally:
        srv.close()


def test_flows_with_a_shared_redis_store_live_in_the_process_of_the_connection(
    loop: EventLoop, tmp_path: Path
) -> None:
    """Two registrars on one Redis: the one holding the connection reaches the
    client; the other skips the binding without dropping it; the flow's end
    drops it for both."""
    from netsip._redisstore import RedisStore  # noqa: PLC0415  # (needs redis-py)

    redis = RedisServer(tmp_path)
    stores = [RedisStore(redis.url), RedisStore(redis.url)]
    here, there = make_server(loop), make_server(loop)
    for srv, store in zip((here, there), stores, strict=True):
        srv.registrar.store = store
    try:
        with tcp_client(here) as s:
            contact = "<sip:carol@r1.invalid;transport=tcp>"
            s.sendall(register_bytes(contact, sport=s.getsockname()[1]))
            assert read_response(loop, s).code() == 200
            assert [b.contact for b in here.registrar.lookup("sip:carol@example.com")] == [
                contact.strip("<>")
            ]
            assert there.registrar.lookup("sip:carol@example.com") == []
            assert list(stores[1].aors()) == ["sip:carol@example.com"]  # (kept)
        drive(loop, lambda: here.pt.socketpool().connection_count() == 0, what="the close")
        assert here.registrar.lookup("sip:carol@example.com") == []
        assert list(stores[1].aors()) == []  # dropped by the process that knew the flow
    finally:
        here.close()
        there.close()
        for store in stores:
            store.close()
        redis.close()


# ------------------------------------------------------------------ units


def test_flow_tokens_round_trip_and_cannot_be_forged() -> None:
    u4 = Leg(addr="127.0.0.1", port=0, proto="udp")
    t4 = Leg(addr="127.0.0.1", port=0, proto="tcp")
    legs = [u4, t4]
    try:
        tokens = FlowTokens(lambda: legs, key=b"k" * 32)
        flow = Flow(t4, Addr("127.0.0.1", 40000, socket.AF_INET, None, "tcp"))
        token = tokens.encode(flow)
        assert token is not None and re.fullmatch(r"f[a-z2-7]+", token)
        back = tokens.decode(token)
        assert back is not None and back.leg is t4 and back.peer.port == 40000
        assert back.peer.addr == "127.0.0.1"
        # another key, a changed character, a changed leg layout: not ours
        assert FlowTokens(lambda: legs, key=b"x" * 32).decode(token) is None
        flipped = token[:5] + ("a" if token[5] != "a" else "b") + token[6:]
        assert tokens.decode(flipped) is None
        assert FlowTokens(lambda: [t4, u4], key=b"k" * 32).decode(token) is None
        for junk in ("", "f", "bABC", "f!!!!!!!!!!!!!!!!!!!!!!!", "f" + "a" * 200):
            assert tokens.decode(junk) is None
        # a leg not in the list has no token
        assert FlowTokens(lambda: [u4], key=b"k" * 32).encode(flow) is None
    finally:
        u4.close()
        t4.close()


def test_flow_tokens_for_ipv6() -> None:
    try:
        leg = Leg(addr="::1", port=0, proto="tcp")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with leg:
        tokens = FlowTokens(lambda: [leg])
        flow = Flow(leg, Addr("::1", 5070, socket.AF_INET6, None, "tcp"))
        token = tokens.encode(flow)
        assert token is not None
        back = tokens.decode(token)
        assert back is not None and back.peer.addr == "::1" and back.peer.port == 5070


def test_needs_flow_and_contact_key() -> None:
    assert needs_flow("sip:x@df7jal23ls0d.invalid;transport=ws")
    assert needs_flow("<sip:x@host.invalid:5060;transport=ws>")
    assert needs_flow("sip:x@192.0.2.1:5060;ob")
    assert not needs_flow("sip:x@192.0.2.1:5060;transport=tcp")
    assert not needs_flow("sip:x@invalid.example.com")
    assert not needs_flow("not a uri")
    assert contact_key("SIP:x@HOST.invalid;transport=WS;foo=1") == contact_key(
        "<sip:x@host.invalid;transport=ws>"
    )
    assert contact_key("sip:x@h.invalid;transport=ws") != contact_key("sip:x@h.invalid")


def test_flow_table_expires_by_heap_and_prefers_the_newest_live_flow() -> None:
    udp = Leg(addr="127.0.0.1", port=0, proto="udp")
    tcp = Leg(addr="127.0.0.1", port=0, proto="tcp")
    try:
        table = FlowTable()
        a = Flow(udp, Addr("127.0.0.1", 1111, socket.AF_INET, None, "udp"))
        dead = Flow(tcp, Addr("127.0.0.1", 2222, socket.AF_INET, None, "tcp"))
        c = "sip:x@h.invalid"
        table.remember(c, a, 100.0, instance="i", reg_id=1)
        table.remember(c, dead, 200.0, instance="i", reg_id=2)
        assert not dead.alive() and a.alive()
        assert table.find(c, 50.0) is a  # the newest has no connection
        assert table.known(c, 150.0) and table.find(c, 150.0) is None
        assert table.expire(99.0) == 0
        assert table.expire(150.0) == 1
        assert table.expire(250.0) == 1
        assert len(table) == 0
        # a plain flow replaces the plain one of the contact
        table.remember(c, a, 100.0)
        table.remember(c, dead, 100.0)
        table.forget(c)
        assert len(table) == 0
    finally:
        udp.close()
        tcp.close()


# ------------------------------------------------------------------ RFC 3261 18.1.1


@dataclass
class TwoTransportPeer:
    """A UDP socket and a TCP listener on one port (a destination offering both)."""

    udp: socket.socket
    tcp: socket.socket | None
    accepted: list[socket.socket] = field(default_factory=list)
    stream: bytearray = field(default_factory=bytearray)

    def poll(self) -> list[Packet]:
        """Packets received over UDP (and, as bytes, over TCP into ``stream``)."""
        if self.tcp is not None:
            try:
                conn, _ = self.tcp.accept()
                conn.setblocking(False)
                self.accepted.append(conn)
            except BlockingIOError:
                pass
        for conn in self.accepted:
            with contextlib.suppress(BlockingIOError):
                self.stream.extend(conn.recv(65536))
        return [pkt(d) for d in datagrams(self.udp)]

    def close(self) -> None:
        for s in [self.udp, *([self.tcp] if self.tcp else []), *self.accepted]:
            s.close()


def two_transport_peer(with_tcp: bool) -> TwoTransportPeer:
    port = free_udp_tcp_port()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", port))
    u.setblocking(False)
    t = None
    if with_tcp:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", port))
        t.listen(4)
        t.setblocking(False)
    return TwoTransportPeer(u, t)


def options(uri: str, size: int) -> Request:
    req = Request(
        "OPTIONS",
        uri,
        {
            "from": "<sip:me@example.com>;tag=1",
            "to": f"<{uri}>",
            "call-id": f"big-{size}@test",
            "cseq": "1 OPTIONS",
            "max-forwards": "70",
        },
    )
    req.set_header("x-pad", "x" * size)
    return req


@pytest.mark.parametrize("size", [100, MTU_LIMIT])
def test_dispatcher_sends_a_large_request_over_tcp(loop: EventLoop, size: int) -> None:
    peer = two_transport_peer(with_tcp=True)
    port = peer.udp.getsockname()[1]
    disp = Dispatcher(
        [Leg(addr="127.0.0.1", port=0, proto="udp"), Leg(addr="127.0.0.1", port=0, proto="tcp")],
        loop,
    )
    try:
        req = options(f"sip:peer@127.0.0.1:{port}", size)
        disp.deliver(req, do_retransmits=False)
        got: list[Packet] = []

        def arrived() -> bool:
            got.extend(peer.poll())
            return bool(got or peer.stream)

        drive(loop, arrived, what="the request")
        if size >= MTU_LIMIT:
            assert not got and b"OPTIONS sip:peer@" in peer.stream
            assert b"Via: SIP/2.0/TCP " in peer.stream  # the top Via says TCP (18.1.1)
        else:
            assert len(got) == 1 and not peer.stream and not peer.accepted
    finally:
        disp.close()
        peer.close()


def test_large_request_falls_back_to_udp_when_tcp_is_refused(loop: EventLoop) -> None:
    """RFC 3261 18.1.1: a TCP reset on the attempt: the request is retried over UDP."""
    peer = two_transport_peer(with_tcp=False)
    port = peer.udp.getsockname()[1]
    disp = Dispatcher(
        [Leg(addr="127.0.0.1", port=0, proto="udp"), Leg(addr="127.0.0.1", port=0, proto="tcp")],
        loop,
    )
    try:
        disp.deliver(options(f"sip:peer@127.0.0.1:{port}", 2000), do_retransmits=False)
        got: list[Packet] = []

        def arrived() -> bool:
            got.extend(peer.poll())
            return bool(got)

        drive(loop, arrived, what="the UDP fallback")
        assert len(got) == 1 and len(got[0].as_bytes()) > MTU_LIMIT
        assert got[0].get_headers("via")[0].startswith("SIP/2.0/UDP ")
        spin(loop, 0.1)
    finally:
        disp.close()
        peer.close()
