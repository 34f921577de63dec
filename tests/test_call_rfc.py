"""The user agent beyond Net::SIP: 100rel/PRACK (RFC 3262), UPDATE (RFC 3311),
session timers (RFC 4028) and early media, between two Simple UAs.

Both user agents share one EventLoop on real loopback UDP. The signalling
tests run on a :class:`netsip.testing.FakeClock` (retransmissions, refreshes
and expiries happen when the test moves the clock); the early-media tests
run on the real clock, because the RTP is paced by the loop's 20 ms timers.
A :class:`Wire` between each agent's dispatcher and endpoint records what
arrived (with the fake time) and can drop packets, to stand for a lost
PRACK or refresh.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from netsip._dialog import header_tag
from netsip._prack import (
    ReliableReceiver,
    ReliableSender,
    option_tags,
    parse_rack,
    parse_rseq,
    prack_mode,
)
from netsip._session_timer import (
    Negotiated,
    Rejection,
    TimerConfig,
    parse_session_expires,
    uas_negotiate,
)
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.sdp import SDP
from netsip.simple import Call, Simple
from netsip.testing import FakeClock, advance, drive, length_is, udp_socket
from netsip.util import Addr
from tests.support import (
    check_all_successful,
    free_udp_tcp_port,
    require_sipp,
    sipp_errors,
    sipp_stats,
    start_sipp,
    stop_process,
)

FRAME = 160


# ------------------------------------------------------------------ helpers


@dataclass
class Wire:
    """What reached one agent (fake time, packet); ``drop`` decides losses."""

    clock: FakeClock | None
    seen: list[tuple[float, Packet]] = field(default_factory=list)
    drop: Callable[[Packet], bool] = lambda _p: False

    def attach(self, agent: Simple) -> None:
        endpoint = agent.endpoint

        def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
            self.seen.append((self.clock.now if self.clock else 0.0, packet))
            if not self.drop(packet):
                endpoint.receive(packet, leg, from_)

        agent.dispatcher.set_receiver(receive)

    def requests(self, method: str) -> list[Request]:
        return [p for _, p in self.seen if isinstance(p, Request) and p.method() == method]

    def responses(self, method: str, code: int | None = None) -> list[Response]:
        return [
            p
            for _, p in self.seen
            if isinstance(p, Response)
            and p.method() == method
            and (code is None or p.code() == code)
        ]

    def times(self, match: Callable[[Packet], bool]) -> list[float]:
        return [t for t, p in self.seen if match(p)]


@dataclass
class Outcome:
    """What the callbacks of one call saw."""

    final: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    preliminary: list[Response] = field(default_factory=list)
    established: int = 0
    bye: int = 0

    def cb_final(self, status: str, _call: Call, info: dict[str, Any]) -> None:
        self.final.append((status, info))

    def cb_preliminary(self, _call: Call, _code: int, packet: Response) -> None:
        self.preliminary.append(packet)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    lp = EventLoop(clock=clock)
    yield lp
    lp.close()


@pytest.fixture
def real_loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


def ua(loop: EventLoop, name: str) -> Simple:
    return Simple(from_=f"sip:{name}@127.0.0.1", leg="udp:127.0.0.1:0", loop=loop)


def uri_of(agent: Simple, name: str) -> str:
    scheme, _, rest = agent.default_leg().contact.partition(":")
    return f"{scheme}:{name}@{rest}"


@dataclass
class Pair:
    """alice calls bob; both wired, bob's calls kept."""

    loop: EventLoop
    clock: FakeClock | None
    alice: Simple
    bob: Simple
    a_wire: Wire
    b_wire: Wire
    b_calls: list[Call] = field(default_factory=list)
    b_seen: Outcome = field(default_factory=Outcome)

    def listen(self, **args: Any) -> None:
        seen = self.b_seen

        def created(call: Call, *_rest: object) -> bool:
            self.b_calls.append(call)
            return True

        def established(_status: str, _call: Call) -> None:
            seen.established += 1

        def bye(_param: object) -> None:
            seen.bye += 1

        args.setdefault("init_media", None)
        self.bob.listen(cb_create=created, cb_established=established, recv_bye=bye, **args)

    def call(self, seen: Outcome, **args: Any) -> Call:
        args.setdefault("init_media", None)
        return self.alice.invite(
            uri_of(self.bob, "bob"),
            cb_final=seen.cb_final,
            cb_preliminary=seen.cb_preliminary,
            recv_bye=lambda _p: setattr(seen, "bye", seen.bye + 1),
            **args,
        )

    def advance(self, seconds: float, step: float = 0.125) -> None:
        assert self.clock is not None
        advance(self.loop, self.clock, seconds, step=step)

    def close(self) -> None:
        self.alice.cleanup()
        self.bob.cleanup()


def pair(loop: EventLoop, clock: FakeClock | None) -> Pair:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    a_wire, b_wire = Wire(clock), Wire(clock)
    a_wire.attach(alice)
    b_wire.attach(bob)
    return Pair(loop, clock, alice, bob, a_wire, b_wire)


def hang_up(p: Pair, call: Call) -> None:
    call.bye()
    drive(p.loop, lambda: call.closed and not p.bob.calls, what="the call ended")


def is_prack(packet: Packet) -> bool:
    return isinstance(packet, Request) and packet.method() == "PRACK"


def is_183(packet: Packet) -> bool:
    return isinstance(packet, Response) and packet.code() == 183


