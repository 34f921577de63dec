"""Tests for netsip.endpoint: dialogs, INVITE transactions, CANCEL, REGISTER.

Two kinds of peer on one event loop with a fake clock: ``Node`` (an Endpoint
on its own Dispatcher and leg, the application recording what it gets) and
``Raw`` (a bare Leg that records every message and answers as the test
says, to see and shape the wire). Traffic is driven by the loop (``drive``),
timers by moving the clock (``advance``); no sleeps.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsip._abnf import TAG_VALUE_RE
from netsip._dialog import header_tag
from netsip.digest import Status, make_challenge, verify
from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.testing import FakeClock, advance, drive
from netsip.util import Addr, Proto, sip_hdrval2parts
from tests.support import EndpointEvent, EndpointEvents

# ---------------------------------------------------------------- helpers


@dataclass(eq=False)
class Node:
    """An Endpoint with an application that answers as ``answer`` says."""

    ep: Endpoint
    disp: Dispatcher
    answer: Callable[[Node, Context, Request, Leg, Addr], None] | None = None
    requests: list[tuple[Context, Request]] = field(default_factory=list)
    recorder: EndpointEvents = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = EndpointEvents(then=self._answer_in_context)

    @property
    def events(self) -> list[EndpointEvent]:
        return self.recorder.events

    @property
    def cb(self) -> Callable[..., None]:
        """The context callback: records the event (and answers a request in the context)."""
        return self.recorder.cb

    def codes(self) -> list[int]:
        return self.recorder.codes()

    @property
    def leg(self) -> Leg:
        return self.disp.legs[0]

    @property
    def uri(self) -> str:
        leg = self.leg
        return f"sip:u@{leg.src}" + (";transport=tcp" if leg.proto == "tcp" else "")

    def app(self, ep: Endpoint, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        self.requests.append((ctx, request))
        if self.answer is not None and request is not None:
            self.answer(self, ctx, request, leg, from_)

    def _answer_in_context(self, e: EndpointEvent) -> None:
        if isinstance(e.packet, Request) and self.answer is not None and e.leg and e.from_:
            # a request in a context of ours: the application answers it too
            self.answer(self, e.ctx, e.packet, e.leg, e.from_)


@dataclass(eq=False)
class Raw:
    """A bare leg: records messages, answers requests with ``answer``."""

    leg: Leg
    answer: Callable[[Raw, Request, Addr], None] | None = None
    got: list[Packet] = field(default_factory=list)
    sources: list[Addr] = field(default_factory=list)

    def receive(self, packet: Packet, from_: Addr) -> None:
        self.got.append(packet)
        self.sources.append(from_)
        if isinstance(packet, Request) and self.answer is not None:
            self.answer(self, packet, from_)

    def send(self, packet: Packet, to: Addr) -> None:
        self.leg.deliver(packet, to)

    def requests(self, method: str | None = None) -> list[Request]:
        return [
            p
            for p in self.got
            if isinstance(p, Request) and (method is None or p.method() == method)
        ]

    def responses(self) -> list[Response]:
        return [p for p in self.got if isinstance(p, Response)]

    @property
    def uri(self) -> str:
        return f"sip:raw@{self.leg.src}"


@dataclass(eq=False)
class World:
    loop: EventLoop
    clock: FakeClock
    nodes: list[Node] = field(default_factory=list)
    raws: list[Raw] = field(default_factory=list)

    def node(
        self,
        answer: Callable[[Node, Context, Request, Leg, Addr], None] | None = None,
        proto: Proto = "udp",
        leg_class: type[Leg] = Leg,
        **kw: float,
    ) -> Node:
        disp = Dispatcher([leg_class(addr="127.0.0.1", port=0, proto=proto)], self.loop)
        node = Node(Endpoint(disp, **kw), disp, answer)
        node.ep.set_application(node.app)
        self.nodes.append(node)
        return node

    def raw(
        self, answer: Callable[[Raw, Request, Addr], None] | None = None, proto: Proto = "udp"
    ) -> Raw:
        raw = Raw(Leg(addr="127.0.0.1", port=0, proto=proto), answer)
        raw.leg.socketpool().attach_eventloop(self.loop, raw.receive)
        self.raws.append(raw)
        return raw

    def drive(self, cond: Callable[[], object], what: str = "") -> None:
        drive(self.loop, cond, 5.0, what)

    def register(self, node: Node, reg: Raw, contact: str = "", **kw: Any) -> Context:
        """``node`` registers alice (its own Contact by default) at ``reg``: the first outcome."""
        ctx = node.ep.register(
            registrar=f"sip:{reg.leg.src}",
            from_="<sip:alice@example.org>",
            contact=contact or f"<sip:alice@{node.leg.src}>",
            callback=node.cb,
            **kw,
        )
        self.drive(lambda: node.events)
        return ctx

    def advance(self, seconds: float) -> None:
        advance(self.loop, self.clock, seconds, step=0.125)


@pytest.fixture
def world() -> Iterator[World]:
    clock = FakeClock(1_000_000.0)
    loop = EventLoop(clock=clock)
    w = World(loop, clock)
    yield w
    for n in w.nodes:
        n.ep.close()
        n.disp.close()
    for r in w.raws:
        r.leg.close()
    loop.close()


def accept(node: Node, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
    """An application that accepts calls (180, 200) and answers 200 to other requests."""
    method = request.method()
    if method == "INVITE":
        node.ep.new_response(ctx, request.create_response(180), leg, from_)
        node.ep.new_response(ctx, request.create_response(200), leg, from_)
    elif method not in ("ACK", "BYE", "CANCEL"):
        node.ep.new_response(ctx, request.create_response(200), leg, from_)


def _branch(packet: Packet) -> str | None:
    return sip_hdrval2parts("via", packet.get_headers("via")[0])[1].get("branch")


def _tag(value: str | None) -> str | None:
    assert value is not None
    return sip_hdrval2parts("to", value)[1].get("tag")


def _call(world: World, caller: Node, to: str, **kw: str) -> Context:
    return caller.ep.invite(
        {"from_": f"<sip:alice@{caller.leg.src}>", "to": f"<{to}>"},
        callback=caller.cb,
        uri=to,
        **kw,
    )


# ------------------------------------------------------------------ calls


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_call_established_and_ended(world: World, proto: Proto) -> None:
    """INVITE/180/200/ACK/BYE/200 between two endpoints; both forget the call."""
    bob = world.node(accept, proto)
    alice = world.node(proto=proto)
    ctx = _call(world, alice, bob.uri)
    world.drive(lambda: 200 in alice.codes(), "alice got 200")
    assert alice.codes() == [180, 200]
    assert ctx.established and ctx.remote_tag is not None
    world.drive(lambda: any(r.method() == "ACK" for _, r in bob.requests) or len(bob.requests) > 1)
    bob_ctx = bob.requests[0][0]
    assert [r.method() for _, r in bob.requests] == ["INVITE", "ACK"]
    assert bob_ctx.established and bob_ctx.remote_tag == ctx.local_tag
    assert bob_ctx.local_tag == ctx.remote_tag
    alice.ep.new_request("BYE", ctx, callback=alice.cb)
    world.drive(lambda: len(alice.events) == 3, "BYE answered")
    assert alice.events[-1].code == 200 and alice.events[-1].err == 0
    assert bob.requests[-1][1].method() == "BYE"
    assert len(alice.ep) == 0 and len(bob.ep) == 0
    assert ctx.closed and bob_ctx.closed


def test_in_dialog_requests_both_ways(world: World) -> None:
    """INFO, UPDATE, MESSAGE, NOTIFY and a re-INVITE in the dialog, from either side."""
    bob = world.node(accept)
    alice = world.node(accept)
    ctx = _call(world, alice, bob.uri)
    world.drive(lambda: 200 in alice.codes())
    world.drive(lambda: len(bob.requests) == 2)
    bob_ctx = bob.requests[0][0]
    bob_ctx.set_callback(bob.cb)
    for method in ("INFO", "UPDATE", "MESSAGE", "NOTIFY", "INVITE"):
        n = len(alice.events)
        alice.ep.new_request(method, ctx, body=b"x", content_type="text/plain")
        world.drive(lambda: len(alice.events) > n, f"{method} answered")  # noqa: B023
        assert alice.events[-1].code == 200, method
    # bob's callback got every request (and the ACK of the re-INVITE)
    world.drive(lambda: any(e.packet and e.packet.method() == "ACK" for e in bob.events))
    got = [e.packet.method() for e in bob.events if isinstance(e.packet, Request)]
    assert got == ["INFO", "UPDATE", "MESSAGE", "NOTIFY", "INVITE", "ACK"]
    # and the other way round: bob asks, alice's callback answers
    n = len(alice.events)
    bob.ep.new_request("INFO", bob_ctx)
    world.drive(lambda: len(alice.events) > n)
    info = alice.events[-1].packet
    assert isinstance(info, Request) and info.method() == "INFO"
    assert _tag(info.get_header("to")) == ctx.local_tag


def test_cseq_counted_and_old_cseq_500(world: World) -> None:
    """Local CSeq goes up by one per request; a request with a lower CSeq gets 500."""
    raw = world.raw()
    bob = world.node(accept)
    alice_ctx_holder: list[Context] = []
    ctx = _call(world, world.node(), bob.uri)
    alice_ctx_holder.append(ctx)
    world.drive(lambda: len(bob.requests) == 2)
    bob_ctx = bob.requests[0][0]
    assert bob_ctx.remote_cseq == 1
    # forge an in-dialog INFO with CSeq 0 from the raw leg
    req = Request(
        "INFO",
        bob.uri,
        {
            "from": ctx.from_,
            "to": ctx.to,
            "call-id": ctx.callid,
            "cseq": "0 INFO",
            "max-forwards": "70",
        },
    )
    raw.send(req, bob.leg.src)
    world.drive(raw.responses)
    assert raw.responses()[0].code() == 500
    assert len(bob.ep) == 1  # the dialog lives on


def test_unknown_dialog_481(world: World) -> None:
    """A request with a To tag for no dialog gets 481; an ACK is dropped silently."""
    bob = world.node(accept)
    raw = world.raw()
    for method in ("BYE", "INFO", "ACK"):
        req = Request(
            method,
            bob.uri,
            {
                "from": "<sip:a@x>;tag=1",
                "to": "<sip:b@y>;tag=2",
                "call-id": f"nope-{method}",
                "cseq": f"5 {method}",
                "max-forwards": "70",
            },
        )
        raw.send(req, bob.leg.src)
    world.drive(lambda: len(raw.responses()) == 2)
    world.advance(0.5)
    assert sorted(r.code() for r in raw.responses()) == [481, 481]
    assert bob.requests == [] and len(bob.ep) == 0


# ------------------------------------------------------------- UAC INVITE


def test_non_2xx_ack_in_transaction(world: World) -> None:
    """The ACK of a 486 has the INVITE's branch and Request-URI and the response's To."""

    def busy(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            raw.send(req.create_response(486), src)

    raw = world.raw(busy)
    alice = world.node()
    ctx = _call(world, alice, raw.uri)
    world.drive(lambda: raw.requests("ACK"), "ACK")
    invite, ack = raw.requests("INVITE")[0], raw.requests("ACK")[0]
    assert _branch(ack) == _branch(invite)
    assert ack.uri() == invite.uri()
    assert ack.get_header("to") == raw.responses()[0].get_header("to") if raw.responses() else True
    assert _tag(ack.get_header("to")) is not None
    assert alice.events[-1].code == 486 and alice.events[-1].err == errno.EINVAL
    assert ctx.closed and len(alice.ep) == 0


def _answer_2xx(
    headers: dict[str, str] | None = None, times: int = 1, tags: tuple[str, ...] = ()
) -> Callable[[Raw, Request, Addr], None]:
    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() != "INVITE":
            if req.method() != "ACK":
                raw.send(req.create_response(200), src)
            return
        raw.send(req.create_response(180), src)
        for tag in tags or ("",):
            resp = req.create_response(200, headers=headers)
            if tag:
                to = req.get_header("to")
                resp.set_header("to", f"{to};tag={tag}")
                resp.set_header("contact", f"<sip:{tag}@{raw.leg.src}>")
            for _ in range(times):
                raw.send(resp, src)

    return answer


def test_2xx_ack_through_route_set(world: World) -> None:
    """The ACK of a 2xx goes to the first Record-Route (reversed) with the route set
    as Route, and its Request-URI is the Contact (12.2.1.1, loose routing)."""
    proxy = world.raw()
    callee = world.raw()
    rr = ["<sip:p2.invalid;lr>", f"<sip:{proxy.leg.src};lr>"]
    callee.answer = _answer_2xx({"record-route": rr, "contact": f"<sip:bob@{callee.leg.src}>"})  # type: ignore[dict-item]
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: proxy.requests("ACK"), "ACK at the first route")
    ack = proxy.requests("ACK")[0]
    assert ack.uri() == f"sip:bob@{callee.leg.src}"
    assert ack.get_headers("route") == [f"<sip:{proxy.leg.src};lr>", "<sip:p2.invalid;lr>"]
    assert ctx.route == ack.get_headers("route")
    assert not callee.requests("ACK")


def test_2xx_ack_strict_router(world: World) -> None:
    """A strict router (no ;lr) gets the Request-URI; the remote target goes last in Route."""
    proxy = world.raw()
    callee = world.raw()
    rr = [f"<sip:{proxy.leg.src}>"]
    callee.answer = _answer_2xx({"record-route": rr, "contact": f"<sip:bob@{callee.leg.src}>"})  # type: ignore[dict-item]
    alice = world.node()
    _call(world, alice, callee.uri)
    world.drive(lambda: proxy.requests("ACK"), "ACK at the strict router")
    ack = proxy.requests("ACK")[0]
    assert ack.uri() == f"sip:{proxy.leg.src}"
    assert ack.get_headers("route") == [f"<sip:bob@{callee.leg.src}>"]


def test_retransmitted_2xx_acked_again(world: World) -> None:
    """Each copy of the 2xx gets an ACK (13.2.2.4); the application hears of it once."""
    callee = world.raw(_answer_2xx(times=3))
    alice = world.node()
    _call(world, alice, callee.uri)
    world.drive(lambda: len(callee.requests("ACK")) == 3, "three ACKs")
    assert alice.codes() == [180, 200]


def test_forked_2xx_each_get_ack_and_dialog(world: World) -> None:
    """Two 2xx with different To tags: two ACKs to two Contacts, two dialogs."""
    callee = world.raw(_answer_2xx(tags=("one", "two")))
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: len(callee.requests("ACK")) == 2, "two ACKs")
    acks = callee.requests("ACK")
    assert sorted(a.uri() for a in acks) == sorted(
        f"sip:{t}@{callee.leg.src}" for t in ("one", "two")
    )
    oks = [e for e in alice.events if e.code == 200]
    assert len(oks) == 2 and oks[0].ctx is ctx and oks[1].ctx is not ctx
    assert {oks[0].ctx.remote_tag, oks[1].ctx.remote_tag} == {"one", "two"}
    assert ctx.forks is not None and oks[1].ctx in ctx.forks.values()
    # each dialog has its own BYE
    for e in oks:
        alice.ep.new_request("BYE", e.ctx)
    world.drive(lambda: len(callee.requests("BYE")) == 2)
    world.drive(lambda: len(alice.ep) == 0, "both dialogs closed")
    assert sorted(b.uri() for b in callee.requests("BYE")) == sorted(a.uri() for a in acks)


def test_cancel_waits_for_provisional(world: World) -> None:
    """No CANCEL before a 1xx (9.1); after the 180 it goes, then 487 and its ACK."""
    pending: list[tuple[Request, Addr]] = []

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            pending.append((req, src))
        elif req.method() == "CANCEL":
            raw.send(req.create_response(200), src)
            inv, isrc = pending[0]
            raw.send(inv.create_response(487), isrc)

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: pending)
    assert alice.ep.cancel_invite(ctx)
    world.advance(1.0)
    assert not callee.requests("CANCEL")
    inv, src = pending[0]
    callee.send(inv.create_response(180), src)
    world.drive(lambda: callee.requests("ACK"), "ACK of the 487")
    cancel = callee.requests("CANCEL")[0]
    assert _branch(cancel) == _branch(inv) and cancel.uri() == inv.uri()
    assert alice.codes()[-1] == 487 and alice.events[-1].err == errno.EINVAL
    assert len(alice.ep) == 0


def test_cancelled_invite_answered_200_gets_ack_and_bye(world: World) -> None:
    """A 2xx that crosses our CANCEL: ACK, then BYE; the callback hears ECANCELED."""
    pending: list[tuple[Request, Addr]] = []

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            raw.send(req.create_response(180), src)
            pending.append((req, src))
        elif req.method() == "CANCEL":
            raw.send(req.create_response(200), src)
            inv, isrc = pending[0]
            raw.send(inv.create_response(200), isrc)  # too late to cancel
        elif req.method() == "BYE":
            raw.send(req.create_response(200), src)

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 180 in alice.codes())
    alice.ep.cancel_invite(ctx)
    world.drive(lambda: callee.requests("BYE"), "BYE")
    assert callee.requests("ACK")
    assert any(e.code == 200 and e.err == errno.ECANCELED for e in alice.events)
    world.drive(lambda: len(alice.ep) == 0)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_timer_b_reaches_callback(world: World, proto: Proto) -> None:
    """No answer at all: after 64*T1 the callback gets ETIMEDOUT, once."""
    callee = world.raw(proto=proto)  # records, never answers
    alice = world.node(proto=proto)
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: callee.requests("INVITE"))
    world.advance(31.0)
    assert alice.events == []
    world.advance(2.0)
    assert [(e.err, e.code) for e in alice.events] == [(errno.ETIMEDOUT, 0)]
    assert ctx.closed and len(alice.ep) == 0
    world.advance(40.0)
    assert len(alice.events) == 1


def test_timer_f_non_invite(world: World) -> None:
    """An OPTIONS never answered: ETIMEDOUT after 64*T1."""
    callee = world.raw()
    alice = world.node()
    alice.ep.new_request(
        "OPTIONS", {"from_": "<sip:a@h>", "to": f"<{callee.uri}>"}, callback=alice.cb
    )
    world.drive(lambda: callee.requests("OPTIONS"))
    world.advance(33.0)
    assert [(e.err, e.code) for e in alice.events] == [(errno.ETIMEDOUT, 0)]
    assert len(alice.ep) == 0


# ------------------------------------------------------------- UAS INVITE


def _invite(raw: Raw, to: str, callid: str = "c1", cseq: int = 1) -> Request:
    return Request(
        "INVITE",
        to,
        {
            "from": f"<{raw.uri}>;tag=rawtag",
            "to": f"<{to}>",
            "call-id": callid,
            "cseq": f"{cseq} INVITE",
            "max-forwards": "70",
            "contact": f"<{raw.uri}>",
        },
    )


def test_100_trying_only_when_slow(world: World) -> None:
    """An application that answers at once sends no 100; a slow one gets 100 after 200 ms."""
    raw = world.raw()
    fast = world.node(accept)
    raw.send(_invite(raw, fast.uri, "fast"), fast.leg.src)
    world.drive(lambda: len(raw.responses()) == 2)
    world.advance(0.5)
    assert [r.code() for r in raw.responses()][:2] == [180, 200]
    assert 100 not in [r.code() for r in raw.responses()]

    slow = world.node()  # never answers
    raw.got.clear()
    raw.send(_invite(raw, slow.uri, "slow"), slow.leg.src)
    world.drive(lambda: slow.requests)
    world.advance(0.125)
    assert raw.responses() == []
    world.advance(0.125)
    assert [r.code() for r in raw.responses()] == [100]


def test_2xx_retransmitted_until_ack(world: World) -> None:
    """The 2xx goes again at T1, 2*T1, 4*T1 ... until the ACK, then stops."""
    raw = world.raw()
    bob = world.node(accept)
    invite = _invite(raw, bob.uri)
    raw.send(invite, bob.leg.src)
    world.drive(lambda: any(r.code() == 200 for r in raw.responses()))
    world.advance(1.6)  # copies at 0.5 and 1.5
    oks = [r for r in raw.responses() if r.code() == 200]
    assert len(oks) == 3
    ack = invite.create_ack(oks[0])
    ack.set_uri(bob.uri)
    raw.send(ack, bob.leg.src)
    world.drive(lambda: any(r.method() == "ACK" for _, r in bob.requests))
    world.advance(10.0)
    assert len([r for r in raw.responses() if r.code() == 200]) == 3
    assert len(bob.ep) == 1 and bob.requests[0][0].established


def test_no_ack_ends_call_with_bye(world: World) -> None:
    """No ACK within 64*T1: the UAS gives up and sends BYE (13.3.1.4)."""
    raw = world.raw()
    bob = world.node(accept)
    raw.send(_invite(raw, bob.uri), bob.leg.src)
    world.drive(lambda: any(r.code() == 200 for r in raw.responses()))
    world.advance(31.5)
    assert not raw.requests("BYE")
    world.advance(1.0)
    world.drive(lambda: raw.requests("BYE"), "BYE")
    bye = raw.requests("BYE")[0]
    assert bye.uri() == raw.uri  # the remote target: the INVITE's Contact
    assert _tag(bye.get_header("to")) == "rawtag"
    oks = [r for r in raw.responses() if r.code() == 200]
    assert 5 <= len(oks) <= 12  # T1 doubling to T2 over 32 s


class _RefusingLeg(Leg):
    """A leg whose sends fail with ECONNREFUSED while ``refuse`` is set."""

    refuse = False

    def deliver(self, packet: Packet, dst: object, callback: object = None) -> None:
        if self.refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        super().deliver(packet, dst, callback)


def test_no_ack_after_a_2xx_that_could_not_be_sent_again(world: World) -> None:
    """A retransmission of the 2xx fails (its delivery ends early): the ACK
    is still awaited until 64*T1 after the answer, then BYE (13.3.1.4)."""
    raw = world.raw()
    bob = world.node(accept, leg_class=_RefusingLeg)
    raw.send(_invite(raw, bob.uri), bob.leg.src)
    world.drive(lambda: any(r.code() == 200 for r in raw.responses()))
    assert isinstance(bob.leg, _RefusingLeg)
    bob.leg.refuse = True
    world.advance(1.0)  # the retransmission at T1 fails
    assert bob.disp.queue_size() == 0
    bob.leg.refuse = False
    world.advance(30.0)
    assert not raw.requests("BYE")
    assert len(bob.ep) == 1
    world.advance(1.5)
    world.drive(lambda: raw.requests("BYE"), "BYE")
    assert len([r for r in raw.responses() if r.code() == 200]) == 1


def test_no_ack_within_a_timeout_of_the_endpoint_s_own(world: World) -> None:
    """An Endpoint timeout other than 64*T1: the ACK is awaited that long."""
    raw = world.raw()
    bob = world.node(accept, timeout=8.0)
    raw.send(_invite(raw, bob.uri), bob.leg.src)
    world.drive(lambda: any(r.code() == 200 for r in raw.responses()))
    world.advance(7.5)
    assert not raw.requests("BYE")
    world.advance(1.0)
    world.drive(lambda: raw.requests("BYE"), "BYE")


def test_cancel_matched_to_invite(world: World) -> None:
    """CANCEL gets 200 and its INVITE 487; the context is gone."""
    raw = world.raw()
    bob = world.node()  # rings forever
    invite = _invite(raw, bob.uri)
    raw.send(invite, bob.leg.src)
    world.drive(lambda: bob.requests)
    # a CANCEL with a wrong CSeq does not match: 481
    wrong = invite.create_cancel()
    wrong.set_cseq(7)
    raw.send(wrong, bob.leg.src)
    world.drive(raw.responses)
    assert raw.responses()[0].code() == 481
    raw.got.clear()
    raw.send(invite.create_cancel(), bob.leg.src)
    world.drive(lambda: len(raw.responses()) == 2)
    codes = sorted((r.method(), r.code()) for r in raw.responses())
    assert codes == [("CANCEL", 200), ("INVITE", 487)]
    assert [r.method() for _, r in bob.requests] == ["INVITE", "CANCEL"]
    assert len(bob.ep) == 0


def test_reinvite_during_reinvite(world: World) -> None:
    """14.2: an INVITE while our own re-INVITE is pending gets 491; one while
    the peer's previous INVITE is unanswered gets 500 with Retry-After. 14.1:
    neither side may start one itself meanwhile."""
    bob = world.node(accept)
    alice = world.node(accept)
    ctx = _call(world, alice, bob.uri)
    world.drive(lambda: len(bob.requests) == 2)
    bob_ctx = bob.requests[0][0]
    bob.answer = None  # bob does not answer the re-INVITE
    alice.ep.invite(ctx)
    world.drive(lambda: len(bob.requests) == 3)
    with pytest.raises(ValueError, match="in progress"):
        alice.ep.invite(ctx)
    with pytest.raises(ValueError, match="in progress"):
        bob.ep.invite(bob_ctx)
    raw = world.raw()

    def forged(frm: str, to: str, cseq: int, target: str) -> Request:
        return Request(
            "INVITE",
            target,
            {
                "from": frm,
                "to": to,
                "call-id": ctx.callid,
                "cseq": f"{cseq} INVITE",
                "max-forwards": "70",
                "contact": f"<{raw.uri}>",
            },
        )

    # as bob, to alice, whose own INVITE is pending: glare, 491
    raw.send(forged(ctx.to, ctx.from_, bob_ctx.cseq + 1, alice.uri), alice.leg.src)
    # as alice, to bob, whose answer to alice's INVITE is pending: 500
    raw.send(forged(ctx.from_, ctx.to, ctx.cseq + 1, bob.uri), bob.leg.src)
    world.drive(lambda: len(raw.responses()) == 2)
    codes = {r.code(): r for r in raw.responses()}
    assert sorted(codes) == [491, 500]
    assert codes[500].get_header("retry-after") is not None


# ------------------------------------------------------------ outside dialogs


def test_options_and_message(world: World) -> None:
    bob = world.node(accept)
    alice = world.node()
    for method in ("OPTIONS", "MESSAGE"):
        alice.ep.new_request(
            method,
            {"from_": "<sip:a@127.0.0.1>", "to": f"<{bob.uri}>"},
            callback=alice.cb,
            body=b"hello" if method == "MESSAGE" else None,
            content_type="text/plain" if method == "MESSAGE" else None,
        )
    world.drive(lambda: len(alice.events) == 2)
    assert alice.codes() == [200, 200]
    assert [r.method() for _, r in bob.requests] == ["OPTIONS", "MESSAGE"]
    assert bob.requests[1][1].body() == b"hello"
    assert len(alice.ep) == 0 and len(bob.ep) == 0


def _registrar(grant: int = 60) -> Callable[[Raw, Request, Addr], None]:
    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "REGISTER":
            expires = int(req.get_header("expires") or 0)
            contact = req.get_header("contact")
            if contact == "*":
                resp = req.create_response(200)
            else:
                resp = req.create_response(
                    200, headers={"contact": f"{contact};expires={min(expires, grant)}"}
                )
            raw.send(resp, src)

    return answer


def test_register_refresh_and_unregister(world: World) -> None:
    reg = world.raw(_registrar(60))
    alice = world.node()
    ctx = world.register(alice, reg, expires=3600)
    assert ctx.expires == 60 and alice.codes() == [200]
    world.advance(29.0)
    assert len(reg.requests("REGISTER")) == 1
    world.advance(2.0)
    world.drive(lambda: len(alice.events) == 2, "refreshed")
    regs = reg.requests("REGISTER")
    assert len(regs) == 2 and regs[0].callid() == regs[1].callid()
    assert regs[1].cseq_number() == regs[0].cseq_number() + 1  # type: ignore[operator]
    assert alice.ep.unregister(ctx)
    world.drive(lambda: len(alice.events) == 3)
    assert reg.requests("REGISTER")[-1].get_header("expires") == "0"
    assert len(alice.ep) == 0
    world.advance(120.0)
    assert len(reg.requests("REGISTER")) == 3


def test_unregister_all(world: World) -> None:
    reg = world.raw(_registrar())
    alice = world.node()
    world.register(alice, reg, contact="*", expires=0)
    req = reg.requests("REGISTER")[0]
    assert req.get_header("contact") == "*" and req.get_header("expires") == "0"
    assert len(alice.ep) == 0


# ------------------------------------------------------------------ digest

SECRET = b"test secret"


def _digest_server(
    password: str = "pw",
    algorithm: str = "MD5",
    code: int = 401,
    methods: tuple[str, ...] = ("REGISTER", "INVITE", "BYE"),
    stale_first: bool = False,
) -> Callable[[Raw, Request, Addr], None]:
    """A raw UAS/registrar that wants digest for ``methods`` (401 or 407)."""
    stale_sent: list[bool] = []

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        method = req.method()
        if method == "ACK":
            return
        if method in methods:
            now = 1_000_000.0 + len(stale_sent)  # (a stale challenge has a new nonce)
            verdict = verify(
                req,
                realm="example.org",
                secret=SECRET,
                lookup=lambda user, realm: password if user == "alice" else None,
                now=now,
                proxy=code == 407,
            )
            stale = stale_first and not stale_sent and verdict.status == Status.OK
            if stale:
                stale_sent.append(True)
            if verdict.status != Status.OK or stale:
                header = "proxy-authenticate" if code == 407 else "www-authenticate"
                challenge = make_challenge(
                    "example.org",
                    secret=SECRET,
                    algorithm=algorithm,
                    now=1_000_000.0 + len(stale_sent),
                    stale=stale or verdict.status == Status.STALE,
                )
                raw.send(req.create_response(code, headers={header: challenge}), src)
                return
        resp = req.create_response(200)
        if method == "REGISTER":
            resp.set_header("contact", f"{req.get_header('contact')};expires=60")
        raw.send(resp, src)

    return answer


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256-sess"])
@pytest.mark.parametrize("code", [401, 407])
def test_register_with_digest(world: World, algorithm: str, code: int) -> None:
    reg = world.raw(_digest_server(algorithm=algorithm, code=code))
    alice = world.node()
    ctx = world.register(alice, reg, auth=("alice", "pw"))
    assert alice.codes() == [200] and ctx.expires == 60
    regs = reg.requests("REGISTER")
    assert len(regs) == 2
    header = "proxy-authorization" if code == 407 else "authorization"
    assert f"algorithm={algorithm}" in (regs[1].get_header(header) or "")
    assert regs[1].cseq_number() == 2 and regs[1].callid() == regs[0].callid()
    # the refresh answers the same challenge again with the next nc
    world.advance(31.0)
    world.drive(lambda: len(alice.events) == 2)
    assert len(reg.requests("REGISTER")) == 3
    assert "nc=00000002" in (reg.requests("REGISTER")[2].get_header(header) or "")


def test_wrong_password_reported_once(world: World) -> None:
    """A second challenge for the realm just answered is a failure, reported once."""
    reg = world.raw(_digest_server(password="right"))
    alice = world.node()
    world.register(alice, reg, auth=("alice", "wrong"))
    world.advance(5.0)
    assert [(e.err, e.code) for e in alice.events] == [(errno.EPERM, 401)]
    assert len(reg.requests("REGISTER")) == 2
    assert len(alice.ep) == 0


def test_stale_nonce_retried_without_asking(world: World) -> None:
    asked: list[str] = []

    def creds(realm: str) -> tuple[str, str]:
        asked.append(realm)
        return ("alice", "pw")

    reg = world.raw(_digest_server(stale_first=True))
    alice = world.node()
    world.register(alice, reg, auth=creds)
    assert alice.codes() == [200]
    assert len(reg.requests("REGISTER")) == 3


def test_reinvite_challenged_stays_in_dialog(world: World) -> None:
    """A 401 to a re-INVITE is answered in the dialog (same Call-ID and tags):
    the peer accepts it; nothing is retried outside the dialog."""
    callee = world.raw(_digest_server(methods=("INVITE",)))
    alice = world.node()
    ctx = alice.ep.invite(
        {
            "from_": f"<sip:alice@{alice.leg.src}>",
            "to": f"<{callee.uri}>",
            "auth": ("alice", "pw"),
        },
        callback=alice.cb,
        uri=callee.uri,
    )
    world.drive(lambda: 200 in alice.codes())
    n = len(alice.events)
    alice.ep.invite(ctx)
    world.drive(lambda: len(alice.events) > n)
    assert alice.events[-1].code == 200 and alice.events[-1].err == 0
    invites = callee.requests("INVITE")
    assert len(invites) == 4
    for inv in invites[2:]:
        assert _tag(inv.get_header("to")) == ctx.remote_tag
        assert inv.callid() == ctx.callid
    assert [i.cseq_number() for i in invites] == [1, 2, 3, 4]
    assert len(alice.ep) == 1


def test_481_to_reinvite_ends_dialog(world: World) -> None:
    """A 481 to a re-INVITE reaches the callback and ends the dialog (12.2.1.2)."""
    state = {"n": 0}

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            state["n"] += 1
            raw.send(req.create_response(200 if state["n"] == 1 else 481), src)

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 200 in alice.codes())
    alice.ep.invite(ctx)
    world.drive(lambda: 481 in alice.codes())
    assert alice.events[-1].err == errno.EINVAL
    assert ctx.closed and len(alice.ep) == 0


def test_target_refresh_by_update_2xx(world: World) -> None:
    """The Contact of a 2xx to UPDATE (or re-INVITE) becomes the remote target."""
    n = {"update": 0}

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        method = req.method()
        if method == "ACK":
            return
        resp = req.create_response(200)
        if method == "UPDATE":
            n["update"] += 1
            resp.set_header("contact", f"<sip:moved@{raw.leg.src}>")
        raw.send(resp, src)

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 200 in alice.codes())
    alice.ep.new_request("UPDATE", ctx)
    world.drive(lambda: len(alice.events) == 2)
    assert ctx.remote_target == f"sip:moved@{callee.leg.src}"
    alice.ep.new_request("BYE", ctx)
    world.drive(lambda: callee.requests("BYE"))
    assert callee.requests("BYE")[0].uri() == f"sip:moved@{callee.leg.src}"


def test_uas_target_refresh_by_reinvite(world: World) -> None:
    raw = world.raw()
    bob = world.node(accept)
    invite = _invite(raw, bob.uri)
    raw.send(invite, bob.leg.src)
    world.drive(lambda: bob.requests)
    ctx = bob.requests[0][0]
    assert ctx.remote_target == raw.uri
    re = _invite(raw, bob.uri, cseq=2)
    re.set_header("to", ctx.to)
    re.set_header("contact", f"<sip:new@{raw.leg.src}>")
    raw.send(re, bob.leg.src)
    world.drive(lambda: len(bob.requests) == 2)
    assert ctx.remote_target == f"sip:new@{raw.leg.src}"


# --------------------------------------------------------------- bad input


def test_malformed_challenge_fails_once(world: World, caplog: pytest.LogCaptureFixture) -> None:
    def answer(raw: Raw, req: Request, src: Addr) -> None:
        raw.send(
            req.create_response(401, headers={"www-authenticate": 'Digest realm="x, nonce'}), src
        )

    reg = world.raw(answer)
    alice = world.node()
    world.register(alice, reg, auth=("alice", "pw"))
    world.advance(2.0)
    assert [(e.err, e.code) for e in alice.events] == [(errno.EPERM, 401)]
    assert len(reg.requests("REGISTER")) == 1


def test_2xx_without_contact_acked_to_request_uri(world: World) -> None:
    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            resp = req.create_response(200)
            resp.del_header("contact")
            raw.leg.sendto(resp, src)  # (no Contact added by the leg)
        elif req.method() == "BYE":
            raw.send(req.create_response(200), src)

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: callee.requests("ACK"))
    assert callee.requests("ACK")[0].uri() == callee.uri
    assert ctx.remote_target == callee.uri


@pytest.mark.parametrize("rr", ["<sip:[::zz];lr>", "<mailto:x@y>", "<sip:;lr>"])
def test_garbage_record_route(world: World, rr: str) -> None:
    """A 2xx whose Record-Route the parser lets through but nobody can route
    to: the call is reported, the ACK and a BYE fail quietly (a log line, an
    error to the BYE's callback), and the context is closed."""
    callee = world.raw(_answer_2xx({"record-route": rr}))
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 200 in alice.codes())
    alice.ep.new_request("BYE", ctx)
    world.advance(40.0)
    assert alice.codes()[:2] == [180, 200]
    assert len(alice.events) == 3  # the BYE's outcome, whatever it is
    assert ctx.closed and len(alice.ep) == 0


