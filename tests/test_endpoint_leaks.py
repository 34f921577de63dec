"""No leaks after many calls between two netsip Endpoints on one event loop.

1,000 calls over loopback, 50 at once, each endpoint calling the other in
turn, in four kinds (the Request-URI's user part tells the callee which):

* ``bye-caller``: 180, 200, ACK, the caller hangs up;
* ``bye-callee``: 180, 200, ACK, the callee hangs up;
* ``busy``: 486 (ACKed inside the transaction);
* ``cancel``: 180, the caller cancels (CANCEL 200, INVITE 487, ACK).

Each side checks every step it sees. Afterwards both endpoints hold no
context; once the fake clock has run past every transaction's lifetime
(64*T1) and the idle connections' expiry, the event loop holds as many
timers as before the first call and the process as many file descriptors;
after closing, as many as before the endpoints were made.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Request
from netsip.retransmit import T1
from netsip.socketpool import get_settings
from netsip.testing import FakeClock, advance, drive, open_fds
from netsip.util import Addr, Proto
from tests.support import EndpointEvent, EndpointEvents

CALLS = 1000
PARALLEL = 50
KINDS = ("bye-caller", "bye-callee", "busy", "cancel")
DRIVE_TIMEOUT = 60.0  # real seconds for all calls (a few on a quiet machine)

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
)


@dataclass(eq=False)
class Node:
    leg: Leg
    disp: Dispatcher
    ep: Endpoint


@dataclass(eq=False)
class Call:
    kind: str
    caller_done: bool = False
    callee_done: bool = False
    counted: bool = False
    seen: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Calls:
    """Starts the calls, follows each from both sides, counts the outcomes."""

    loop: EventLoop
    nodes: tuple[Node, Node]
    calls: dict[str, Call] = field(default_factory=dict)
    started: int = 0
    finished: int = 0
    cancel_answered: int = 0
    failures: list[str] = field(default_factory=list)
    invite_cb: Callable[..., None] = field(init=False, repr=False)
    callee_bye_cb: Callable[..., None] = field(init=False, repr=False)
    caller_bye_cb: Callable[..., None] = field(init=False, repr=False)
    cancel_cb: Callable[..., None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # the context callbacks (a thousand calls: they keep no events)
        self.invite_cb = EndpointEvents(self.on_invite, keep=False).cb
        self.callee_bye_cb = EndpointEvents(self.on_callee_bye, keep=False).cb
        self.caller_bye_cb = EndpointEvents(self.on_caller_bye, keep=False).cb
        self.cancel_cb = EndpointEvents(self.on_cancel, keep=False).cb

    def done(self) -> bool:
        return self.finished >= CALLS or len(self.failures) > 20

    def fill(self) -> None:
        while self.started < CALLS and self.started - self.finished < PARALLEL:
            n = self.started
            self.started += 1
            caller, callee = self.nodes[n % 2], self.nodes[1 - n % 2]
            kind = KINDS[n % len(KINDS)]
            to = f"sip:{kind}@{callee.leg.src}" + (
                "" if callee.leg.proto == "udp" else f";transport={callee.leg.proto}"
            )
            ctx = caller.ep.invite(
                {"from_": f"<sip:caller@{caller.leg.src}>", "to": f"<{to}>"},
                callback=self.invite_cb,
                body=SDP,
                content_type="application/sdp",
                uri=to,
            )
            self.calls[ctx.callid] = Call(kind)

    def fail(self, callid: str, what: str) -> None:
        call = self.calls.get(callid)
        self.failures.append(
            f"{callid} {call.kind if call else '?'}: {what}; saw {call and call.seen}"
        )

    def step(
        self, callid: str, what: str, caller_done: bool = False, callee_done: bool = False
    ) -> None:
        call = self.calls[callid]
        call.seen.append(what)
        call.caller_done |= caller_done
        call.callee_done |= callee_done
        if call.caller_done and call.callee_done and not call.counted:
            call.counted = True
            self.finished += 1
            self.fill()

    def later(self, action: Callable[[], object]) -> None:
        # after the callback that asks for it (an ACK goes out when it returns)
        self.loop.add_timer(0, lambda _timer: action(), name="test-later")

    # --------------------------------------------------------- the callee

    def app(self, ep: Endpoint, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        callid = request.callid() or ""
        call = self.calls.get(callid)
        method = request.method()
        if call is None:
            self.fail(callid, f"{method} for an unknown call")
            return
        if method == "INVITE":
            self.step(callid, "callee: INVITE")
            if call.kind == "busy":
                ep.new_response(ctx, request.create_response(486), leg, from_)
                self.step(callid, "callee: 486", callee_done=True)
                return
            ep.new_response(ctx, request.create_response(180), leg, from_)
            if call.kind != "cancel":
                answer = request.create_response(
                    200, headers={"content-type": "application/sdp"}, body=SDP
                )
                ep.new_response(ctx, answer, leg, from_)
        elif method == "ACK" and call.kind in ("bye-caller", "bye-callee"):
            self.step(callid, "callee: ACK")
            if call.kind == "bye-callee":
                self.later(lambda: ep.new_request("BYE", ctx, callback=self.callee_bye_cb))
        elif method == "BYE" and call.kind == "bye-caller":
            self.step(callid, "callee: BYE", callee_done=True)
        elif method == "CANCEL" and call.kind == "cancel":
            self.step(callid, "callee: CANCEL", callee_done=True)
        else:
            self.fail(callid, f"callee got {method}")

    def on_callee_bye(self, e: EndpointEvent) -> None:
        ctx, err, code = e.ctx, e.err, e.code
        if err or code != 200:
            self.fail(ctx.callid, f"callee's BYE: {errno.errorcode.get(err, err)} {code}")
        else:
            self.step(ctx.callid, "callee: BYE 200", callee_done=True)

    # --------------------------------------------------------- the caller

    def on_invite(self, e: EndpointEvent) -> None:
        ep, ctx, err, code, packet = e.ep, e.ctx, e.err, e.code, e.packet
        call = self.calls[ctx.callid]
        kind = call.kind
        if isinstance(packet, Request):
            if packet.method() == "BYE" and kind == "bye-callee" and not err:
                self.step(ctx.callid, "caller: BYE", caller_done=True)
            else:
                self.fail(ctx.callid, f"caller got {packet.method()} (err {err})")
        elif code == 180 and not err:
            self.step(ctx.callid, "caller: 180")
            if kind == "cancel":
                ep.cancel_invite(ctx, callback=self.cancel_cb)
        elif code == 200 and not err and kind in ("bye-caller", "bye-callee"):
            if e.ack is None:
                self.fail(ctx.callid, "2xx without an ACK")
            self.step(ctx.callid, "caller: 200")
            if kind == "bye-caller":
                self.later(lambda: ep.new_request("BYE", ctx, callback=self.caller_bye_cb))
        elif (err, code) == (errno.EINVAL, 486) and kind == "busy":
            self.step(ctx.callid, "caller: 486", caller_done=True)
        elif (err, code) == (errno.EINVAL, 487) and kind == "cancel":
            self.step(ctx.callid, "caller: 487", caller_done=True)
        else:
            self.fail(ctx.callid, f"caller got {errno.errorcode.get(err, err)} {code}")

    def on_caller_bye(self, e: EndpointEvent) -> None:
        ctx, err, code = e.ctx, e.err, e.code
        if err or code != 200:
            self.fail(ctx.callid, f"caller's BYE: {errno.errorcode.get(err, err)} {code}")
        else:
            self.step(ctx.callid, "caller: BYE 200", caller_done=True)

    def on_cancel(self, e: EndpointEvent) -> None:
        ctx, err, code = e.ctx, e.err, e.code
        if err or code != 200:
            self.fail(ctx.callid, f"CANCEL: {errno.errorcode.get(err, err)} {code}")
        else:
            self.cancel_answered += 1
            self.step(ctx.callid, "caller: CANCEL 200")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def fake_loop(clock: FakeClock) -> Iterator[EventLoop]:
    with EventLoop(clock=clock) as lp:
        yield lp


def _node(loop: EventLoop, proto: Proto) -> Node:
    leg = Leg(addr="127.0.0.1", port=0, proto=proto)
    disp = Dispatcher([leg], loop)
    return Node(leg, disp, Endpoint(disp))


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_thousand_calls_leave_nothing_behind(
    proto: Proto, fake_loop: EventLoop, clock: FakeClock
) -> None:
    loop = fake_loop
    fds_before = open_fds()
    nodes = (_node(loop, proto), _node(loop, proto))
    try:
        calls = Calls(loop, nodes)
        for node in nodes:
            node.ep.set_application(calls.app)
        timers = loop.timer_count()
        fds = open_fds()

        calls.fill()
        drive(loop, calls.done, DRIVE_TIMEOUT, "every call over")
        assert calls.failures == [], calls.failures[:5]
        assert calls.finished == CALLS
        assert calls.cancel_answered == CALLS // len(KINDS)
        # the last BYE's 200 may be on its way while the other side is done
        drive(loop, lambda: sum(len(n.ep) for n in nodes) == 0, 5.0, "no context left")

        # past every transaction's end (64*T1) and every idle connection's expiry
        settle = 64 * T1 + get_settings()["MAX_EXPIRE"] + 10
        advance(loop, clock, settle, step=0.5)
        assert [len(n.ep) for n in nodes] == [0, 0]
        assert loop.timer_count() == timers
        assert open_fds() == fds
    finally:
        for node in nodes:
            node.ep.close()
            node.disp.close()
    assert open_fds() == fds_before
