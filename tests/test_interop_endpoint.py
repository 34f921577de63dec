"""netsip's Endpoint against live peers: sipp's built-in scenarios and Perl's Net::SIP.

* netsip calls sipp's ``uas`` (``-sn uas``): 1,000 whole calls (INVITE, 180,
  200, ACK, BYE, 200) over UDP and TCP, 50 at once on one event loop. netsip
  counts every 200, the ACK sent with it and the 200 to its BYE; sipp's exit
  status and statistics count 1,000 successful calls.
* sipp's ``uac`` (``-sn uac -m 1000``) calls netsip: sipp reports 1,000
  successful calls, netsip's application saw each INVITE, ACK and BYE, and
  the endpoint holds no context afterwards.
* Perl's Net::SIP::Simple (``tests/perl/endpoint_peer.pl``) calls netsip and
  hangs up; netsip calls Perl's ``Simple->listen`` and hangs up, or is hung
  up on; netsip registers with digest at Perl's Net::SIP::Registrar behind
  Net::SIP::Authorize (401, then 200; a wrong password is reported once and
  never retried in a loop).

Everything runs on loopback on ports the system picked (sipp's own port:
one found free just before), the netsip loop is driven until the peer is
done, and every wait is bounded (the loop's deadline, sipp's ``-timeout``,
the subprocess timeouts).
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil
import pytest

from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Request
from netsip.util import Addr, Proto
from tests.support import (
    SIPP_WAIT,
    EndpointEvent,
    EndpointEvents,
    PipeReader,
    drive,
    free_port,
    require_sipp,
    sipp_errors,
    sipp_stats,
    spin,
    start_endpoint_peer,
    start_sipp,
    stop_process,
)

pytestmark = pytest.mark.interop

CALLS = 1000  # per sipp run
PARALLEL = 50  # calls in flight at once
LOOP_TIMEOUT = 40.0  # upper bound for driving netsip through one sipp or Perl run
PERL_TIMEOUT = 15  # the Perl script's own bound (seconds)

PROTOS: list[Proto] = ["udp", "tcp"]
SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}

#: a small SDP offer/answer (RFC 4566): Net::SIP::Simple insists on one
SDP = (
    b"v=0\r\n"
    b"o=netsip 1 1 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 9 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


# ------------------------------------------------------------------ helpers


@dataclass(eq=False)
class Side:
    """A netsip Endpoint on its own Dispatcher and one loopback leg."""

    loop: EventLoop
    leg: Leg
    disp: Dispatcher
    ep: Endpoint

    @property
    def uri(self) -> str:
        """A URI that reaches this side (with the transport, if not UDP)."""
        tail = "" if self.leg.proto == "udp" else f";transport={self.leg.proto}"
        return f"sip:netsip@{self.leg.src}{tail}"


@contextmanager
def netsip_side(loop: EventLoop, proto: Proto) -> Iterator[Side]:
    leg = Leg(addr="127.0.0.1", port=0, proto=proto)
    disp = Dispatcher([leg], loop)
    ep = Endpoint(disp)
    try:
        yield Side(loop, leg, disp, ep)
    finally:
        ep.close()
        disp.close()


def _later(loop: EventLoop, action: Callable[[], object]) -> None:
    """Run ``action`` in the next loop cycle: after the callback that asks for it.

    A BYE sent from the callback of a 2xx would leave before the ACK, which
    the endpoint sends when the callback returns.
    """
    loop.add_timer(0, lambda _timer: action(), name="test-later")


@dataclass(eq=False)
class Caller:
    """Makes ``total`` calls to ``to``, ``parallel`` at once: INVITE, ACK, BYE.

    Counts what the endpoint reports: 200 to the INVITE, an ACK sent with it
    (``ctx.ack`` while the callback runs), 200 to the BYE.
    """

    side: Side
    to: str
    total: int
    parallel: int
    started: int = 0
    answered: int = 0
    acked: int = 0
    ended: int = 0
    failures: list[str] = field(default_factory=list)
    _invite_cb: Callable[..., None] = field(init=False, repr=False)
    _bye_cb: Callable[..., None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # the context callbacks (many calls: they keep no events)
        self._invite_cb = EndpointEvents(self._on_invite, keep=False).cb
        self._bye_cb = EndpointEvents(self._on_bye, keep=False).cb

    def finished(self) -> int:
        return self.ended + len(self.failures)

    def done(self) -> bool:
        return self.finished() >= self.total

    def fill(self) -> None:
        while self.started < self.total and self.started - self.finished() < self.parallel:
            self.started += 1
            self.side.ep.invite(
                {"from_": f"<sip:netsip@{self.side.leg.src}>", "to": f"<{self.to}>"},
                callback=self._invite_cb,
                body=SDP,
                content_type="application/sdp",
                uri=self.to,
            )

    def _fail(self, ctx: Context, what: str) -> None:
        self.failures.append(f"{ctx.callid}: {what}")
        self.fill()

    def _on_invite(self, e: EndpointEvent) -> None:
        ep, ctx, err, code, packet = e.ep, e.ctx, e.err, e.code, e.packet
        if isinstance(packet, Request):
            self._fail(ctx, f"unexpected {packet.method()} from the callee")
        elif err:
            self._fail(ctx, f"INVITE failed: {errno.errorcode.get(err, err)} {code}")
        elif code == 200:
            self.answered += 1
            if e.ack is not None:
                self.acked += 1
            _later(self.side.loop, lambda: ep.new_request("BYE", ctx, callback=self._bye_cb))

    def _on_bye(self, e: EndpointEvent) -> None:
        ctx, err, code = e.ctx, e.err, e.code
        if err or code != 200:
            self._fail(ctx, f"BYE failed: {errno.errorcode.get(err, err)} {code}")
        else:
            self.ended += 1
            self.fill()


@dataclass(eq=False)
class Callee:
    """An application that answers every INVITE with 200 and an SDP; counts requests."""

    invites: int = 0
    acks: int = 0
    byes: int = 0
    other: list[str] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)

    def app(self, ep: Endpoint, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        method = request.method()
        if method == "INVITE":
            self.invites += 1
            self.contexts.append(ctx)
            answer = request.create_response(
                200, headers={"content-type": "application/sdp"}, body=SDP
            )
            ep.new_response(ctx, answer, leg, from_)
        elif method == "ACK":
            self.acks += 1
        elif method == "BYE":
            self.byes += 1
        else:
            self.other.append(method)


def _wait_bound(proc: subprocess.Popen[bytes], port: int, proto: Proto) -> None:
    """Wait until ``proc`` has bound ``port`` (seen with psutil): nothing to drive meanwhile."""
    kind = "udp" if proto == "udp" else "tcp"
    deadline = time.monotonic() + SIPP_WAIT
    while True:
        try:
            conns = psutil.Process(proc.pid).net_connections(kind=kind)
        except psutil.NoSuchProcess:
            conns = []
        if any(c.laddr and c.laddr.port == port for c in conns):
            return
        assert proc.poll() is None, f"exited with {proc.returncode} before binding {port}"
        assert time.monotonic() < deadline, f"did not bind {port} within {SIPP_WAIT} s"
        time.sleep(0.02)


def _check_sipp(rc: int, stf: Path, tmp: Path, calls: int) -> None:
    stats = sipp_stats(stf)
    errors = sipp_errors(tmp)
    assert stats["SuccessfulCall(C)"] == str(calls), (stats, errors)
    assert stats["FailedCall(C)"] == "0", (stats, errors)
    assert rc == 0, (rc, errors)


# ------------------------------------------------------------------ sipp


@pytest.mark.parametrize("proto", PROTOS)
def test_netsip_calls_sipp_uas(proto: Proto, loop: EventLoop, tmp_path: Path) -> None:
    """1,000 calls from netsip's Endpoint to ``sipp -sn uas``, 50 at once, none failed."""
    sipp = require_sipp()
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    port = free_port(kind)
    proc, stf = start_sipp(
        sipp,
        ["-sn", "uas", "-t", SIPP_TRANSPORT[proto], "-p", str(port), "-m", str(CALLS)],
        tmp_path,
    )
    try:
        _wait_bound(proc, port, proto)
        with netsip_side(loop, proto) as side:
            tail = "" if proto == "udp" else ";transport=tcp"
            caller = Caller(side, f"sip:service@127.0.0.1:{port}{tail}", CALLS, PARALLEL)
            caller.fill()
            drive(loop, caller.done, LOOP_TIMEOUT, "every call ended")
            assert caller.failures == [], caller.failures[:10]
            assert (caller.started, caller.answered, caller.acked, caller.ended) == ((CALLS,) * 4)
            assert len(side.ep) == 0
            # sipp ends after its last call: keep the connection up until then
            drive(loop, lambda: proc.poll() is not None, LOOP_TIMEOUT, "sipp ended")
        rc = proc.wait(timeout=SIPP_WAIT)
    finally:
        stop_process(proc)
    _check_sipp(rc, stf, tmp_path, CALLS)