def test_cseq_limit(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """CSeq numbers are 32-bit (8.1.1.5): 2**31 from the peer is taken, a local
    counter at 2**32-1 refuses to send, and 2**32 on the wire is dropped with a
    log line."""
    caplog.set_level(logging.INFO, "netsip")
    bob = world.node(accept)
    alice = world.node()
    ctx = _call(world, alice, bob.uri)
    world.drive(lambda: 200 in alice.codes())
    ctx.cseq = 2**31 - 1
    alice.ep.new_request("INFO", ctx, callback=alice.cb)
    world.drive(lambda: len(alice.events) >= 3)
    assert alice.codes() == [180, 200, 200], alice.codes()
    assert bob.requests[0][0].remote_cseq == 2**31
    ctx.cseq = 2**32 - 1
    with pytest.raises(OverflowError):
        alice.ep.new_request("INFO", ctx)
    raw = world.raw()
    data = (
        f"OPTIONS {bob.uri} SIP/2.0\r\nVia: SIP/2.0/UDP {raw.leg.src};branch=z9hG4bKx\r\n"
        f"From: <sip:a@b>;tag=1\r\nTo: <{bob.uri}>\r\nCall-ID: big\r\n"
        f"CSeq: 4294967296 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    sock = raw.leg.socketpool().master()
    sock.sendto(data, (bob.leg.src.addr, bob.leg.src.port))
    world.drive(lambda: "cseq number out of range" in caplog.text, "the drop logged")
    world.advance(0.5)
    assert raw.responses() == []  # dropped as unparsable, like any malformed datagram
    assert not any(r.method() == "OPTIONS" for _, r in bob.requests)


def test_ack_and_cancel_for_unknown_transactions(world: World) -> None:
    bob = world.node(accept)
    raw = world.raw()
    invite = _invite(raw, bob.uri, "unknown")
    raw.send(invite.create_cancel(), bob.leg.src)
    ack = Request(
        "ACK",
        bob.uri,
        {
            "from": "<sip:a@b>;tag=1",
            "to": f"<{bob.uri}>",
            "call-id": "unknown2",
            "cseq": "1 ACK",
            "max-forwards": "70",
        },
    )
    raw.send(ack, bob.leg.src)
    world.drive(raw.responses)
    world.advance(0.5)
    assert [r.code() for r in raw.responses()] == [481]
    assert bob.requests == [] and len(bob.ep) == 0


def test_response_for_closed_context(world: World) -> None:
    pending: list[tuple[Request, Addr]] = []
    callee = world.raw(lambda raw, req, src: pending.append((req, src)))
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: pending)
    alice.ep.close_context(ctx)
    req, src = pending[0]
    callee.send(req.create_response(200), src)
    callee.send(req.create_response(180), src)
    world.advance(1.0)
    assert alice.events == [] and len(alice.ep) == 0
    assert not callee.requests("ACK")


# ------------------------------------------------------ review regressions


def test_early_dialog_request_keeps_the_call(world: World) -> None:
    """An UPDATE in the early dialog (after a 183 with a tag) goes with the
    tag, its 200 does not end the call, and the INVITE's 200 is ACKed."""
    held: list[tuple[Request, Addr]] = []

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            held.append((req, src))
            raw.send(req.create_response(183), src)
        elif req.method() != "ACK":
            raw.send(req.create_response(200), src)

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 183 in alice.codes())
    alice.ep.new_request("UPDATE", ctx, body=b"v=0")
    world.drive(lambda: len(alice.events) == 2)
    update = callee.requests("UPDATE")[0]
    assert _tag(update.get_header("to")) == ctx.remote_tag is not None
    assert not ctx.closed
    req, src = held[0]
    callee.send(req.create_response(200), src)
    world.drive(lambda: callee.requests("ACK"))
    assert alice.codes() == [183, 200, 200] and ctx.established


