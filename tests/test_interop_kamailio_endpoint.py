"""netsip.endpoint with Kamailio as registrar and record-routing proxy (live-peer interop).

Kamailio runs ``tests/kamailio/registrar_auth.cfg``: REGISTER is challenged
with 401 and saved in memory (usrloc without database), a dialog-starting
request is challenged with 407, then record-routed and relayed to the
callee's registered Contact; in-dialog requests follow the route set. Two
netsip endpoints, alice and bob, each on one transport in one event loop,
register and call each other through it:

- REGISTER with digest (MD5 without qop, SHA-256 with ``qop=auth``, RFC 8760)
  over UDP and TCP; Kamailio really holds the binding: a call to the user
  reaches its endpoint;
- a call with 407 proxy authentication, record-routing and the ACK and BYE
  along the route set (RFC 3261 12.1.2, 12.2.1.1), the BYE from either side,
  also with a different transport on each side (Kamailio then record-routes
  twice);
- unregistration (Expires: 0): a call to the user then ends at Kamailio with
  404.

Every packet the endpoints send and receive is kept by their legs and
printed after each test, with the end of Kamailio's log (pytest shows it
for a failed test). Skipped
without ``kamailio`` unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.util import Addr
from tests.support import AuthKamailio, drive, require_kamailio

pytestmark = pytest.mark.interop

WAIT = 15.0  # seconds for one exchange (Kamailio's fr_inv_timer is 5 s)
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class TracingLeg(Leg):
    """A loopback Leg that keeps every packet it sends and receives (assertions, reports)."""

    def __init__(self, proto: str) -> None:
        super().__init__(addr="127.0.0.1", port=0, proto="tcp" if proto == "tcp" else "udp")
        self.trace: list[tuple[str, Packet]] = []

    def sendto(self, packet: Packet, dst: Addr, callback: object = None) -> None:
        self.trace.append((f"-> {dst}", packet))
        super().sendto(packet, dst, callback)

    def receive(self, packet: Packet, from_: Addr) -> tuple[Packet, Addr] | None:
        self.trace.append((f"<- {from_}", packet))
        return super().receive(packet, from_)

    def sent(self, method: str) -> list[Request]:
        """The requests of ``method`` this leg sent, retransmissions included."""
        return [
            p
            for d, p in self.trace
            if d.startswith("->") and isinstance(p, Request) and p.method() == method
        ]


@dataclass
class Result:
    """One invocation of an endpoint callback."""

    error: int
    code: int
    packet: Packet | None


@dataclass
class Results:
    """What an outgoing request's (or call's) callback was given."""

    all: list[Result] = field(default_factory=list)

    def __call__(
        self,
        _ep: Endpoint,
        _ctx: Context,
        error: int,
        code: int,
        packet: Packet | None,
        _leg: Leg | None = None,
        _from: Addr | None = None,
    ) -> None:
        self.all.append(Result(error, code, packet))

    def final(self) -> Result | None:
        """The final outcome: an error, or a response >= 200."""
        for r in self.all:
            if r.error or r.code >= 200:
                return r
        return None

    def requests(self, method: str) -> list[Request]:
        """In-dialog requests the callback got (outgoing call: code 0, a Request)."""
        return [
            r.packet
            for r in self.all
            if isinstance(r.packet, Request) and r.packet.method() == method
        ]


class Phone:
    """A netsip Endpoint for ``user`` on one transport of the loopback.

    Its application answers INVITE with ``answer`` (200 with SDP by default)
    and records every request it gets, also the in-dialog ones (ACK, BYE).
    """

    def __init__(self, user: str, loop: EventLoop, proto: str, kam: AuthKamailio) -> None:
        self.user = user
        self.proto = proto
        self.kam = kam
        self.leg = TracingLeg(proto)
        self.disp = Dispatcher([self.leg], loop)
        self.ep = Endpoint(self.disp)
        self.ep.set_application(self._app)
        self.got: list[tuple[Context, Request, Addr]] = []
        self.answer = 200

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@127.0.0.1:{self.kam.port}"

    @property
    def contact_uri(self) -> str:
        transport = ";transport=tcp" if self.proto == "tcp" else ""
        return f"sip:{self.user}@127.0.0.1:{self.leg.src.port}{transport}"

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, PASSWORDS[self.user]

    def _app(self, ep: Endpoint, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        self.got.append((ctx, request, from_))
        method = request.method()
        if method == "INVITE":
            ep.new_response(ctx, request.create_response(180), leg, from_)
            if self.answer == 200:
                ok = request.create_response(
                    200, body=SDP, headers={"content-type": "application/sdp"}
                )
                ep.new_response(ctx, ok, leg, from_)
            else:
                ep.new_response(ctx, request.create_response(self.answer), leg, from_)
        elif method not in ("ACK", "BYE", "CANCEL"):
            ep.new_response(ctx, request.create_response(200), leg, from_)

    def requests(self, method: str) -> list[Request]:
        """The requests of ``method`` the application got."""
        return [r for _, r, _ in self.got if r.method() == method]

    def register(self, expires: int = 600, password: str | None = None) -> tuple[Context, Results]:
        results = Results()
        ctx = self.ep.register(
            registrar=self.kam.uri(self.proto),
            from_=self.aor,
            contact=f"<{self.contact_uri}>",
            expires=expires,
            auth=(self.user, password or PASSWORDS[self.user]),
            callback=results,
        )
        return ctx, results

    def call(self, callee: Phone) -> tuple[Context, Results]:
        results = Results()
        ctx = self.ep.invite(
            {"from_": f"<{self.aor}>", "to": f"<{callee.aor}>", "auth": self.auth},
            callback=results,
            body=SDP,
            content_type="application/sdp",
            uri=self.kam.uri(self.proto, callee.user),
        )
        return ctx, results

    def transcript(self) -> str:
        lines = [f"==== {self.user} ({self.proto} {self.leg.src})"]
        for direction, p in self.leg.trace:
            lines.append(f"--- {direction}\n{p.as_bytes().decode('utf-8', 'replace')}")
        return "\n".join(lines)

    def close(self) -> None:
        self.ep.close()
        self.disp.close()


@dataclass
class Rig:
    """Kamailio and the phones of one test; ``why()`` is their transcript."""

    loop: EventLoop
    tmp: Path
    kam: AuthKamailio | None = None
    phones: list[Phone] = field(default_factory=list)

    def start(self, *defines: str) -> AuthKamailio:
        self.kam = AuthKamailio(self.tmp, *defines)
        return self.kam

    def phone(self, user: str, proto: str) -> Phone:
        assert self.kam is not None
        p = Phone(user, self.loop, proto, self.kam)
        self.phones.append(p)
        return p

    def why(self) -> str:
        parts = [p.transcript() for p in self.phones]
        if self.kam is not None:
            parts.append("==== kamailio log\n" + self.kam.log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def until(self, cond: Callable[[], object], what: str) -> None:
        """Drive the loop until ``cond()`` (TimeoutError after ``WAIT`` seconds)."""
        drive(self.loop, cond, WAIT, what)

    def final(self, results: Results, what: str) -> Result:
        self.until(results.final, what)
        r = results.final()
        assert r is not None
        return r


@pytest.fixture
def rig(loop: EventLoop, tmp_path: Path) -> Iterator[Rig]:
    require_kamailio()
    r = Rig(loop, tmp_path)
    try:
        yield r
    finally:
        # shown by pytest for a failed test only: every packet and Kamailio's log
        print(r.why())
        for p in r.phones:
            p.close()
        if r.kam is not None:
            r.kam.close()


def registered(rig: Rig, phone: Phone, expires: int = 600) -> Context:
    """Register ``phone`` and check Kamailio's 200 lists its Contact."""
    ctx, results = phone.register(expires)
    r = rig.final(results, f"{phone.user} registered")
    assert (r.error, r.code) == (0, 200)
    assert isinstance(r.packet, Response)
    contacts = " ".join(r.packet.get_headers("contact"))
    assert phone.contact_uri in contacts
    return ctx


