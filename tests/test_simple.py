"""The user agent (netsip.simple): calls between two Simple UAs on loopback.

Both user agents share one real EventLoop; the media runs on it too, paced
by its 20 ms timers, so each call here lasts well under a second of real
time and every wait is bounded by ``drive``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Packet, Request, Response
from netsip.sdp import SDP
from netsip.simple import Call, Simple
from netsip.testing import drive, open_fds, udp_socket
from netsip.util import Var
from tests.support import write_certs

pytestmark = pytest.mark.both_loops

FRAME = 160  # 20 ms of G.711 at 8 kHz


def frames(count: int, seed: int = 1) -> list[bytes]:
    """``count`` distinct 20 ms PCMU payloads."""
    return [bytes((seed * 31 + i * 7 + j) % 256 for j in range(FRAME)) for i in range(count)]


@dataclass
class Events:
    """What the callbacks of one side saw."""

    final: list[str] = field(default_factory=list)
    established: int = 0
    bye: int = 0
    dtmf: list[tuple[str, int]] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    cleanup: int = 0
    messages: list[Request] = field(default_factory=list)


def ua(loop: EventLoop, name: str, proto: str = "udp", addr: str = "127.0.0.1") -> Simple:
    host = f"[{addr}]" if ":" in addr else addr
    return Simple(from_=f"sip:{name}@{host}", leg=f"{proto}:{host}:0", loop=loop)


def uri_of(agent: Simple, name: str) -> str:
    leg = agent.default_leg()
    scheme, _, rest = leg.contact.partition(":")
    return f"{scheme}:{name}@{rest}"


def sender(payloads: list[bytes]) -> Any:
    """An input callable for media_send_recv: the payloads, then the end."""
    it = iter(payloads)

    def next_frame(_seq: int, _channel: int) -> bytes | None:
        return next(it, None)

    return next_frame


def collector(into: list[bytes]) -> Any:
    def write(payload: bytes, *_rest: object) -> None:
        into.append(payload)

    return write


def listen_echo(agent: Simple, seen: Events, **extra: Any) -> None:
    agent.listen(
        init_media=agent.rtp("media_recv_echo", collector(seen.received)),
        cb_established=lambda status, call: _count(seen, "established"),
        recv_bye=lambda _param: _count(seen, "bye"),
        cb_cleanup=lambda call: _count(seen, "cleanup"),
        **extra,
    )


def _keep(calls: list[Call], call: Call) -> bool:
    calls.append(call)
    return True


def _count(ev: Events, name: str) -> None:
    setattr(ev, name, getattr(ev, name) + 1)


def call_with_audio(
    caller: Simple, to: str, payloads: list[bytes], seen: Events, **extra: Any
) -> Call:
    return caller.invite(
        to,
        init_media=caller.rtp("media_send_recv", sender(payloads), 1, collector(seen.received)),
        cb_final=lambda status, call, info: seen.final.append(status),
        cb_rtp_done=lambda call: None,
        **extra,
    )


# ------------------------------------------------------------------ calls


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_call_echo_is_bit_exact_and_ends_with_bye(loop: EventLoop, proto: str) -> None:
    fds = open_fds()
    alice, bob = ua(loop, "alice", proto), ua(loop, "bob", proto)
    a_seen, b_seen = Events(), Events()
    listen_echo(bob, b_seen)
    sent = frames(20)
    call = call_with_audio(alice, uri_of(bob, "bob"), sent, a_seen)
    drive(loop, lambda: len(a_seen.received) >= len(sent), what="the echo of every frame")
    assert a_seen.final == ["OK"]
    assert b_seen.established == 1
    # G.711 passthrough: the echo is what was sent, frame by frame
    assert a_seen.received[: len(sent)] == sent
    assert b_seen.received[: len(sent)] == sent
    call.bye()
    drive(loop, lambda: b_seen.bye == 1 and call.closed, what="BYE at both sides")
    assert b_seen.cleanup == 1
    assert len(alice.endpoint) == 0 and len(bob.endpoint) == 0
    alice.cleanup()
    bob.cleanup()
    assert open_fds() == fds


def test_ipv6_call(loop: EventLoop) -> None:
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    finally:
        probe.close()
    alice, bob = ua(loop, "alice", addr="::1"), ua(loop, "bob", addr="::1")
    a_seen, b_seen = Events(), Events()
    listen_echo(bob, b_seen)
    call = call_with_audio(alice, uri_of(bob, "bob"), frames(5), a_seen)
    drive(loop, lambda: len(a_seen.received) >= 5, what="echo over IPv6")
    peer = call.get_param("sdp_peer")
    assert isinstance(peer, SDP)
    assert "IP6 ::1" in peer.as_string()
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


def test_blocking_invite_returns_after_the_final_response(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_seen = Events()
    listen_echo(bob, b_seen)
    call = alice.invite(uri_of(bob, "bob"))
    assert call.established
    assert call.context is not None and call.context.established
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


def test_failed_call_reports_code_and_frees_its_sockets(loop: EventLoop) -> None:
    fds = open_fds()
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    bob.listen(filter=lambda frm, req: False)
    got: list[tuple[str, Any]] = []
    call = alice.invite(
        uri_of(bob, "bob"), cb_final=lambda status, call, info: got.append((status, info))
    )
    drive(loop, lambda: got, what="the final response")
    assert got[0][0] == "FAIL" and got[0][1]["code"] == 403
    assert call.closed and call.get_param("media_lsocks") is None
    alice.cleanup()
    bob.cleanup()
    assert open_fds() == fds


def test_several_calls_at_once_on_one_loop(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_seen = Events()
    listen_echo(bob, b_seen)
    seen = [Events() for _ in range(5)]
    calls = [
        call_with_audio(alice, uri_of(bob, "bob"), frames(8, seed=i), seen[i]) for i in range(5)
    ]
    drive(loop, lambda: all(len(s.received) >= 8 for s in seen), what="five echoed calls")
    for i, s in enumerate(seen):
        assert s.received[:8] == frames(8, seed=i)  # each call gets its own audio back
    assert b_seen.established == 5
    for call in calls:
        call.bye()
    drive(loop, lambda: b_seen.bye == 5 and not alice.calls, what="five calls ended")
    assert not bob.calls
    alice.cleanup()
    bob.cleanup()


def test_peer_bye_ends_the_call_at_the_caller(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_calls: list[Call] = []
    b_seen = Events()
    listen_echo(bob, b_seen, cb_create=lambda call, *rest: _keep(b_calls, call))
    a_seen = Events()
    call = alice.invite(
        uri_of(bob, "bob"),
        cb_final=lambda status, call, info: a_seen.final.append(status),
        recv_bye=lambda param: _count(a_seen, "bye"),
    )
    drive(loop, lambda: b_seen.established == 1)
    b_calls[0].bye()
    drive(loop, lambda: a_seen.bye == 1 and call.closed, what="the caller heard the BYE")
    alice.cleanup()
    bob.cleanup()


# ----------------------------------------------------------- offer/answer


def test_hold_with_reinvite_both_ways(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_calls: list[Call] = []
    listen_echo(bob, Events(), cb_create=lambda call, *rest: _keep(b_calls, call))
    call = alice.invite(uri_of(bob, "bob"))
    assert call.established
    done = Var[str]()
    call.reinvite(call_on_hold=True, cb_final=lambda status, *a: setattr(done, "value", status))
    drive(loop, lambda: done, what="the hold re-INVITE")
    assert done.value == "OK"
    # we offered sendonly; bob answered recvonly
    ours, theirs = call.get_param("sdp", "sdp_peer")
    assert ours.media[0].direction == "sendonly"
    assert theirs.media[0].direction == "recvonly"
    assert b_calls[0].get_param("sdp_peer").media[0].direction == "sendonly"
    # one-shot: the next re-INVITE takes the call off hold
    done.value = None
    call.reinvite(cb_final=lambda status, *a: setattr(done, "value", status))
    drive(loop, lambda: done)
    assert call.get_param("sdp").media[0].direction == "sendrecv"
    # the o= version grew with each offer (RFC 3264 8)
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


def test_sdp_on_ack_offer_in_the_2xx_answer_in_the_ack(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_seen, a_seen = Events(), Events()
    listen_echo(bob, b_seen)
    sent = frames(10)
    call = call_with_audio(alice, uri_of(bob, "bob"), sent, a_seen, sdp_on_ack=True)
    drive(loop, lambda: len(a_seen.received) >= 10, what="echo after a late offer")
    assert a_seen.received[:10] == sent
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


# -------------------------------------------------------------------- DTMF


@pytest.mark.parametrize("methods", ["rfc2833", "audio"])
def test_dtmf_digits_arrive_once_each_in_order(loop: EventLoop, methods: str) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_seen = Events()
    listen_echo(bob, b_seen, cb_dtmf=lambda ev, dur: b_seen.dtmf.append((ev, dur)))
    # (a sending media session sends the DTMF: silence around the digits)
    silence = [b"\xff" * FRAME] * 400
    call = alice.invite(
        uri_of(bob, "bob"), init_media=alice.rtp("media_send_recv", sender(silence))
    )
    sent = Var[str]()
    call.dtmf("0123456789*#", methods=methods, cb_final=sent)
    drive(loop, lambda: sent and len(b_seen.dtmf) >= 12, seconds=15, what="12 digits")
    drive(loop, lambda: len(b_seen.dtmf) >= 12)
    assert "".join(ev for ev, _ in b_seen.dtmf) == "0123456789*#"
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


@pytest.mark.parametrize("methods", ["rfc2833", "audio"])
def test_dtmf_from_the_echoing_side(loop: EventLoop, methods: str) -> None:
    """The answering side echoes and sends DTMF in place of the echo."""
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_seen, a_dtmf = Events(), Events()
    calls: list[Call] = []
    listen_echo(bob, b_seen, cb_create=lambda call, *_: _keep(calls, call))
    silence = [b"\xff" * FRAME] * 400
    call = alice.invite(
        uri_of(bob, "bob"),
        init_media=alice.rtp("media_send_recv", sender(silence)),
        cb_dtmf=lambda ev, dur: a_dtmf.dtmf.append((ev, dur)),
    )
    drive(loop, lambda: b_seen.established == 1, what="established")
    sent = Var[str]()
    calls[0].dtmf("159#", methods=methods, cb_final=sent)
    drive(loop, lambda: sent and len(a_dtmf.dtmf) >= 4, seconds=15, what="4 digits")
    assert "".join(ev for ev, _ in a_dtmf.dtmf) == "159#"
    assert len(b_seen.received) > 0  # the echo went on around the digits
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


def test_bye_twice_sends_one_bye_and_answers_both(loop: EventLoop) -> None:
    """A second bye() while ours is in flight (say, the media ended and sent one) waits
    for the first instead of sending a BYE that would get 481 and never end."""
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    b_seen = Events()
    listen_echo(bob, b_seen)
    call = alice.invite(uri_of(bob, "bob"))
    drive(loop, lambda: b_seen.established == 1, what="established")
    outcomes: list[str] = []
    call.bye(cb_final=lambda *_: outcomes.append("first"))
    call.bye(cb_final=lambda *_: outcomes.append("second"))
    drive(loop, lambda: call.closed and len(outcomes) == 2, what="both outcomes")
    assert outcomes == ["first", "second"] and b_seen.bye == 1
    alice.cleanup()
    bob.cleanup()


def test_dtmf_without_media_is_refused(loop: EventLoop) -> None:
    alice = ua(loop, "alice")
    call = Call(alice, "sip:nobody@127.0.0.1:9", {})
    with pytest.raises(ValueError, match="no media"):
        call.dtmf("1")
    alice.cleanup()


# ------------------------------------------------------ requests, options


def test_options_outside_a_call_lists_what_we_do(loop: EventLoop) -> None:
    bob = ua(loop, "bob")
    raw = udp_socket()
    try:
        resp = _raw_request(loop, raw, bob, "OPTIONS")
        assert resp.code() == 200
        assert "INVITE" in resp.get_headers("allow")
        assert resp.get_header("accept") == "application/sdp"
        assert resp.get_headers("supported") == ["100rel", "timer"]
        # not listening: an INVITE gets 480, another method 405 with Allow
        assert _raw_request(loop, raw, bob, "INVITE").code() == 480
        resp = _raw_request(loop, raw, bob, "SUBSCRIBE")
        assert resp.code() == 405 and "INVITE" in resp.get_headers("allow")
    finally:
        raw.close()
        bob.cleanup()


def test_message_inside_and_outside_a_call(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    got: list[Request] = []
    bob.listen(
        cb_message=lambda ua_, req: got.append(req), cb_info=lambda call, req: got.append(req)
    )
    call = alice.invite(uri_of(bob, "bob"))
    result: list[Any] = []
    call.request(
        "INFO",
        "Signal=5\r\nDuration=100\r\n",
        content_type="application/dtmf-relay",
        cb_final=lambda status, call, info: result.append((status, info["code"])),
    )
    drive(loop, lambda: result and got, what="INFO answered")
    assert result == [("OK", 200)]
    assert got[0].method() == "INFO" and b"Signal=5" in got[0].body()
    raw = udp_socket()
    try:
        resp = _raw_request(loop, raw, bob, "MESSAGE", body=b"hello", ctype="text/plain")
        assert resp.code() == 200
        assert got[-1].body() == b"hello"
    finally:
        raw.close()
    call.bye()
    drive(loop, lambda: call.closed)
    alice.cleanup()
    bob.cleanup()


# --------------------------------------------------------------- bad input


SDP_GARBAGE = b"this is not sdp\r\n\x00\xff\r\n"
SDP_ONLY_UNKNOWN = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n"
)
SDP_NO_C = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (SDP_GARBAGE, "application/sdp", 400),
        (SDP_NO_C, "application/sdp", 400),
        (SDP_ONLY_UNKNOWN, "application/sdp", 488),
        (b"hello", "text/plain", 415),
    ],
    ids=["garbage", "no-c-line", "unknown-codecs", "not-sdp"],
)
def test_bad_sdp_in_invite_gets_its_answer(
    loop: EventLoop, body: bytes, ctype: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    fds = open_fds()
    bob = ua(loop, "bob")
    b_seen = Events()
    listen_echo(bob, b_seen)
    raw = udp_socket()
    try:
        resp = _raw_request(loop, raw, bob, "INVITE", body=body, ctype=ctype, final=True)
        assert resp.code() == code
        assert not bob.calls and len(bob.endpoint) == 0
    finally:
        raw.close()
    # the loop still serves: an OPTIONS is answered
    raw = udp_socket()
    try:
        assert _raw_request(loop, raw, bob, "OPTIONS").code() == 200
    finally:
        raw.close()
    bob.cleanup()
    assert open_fds() == fds


def test_missing_play_file_fails_before_the_invite(loop: EventLoop, tmp_path: Any) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    with pytest.raises((OSError, ValueError)):
        alice.rtp("media_send_recv", str(tmp_path / "missing.wav"))
    alice.cleanup()
    bob.cleanup()


# -------------------------------------------------------------------- leaks


def test_fifty_calls_leave_nothing_behind(loop: EventLoop) -> None:
    alice, bob = ua(loop, "alice"), ua(loop, "bob")
    listen_echo(bob, Events())
    fds = open_fds()
    timers, registered = loop.timer_count(), loop.fd_count()
    ended: list[Call] = []
    for _ in range(50):
        call = alice.invite(uri_of(bob, "bob"))
        call.bye(cb_final=lambda *a: None)
        ended.append(call)
    drive(loop, lambda: all(c.closed for c in ended) and not bob.calls, what="50 calls ended")
    assert len(alice.endpoint) == 0 and len(bob.endpoint) == 0
    assert open_fds() == fds
    assert loop.fd_count() == registered
    # (the dispatcher's response cache timer may have been armed meanwhile)
    assert loop.timer_count() <= timers + 1
    alice.cleanup()
    bob.cleanup()


# ------------------------------------------------------------------ helpers


_RAW_COUNTER = [0]


def _raw_request(  # noqa: PLR0917  (a test helper with defaults)
    loop: EventLoop,
    raw: socket.socket,
    agent: Simple,
    method: str,
    body: bytes = b"",
    ctype: str = "",
    final: bool = False,
) -> Response:
    """Send ``method`` from a raw socket; the first (final) response."""
    leg = agent.default_leg()
    host, port = leg.src.addr, leg.src.port
    lhost, lport = raw.getsockname()[:2]
    _RAW_COUNTER[0] += 1
    n = _RAW_COUNTER[0]
    lines = [
        f"{method} sip:bob@{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bK-raw{n}",
        f"From: <sip:raw@{lhost}:{lport}>;tag=raw{n}",
        f"To: <sip:bob@{host}:{port}>",
        f"Call-ID: raw-{n}-{method}",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        f"Contact: <sip:raw@{lhost}:{lport}>",
    ]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body)}")
    raw.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, (host, port))
    raw.setblocking(False)
    got: list[Response] = []

    def readable() -> bool:
        try:
            data = raw.recv(65535)
        except BlockingIOError:
            return False
        resp = Packet.new_from_string(data)
        assert isinstance(resp, Response)
        if resp.code() >= 200 or not final:
            got.append(resp)
        return bool(got)

    drive(loop, readable, what=f"a response to {method}")
    return got[0]


@pytest.mark.parametrize("proto", ["ws", "wss", "tls"])
def test_leg_strings_name_every_transport(loop: EventLoop, proto: str, tmp_path: Path) -> None:
    """``"ws:127.0.0.1:0"`` and the like make a leg of that transport."""
    tls = None
    if proto in ("wss", "tls"):
        certs = write_certs(tmp_path)
        tls = {"certfile": str(certs["server_cert"]), "keyfile": str(certs["server_key"])}
    with Simple(from_="sip:a@example.com", leg=f"{proto}:127.0.0.1:0", loop=loop, tls=tls) as ua:
        (leg,) = ua.dispatcher.get_legs()
        assert leg.proto == proto and leg.src.port != 0