def test_cancel_without_487_times_out(world: World) -> None:
    """9.1: a CANCELled INVITE that never gets its final response is given up
    after 64*T1; the callback hears ETIMEDOUT and the context is gone."""

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            raw.send(req.create_response(180), src)
        elif req.method() == "CANCEL":
            raw.send(req.create_response(200), src)  # but no 487, ever

    callee = world.raw(answer)
    alice = world.node()
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 180 in alice.codes())
    alice.ep.cancel_invite(ctx)
    world.drive(lambda: callee.requests("CANCEL"))
    world.advance(33.0)
    assert (errno.ETIMEDOUT, 0) in [(e.err, e.code) for e in alice.events]
    assert ctx.closed and len(alice.ep) == 0


def test_retransmission_before_answer_not_delivered_twice(world: World) -> None:
    raw = world.raw()
    bob = world.node()  # does not answer at once
    msg = Request(
        "MESSAGE",
        bob.uri,
        {
            "from": "<sip:a@b>;tag=1",
            "to": f"<{bob.uri}>",
            "call-id": "m1",
            "cseq": "1 MESSAGE",
            "max-forwards": "70",
        },
        b"hi",
    )
    raw.send(msg, bob.leg.src)
    world.drive(lambda: bob.requests)
    raw.send(msg, bob.leg.src)
    world.advance(0.5)
    assert len(bob.requests) == 1 and len(bob.ep) == 1
    ctx, req = bob.requests[0]
    bob.ep.new_response(ctx, req.create_response(200), bob.leg, raw.leg.src)
    world.drive(raw.responses)
    assert len(bob.ep) == 0