def auth_params(request: Request, header: str) -> dict[str, str]:
    """The parameters of a Digest credentials header."""
    value = request.get_header(header)
    assert value is not None and value.lower().startswith("digest "), value
    return {k.lower(): v for k, v in re.findall(r'(\w+)\s*=\s*"?([^",]*)"?', value[7:])}


# ------------------------------------------------------------------ REGISTER


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize(
    ("algorithm", "defines"),
    [pytest.param("MD5", (), id="md5"), pytest.param("SHA-256", ("SHA256", "QOP"), id="sha256")],
)
def test_register_with_digest(
    rig: Rig, algorithm: str, defines: tuple[str, ...], proto: str
) -> None:
    """401 answered with the challenged algorithm; the binding then routes a call."""
    rig.start(*defines)
    bob = rig.phone("bob", proto)
    alice = rig.phone("alice", proto)
    registered(rig, bob)

    # the first REGISTER goes without credentials, the second answers the 401
    sent = bob.leg.sent("REGISTER")
    assert sent[0].get_header("authorization") is None
    creds = auth_params(sent[-1], "authorization")
    assert creds["username"] == "bob"
    assert creds["realm"] == "netsip.test"
    assert creds.get("algorithm", "MD5").upper() == algorithm
    assert len(creds["response"]) == (64 if algorithm == "SHA-256" else 32)
    if "QOP" in defines:
        assert (creds["qop"], creds["nc"]) == ("auth", "00000001"), creds
    else:
        assert "qop" not in creds

    # Kamailio holds the binding: a call to bob reaches bob's endpoint
    bob.answer = 486
    _, call = alice.call(bob)
    r = rig.final(call, "alice's call to bob answered")
    assert (r.error, r.code) == (errno.EINVAL, 486)
    invites = bob.requests("INVITE")
    assert len(invites) == 1
    assert invites[0].uri() == bob.contact_uri