@pytest.mark.parametrize("proto", PROTOS)
def test_sipp_uac_calls_netsip(proto: Proto, loop: EventLoop, tmp_path: Path) -> None:
    """``sipp -sn uac -m 1000`` calls netsip's Endpoint: all successful, no context left."""
    sipp = require_sipp()
    with netsip_side(loop, proto) as side:
        callee = Callee()
        side.ep.set_application(callee.app)
        proc, stf = start_sipp(
            sipp,
            [
                f"127.0.0.1:{side.leg.src.port}",
                "-sn", "uac", "-t", SIPP_TRANSPORT[proto],
                "-m", str(CALLS), "-r", "500", "-rp", "1000", "-l", str(PARALLEL),
            ],
            tmp_path,
        )  # fmt: skip
        try:
            drive(loop, lambda: proc.poll() is not None, LOOP_TIMEOUT, "sipp ended")
            rc = proc.wait(timeout=SIPP_WAIT)
        finally:
            stop_process(proc)
        # the last BYE was answered before sipp could end: nothing is in flight
        assert (callee.invites, callee.acks, callee.byes) == (CALLS,) * 3, callee.other
        assert callee.other == []
        assert len(side.ep) == 0
    _check_sipp(rc, stf, tmp_path, CALLS)


# ------------------------------------------------------------------ Perl