def test_closed_context_refuses_requests(world: World) -> None:
    bob = world.node(accept)
    alice = world.node()
    ctx = _call(world, alice, bob.uri)
    world.drive(lambda: 200 in alice.codes())
    alice.ep.close_context(ctx)
    with pytest.raises(ValueError, match="closed"):
        alice.ep.new_request("BYE", ctx)
    assert len(alice.ep) == 0


def test_register_refresh_keeps_destination(world: World) -> None:
    """A registrar given by name with an explicit dst_addr: the refresh and the
    unregister go to the same place (no DNS for the name)."""
    reg = world.raw(_registrar(60))
    alice = world.node()
    ctx = alice.ep.register(
        registrar="sip:registrar.invalid",
        from_="<sip:alice@example.org>",
        contact=f"<sip:alice@{alice.leg.src}>",
        callback=alice.cb,
        dst_addr=reg.leg.src,
    )
    world.drive(lambda: alice.events)
    world.advance(31.0)
    world.drive(lambda: len(alice.events) == 2)
    alice.ep.unregister(ctx)
    world.drive(lambda: len(alice.events) == 3)
    assert [e.code for e in alice.events] == [200, 200, 200]
    assert len(reg.requests("REGISTER")) == 3


def test_refresh_with_single_use_nonce(world: World) -> None:
    """A registrar that wants a new nonce for every REGISTER (no stale flag):
    the refresh's old answer is refused, and answered again, not reported."""
    n = {"challenges": 0}

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        now = 1_000_000.0 + n["challenges"]
        verdict = verify(
            req, realm="r", secret=SECRET, lookup=lambda u, r: "pw", now=now, max_age=0.5
        )
        if verdict.status != Status.OK:
            n["challenges"] += 1
            challenge = make_challenge("r", secret=SECRET, now=now + 1)
            raw.send(req.create_response(401, headers={"www-authenticate": challenge}), src)
            return
        resp = req.create_response(200)
        resp.set_header("contact", f"{req.get_header('contact')};expires=60")
        raw.send(resp, src)

    reg = world.raw(answer)
    alice = world.node()
    world.register(alice, reg, auth=("alice", "pw"))
    world.advance(31.0)
    world.drive(lambda: len(alice.events) == 2)
    assert [(e.err, e.code) for e in alice.events] == [(0, 200), (0, 200)]