# ------------------------------------------------------------ 100rel: pure


def test_prack_mode_names_and_errors() -> None:
    assert prack_mode(None) == "off"
    assert prack_mode(False) == "off"
    assert prack_mode(True) == "supported"
    assert prack_mode("required") == "required"
    with pytest.raises(ValueError, match="prack must be"):
        prack_mode("sometimes")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("1 1 INVITE", (1, 1, "INVITE")),
        ("  4711   2 invite ", (4711, 2, "INVITE")),
        ("1 1", None),
        ("x 1 INVITE", None),
        ("0 1 INVITE", None),
        ("1 -1 INVITE", None),
        ("99999999999 1 INVITE", None),
        ("1 1 INV1TE", None),
        ("", None),
        (None, None),
    ],
)
def test_rack_parsing(value: str | None, parsed: tuple[int, int, str] | None) -> None:
    assert parse_rack(value) == parsed


def test_rseq_parsing() -> None:
    assert parse_rseq("42") == 42
    assert parse_rseq(" 7 ") == 7
    for bad in (None, "", "0", "-3", "abc", "4294967296", "\uff11"):
        assert parse_rseq(bad) is None


def _reliable(rseq: str, cseq: int = 1) -> Response:
    return Response(
        183, "Session Progress", [("cseq", f"{cseq} INVITE"), ("rseq", rseq), ("require", "100rel")]
    )


def test_uac_prack_only_for_the_next_rseq() -> None:
    rr = ReliableReceiver()
    assert rr.accept(_reliable("10"))
    assert rr.rack(_reliable("10")) == "10 1 INVITE"
    assert not rr.accept(_reliable("10"))  # a retransmission
    assert not rr.accept(_reliable("12"))  # out of order
    assert not rr.accept(_reliable("9"))
    assert not rr.accept(_reliable("garbage"))
    assert rr.accept(_reliable("11"))
    assert rr.last_rseq == 11


def test_uas_retransmits_doubling_from_t1_until_the_prack(
    loop: EventLoop, clock: FakeClock
) -> None:
    sent: list[float] = []
    timeouts: list[Response] = []
    before = loop.timer_count()
    sender = ReliableSender(loop, lambda r: sent.append(clock.now), timeouts.append)
    request = Request("INVITE", "sip:b@127.0.0.1", [("cseq", "5 INVITE"), ("call-id", "x")])
    first = request.create_response(180)
    second = request.create_response(183)
    sender.send(first)
    sender.send(second)  # (queued: one at a time, RFC 3262 3)
    assert sender.busy and first.get_header("require") == "100rel"
    rseq = parse_rseq(first.get_header("rseq"))
    assert rseq is not None and 1 <= rseq < 2**31
    advance(loop, clock, 7.6, step=0.05)
    start = sent[0]
    assert [round(t - start, 2) for t in sent] == [0.0, 0.5, 1.5, 3.5, 7.5]
    prack = Request("PRACK", "sip:b@127.0.0.1", [("cseq", "6 PRACK"), ("rack", "1 5 INVITE")])
    assert sender.prack(prack) == 481  # (not its RSeq)
    prack.set_header("rack", "garbage")
    assert sender.prack(prack) == 400
    prack.set_header("rack", f"{rseq} 5 INVITE")
    assert sender.prack(prack) == 200
    # the queued 183 goes out now, with the next RSeq
    assert second.get_header("rseq") == str(rseq + 1)
    assert sender.prack(prack) == 481  # (acknowledged already)
    prack.set_header("rack", f"{rseq + 1} 5 INVITE")
    assert sender.prack(prack) == 200
    assert not sender.busy and not timeouts
    assert loop.timer_count() == before


def test_uas_gives_up_after_64_t1(loop: EventLoop, clock: FakeClock) -> None:
    timeouts: list[Response] = []
    sender = ReliableSender(loop, lambda r: None, timeouts.append)
    request = Request("INVITE", "sip:b@127.0.0.1", [("cseq", "1 INVITE"), ("call-id", "y")])
    sender.send(request.create_response(180))
    advance(loop, clock, 31.0, step=0.5)
    assert not timeouts
    advance(loop, clock, 40.0, step=0.5)
    assert len(timeouts) == 1 and not sender.busy


# ------------------------------------------------------- 100rel: two UAs


def test_reliable_183_is_pracked_before_the_200(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183)
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: seen.final and p.b_seen.established, what="the call")
    assert seen.final[0][0] == "OK"
    invite = p.b_wire.requests("INVITE")[0]
    assert option_tags(invite, "supported") == ["100rel", "timer"]
    # one reliable 183 with our answer, PRACKed with its RAck
    assert len(seen.preliminary) == 1
    r183 = seen.preliminary[0]
    assert r183.code() == 183 and r183.get_header("require") == "100rel"
    assert r183.body() and r183.get_header("content-type") == "application/sdp"
    assert r183.get_header("contact") is not None  # (it makes the early dialog)
    pracks = p.b_wire.requests("PRACK")
    assert len(pracks) == 1
    assert (
        pracks[0].get_header("rack") == f"{r183.get_header('rseq')} {invite.cseq_number()} INVITE"
    )
    assert not pracks[0].body()
    # the 2xx came after the PRACK's 200, and without a second answer (RFC 3262 5)
    order = [
        (p.method(), p.code())
        for _, p in p.a_wire.seen
        if isinstance(p, Response) and p.code() > 100
    ]
    assert order == [("INVITE", 183), ("PRACK", 200), ("INVITE", 200)]
    ok = p.a_wire.responses("INVITE", 200)[0]
    assert not ok.body()
    assert isinstance(call.get_param("sdp_peer"), SDP)
    assert p.b_calls[0].established
    hang_up(p, call)
    p.close()