def test_register_with_wrong_password(rig: Rig) -> None:
    """A second 401 is not answered again: the callback gets EPERM."""
    rig.start()
    bob = rig.phone("bob", "udp")
    _, results = bob.register(password="not-the-password")
    r = rig.final(results, "bob's REGISTER failed")
    assert (r.error, r.code) == (errno.EPERM, 401)
    assert len({p.cseq() for p in bob.leg.sent("REGISTER")}) == 2


def test_unregister(rig: Rig) -> None:
    """After Expires: 0 Kamailio has no binding: a call ends there with 404."""
    rig.start("QOP")
    bob = rig.phone("bob", "udp")
    alice = rig.phone("alice", "udp")
    ctx = registered(rig, bob)

    results = Results()
    bob.ep.unregister(ctx, callback=results)
    r = rig.final(results, "bob unregistered")
    assert (r.error, r.code) == (0, 200)
    assert isinstance(r.packet, Response)
    # the 200 lists the bindings left: none
    assert bob.contact_uri not in " ".join(r.packet.get_headers("contact"))
    unreg = bob.leg.sent("REGISTER")[-1]
    assert unreg.get_header("expires") == "0" or "expires=0" in (unreg.get_header("contact") or "")

    _, call = alice.call(bob)
    r = rig.final(call, "alice's call to bob rejected")
    assert (r.error, r.code) == (errno.EINVAL, 404)
    assert bob.requests("INVITE") == []


# ------------------------------------------------------------------ calls


def record_routes(p: Packet) -> list[str]:
    return [v.strip() for v in p.get_headers("record-route")]


def routes(p: Packet) -> list[str]:
    return [v.strip() for v in p.get_headers("route")]