def test_huge_expires_clamped(world: World) -> None:
    def answer(raw: Raw, req: Request, src: Addr) -> None:
        contact = req.get_header("contact")
        raw.send(req.create_response(200, headers={"contact": f"{contact};expires={10**40}"}), src)

    reg = world.raw(answer)
    alice = world.node()
    ctx = world.register(alice, reg)
    assert alice.codes() == [200] and ctx.expires == 2**32 - 1


def test_provisional_does_not_stop_non_invite_retransmission(world: World) -> None:
    """17.1.2.2: after a 100 to a MESSAGE the request is still retransmitted
    (at T2), so a lost final response is recovered."""
    seen: list[int] = []

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        seen.append(1)
        # a 100 to the first copy; the 200 only to a later one
        raw.send(req.create_response(100 if len(seen) == 1 else 200), src)

    callee = world.raw(answer)
    alice = world.node()
    alice.ep.new_request(
        "MESSAGE", {"from_": "<sip:a@h>", "to": f"<{callee.uri}>"}, callback=alice.cb, body=b"x"
    )
    world.drive(lambda: seen)
    world.advance(5.0)
    assert alice.codes() == [200]


def test_cancel_200_carries_invite_tag(world: World) -> None:
    raw = world.raw()
    bob = world.node()
    invite = _invite(raw, bob.uri)
    raw.send(invite, bob.leg.src)
    world.drive(lambda: bob.requests)
    raw.send(invite.create_cancel(), bob.leg.src)
    world.drive(lambda: len(raw.responses()) == 2)
    tags = {r.method(): _tag(r.get_header("to")) for r in raw.responses()}
    assert tags["CANCEL"] == tags["INVITE"] == bob.requests[0][0].local_tag