def test_lost_prack_means_retransmitted_183_and_held_200(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=180)
    lose = [True]
    p.b_wire.drop = lambda packet: is_prack(packet) and lose[0]
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: seen.preliminary, what="the 180")
    p.advance(3.6)
    # the 180 again at T1, 2*T1 (doubling); the UAC ignores those
    times = p.a_wire.times(lambda packet: isinstance(packet, Response) and packet.code() == 180)
    assert [round(t - times[0], 1) for t in times] == [0.0, 0.5, 1.5, 3.5]
    assert len(seen.preliminary) == 1
    assert not seen.final and not p.a_wire.responses("INVITE", 200)
    # one PRACK (its own retransmissions share its CSeq)
    assert len({r.cseq_number() for r in p.b_wire.requests("PRACK")}) == 1
    lose[0] = False
    p.advance(4.0)
    drive(loop, lambda: seen.final, what="the 200 after the PRACK")
    assert seen.final[0][0] == "OK"
    count = len(p.a_wire.responses("INVITE", 180))
    p.advance(8.0)
    assert len(p.a_wire.responses("INVITE", 180)) == count  # retransmissions stopped
    hang_up(p, call)
    p.close()


def test_prack_never_comes_the_invite_fails_with_500(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183)
    p.b_wire.drop = is_prack
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: seen.preliminary)
    p.advance(34.0, step=0.5)
    drive(loop, lambda: seen.final, what="the 500")
    assert seen.final[0][0] == "FAIL" and seen.final[0][1]["code"] == 500
    assert call.closed and not p.bob.calls
    p.advance(40.0, step=1.0)
    assert len(p.alice.endpoint) == 0 and len(p.bob.endpoint) == 0
    p.close()


def test_offer_in_the_reliable_183_answer_in_the_prack(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183)
    seen = Outcome()
    call = p.call(seen, sdp_on_ack=True)
    drive(loop, lambda: seen.final and p.b_seen.established, what="the call")
    assert seen.final[0][0] == "OK"
    assert not p.b_wire.requests("INVITE")[0].body()
    assert seen.preliminary[0].body()  # bob's offer
    prack = p.b_wire.requests("PRACK")[0]
    assert prack.get_header("content-type") == "application/sdp" and prack.body()
    assert not p.a_wire.responses("INVITE", 200)[0].body()
    assert not p.b_wire.requests("ACK")[0].body()
    bob_call = p.b_calls[0]
    assert isinstance(bob_call.get_param("sdp_peer"), SDP)
    assert isinstance(call.get_param("sdp_peer"), SDP)
    hang_up(p, call)
    p.close()