@dataclass(eq=False)
class PerlPeer:
    """``endpoint_peer.pl`` running, its output read inside the netsip loop."""

    proc: subprocess.Popen[bytes]
    out: PipeReader

    def lines(self) -> list[str]:
        return self.out.lines()

    def seen(self) -> list[str]:
        """What the Perl dispatcher received: "REQUEST ACK 1 ACK", "RESPONSE 200 1 INVITE"."""
        return [line[5:] for line in self.lines() if line.startswith("RECV ")]

    def address(self, loop: EventLoop) -> Addr:
        """The address of the first "LISTENING <ip> <port>" line."""
        drive(loop, self.out.has_line, LOOP_TIMEOUT, "the Perl peer listens")
        first = self.lines()[0].split()
        assert first[0] == "LISTENING", self.lines()
        return Addr.parse((first[1], int(first[2])))

    def finish(self, loop: EventLoop) -> int:
        """Drive the loop until Perl closes its output, then its exit status."""
        drive(loop, lambda: bool(self.out.eof), LOOP_TIMEOUT, "the Perl peer ended")
        return self.proc.wait(timeout=PERL_TIMEOUT)


@contextmanager
def perl_peer(loop: EventLoop, *args: str) -> Iterator[PerlPeer]:
    proc = start_endpoint_peer(*args, "--timeout", str(PERL_TIMEOUT))
    assert proc.stdout is not None
    reader = PipeReader(loop, proc.stdout.fileno())
    try:
        yield PerlPeer(proc, reader)
    finally:
        if not reader.eof:
            loop.del_fd(reader.fd)
        stop_process(proc, PERL_TIMEOUT)


@pytest.mark.parametrize("proto", PROTOS)
def test_perl_simple_calls_netsip(proto: Proto, loop: EventLoop) -> None:
    """Net::SIP::Simple invites netsip, gets 200 with SDP, ACKs, hangs up; netsip answers BYE."""
    with netsip_side(loop, proto) as side:
        callee = Callee()
        side.ep.set_application(callee.app)
        with perl_peer(loop, "--mode", "call", "--proto", proto, "--to", side.uri) as perl:
            rc = perl.finish(loop)
            assert rc == 0, perl.lines()
            assert perl.lines()[-1] == "DONE ok", perl.lines()
            assert "FINAL OK 200" in perl.lines()
            responses = [s for s in perl.seen() if s.startswith("RESPONSE 2")]
            assert responses == ["RESPONSE 200 1 INVITE", "RESPONSE 200 2 BYE"], perl.lines()
        assert (callee.invites, callee.acks, callee.byes) == (1, 1, 1), callee.other
        assert callee.other == []
        assert len(side.ep) == 0