def test_cancel_outcome_when_487_comes_first(world: World) -> None:
    """The 487 overtakes the CANCEL's 200: both callbacks get their outcome,
    then the context is gone."""
    held: list[tuple[Request, Addr]] = []

    def answer(raw: Raw, req: Request, src: Addr) -> None:
        if req.method() == "INVITE":
            held.append((req, src))
            raw.send(req.create_response(180), src)
        elif req.method() == "CANCEL":
            inv, isrc = held[0]
            raw.send(inv.create_response(487), isrc)
            raw.send(req.create_response(200), src)

    callee = world.raw(answer)
    alice = world.node()
    cancelled = Node(alice.ep, alice.disp)
    ctx = _call(world, alice, callee.uri)
    world.drive(lambda: 180 in alice.codes())
    alice.ep.cancel_invite(ctx, callback=cancelled.cb)
    world.drive(lambda: cancelled.events and 487 in alice.codes(), "both outcomes")
    assert cancelled.codes() == [200]
    assert ctx.closed and len(alice.ep) == 0


@given(st.text(st.sampled_from(list('<>;tagTAG= \t,x"')), max_size=14))
def test_header_tag_as_the_pattern_finds_it(value: str) -> None:
    """header_tag's shortcut (no ';', no tag) agrees with the pattern alone."""
    params = value.rpartition(">")[2] if "<" in value else value
    m = TAG_VALUE_RE.search(params)
    assert header_tag(value) == (m.group(1) if m and value else None)