def test_required_100rel_against_a_uas_without_it_gets_420(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen(prack="off", provisional=180)
    seen = Outcome()
    call = p.call(seen, prack="required")
    drive(loop, lambda: seen.final)
    assert option_tags(p.b_wire.requests("INVITE")[0], "require") == ["100rel"]
    assert seen.final[0][0] == "FAIL" and seen.final[0][1]["code"] == 420
    resp = p.a_wire.responses("INVITE", 420)[0]
    assert resp.get_header("unsupported") == "100rel"
    assert call.closed
    p.close()


def test_uas_requiring_100rel_rejects_a_caller_without_it_with_421(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen(prack="required", provisional=180)
    seen = Outcome()
    p.call(seen, prack="off")
    drive(loop, lambda: seen.final)
    assert seen.final[0][1]["code"] == 421
    assert p.a_wire.responses("INVITE", 421)[0].get_header("require") == "100rel"
    assert option_tags(p.b_wire.requests("INVITE")[0], "supported") == ["timer"]
    p.close()


def test_unreliable_provisional_when_the_caller_has_no_100rel(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen(provisional=180)
    seen = Outcome()
    call = p.call(seen, prack="off")
    drive(loop, lambda: seen.final)
    assert seen.final[0][0] == "OK"
    assert seen.preliminary[0].get_header("rseq") is None
    assert not p.b_wire.requests("PRACK")
    hang_up(p, call)
    p.close()


def test_cancel_while_the_200_is_held_back(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183, answer_after=30)
    p.advance(0.5)
    before = loop.timer_count()
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: p.a_wire.responses("PRACK", 200), what="the PRACK answered")
    assert call.cancel()
    drive(loop, lambda: seen.final and not p.bob.calls, what="the 487")
    assert seen.final[0][1]["code"] == 487
    p.advance(40.0, step=0.5)
    # no 200 after the 487: the held answer and its timer went with the call
    assert not p.a_wire.responses("INVITE", 200)
    assert len(p.alice.endpoint) == 0 and len(p.bob.endpoint) == 0
    assert loop.timer_count() == before
    p.close()


def test_bad_and_unknown_rack_get_400_and_481(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183, answer_after=None)
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: p.a_wire.responses("PRACK", 200), what="the first PRACK answered")
    ctx = call.context
    assert ctx is not None
    got: list[int] = []

    def prack(rack: str) -> None:
        n = len(got)
        p.alice.endpoint.new_request(
            "PRACK",
            ctx,
            lambda _ep, _ctx, _err, code, *_rest: got.append(code) if code >= 200 else None,
            rack=rack,
        )
        drive(loop, lambda: len(got) == n + 1, what=f"the answer to RAck {rack!r}")

    for rack in ["garbage", "1 2", "4711 1 INVITE"]:
        prack(rack)
    assert got == [400, 400, 481]
    # the early dialog survived bad PRACKs: bob answers now
    assert p.b_calls[0].accept()
    drive(loop, lambda: seen.final)
    assert seen.final[0][0] == "OK"
    hang_up(p, call)
    p.close()


class RawUAS:
    """A peer on a plain socket that answers an INVITE by hand."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.sock = udp_socket()
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.peer: tuple[str, int] | None = None
        self.got: list[Request] = []

    def uri(self) -> str:
        return f"sip:raw@127.0.0.1:{self.port}"

    def pump(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            packet = Packet.new_from_string(data)
            if isinstance(packet, Request):
                self.peer = addr
                if not any(r.as_bytes() == packet.as_bytes() for r in self.got):
                    self.got.append(packet)

    def wait_for(self, method: str, count: int = 1) -> list[Request]:
        def arrived() -> bool:
            self.pump()
            return len(self.of(method)) >= count

        drive(self.loop, arrived, what=f"{count} {method}")
        return self.of(method)

    def of(self, method: str) -> list[Request]:
        return [r for r in self.got if r.method() == method]

    def send(self, response: Response) -> None:
        assert self.peer is not None
        self.sock.sendto(response.as_bytes(), self.peer)


def test_uac_pracks_each_new_rseq_once_in_order(loop: EventLoop, clock: FakeClock) -> None:
    alice = ua(loop, "alice")
    raw = RawUAS(loop)
    seen = Outcome()
    try:
        alice.invite(
            raw.uri(),
            init_media=None,
            cb_final=seen.cb_final,
            cb_preliminary=seen.cb_preliminary,
        )
        invite = raw.wait_for("INVITE")[0]
        contact = f"<{raw.uri()}>"

        def reliable(rseq: str) -> Response:
            return invite.create_response(
                183, headers={"require": "100rel", "rseq": rseq, "contact": contact}
            )

        raw.send(reliable("5"))
        prack = raw.wait_for("PRACK")[0]
        assert prack.get_header("rack") == f"5 {invite.cseq_number()} INVITE"
        raw.send(prack.create_response(200))
        # a retransmission, a gap, garbage: none is PRACKed or reported
        for rseq in ("5", "7", "abc", "0"):
            raw.send(reliable(rseq))
        raw.send(reliable("6"))
        pracks = raw.wait_for("PRACK", 2)
        raw.send(pracks[1].create_response(200))
        spin_until = len(raw.got)
        advance(loop, clock, 0.25)
        raw.pump()
        assert len(raw.got) == spin_until
        assert [r.get_header("rack") for r in raw.of("PRACK")] == [
            f"5 {invite.cseq_number()} INVITE",
            f"6 {invite.cseq_number()} INVITE",
        ]
        assert len(seen.preliminary) == 2
        # the PRACKs went in the early dialog: the 183's To tag, its Contact
        assert all(r.uri() == raw.uri() for r in raw.of("PRACK"))
        assert header_tag(pracks[0].get_header("to")) == header_tag(reliable("5").get_header("to"))
        raw.send(invite.create_response(486))
        drive(loop, lambda: seen.final)
        assert seen.final[0][1]["code"] == 486
        assert len(alice.endpoint) == 0
    finally:
        raw.sock.close()
        alice.cleanup()


# ------------------------------------------------------------------ UPDATE


def _established(p: Pair, **args: Any) -> Call:
    seen = Outcome()
    call = p.call(seen, **args)
    drive(p.loop, lambda: seen.final and p.b_seen.established, what="an established call")
    assert seen.final[0][0] == "OK"
    return call


def test_update_puts_on_hold_and_resumes(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p)
    done: list[str] = []
    call.update(call_on_hold=True, cb_final=lambda status, *_a: done.append(status))
    drive(loop, lambda: done)
    assert done == ["OK"]
    ours, theirs = call.get_param("sdp", "sdp_peer")
    assert ours.media[0].direction == "sendonly" and theirs.media[0].direction == "recvonly"
    assert p.b_calls[0].get_param("sdp_peer").media[0].direction == "sendonly"
    call.update(cb_final=lambda status, *_a: done.append(status))
    drive(loop, lambda: len(done) == 2)
    assert call.get_param("sdp").media[0].direction == "sendrecv"
    # without a body: just a 200
    call.update(offer=False, cb_final=lambda status, *_a: done.append(status))
    drive(loop, lambda: len(done) == 3)
    assert done == ["OK", "OK", "OK"]
    assert not p.b_wire.requests("UPDATE")[-1].body()
    hang_up(p, call)
    p.close()


def test_update_to_another_codec(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p)
    done: list[tuple[str, int]] = []
    # bob takes PCMU only: the PCMA offer is refused, the old session stays
    call.update(rtp_param=(8, 160, 0.02), cb_final=lambda s, _c, i: done.append((s, i["code"])))
    drive(loop, lambda: done)
    assert done == [("FAIL", 488)]
    assert call.get_param("sdp").media[0].fmt[0] == "0"
    p.b_calls[0].set_param(rtp_param=(8, 160, 0.02))
    call.update(rtp_param=(8, 160, 0.02), cb_final=lambda s, _c, i: done.append((s, i["code"])))
    drive(loop, lambda: len(done) == 2)
    assert done[1] == ("OK", 200)
    assert call.get_param("sdp_peer").media[0].fmt[0] == "8"
    hang_up(p, call)
    p.close()


def test_update_in_the_early_dialog(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183, answer_after=None)
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: p.a_wire.responses("PRACK", 200), what="the reliable 183")
    done: list[str] = []
    call.update(call_on_hold=True, cb_final=lambda status, *_a: done.append(status))
    drive(loop, lambda: done)
    assert done == ["OK"] and not call.established
    assert p.b_calls[0].get_param("sdp_peer").media[0].direction == "sendonly"
    # the callee updates too, in the same early dialog
    p.b_calls[0].update(cb_final=lambda status, *_a: done.append(status))
    drive(loop, lambda: len(done) == 2)
    assert done[1] == "OK"
    assert p.b_calls[0].accept()
    drive(loop, lambda: seen.final and p.b_seen.established)
    assert seen.final[0][0] == "OK"
    hang_up(p, call)
    p.close()


def test_update_refused_locally_without_a_dialog_or_with_an_open_offer(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183, answer_after=None, prack="off")
    lonely = Call(p.alice, "sip:nobody@127.0.0.1:9", {})
    with pytest.raises(ValueError, match="dialog"):
        lonely.update()
    lonely.cleanup()
    seen = Outcome()
    call = p.call(seen)
    drive(loop, lambda: seen.preliminary)
    # an unreliable 183: the INVITE's offer/answer is not done (RFC 3311 5.1)
    with pytest.raises(ValueError, match="offer"):
        call.update()
    p.b_calls[0].accept()
    drive(loop, lambda: seen.final)
    hang_up(p, call)
    p.close()


def test_update_glare_491_both_retry_at_their_random_times(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p)
    bob_call = p.b_calls[0]
    done_a: list[str] = []
    done_b: list[str] = []
    start = clock.now
    call.update(call_on_hold=True, cb_final=lambda status, *_a: done_a.append(status))
    bob_call.update(cb_final=lambda status, *_a: done_b.append(status))
    drive(loop, lambda: p.a_wire.responses("UPDATE", 491) and p.b_wire.responses("UPDATE", 491))
    assert not done_a and not done_b
    p.advance(4.5, step=0.01)
    drive(loop, lambda: done_a and done_b, what="both UPDATEs after their retry")
    assert done_a == ["OK"] and done_b == ["OK"]
    # the retries: bob (not the Call-ID's owner) within 0-2 s, alice in 2.1-4 s
    a_times = p.b_wire.times(lambda x: isinstance(x, Request) and x.method() == "UPDATE")
    b_times = p.a_wire.times(lambda x: isinstance(x, Request) and x.method() == "UPDATE")
    assert len(a_times) == 2 and len(b_times) == 2
    assert 2.1 <= a_times[1] - start <= 4.1
    assert 0.0 <= b_times[1] - start <= 2.1
    assert call.get_param("sdp").media[0].direction == "sendonly"
    hang_up(p, call)
    p.close()


def test_reinvite_glare_491_both_retry(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p)
    done_a: list[str] = []
    done_b: list[str] = []
    call.reinvite(call_on_hold=True, cb_final=lambda status, *_a: done_a.append(status))
    p.b_calls[0].reinvite(cb_final=lambda status, *_a: done_b.append(status))
    drive(loop, lambda: p.a_wire.responses("INVITE", 491) and p.b_wire.responses("INVITE", 491))
    assert not done_a and not done_b
    p.advance(4.5, step=0.01)
    drive(loop, lambda: done_a and done_b, what="both re-INVITEs after their retry")
    assert done_a == ["OK"] and done_b == ["OK"]
    assert call.get_param("sdp").media[0].direction == "sendonly"
    assert p.b_calls[0].get_param("sdp_peer").media[0].direction == "sendonly"
    hang_up(p, call)
    p.close()


def test_reinvite_while_our_update_offer_is_pending_gets_491(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p)
    p.b_wire.drop = lambda packet: isinstance(packet, Request) and packet.method() == "UPDATE"
    updated: list[str] = []
    call.update(cb_final=lambda status, *_a: updated.append(status))
    result: list[str] = []
    p.b_calls[0].reinvite(cb_final=lambda status, *_a: result.append(status))
    drive(loop, lambda: p.b_wire.responses("INVITE", 491), what="491 for bob's re-INVITE")
    assert not result
    # the UPDATE gets through (retransmitted), then bob's re-INVITE (retried in 0-2 s)
    p.b_wire.drop = lambda _p: False
    p.advance(4.0, step=0.05)
    drive(loop, lambda: updated and result)
    assert updated == ["OK"] and result == ["OK"]
    # (a retry before the UPDATE's retransmission got through meets 491 again)
    tries = p.a_wire.requests("INVITE")
    assert len(tries) >= 2 and len({i.cseq_number() for i in tries}) == len(tries)
    assert len(p.b_wire.responses("INVITE", 491)) == len(tries) - 1
    hang_up(p, call)
    p.close()


# ----------------------------------------------------------- session timers


def test_session_timer_refreshed_with_update_at_half_the_interval(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p, session_expires=180)
    invite = p.b_wire.requests("INVITE")[0]
    assert invite.get_header("session-expires") == "180"
    assert "timer" in option_tags(invite, "supported")
    ok = p.a_wire.responses("INVITE", 200)[0]
    assert ok.get_header("session-expires") == "180;refresher=uac"
    assert ok.get_header("require") == "timer"
    start = clock.now
    p.advance(400.0, step=1.0)
    updates = p.b_wire.requests("UPDATE")
    times = p.b_wire.times(lambda x: isinstance(x, Request) and x.method() == "UPDATE")
    assert len(updates) == 4  # at 90, 180, 270, 360 s
    assert [round(t - start) for t in times] == [90, 180, 270, 360]
    assert all(u.get_header("session-expires") == "180;refresher=uac" for u in updates)
    assert not call.closed and p.b_calls and p.b_seen.bye == 0
    hang_up(p, call)
    p.close()


def test_callee_asks_for_a_session_timer_the_caller_refreshes(
    loop: EventLoop, clock: FakeClock
) -> None:
    p = pair(loop, clock)
    p.listen(session_expires=120)
    call = _established(p)
    invite = p.b_wire.requests("INVITE")[0]
    assert invite.get_header("session-expires") is None
    assert invite.get_header("min-se") is None
    ok = p.a_wire.responses("INVITE", 200)[0]
    assert ok.get_header("session-expires") == "120;refresher=uac"
    start = clock.now
    p.advance(125.0, step=1.0)
    times = p.b_wire.times(lambda x: isinstance(x, Request) and x.method() == "UPDATE")
    assert [round(t - start) for t in times] == [60, 120]
    assert not call.closed
    hang_up(p, call)
    p.close()


def test_session_refresh_by_reinvite_keeps_the_sdp(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen()
    call = _established(p, session_expires=120, session_refresh="invite")
    sdp_before = call.get_param("sdp").as_string()
    p.advance(61.0, step=1.0)
    invites = p.b_wire.requests("INVITE")
    assert len(invites) == 2
    assert invites[1].get_header("session-expires") == "120;refresher=uac"
    assert invites[1].body().decode() == sdp_before  # (RFC 3264 8: unchanged, same version)
    drive(loop, lambda: len(p.b_wire.requests("ACK")) == 2)
    p.advance(130.0, step=1.0)
    assert not call.closed and p.b_seen.bye == 0
    hang_up(p, call)
    p.close()


def test_422_is_answered_with_the_peers_min_se(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(min_se=300)
    call = _established(p, session_expires=120)
    invites = p.b_wire.requests("INVITE")
    assert [i.get_header("session-expires") for i in invites] == ["120", "300"]
    assert invites[1].get_header("min-se") == "300"
    assert p.a_wire.responses("INVITE", 422)[0].get_header("min-se") == "300"
    assert invites[0].callid() == invites[1].callid()
    assert invites[1].cseq_number() == (invites[0].cseq_number() or 0) + 1
    assert p.a_wire.responses("INVITE", 200)[0].get_header("session-expires") == (
        "300;refresher=uac"
    )
    hang_up(p, call)
    p.close()


def test_missed_refresh_ends_the_call_with_bye(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen()
    # bob refreshes (alice asks him to); his refreshes get lost
    call = _established(p, session_expires=90, session_refresher="uas")
    assert p.a_wire.responses("INVITE", 200)[0].get_header("session-expires") == (
        "90;refresher=uas"
    )
    p.a_wire.drop = lambda packet: isinstance(packet, Request) and packet.method() == "UPDATE"
    start = clock.now
    p.advance(70.0, step=0.5)
    assert p.a_wire.requests("UPDATE")  # bob tried at 45 s
    drive(loop, lambda: call.closed and p.b_seen.bye == 1, what="alice's BYE")
    bye_at = p.b_wire.times(lambda x: isinstance(x, Request) and x.method() == "BYE")
    # interval - min(32, interval / 3) = 60 s
    assert [round(t - start) for t in bye_at] == [60]
    assert call.error == "session expired"
    p.advance(70.0, step=1.0)
    assert len(p.alice.endpoint) == 0 and len(p.bob.endpoint) == 0
    p.close()


def test_session_timer_parameters_are_checked(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    for bad in (
        {"session_expires": 30},
        {"min_se": 10},
        {"session_refresh": "bye"},
        {"session_refresher": "me"},
        {"prack": "maybe"},
    ):
        with pytest.raises(ValueError):
            p.alice.invite(uri_of(p.bob, "bob"), cb_final=lambda *_a: None, **bad)
    assert len(p.alice.endpoint) == 0 and not p.alice.calls
    p.close()


def test_uas_negotiation_rules() -> None:
    def inv(**headers: str) -> Request:
        return Request("INVITE", "sip:b@h", [(k.replace("_", "-"), v) for k, v in headers.items()])

    cfg = TimerConfig(session_expires=1800, min_se=120)
    assert uas_negotiate(TimerConfig(), inv()) is None
    assert uas_negotiate(cfg, inv(supported="timer")) == Negotiated(1800, "uac")
    assert uas_negotiate(cfg, inv()) == Negotiated(1800, "uas")  # (UAC without timers)
    assert uas_negotiate(cfg, inv(session_expires="600;refresher=uas")) == Negotiated(600, "uas")
    assert uas_negotiate(cfg, inv(session_expires="7200", supported="timer")) == Negotiated(
        1800, "uac"
    )
    low = uas_negotiate(cfg, inv(session_expires="100"))
    assert isinstance(low, Rejection) and low.code == 422 and low.headers == {"min-se": "120"}
    for garbage in ("abc", "-5", "12x", "600;refresher=me", ""):
        bad = uas_negotiate(cfg, inv(session_expires=garbage))
        assert isinstance(bad, Rejection) and bad.code == 400, garbage
    bad = uas_negotiate(cfg, inv(session_expires="600", min_se="x"))
    assert isinstance(bad, Rejection) and bad.code == 400
    huge = parse_session_expires("99999999999999999999999")
    assert huge is not None and huge.interval == 2**32 - 1
    assert uas_negotiate(cfg, inv(session_expires="99999999999999999999999")) == Negotiated(
        1800, "uas"
    )


@pytest.mark.parametrize(
    ("headers", "code", "check"),
    [
        ([("Session-Expires", "soon")], 400, None),
        ([("Session-Expires", "600"), ("Min-SE", "-1")], 400, None),
        ([("Session-Expires", "600"), ("Session-Expires", "900")], 400, None),
        ([("Session-Expires", "30")], 422, ("min-se", "90")),
        ([("Session-Expires", "60"), ("Min-SE", "60")], 422, ("min-se", "90")),
        ([("Require", "foo, 100rel, bar")], 420, ("unsupported", "foo, bar")),
        (
            [("Session-Expires", "99999999999999999999")],
            200,
            ("session-expires", "4294967295;refresher=uas"),
        ),
        ([("Session-Expires", "600;refresher=uac")], 200, ("require", "timer")),
    ],
    ids=[
        "garbage",
        "bad-min-se",
        "two-values",
        "below-min-se",
        "below-90",
        "unknown-require",
        "huge",
        "caller-refreshes",
    ],
)
def test_bad_session_headers_from_the_network(
    loop: EventLoop, headers: list[tuple[str, str]], code: int, check: tuple[str, str] | None
) -> None:
    p = pair(loop, None)
    p.listen()
    raw = udp_socket()
    try:
        resp = _raw_invite(loop, raw, p.bob, headers)
    finally:
        raw.close()
    assert resp.code() == code
    if check is not None:
        assert ", ".join(resp.get_headers(check[0])) == check[1]
    if code >= 300:
        assert not p.bob.calls
    # the agent still serves: a call goes through
    _established(p)
    p.close()


def test_bad_answer_parameters_get_500_not_an_exception(loop: EventLoop) -> None:
    p = pair(loop, None)
    p.listen(provisional="soon")
    seen = Outcome()
    p.call(seen)
    drive(loop, lambda: seen.final)
    assert seen.final[0][1]["code"] == 500
    p.bob.listen(provisional=183, answer_after=-1, init_media=None)
    seen = Outcome()
    p.call(seen)
    drive(loop, lambda: seen.final)
    assert seen.final[0][1]["code"] == 500
    p.close()


# ------------------------------------------------------------- early media


@pytest.mark.parametrize("prack", ["off", "supported"])
def test_early_media_flows_before_the_200(real_loop: EventLoop, prack: str) -> None:
    p = pair(real_loop, None)
    echoed: list[bytes] = []
    p.listen(
        provisional=183,
        answer_after=None,
        prack=prack,
        init_media=p.bob.rtp("media_recv_echo", lambda payload, *_r: echoed.append(payload)),
    )
    got: list[bytes] = []
    frames = [bytes((i + j) % 256 for j in range(FRAME)) for i in range(300)]
    it = iter(frames)
    seen = Outcome()
    call = p.call(
        seen,
        prack=prack,
        init_media=p.alice.rtp(
            "media_send_recv",
            lambda *_a: next(it, None),
            1,
            lambda payload, *_r: got.append(payload),
        ),
    )
    drive(real_loop, lambda: len(got) >= 5, seconds=10, what="early media echoed back")
    assert not call.established and not seen.final
    assert seen.preliminary[0].code() == 183 and seen.preliminary[0].body()
    assert (seen.preliminary[0].get_header("rseq") is not None) == (prack == "supported")
    # bob got the first frames and echoed them back, before any 200
    assert echoed[:5] == frames[:5]
    assert got[:5] == frames[:5]
    sessions = (call.media, p.b_calls[0].media)
    assert None not in sessions
    p.b_calls[0].accept()
    drive(real_loop, lambda: seen.final and p.b_seen.established, what="the 200")
    assert seen.final[0][0] == "OK" and call.established
    # the same SDP both times: the early session goes on into the call (RFC 3960)
    assert (call.media, p.b_calls[0].media) == sessions
    n = len(got)
    drive(real_loop, lambda: len(got) >= n + 5, seconds=10, what="media after the 200")
    hang_up(p, call)
    p.close()


# ------------------------------------------------------------- sipp peers


SIPP_SCENARIOS = Path(__file__).resolve().parent / "sipp"


def _sipp_bound(proc: subprocess.Popen[bytes], port: int, cwd: Path) -> None:
    """Return once sipp has its UDP socket on ``port`` (psutil)."""
    deadline = time.monotonic() + 20.0
    while True:
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="udp")
        except psutil.NoSuchProcess:
            conns = []
        if any(c.laddr and c.laddr.port == port for c in conns):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"sipp did not start: {sipp_errors(cwd)}")
        time.sleep(0.02)  # waiting for another program to bind: nothing to drive


@pytest.mark.interop
def test_sipp_uas_with_a_reliable_183(real_loop: EventLoop, tmp_path: Path) -> None:
    """sipp's UAS sends a reliable 183 with its answer: netsip PRACKs it (RAck
    checked by sipp), takes the early answer, and the 200 without SDP
    establishes the call."""
    sipp = require_sipp()
    port = free_udp_tcp_port()
    proc, stf = start_sipp(
        sipp,
        ["-sf", str(SIPP_SCENARIOS / "uas_100rel.xml"), "-t", "u1", "-p", str(port),
         "-mi", "127.0.0.1", "-mp", str(free_udp_tcp_port()), "-m", "1"],
        tmp_path,
    )  # fmt: skip
    alice = ua(real_loop, "alice")
    try:
        _sipp_bound(proc, port, tmp_path)
        seen = Outcome()
        call = alice.invite(
            f"sip:sipp@127.0.0.1:{port}",
            init_media=None,
            cb_final=seen.cb_final,
            cb_preliminary=seen.cb_preliminary,
        )
        drive(real_loop, lambda: seen.final, seconds=15, what="sipp's 200")
        assert seen.final[0][0] == "OK", (seen.final, sipp_errors(tmp_path))
        assert [r.code() for r in seen.preliminary] == [183]
        peer = call.get_param("sdp_peer")
        assert isinstance(peer, SDP) and peer.media[0].port > 0  # (from the 183)
        call.bye()
        drive(real_loop, lambda: call.closed, seconds=15, what="the BYE answered")
        drive(real_loop, lambda: proc.poll() is not None, seconds=15, what="sipp's end")
    finally:
        rc = stop_process(proc)
        alice.cleanup()
    check_all_successful(rc, sipp_stats(stf), sipp_errors(tmp_path), 1)


@pytest.mark.interop
def test_sipp_uac_pracks_our_reliable_183(real_loop: EventLoop, tmp_path: Path) -> None:
    """sipp's UAC offers 100rel: netsip's reliable 183 carries RSeq and the
    answer, sipp PRACKs it with the RSeq it read, and netsip's 200 follows
    the PRACK's 200."""
    sipp = require_sipp()
    bob = ua(real_loop, "bob")
    answered: list[Call] = []

    def created(call: Call, *_rest: object) -> bool:
        answered.append(call)
        return True

    bob.listen(init_media=None, provisional=183, cb_create=created)
    leg = bob.default_leg()
    proc, stf = start_sipp(
        sipp,
        ["-sf", str(SIPP_SCENARIOS / "uac_100rel.xml"), "-t", "u1",
         "-p", str(free_udp_tcp_port()), "-mi", "127.0.0.1", "-mp", str(free_udp_tcp_port()),
         "-m", "1", "-s", "bob", f"127.0.0.1:{leg.src.port}"],
        tmp_path,
    )  # fmt: skip
    try:
        drive(real_loop, lambda: proc.poll() is not None, seconds=25, what="sipp's call")
    finally:
        rc = stop_process(proc)
        bob.cleanup()
    check_all_successful(rc, sipp_stats(stf), sipp_errors(tmp_path), 1)
    assert len(answered) == 1 and answered[0].closed