@pytest.mark.parametrize(
    ("alice_proto", "bob_proto", "hangup"),
    [
        pytest.param("udp", "udp", "alice", id="udp-alice-hangs-up"),
        pytest.param("udp", "udp", "bob", id="udp-bob-hangs-up"),
        pytest.param("tcp", "tcp", "alice", id="tcp-alice-hangs-up"),
        pytest.param("tcp", "tcp", "bob", id="tcp-bob-hangs-up"),
        pytest.param("udp", "tcp", "alice", id="udp-to-tcp-alice-hangs-up"),
        pytest.param("tcp", "udp", "bob", id="tcp-to-udp-bob-hangs-up"),
    ],
)
def test_call_through_record_routing_proxy(
    rig: Rig, alice_proto: str, bob_proto: str, hangup: str
) -> None:
    """407, record-route, 200, ACK and BYE along the route set, BYE answered 200."""
    kam = rig.start("QOP")
    alice = rig.phone("alice", alice_proto)
    bob = rig.phone("bob", bob_proto)
    registered(rig, bob)
    bob_contexts = len(bob.ep)

    actx, call = alice.call(bob)
    r = rig.final(call, "alice's call answered")
    assert (r.error, r.code) == (0, 200)
    ok = r.packet
    assert isinstance(ok, Response)

    # alice answered the 407 with her credentials
    invites = alice.leg.sent("INVITE")
    assert invites[0].get_header("proxy-authorization") is None
    creds = auth_params(invites[-1], "proxy-authorization")
    assert (creds["username"], creds["qop"]) == ("alice", "auth")

    # Kamailio record-routed: once, or twice when it changes transport
    invites = bob.requests("INVITE")
    assert len(invites) == 1
    rr = record_routes(invites[0])
    assert len(rr) == (1 if alice_proto == bob_proto else 2)
    assert all(f"127.0.0.1:{kam.port}" in v and ";lr" in v for v in rr)
    assert record_routes(ok) == rr

    # the ACK goes along the route set (the reversed Record-Route of the 2xx,
    # RFC 3261 12.1.2) to bob's Contact, and reaches bob through Kamailio
    rig.until(lambda: bob.requests("ACK"), "bob got the ACK")
    # (the other ACK alice sent is the one of the 407, in its transaction;
    # a retransmitted 2xx, if any, is ACKed again the same way)
    acks = [a for a in alice.leg.sent("ACK") if a.cseq_number() == ok.cseq_number()]
    assert acks
    assert all(routes(a) == rr[::-1] for a in acks)
    assert all(a.uri() == bob.contact_uri for a in acks)
    assert alice.requests("ACK") == []
    # (through Kamailio: its Via on top of alice's)
    for acked in bob.requests("ACK"):
        vias = acked.get_headers("via")
        assert len(vias) == 2 and f"127.0.0.1:{kam.port};" in vias[0]

    # the BYE from either side: along the route set (for bob: the
    # Record-Route in its order, RFC 3261 12.1.1), answered 200 by the other
    bye_results = Results()
    if hangup == "alice":
        alice.ep.new_request("BYE", actx, callback=bye_results)
        rig.until(lambda: bob.requests("BYE"), "bob got the BYE")
        sender, target, received = alice, bob, bob.requests("BYE")
        expected_route = rr[::-1]
    else:
        bctx = bob.got[0][0]
        bob.ep.new_request("BYE", bctx, callback=bye_results)
        rig.until(lambda: call.requests("BYE"), "alice got the BYE")
        sender, target, received = bob, alice, call.requests("BYE")
        expected_route = rr
    r = rig.final(bye_results, "the BYE answered")
    assert (r.error, r.code) == (0, 200)
    (bye,) = {p.tid(): p for p in sender.leg.sent("BYE")}.values()
    assert routes(bye) == expected_route
    assert bye.uri() == target.contact_uri
    # Kamailio consumed its own Route entries: the BYE arrives without Route
    assert len(received) == 1 and routes(received[0]) == []

    # the call's contexts are gone; bob keeps his registration
    rig.until(
        lambda: len(alice.ep) == 0 and len(bob.ep) == bob_contexts, "the call's contexts closed"
    )
