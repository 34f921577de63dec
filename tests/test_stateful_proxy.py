"""Tests for netsip.stateful_proxy over loopback, on a fake clock.

The caller is a raw UDP socket (so each message it sees is counted); the
callees are netsip dispatchers on UDP or TCP legs that answer by a script.
Sections: forwarding and forking; best response; CANCEL, 6xx and Timer C;
transports; faults.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.simple import Call, Simple
from netsip.stateful_proxy import StatefulProxy
from netsip.testing import FakeClock, advance, open_fds
from netsip.util import Addr, Proto
from tests.support import Listen, datagrams, drive, netsip_command, pkt, udp_socket
from tests.test_proxy import branch_of, raw_request, send, tcp_leg, udp_leg

AOR = "sip:bob@example.com"


@dataclass
class Callee:
    """A netsip end: answers each INVITE with ``script`` (codes, in order); CANCEL with 200
    (and 487 to the INVITE if it has no final response yet); BYE with 200."""

    disp: Dispatcher
    tag: str
    script: list[int] = field(default_factory=list)
    got: list[Packet] = field(default_factory=list)
    invite: tuple[Request, Leg, Addr] | None = None
    final: int = 0

    @property
    def leg(self) -> Leg:
        return self.disp.legs[0]

    @property
    def contact(self) -> str:
        return self.leg.contact

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        self.got.append(packet)
        if not isinstance(packet, Request):
            return
        method = packet.method()
        if method == "INVITE":
            if self.invite is not None and self.invite[0].tid() == packet.tid():
                return  # a retransmission
            self.invite, self.final = (packet, leg, from_), 0
            for code in self.script:
                self.respond(code)
        elif method == "CANCEL":
            self.answer(packet, leg, from_, 200)
            if self.invite is not None and not self.final:
                self.respond(487)
        elif method in ("BYE", "OPTIONS", "MESSAGE"):
            self.answer(packet, leg, from_, 200)

    def answer(self, req: Request, leg: Leg, from_: Addr, code: int) -> None:
        headers = {"to": f"{req.get_header('to')};tag={self.tag}"} if code != 100 else {}
        if code < 300 and req.method() == "INVITE":
            headers["contact"] = f"<{self.contact}>"
        if code == 401:
            headers["www-authenticate"] = f'Digest realm="{self.tag}", nonce="n{self.tag}"'
        if code == 407:
            headers["proxy-authenticate"] = f'Digest realm="{self.tag}", nonce="n{self.tag}"'
        self.disp.deliver(req.create_response(code, None, headers), leg=leg, dst_addr=from_)

    def respond(self, code: int) -> None:
        assert self.invite is not None
        if code >= 200:
            self.final = code
        self.answer(*self.invite, code)

    def requests(self, method: str) -> list[Request]:
        return [p for p in self.got if isinstance(p, Request) and p.method() == method]


@dataclass
class World:
    loop: EventLoop
    clock: FakeClock
    dispatchers: list[Dispatcher] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    proxies: list[StatefulProxy] = field(default_factory=list)
    got: list[Packet] = field(default_factory=list)

    def proxy(self, *legs: Leg, contacts: Sequence[object] = (), **kw: object) -> StatefulProxy:
        disp = Dispatcher(list(legs), self.loop)
        self.dispatchers.append(disp)

        def lookup(aor: str) -> list[object]:
            return list(contacts) if aor == AOR else []

        proxy = StatefulProxy(
            dispatcher=disp,
            lookup=lookup,  # type: ignore[arg-type]  # test contacts: str or (str, q)
            domains=["example.com"],
            **kw,  # type: ignore[arg-type]  # test kwargs
        )
        disp.set_receiver(proxy)
        self.proxies.append(proxy)
        return proxy

    def callee(self, tag: str, script: Sequence[int] = (), proto: Proto = "udp") -> Callee:
        disp = Dispatcher([udp_leg() if proto == "udp" else tcp_leg()], self.loop)
        self.dispatchers.append(disp)
        callee = Callee(disp, tag, list(script))
        disp.set_receiver(callee)
        return callee

    def caller(self) -> socket.socket:
        s = udp_socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        self.sockets.append(s)
        return s

    def until(self, cond: object, what: str = "") -> None:
        drive(self.loop, cond, 10.0, what)  # type: ignore[arg-type]  # a zero-argument callable

    def responses(self, s: socket.socket, n: int) -> list[Response]:
        """Run the loop until ``s`` got ``n`` more datagrams; the responses among them."""
        want = len(self.got) + n

        def more() -> bool:
            self.got.extend(pkt(d) for d in datagrams(s))
            return len(self.got) >= want

        self.until(more, f"{n} datagrams")
        return [p for p in self.got[want - n :] if isinstance(p, Response)]

    def quiet(self, s: socket.socket, seconds: float = 0.0) -> list[Response]:
        """Let the loop run (and the fake clock move ``seconds``); what ``s`` got meanwhile."""
        advance(self.loop, self.clock, seconds, step=0.25)
        new = [pkt(d) for d in datagrams(s)]
        self.got.extend(new)
        return [p for p in new if isinstance(p, Response)]


@pytest.fixture
def world() -> Iterator[World]:
    clock = FakeClock(1000.0)
    loop = EventLoop(clock=clock)
    w = World(loop, clock)
    yield w
    for p in w.proxies:
        p.close()
    for d in w.dispatchers:
        d.close()
    for s in w.sockets:
        s.close()
    loop.close()


def codes(resps: Sequence[Response]) -> list[int]:
    return [r.code() for r in resps]


def final(resps: Sequence[Response]) -> int:
    """The final response in ``resps``, retransmitted until ACKed (Timer G): one code."""
    found = set(codes(resps))
    assert len(found) == 1, found
    return found.pop()


def invite(s: socket.socket, leg: Leg, n: int = 1, method: str = "INVITE") -> None:
    send(s, raw_request(method, AOR, s, branch=f"z9hG4bKc{n}", callid=f"call-{n}@test"), leg)


def in_dialog(
    s: socket.socket, leg: Leg, method: str, resp: Response, *, n: int = 1, cseq: int = 1
) -> None:
    """An ACK/BYE of the dialog ``resp`` (a 2xx) set up: along its Record-Route."""
    to = resp.get_header("to") or ""
    tag = to.split("tag=", 1)[1]
    contact = (resp.get_header("contact") or "").strip("<>")
    routes = [f"Route: {r}" for r in reversed(resp.get_headers("record-route"))]
    data = raw_request(
        method,
        contact,
        s,
        branch=f"z9hG4bK{method}{n}{cseq}",
        callid=f"call-{n}@test",
        cseq=cseq,
        to_tag=tag,
        headers=routes,
    )
    send(s, data, leg)


# ------------------------------------------------------------ forwarding and forking


def test_parallel_forking_100_provisionals_first_2xx_cancels_others(world: World) -> None:
    leg = udp_leg()
    c1 = world.callee("one", [100, 180])
    c2 = world.callee("two", [100, 180])
    proxy = world.proxy(leg, contacts=[c1.contact, c2.contact])
    caller = world.caller()
    invite(caller, leg)
    got = world.responses(caller, 3)
    # our own 100 Trying first (16.2); the callees' 100s are absorbed (hop by hop)
    assert codes(got) == [100, 180, 180]
    assert {r.get_header("to").split("tag=")[1] for r in got[1:]} == {"one", "two"}  # type: ignore[union-attr]
    for r in got:
        vias = r.get_headers("via")
        assert len(vias) == 1 and branch_of(vias[0]) == "z9hG4bKc1"
    (inv1,), (inv2,) = c1.requests("INVITE"), c2.requests("INVITE")
    # a client transaction per branch: each its own Via branch
    assert branch_of(inv1.get_headers("via")[0]) != branch_of(inv2.get_headers("via")[0])
    assert inv1.uri() == c1.contact and inv2.uri() == c2.contact
    assert inv1.get_header("max-forwards") == "69"
    assert proxy.server_transactions == 1 and proxy.client_transactions == 2

    c2.respond(200)
    (ok,) = world.responses(caller, 1)
    assert ok.code() == 200 and ok.get_header("contact") == f"<{c2.contact}>"
    world.until(lambda: c1.requests("CANCEL") and c1.requests("ACK"), "CANCEL and ACK of 487")
    (cancel,) = c1.requests("CANCEL")
    assert branch_of(cancel.get_headers("via")[0]) == branch_of(inv1.get_headers("via")[0])
    assert world.quiet(caller) == []  # the 487 stays with the proxy
    # the ACK of the 2xx is passed on; the BYE goes along the Record-Route
    in_dialog(caller, leg, "ACK", ok)
    world.until(lambda: c2.requests("ACK"), "ACK at callee")
    in_dialog(caller, leg, "BYE", ok, cseq=2)
    (bye_ok,) = world.responses(caller, 1)
    assert bye_ok.code() == 200 and bye_ok.get_header("cseq") == "2 BYE"
    assert c2.requests("BYE")
    world.quiet(caller, 40.0)
    assert proxy.server_transactions == 0 and proxy.client_transactions == 0


def test_every_2xx_is_forwarded(world: World) -> None:
    leg = udp_leg()
    c1 = world.callee("one", [200])
    c2 = world.callee("two", [200])
    world.proxy(leg, contacts=[c1.contact, c2.contact])
    caller = world.caller()
    invite(caller, leg)
    got = world.responses(caller, 3)
    assert codes(got) == [100, 200, 200]
    assert {r.get_header("to").split("tag=")[1] for r in got[1:]} == {"one", "two"}  # type: ignore[union-attr]
    assert c1.requests("CANCEL") == [] and c2.requests("CANCEL") == []


def test_serial_forking_by_q_equal_q_in_parallel(world: World) -> None:
    leg = udp_leg()
    low = world.callee("low", [200])
    hi1 = world.callee("hi1", [486])
    hi2 = world.callee("hi2", [180, 480])
    contacts = [(low.contact, 0.5), (hi1.contact, 1.0), (hi2.contact, None)]
    world.proxy(leg, contacts=contacts, forking="serial")
    caller = world.caller()
    invite(caller, leg)
    got = world.responses(caller, 3)
    assert codes(got) == [100, 180, 200]
    assert got[2].get_header("to").endswith("tag=low")  # type: ignore[union-attr]
    # the q=1 contacts were tried together, the q=0.5 one only after both failed
    assert len(hi1.requests("INVITE")) == 1 and len(hi2.requests("INVITE")) == 1
    assert len(low.requests("INVITE")) == 1
    assert hi1.requests("ACK") and hi2.requests("ACK")  # the proxy ACKed 486 and 480


def test_parallel_forking_ignores_q(world: World) -> None:
    leg = udp_leg()
    a = world.callee("a", [180])
    b = world.callee("b", [180])
    world.proxy(leg, contacts=[(a.contact, 0.1), (b.contact, 0.9)])
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 3)) == [100, 180, 180]


def test_non_invite_gets_no_100(world: World) -> None:
    leg = udp_leg()
    c1 = world.callee("one")
    world.proxy(leg, contacts=[c1.contact])
    caller = world.caller()
    invite(caller, leg, method="MESSAGE")
    assert codes(world.responses(caller, 1)) == [200]


def test_retransmitted_requests_are_absorbed(world: World) -> None:
    leg = udp_leg()
    ringing = world.callee("ringing", [180])
    mute = world.callee("mute")
    proxy = world.proxy(leg, contacts=[ringing.contact])
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 2)) == [100, 180]
    invite(caller, leg)  # answered from the response cache: the last provisional
    assert codes(world.responses(caller, 1)) == [180]
    assert len(ringing.requests("INVITE")) == 1
    # a non-INVITE retransmitted before any response: no second transaction
    proxy.locate = lambda _aor: [mute.contact]
    invite(caller, leg, 2, method="MESSAGE")
    world.until(lambda: mute.requests("MESSAGE"), "MESSAGE at mute")
    invite(caller, leg, 2, method="MESSAGE")
    world.quiet(caller)
    assert proxy.server_transactions == 2 and proxy.client_transactions == 2
    assert len(mute.requests("MESSAGE")) == 1


def test_cancel_stops_serial_forking(world: World) -> None:
    leg = udp_leg()
    first = world.callee("first", [180])
    second = world.callee("second", [200])
    world.proxy(leg, contacts=[(first.contact, 0.9), (second.contact, 0.1)], forking="serial")
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 2)) == [100, 180]
    send(caller, raw_request("CANCEL", AOR, caller, branch="z9hG4bKc1", callid="call-1@test"), leg)
    got = world.responses(caller, 2)
    assert sorted(codes(got)) == [200, 487]  # 200 to the CANCEL, 487 to the INVITE
    assert second.got == []


# ------------------------------------------------------------ best response


@pytest.mark.parametrize(
    ("answers", "best"),
    [
        ([486, 500], 486),  # the lowest class
        ([404, 302], 302),
        ([500, 503], 500),
        ([503], 500),  # 16.7 step 6: never a 503 upstream
        ([404, 407], 407),  # a 4xx that asks the caller for something
        ([600, 404, 486], 600),
    ],
)
def test_best_response(world: World, answers: list[int], best: int) -> None:
    leg = udp_leg()
    callees = [world.callee(f"c{i}", [code]) for i, code in enumerate(answers)]
    world.proxy(leg, contacts=[c.contact for c in callees])
    caller = world.caller()
    invite(caller, leg)
    got = world.responses(caller, 2)
    assert codes(got) == [100, best]
    world.until(lambda: all(c.requests("ACK") for c in callees), "ACKs by the proxy")
    # the caller's ACK of the non-2xx is absorbed: the callees got the proxy's only
    send(caller, raw_request("ACK", AOR, caller, branch="z9hG4bKc1", to_tag="x"), leg)
    assert world.quiet(caller, 1.0) == []
    assert [len(c.requests("ACK")) for c in callees] == [1] * len(callees)


def test_challenges_are_aggregated(world: World) -> None:
    leg = udp_leg()
    c1, c2 = world.callee("r1", [401]), world.callee("r2", [407])
    world.proxy(leg, contacts=[c1.contact, c2.contact])
    caller = world.caller()
    invite(caller, leg)
    _, resp = world.responses(caller, 2)
    assert resp.code() in (401, 407)
    assert resp.get_headers("www-authenticate") == ['Digest realm="r1", nonce="nr1"']
    assert resp.get_headers("proxy-authenticate") == ['Digest realm="r2", nonce="nr2"']


# ------------------------------------------------------------ CANCEL, 6xx, Timer C


def test_incoming_cancel_reaches_every_pending_branch(world: World) -> None:
    leg = udp_leg()
    c1, c2 = world.callee("one", [180]), world.callee("two", [180])
    silent = world.callee("silent")
    proxy = world.proxy(leg, contacts=[c1.contact, c2.contact, silent.contact])
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 3)) == [100, 180, 180]
    send(caller, raw_request("CANCEL", AOR, caller, branch="z9hG4bKc1", callid="call-1@test"), leg)
    (cancel_ok,) = world.responses(caller, 1)
    assert cancel_ok.code() == 200 and cancel_ok.get_header("cseq") == "1 CANCEL"
    world.until(lambda: c1.requests("ACK") and c2.requests("ACK"), "487s ACKed")
    assert len(c1.requests("CANCEL")) == 1 and len(c2.requests("CANCEL")) == 1
    # no CANCEL before a provisional response (RFC 3261 9.1); the final answer
    # waits for the silent branch, which Timer B ends
    assert silent.requests("CANCEL") == []
    assert world.quiet(caller, 20.0) == []
    got = world.quiet(caller, 15.0)
    # one 487, retransmitted over UDP until the caller ACKs it (Timer G)
    assert final(got) == 487
    assert len(silent.requests("INVITE")) > 1  # retransmitted over UDP (Timer A)
    send(caller, raw_request("ACK", AOR, caller, branch="z9hG4bKc1", to_tag="x"), leg)
    world.quiet(caller, 1.0)
    assert world.quiet(caller, 10.0) == []
    world.quiet(caller, 40.0)
    assert proxy.server_transactions == 0 and proxy.client_transactions == 0


def test_cancel_without_context_is_forwarded_statelessly(world: World) -> None:
    leg = udp_leg()
    c1 = world.callee("one")
    world.proxy(leg, contacts=[c1.contact])
    caller = world.caller()
    send(caller, raw_request("CANCEL", AOR, caller, branch="z9hG4bKnone"), leg)
    world.until(lambda: c1.requests("CANCEL"), "CANCEL forwarded")
    assert codes(world.responses(caller, 1)) == [200]  # the callee's, by Via


def test_6xx_cancels_the_others_and_stops_branching(world: World) -> None:
    leg = udp_leg()
    decline = world.callee("decline", [180])
    ringing = world.callee("ringing", [180])
    later = world.callee("later", [200])
    contacts = [(decline.contact, 1.0), (ringing.contact, 1.0), (later.contact, 0.5)]
    world.proxy(leg, contacts=contacts, forking="serial")
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 3)) == [100, 180, 180]
    decline.respond(603)
    world.until(lambda: ringing.requests("ACK"), "CANCEL, 487, ACK at the other branch")
    assert len(ringing.requests("CANCEL")) == 1
    assert final(world.quiet(caller, 1.0)) == 603
    assert later.got == []  # no new branch after a 6xx


def test_timer_c_reset_by_provisional_then_cancel(world: World) -> None:
    leg = udp_leg()
    slow = world.callee("slow", [180], proto="tcp")
    proxy = world.proxy(leg, tcp_leg(), contacts=[slow.contact])
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 2)) == [100, 180]
    world.quiet(caller, 100.0)
    slow.respond(183)  # resets Timer C (16.7 step 2)
    assert codes(world.responses(caller, 1)) == [183]
    world.quiet(caller, 150.0)  # 250 s: past the first Timer C
    assert slow.requests("CANCEL") == []
    got = world.quiet(caller, 40.0)  # 290 s: 100 + 181 passed
    assert len(slow.requests("CANCEL")) == 1
    assert final(got) == 487
    assert proxy.timer_c == 181.0


def test_timer_c_without_provisional_is_408(world: World) -> None:
    leg = udp_leg()
    mute = world.callee("mute", proto="tcp")
    world.proxy(leg, tcp_leg(), contacts=[mute.contact], timer_c=10.0)
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 1)) == [100]
    assert world.quiet(caller, 9.0) == []
    assert final(world.quiet(caller, 2.0)) == 408
    assert len(mute.requests("INVITE")) == 1  # TCP: no retransmission
    assert mute.requests("CANCEL") == []


def test_branch_that_never_answers_gets_408(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip.stateful_proxy")
    leg = udp_leg()
    mute = world.callee("mute")
    proxy = world.proxy(leg, contacts=[mute.contact])
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 1)) == [100]
    assert world.quiet(caller, 31.0) == []
    assert final(world.quiet(caller, 2.0)) == 408  # Timer B, 64*T1
    assert "unanswered (Timer B/F): 408" in caplog.text
    # Timer A: T1, 2T1, 4T1 ... below 64*T1
    assert len(mute.requests("INVITE")) == 7
    world.quiet(caller, 40.0)
    assert proxy.server_transactions == 0 and proxy.client_transactions == 0


# ------------------------------------------------------------ transports


def test_record_route_udp_in_tcp_out(world: World) -> None:
    uleg, tleg = udp_leg(), tcp_leg()
    bob = world.callee("bob", [180, 200], proto="tcp")
    contact = bob.contact
    assert "transport=tcp" in contact
    world.proxy(uleg, tleg, contacts=[contact])
    caller = world.caller()
    invite(caller, uleg)
    got = world.responses(caller, 3)
    assert codes(got) == [100, 180, 200]
    (inv,) = bob.requests("INVITE")
    # RFC 5658: one Record-Route per side, the TCP one on top
    assert inv.get_headers("record-route") == [f"<{tleg.contact};lr>", f"<{uleg.contact};lr>"]
    assert inv.get_headers("via")[0].startswith("SIP/2.0/TCP ")
    ok = got[2]
    assert ok.get_headers("record-route") == inv.get_headers("record-route")
    in_dialog(caller, uleg, "ACK", ok)
    world.until(lambda: bob.requests("ACK"), "ACK over TCP")
    in_dialog(caller, uleg, "BYE", ok, cseq=2)
    assert codes(world.responses(caller, 1)) == [200]
    assert bob.requests("BYE")[0].get_headers("via")[0].startswith("SIP/2.0/TCP ")


def test_tcp_caller(world: World) -> None:
    uleg, tleg = udp_leg(), tcp_leg()
    bob = world.callee("bob", [180, 200])
    world.proxy(uleg, tleg, contacts=[bob.contact])
    alice = world.callee("alice", proto="tcp")
    req = Request(
        "INVITE",
        AOR,
        {
            "from": "<sip:alice@example.com>;tag=a1",
            "to": f"<{AOR}>",
            "call-id": "tcp-1@test",
            "cseq": "1 INVITE",
            "max-forwards": "70",
            "contact": f"<{alice.contact}>",
        },
    )
    src = tleg.src
    alice.disp.deliver(
        req, leg=alice.leg, dst_addr=Addr(src.addr, src.port, src.family, None, "tcp")
    )

    def responses() -> list[Response]:
        return [p for p in alice.got if isinstance(p, Response)]

    world.until(lambda: len(responses()) >= 3, "100, 180, 200 over TCP")
    assert codes(responses()) == [100, 180, 200]
    (inv,) = bob.requests("INVITE")
    assert inv.get_headers("via")[0].startswith("SIP/2.0/UDP ")


# ------------------------------------------------------------ faults


def test_unreachable_branch_then_the_next_group(world: World) -> None:
    leg = udp_leg()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"sip:dead@127.0.0.1:{closed.getsockname()[1]};transport=tcp"
    good = world.callee("good", [200])
    world.proxy(leg, tcp_leg(), contacts=[(dead, 1.0), (good.contact, 0.5)], forking="serial")
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 2)) == [100, 200]
    assert len(good.requests("INVITE")) == 1


def test_every_branch_unreachable_is_500(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip.stateful_proxy")
    leg = udp_leg()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"sip:dead@127.0.0.1:{closed.getsockname()[1]};transport=tcp"
    # no TLS leg: that contact cannot even be resolved to a destination
    world.proxy(leg, tcp_leg(), contacts=[dead, "sip:tls@127.0.0.1:5061;transport=tls"])
    caller = world.caller()
    invite(caller, leg)
    got = world.responses(caller, 2)
    assert codes(got) == [100, 500]  # a 503 is never forwarded (16.7 step 6)
    assert "sending INVITE to" in caplog.text and "cannot resolve next hop" in caplog.text


def test_cancel_racing_200(world: World) -> None:
    leg = udp_leg()
    bob = world.callee("bob", [180])
    world.proxy(leg, contacts=[bob.contact])
    caller = world.caller()
    invite(caller, leg)
    assert codes(world.responses(caller, 2)) == [100, 180]
    # the 200 and the CANCEL cross: both are on their way before either is seen
    bob.respond(200)
    send(caller, raw_request("CANCEL", AOR, caller, branch="z9hG4bKc1", callid="call-1@test"), leg)
    got = world.responses(caller, 2)
    assert sorted(codes(got)) == [200, 200]
    ok = next(r for r in got if r.get_header("cseq") == "1 INVITE")
    in_dialog(caller, leg, "ACK", ok)
    world.until(lambda: bob.requests("ACK"), "ACK at bob")
    in_dialog(caller, leg, "BYE", ok, cseq=2)
    (bye_ok,) = world.responses(caller, 1)
    assert bye_ok.code() == 200 and bye_ok.get_header("cseq") == "2 BYE"
    assert all(r.code() != 487 for r in world.quiet(caller, 1.0))


def test_1000_forked_calls_every_branch_fails(world: World) -> None:
    leg = udp_leg()
    c1, c2 = world.callee("busy", [486]), world.callee("down", [503])
    proxy = world.proxy(leg, contacts=[c1.contact, c2.contact])
    caller = world.caller()
    timers, fds, open_ = world.loop.timer_count(), world.loop.fd_count(), open_fds()
    batch = 50
    finals: list[int] = []
    for start in range(0, 1000, batch):
        for n in range(start, start + batch):
            invite(caller, leg, n)
        got = world.responses(caller, 2 * batch)
        for r in got:
            if r.code() >= 200:
                finals.append(r.code())
                n = int((r.callid() or "").split("-")[1].split("@")[0])
                to_tag = (r.get_header("to") or "").split("tag=")[1]
                ack = raw_request(
                    "ACK", AOR, caller, branch=f"z9hG4bKc{n}", callid=r.callid() or "",
                    to_tag=to_tag,
                )  # fmt: skip
                send(caller, ack, leg)
    assert finals == [486] * 1000
    world.quiet(caller, 70.0)
    assert proxy.server_transactions == 0 and proxy.client_transactions == 0
    assert world.loop.timer_count() == timers
    assert world.loop.fd_count() == fds
    assert open_fds() == open_
    assert len(c1.requests("ACK")) == 1000 and len(c2.requests("ACK")) == 1000


# ------------------------------------------------------------ the command


@pytest.fixture
def started() -> Iterator[list[Listen]]:
    procs: list[Listen] = []
    yield procs
    for p in procs:
        p.close()


def recv_packet(s: socket.socket, seconds: float = 10.0) -> Packet:
    s.settimeout(seconds)
    return pkt(s.recv(65535))


def test_cli_proxy_stateful_forks_to_every_registered_contact(
    started: list[Listen], tmp_path: Path
) -> None:
    proc = Listen(
        [],
        tmp_path,
        command=[*netsip_command(), "proxy", "-l", "127.0.0.1:0", "--stateful"],
    )
    started.append(proc)
    udp = proc.addresses(2)["udp"]
    phones = [udp_socket(), udp_socket()]
    caller = udp_socket()
    try:
        for i, ph in enumerate(phones):
            reg = raw_request(
                "REGISTER",
                "sip:example.com",
                ph,
                branch=f"z9hG4bKreg{i}",
                callid=f"reg-{i}@test",
                headers=["Expires: 300"],
            )
            ph.sendto(reg, (udp.addr, udp.port))
            resp = recv_packet(ph)
            assert isinstance(resp, Response) and resp.code() == 200
        caller.sendto(raw_request("INVITE", AOR, caller), (udp.addr, udp.port))
        trying = recv_packet(caller)  # a stateless proxy sends no 100
        assert isinstance(trying, Response) and trying.code() == 100
        invites = [recv_packet(ph) for ph in phones]
        assert all(isinstance(r, Request) and r.method() == "INVITE" for r in invites)
        branches = {branch_of(r.get_headers("via")[0]) for r in invites}
        assert len(branches) == 2
    finally:
        for s in (*phones, caller):
            s.close()
    proc.stop()
    assert proc.returncode == 0


# ------------------------------------------------------------ netsip user agents


def test_simple_uas_call_through_forking_proxy() -> None:
    """netsip's user agent calls an AOR with two contacts: one busy, one answering."""
    with EventLoop() as loop:
        w = World(loop, FakeClock())  # (the clock is unused: a real-clock loop)
        leg = udp_leg()
        busy = w.callee("busy", [486])
        bob = Simple(from_=AOR, leg="udp:127.0.0.1:0", loop=loop)
        alice = Simple(
            from_="sip:alice@example.com",
            leg="udp:127.0.0.1:0",
            loop=loop,
            outgoing_proxy=f"sip:{leg.src.addr}:{leg.src.port}",
        )
        try:
            bob_contact = bob.dispatcher.legs[0].contact
            proxy = w.proxy(leg, contacts=[busy.contact, bob_contact])
            answered: list[Call] = []

            def created(call: Call, *_rest: object) -> bool:
                answered.append(call)
                return True

            bob.listen(init_media=bob.rtp("media_recv_echo"), cb_create=created)
            final: list[tuple[str, object]] = []
            call = alice.invite(
                AOR,
                init_media=alice.rtp("media_recv_echo"),
                cb_final=lambda status, _c, info: final.append((status, info.get("code"))),
            )
            w.until(lambda: final, "the final response")
            assert final[0][0] == "OK" and len(answered) == 1
            assert busy.requests("ACK")  # the proxy ACKed the 486 itself
            call.bye()
            w.until(lambda: call.closed and answered[0].closed, "the BYE through the proxy")
            assert proxy.server_transactions >= 1
        finally:
            alice.cleanup()
            bob.cleanup()
            for p in w.proxies:
                p.close()
            for d in w.dispatchers:
                d.close()