# ------------------------------------------------------------------ leaks


def test_timers_and_contexts_are_released(loop: EventLoop, clock: FakeClock) -> None:
    p = pair(loop, clock)
    p.listen(provisional=183, session_expires=300)
    p.advance(1.0)
    before = loop.timer_count()
    done: list[str] = []
    for n in range(1, 4):
        call = _established(p, session_expires=300)
        call.update(call_on_hold=True, cb_final=lambda s, *_a: done.append(s))
        drive(loop, length_is(done, n))
        hang_up(p, call)
    assert done == ["OK"] * 3
    p.advance(70.0, step=1.0)
    assert len(p.alice.endpoint) == 0 and len(p.bob.endpoint) == 0
    assert not p.alice.calls and not p.bob.calls
    assert loop.timer_count() == before
    p.close()


# ------------------------------------------------------------------ raw peer


_RAW = [0]


def _raw_invite(
    loop: EventLoop, raw: socket.socket, agent: Simple, extra: list[tuple[str, str]]
) -> Response:
    leg = agent.default_leg()
    host, port = leg.src.addr, leg.src.port
    lhost, lport = raw.getsockname()[:2]
    _RAW[0] += 1
    n = _RAW[0]
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {lhost}\r\ns=-\r\nc=IN IP4 {lhost}\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\n"
    ).encode()
    lines = [
        f"INVITE sip:bob@{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bK-rfc{n}",
        f"From: <sip:raw@{lhost}:{lport}>;tag=rfc{n}",
        f"To: <sip:bob@{host}:{port}>",
        f"Call-ID: rfc-{n}",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        f"Contact: <sip:raw@{lhost}:{lport}>",
        *(f"{k}: {v}" for k, v in extra),
        "Content-Type: application/sdp",
        f"Content-Length: {len(body)}",
    ]
    raw.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, (host, port))
    raw.setblocking(False)
    got: list[Response] = []

    def readable() -> bool:
        try:
            data = raw.recv(65535)
        except BlockingIOError:
            return False
        resp = Packet.new_from_string(data)
        if isinstance(resp, Response) and resp.code() >= 200:
            got.append(resp)
        return bool(got)

    drive(loop, readable, what="the final response")
    return got[0]