@pytest.mark.parametrize("hangup", ["netsip", "perl"])
@pytest.mark.parametrize("proto", PROTOS)
def test_netsip_calls_perl_simple(
    proto: Proto, hangup: Literal["netsip", "perl"], loop: EventLoop
) -> None:
    """netsip invites ``Simple->listen``: 200, ACK, then a BYE from either side."""
    with netsip_side(loop, proto) as side:
        extra = ["--bye-after", "0.1"] if hangup == "perl" else []
        with perl_peer(loop, "--mode", "listen", "--proto", proto, *extra) as perl:
            dst = perl.address(loop)
            tail = "" if proto == "udp" else ";transport=tcp"
            to = f"sip:perl@{dst}{tail}"
            events = EndpointEvents()
            ctx = side.ep.invite(
                {"from_": f"<sip:netsip@{side.leg.src}>", "to": f"<{to}>"},
                callback=events.cb,
                body=SDP,
                content_type="application/sdp",
                uri=to,
            )
            drive(loop, lambda: (0, 200) in events.outcomes(), LOOP_TIMEOUT, "the 200 from Perl")
            assert events.acked and ctx.established
            if hangup == "netsip":
                # the ACK went out when the callback returned, the BYE follows it
                side.ep.new_request("BYE", ctx, callback=events.cb)
                drive(loop, lambda: len(side.ep) == 0, LOOP_TIMEOUT, "BYE answered")
                assert events.outcomes()[-1] == (0, 200)
            else:
                drive(loop, lambda: (0, "BYE") in events.outcomes(), LOOP_TIMEOUT, "BYE from Perl")
            rc = perl.finish(loop)
            assert rc == 0, perl.lines()
            assert perl.lines()[-1] == "DONE ok", perl.lines()
        requests = [s for s in perl.seen() if s.startswith("REQUEST")]
        if hangup == "netsip":
            assert requests == ["REQUEST INVITE 1 INVITE", "REQUEST ACK 1 ACK", "REQUEST BYE 2 BYE"]
            assert "RESPONSE 200 1 BYE" not in perl.seen()
        else:
            assert requests == ["REQUEST INVITE 1 INVITE", "REQUEST ACK 1 ACK"], perl.lines()
            assert "RESPONSE 200 1 BYE" in perl.seen(), perl.lines()
            assert events.outcomes()[-1] == (0, "BYE")
        assert len(side.ep) == 0


@pytest.mark.parametrize(
    ("password", "code", "err"),
    [
        pytest.param("secret", 200, 0, id="right-password"),
        pytest.param("wrong", 401, errno.EPERM, id="wrong-password"),
    ],
)
@pytest.mark.parametrize("proto", PROTOS)
def test_netsip_registers_at_perl_registrar(
    proto: Proto, password: str, code: int, err: int, loop: EventLoop
) -> None:
    """REGISTER with digest at Net::SIP::Registrar behind Net::SIP::Authorize.

    The right password: 401, then 200. A wrong one: the callback hears of the
    second 401 once (EPERM), and Perl gets exactly two REGISTERs (no retry loop).
    """
    with netsip_side(loop, proto) as side:
        args = ["--mode", "registrar", "--proto", proto, "--user", "alice", "--password", "secret"]
        with perl_peer(loop, *args) as perl:
            dst = perl.address(loop)
            tail = "" if proto == "udp" else ";transport=tcp"
            events = EndpointEvents()
            ctx = side.ep.register(
                registrar=f"sip:{dst}{tail}",
                from_="<sip:alice@netsip.test>",
                contact=f"<{side.uri}>",
                expires=120,
                auth=("alice", password),
                callback=events.cb,
            )
            drive(loop, lambda: bool(events.outcomes()), LOOP_TIMEOUT, "the REGISTER's outcome")
            spin(loop, 0.5)  # nothing more comes: no retry after the final answer
            assert events.outcomes() == [(err, code)], events.outcomes()
            if err:
                assert len(side.ep) == 0
            else:
                assert ctx.expires and 0 < ctx.expires <= 120
                side.ep.close_context(ctx)
            perl.proc.terminate()
            rc = perl.finish(loop)
        assert rc == 0, perl.lines()
        assert perl.lines()[-1] == "DONE registers=2", perl.lines()
        seen = perl.seen()
        assert seen == ["REQUEST REGISTER 1 REGISTER", "REQUEST REGISTER 2 REGISTER auth"], seen
