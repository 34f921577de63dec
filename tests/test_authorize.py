"""Tests for netsip.authorize: digest authorization in front of a server, on loopback UDP.

The server is a Dispatcher whose receiver is an Authorize followed by a
backend that records what passed and answers 200. Clients are netsip's
Endpoint (its digest client answers the challenges) and a raw UDP socket
for hand-made (and broken) credentials. One event loop with a fake clock:
nonce ages are moved by the test, traffic is driven by the loop.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netsip import digest
from netsip.authorize import (
    FILTERS,
    NC_WINDOW,
    Authorize,
    NonceTracker,
    from_is_auth_user,
    from_is_realm,
    to_is_from,
    users_from_file,
)
from netsip.chain import ReceiveChain
from netsip.digest import HA1, Challenge, parse_challenges
from netsip.dispatcher import Dispatcher
from netsip.endpoint import Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.simple import Simple
from netsip.testing import FakeClock, addr_of, advance, drive, pkt, udp_socket
from netsip.util import Addr
from tests.support import (
    EndpointEvents,
    free_port,
    require_perl_netsip,
    require_sipp,
    sipp_errors,
    sipp_stats,
    start_sipp,
    stop_process,
)

REALM = "example.org"
USERS = {"alice": "wonderland", "bob": "builder"}

# ---------------------------------------------------------------- helpers


@dataclass(eq=False)
class Server:
    """An Authorize in front of a backend that answers 200 to what passes."""

    disp: Dispatcher
    auth: Authorize
    passed: list[Request] = field(default_factory=list)
    handled: list[int] = field(default_factory=list)

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        code = self.auth.receive(packet, leg, from_)
        if code:
            self.handled.append(code)
            return
        if isinstance(packet, Request):
            self.passed.append(packet)
            if packet.method() != "ACK":
                # (a REGISTER's 200 says how long: Perl's Simple wants to know)
                granted = packet.get_header("expires") or "60"
                extra = {"expires": granted} if packet.method() == "REGISTER" else None
                self.disp.deliver(
                    packet.create_response(200, headers=extra), leg=leg, dst_addr=from_
                )

    @property
    def addr(self) -> Addr:
        return self.disp.legs[0].src

    @property
    def uri(self) -> str:
        return f"sip:{self.addr}"


def make_server(loop: EventLoop, **kw: Any) -> Server:
    """A Server on a UDP leg of ``loop``; ``kw`` for Authorize (realm and users preset)."""
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
    kw.setdefault("realm", REALM)
    if "user2pass" not in kw and "user2a1" not in kw:
        kw["user2pass"] = USERS
    server = Server(disp, Authorize(dispatcher=disp, **kw))
    disp.set_receiver(server)
    return server


@dataclass(eq=False)
class Peer:
    """A raw UDP socket: sends bytes, collects the responses."""

    world: World
    sock: Any
    got: list[Response] = field(default_factory=list)

    @property
    def port(self) -> int:
        return addr_of(self.sock).port

    def _pull(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            p = pkt(data)
            assert isinstance(p, Response)
            self.got.append(p)

    def send(self, server: Server, data: bytes) -> None:
        self.sock.sendto(data, server.addr.sockaddr())

    def ask(self, server: Server, data: bytes) -> Response:
        """Send a request and return the one response it gets."""
        before = len(self.got)
        self.send(server, data)

        def answered() -> bool:
            self._pull()
            return len(self.got) > before

        drive(self.world.loop, answered, 5.0, "a response")
        assert len(self.got) == before + 1
        return self.got[-1]


@dataclass(eq=False)
class World:
    loop: EventLoop
    clock: FakeClock
    dispatchers: list[Dispatcher] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    socks: list[Any] = field(default_factory=list)

    def server(self, **kw: Any) -> Server:
        server = make_server(self.loop, **kw)
        self.dispatchers.append(server.disp)
        return server

    def peer(self) -> Peer:
        sock = udp_socket()
        sock.setblocking(False)
        self.socks.append(sock)
        return Peer(self, sock)

    def endpoint(self) -> Endpoint:
        disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], self.loop)
        self.dispatchers.append(disp)
        ep = Endpoint(disp)
        self.endpoints.append(ep)
        return ep

    def register(
        self, server: Server, auth: Any = ("alice", "wonderland"), **kw: Any
    ) -> EndpointEvents:
        """An Endpoint registers alice at ``server``; the final outcome."""
        ep = self.endpoint()
        rec = EndpointEvents()
        ep.register(
            registrar=server.uri,
            from_=f"<sip:alice@{REALM}>",
            contact=f"<sip:alice@{ep.dispatcher.legs[0].src}>",
            auth=auth,
            callback=rec.cb,
            refresh=False,
            **kw,
        )
        drive(self.loop, lambda: any(c >= 200 for c in rec.codes()), 5.0, "a final response")
        return rec


@pytest.fixture
def world() -> Iterator[World]:
    clock = FakeClock(1_000_000.0)
    loop = EventLoop(clock=clock)
    w = World(loop, clock)
    yield w
    for ep in w.endpoints:
        ep.close()
    for d in w.dispatchers:
        d.close()
    for s in w.socks:
        s.close()
    loop.close()


def request(
    method: str,
    peer: Peer,
    *,
    uri: str = f"sip:{REALM}",
    cseq: int = 1,
    callid: str = "call-1",
    branch: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    frm: str = f"<sip:alice@{REALM}>;tag=f1",
    to: str = f"<sip:alice@{REALM}>",
    body: bytes = b"",
) -> bytes:
    branch = branch or f"z9hG4bK-{callid}-{cseq}-{method}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch={branch}",
        f"From: {frm}",
        f"To: {to}",
        f"Call-ID: {callid}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        *(f"{k}: {v}" for k, v in headers),
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


def challenges(resp: Response, header: str = "www-authenticate") -> list[Challenge]:
    return parse_challenges(header, resp.get_headers(header))


def credentials(
    ch: Challenge,
    method: str,
    *,
    uri: str = f"sip:{REALM}",
    user: str = "alice",
    password: str = "wonderland",
    nc: int = 1,
    body: bytes = b"",
) -> str:
    return digest.answer(
        ch, method=method, uri=uri, body=body, user=user, password=password, nc=nc, cnonce="cn"
    )


def first_challenge(server: Server, peer: Peer) -> Challenge:
    resp = peer.ask(server, request("OPTIONS", peer, callid="probe"))
    assert resp.code() == 401
    return challenges(resp)[0]


# ------------------------------------------------------------ challenges


def test_challenge_offers_sha256_then_md5_with_qop(world: World) -> None:
    server, peer = world.server(), world.peer()
    resp = peer.ask(server, request("REGISTER", peer))
    assert resp.code() == 401
    assert resp.get_headers("proxy-authenticate") == []
    chs = challenges(resp)
    assert [c.algorithm.name for c in chs] == ["SHA-256", "MD5"]
    assert all(c.realm == REALM and c.qop == ("auth", "auth-int") and not c.stale for c in chs)
    assert server.passed == [] and server.handled == [401]


def test_i_am_proxy_answers_407_with_proxy_authenticate(world: World) -> None:
    server, peer = world.server(i_am_proxy=True), world.peer()
    resp = peer.ask(server, request("INVITE", peer))
    assert resp.code() == 407
    assert resp.get_headers("www-authenticate") == []
    ch = challenges(resp, "proxy-authenticate")[0]
    # credentials in Authorization do not count for a proxy
    wrong_header = [("Authorization", credentials(ch, "INVITE"))]
    assert peer.ask(server, request("INVITE", peer, cseq=2, headers=wrong_header)).code() == 407
    right = [("Proxy-Authorization", credentials(ch, "INVITE"))]
    assert peer.ask(server, request("INVITE", peer, cseq=3, headers=right)).code() == 200
    assert len(server.passed) == 1
    # the credentials of the realm were consumed (RFC 3261 22.3)
    assert server.passed[0].get_headers("proxy-authorization") == []


# ------------------------------------------------------- the Endpoint client


@pytest.mark.parametrize(
    ("algorithms", "qop"),
    [
        (None, ("auth", "auth-int")),
        (("MD5",), ("auth",)),
        (("SHA-256",), ("auth-int",)),
        (("SHA-512-256",), ("auth",)),
        (("MD5-sess",), ("auth",)),
        (("SHA-256-sess",), ("auth", "auth-int")),
        (("MD5",), ()),
    ],
)
def test_endpoint_registers_through_each_algorithm_and_qop(
    world: World, algorithms: tuple[str, ...] | None, qop: tuple[str, ...]
) -> None:
    server = world.server(algorithms=algorithms, qop=qop)
    rec = world.register(server)
    assert rec.codes() == [200]
    assert len(server.passed) == 1 and server.handled == [401]
    reg = server.passed[0]
    assert reg.method() == "REGISTER" and reg.get_headers("authorization") == []


def test_endpoint_with_wrong_password_is_refused(world: World) -> None:
    server = world.server()
    rec = world.register(server, auth=("alice", "queen of hearts"))
    assert rec.codes() == [401]
    assert server.passed == []
    assert server.handled == [401, 401]  # the challenge, then the refusal


def test_endpoint_answers_a_proxy_challenge(world: World) -> None:
    server = world.server(i_am_proxy=True)
    rec = world.register(server)
    assert rec.codes() == [200] and server.handled == [407]


def test_user2pass_callable_and_unknown_user(world: World) -> None:
    asked: list[str] = []

    def user2pass(user: str) -> str | None:
        asked.append(user)
        return USERS.get(user)

    server = world.server(user2pass=user2pass)
    assert world.register(server).codes() == [200]
    assert world.register(server, auth=("mallory", "x")).codes() == [401]
    assert "alice" in asked and "mallory" in asked


def test_user2a1_as_in_perl_offers_md5_only(world: World) -> None:
    a1 = digest.ALGORITHMS["MD5"].hash(f"alice:{REALM}:wonderland".encode())
    server, peer = world.server(user2a1={"alice": a1}), world.peer()
    resp = peer.ask(server, request("OPTIONS", peer))
    assert [c.algorithm.name for c in challenges(resp)] == ["MD5"]
    assert world.register(server).codes() == [200]


def test_user2a1_callable_with_sha256_ha1(world: World) -> None:
    ha1 = digest.ALGORITHMS["SHA-256"].hash(f"alice:{REALM}:wonderland".encode())

    def user2a1(user: str, realm: str) -> HA1 | None:
        return HA1(ha1, "SHA-256") if (user, realm) == ("alice", REALM) else None

    server = world.server(user2a1=user2a1, algorithms=("SHA-256",))
    assert world.register(server).codes() == [200]


def test_users_from_file(world: World, tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(
        "# the users\n\nalice:wonderland\n  # indented comment\nbob:a:b:c\ncarol:\n",
        encoding="utf-8",
    )
    assert users_from_file(path) == {"alice": "wonderland", "bob": "a:b:c", "carol": ""}
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], world.loop)
    world.dispatchers.append(disp)
    auth = Authorize.from_file(path, dispatcher=disp, realm=REALM)
    server = Server(disp, auth)
    disp.set_receiver(server)
    assert world.register(server).codes() == [200]
    bad = tmp_path / "bad"
    bad.write_text("alice:x\nno password here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad:2"):
        users_from_file(bad)


# ------------------------------------------------ stale nonces and replays


def test_expired_nonce_with_right_credentials_is_stale(world: World) -> None:
    server, peer = world.server(max_age=60), world.peer()
    ch = first_challenge(server, peer)
    world.clock.advance(61)
    resp = peer.ask(
        server, request("REGISTER", peer, headers=[("Authorization", credentials(ch, "REGISTER"))])
    )
    assert resp.code() == 401
    assert all(c.stale for c in challenges(resp))
    # wrong credentials with the expired nonce: no stale (the user must be asked)
    bad = credentials(ch, "REGISTER", password="nope")
    resp = peer.ask(server, request("REGISTER", peer, cseq=2, headers=[("Authorization", bad)]))
    assert resp.code() == 401 and not any(c.stale for c in challenges(resp))
    # the fresh nonce of the stale challenge works
    fresh = challenges(resp)[0]
    ok = [("Authorization", credentials(fresh, "REGISTER"))]
    assert peer.ask(server, request("REGISTER", peer, cseq=3, headers=ok)).code() == 200


def test_nc_replay_is_refused_with_stale_and_counting_on_passes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "netsip.authorize")
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)

    def register(cseq: int, nc: int) -> Response:
        creds = [("Authorization", credentials(ch, "REGISTER", nc=nc))]
        return peer.ask(server, request("REGISTER", peer, cseq=cseq, headers=creds))

    assert register(1, 1).code() == 200
    replay = register(2, 1)  # another request, the same nonce and nc
    assert replay.code() == 401 and all(c.stale for c in challenges(replay))
    assert register(3, 2).code() == 200
    assert register(4, 5).code() == 200  # counts may skip (lost requests)
    assert register(5, 3).code() == 200  # or come late, within the window
    assert register(6, 3).code() == 401
    assert len(server.passed) == 4
    # beyond its age the nonce is refused whatever its nc
    world.clock.advance(301)
    stale = register(7, 6)
    assert stale.code() == 401 and all(c.stale for c in challenges(stale))
    assert len(server.passed) == 4
    logged = [r.getMessage() for r in caplog.records]
    assert sum("replayed nonce: nc 1 used before" in m for m in logged) == 1, logged
    assert sum("replayed nonce: nc 3 used before" in m for m in logged) == 1, logged
    assert sum("nonce expired" in m for m in logged) == 1, logged


def test_retransmission_is_not_a_replay(world: World) -> None:
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)
    data = request("REGISTER", peer, headers=[("Authorization", credentials(ch, "REGISTER"))])
    assert peer.ask(server, data).code() == 200
    # the same request again: the dispatcher's response cache answers it
    assert peer.ask(server, data).code() == 200
    assert len(server.passed) == 1
    # and if it reaches the authorizer (no cache), it passes as the same request
    assert server.auth.nonces.use(ch.nonce, 1, "call-1 1 REGISTER", world.clock()) is None
    assert server.auth.nonces.use(ch.nonce, 1, "call-1 2 REGISTER", world.clock()) is not None


@pytest.mark.parametrize(("max_age", "handled"), [(300, [401]), (30, [401, 401])])
def test_endpoint_refresh_counts_nc_on_or_gets_stale(
    world: World, max_age: float, handled: list[int]
) -> None:
    """The Endpoint refreshes a registration with the last challenge and the
    next nc: within the nonce's age it passes at once, after it the server
    says stale and the client answers the new nonce without asking anyone."""
    server = world.server(max_age=max_age)
    ep = world.endpoint()
    rec = EndpointEvents()
    ep.register(
        registrar=server.uri,
        from_=f"<sip:alice@{REALM}>",
        contact=f"<sip:alice@{ep.dispatcher.legs[0].src}>",
        auth=("alice", "wonderland"),
        callback=rec.cb,
        expires=120,
    )
    drive(world.loop, lambda: rec.codes() == [200], 5.0, "the registration")
    assert server.handled == [401]
    advance(world.loop, world.clock, 61)  # the refresh is due after 60 s
    drive(world.loop, lambda: rec.codes() == [200, 200], 5.0, "the refresh")
    assert len(server.passed) == 2 and server.handled == handled
    creds = [r.get_headers("authorization") for r in server.passed]
    assert creds == [[], []]  # consumed


def test_rfc2069_answer_is_good_for_one_request(world: World) -> None:
    server, peer = world.server(algorithms=("MD5",), qop=()), world.peer()
    ch = first_challenge(server, peer)
    assert ch.qop == ()
    creds = [("Authorization", credentials(ch, "REGISTER"))]
    assert "nc=" not in creds[0][1]
    assert peer.ask(server, request("REGISTER", peer, headers=creds)).code() == 200
    again = peer.ask(server, request("REGISTER", peer, cseq=2, headers=creds))
    assert again.code() == 401 and challenges(again)[0].stale


# ------------------------------------------------------ the nonce tracker


def test_tracker_forgets_expired_nonces() -> None:
    t = NonceTracker(max_age=10, max_nonces=100)
    for i in range(5):
        assert t.use(f"{1000 + i:x}.mac", 1, "r", 1000.0 + i) is None
    assert len(t) == 5
    # a use at 1013: the nonces of 1000..1002 are past their age
    assert t.use(f"{1013:x}.mac", 1, "r", 1013.0) is None
    assert len(t) == 3


def test_tracker_is_bounded_and_forgetting_never_lets_a_replay_through() -> None:
    t = NonceTracker(max_age=300, max_nonces=3)
    nonces = [f"{1000 + i:x}.mac" for i in range(5)]
    for n in nonces:
        assert t.use(n, 1, "r", 1010.0) is None
    assert len(t) == 3
    # the two oldest were forgotten: their replay is refused, not taken as new
    assert t.use(nonces[0], 1, "other", 1010.0) == "nonce no longer tracked (table full)"
    assert t.use(nonces[0], 2, "other", 1010.0) is not None
    assert t.use(nonces[4], 2, "r", 1010.0) is None
    assert t.use(nonces[4], 2, "x", 1010.0) is not None


def test_tracker_nc_window() -> None:
    t = NonceTracker(max_age=300, max_nonces=10)
    n = f"{1000:x}.mac"
    for nc in range(1, NC_WINDOW + 2):
        assert t.use(n, nc, f"r{nc}", 1000.0) is None
    assert t.use(n, 1, "late", 1000.0) == "nc 1 below the window"
    assert t.use(n, 2, "r2", 1000.0 + 40) is not None  # a "retransmission" too late
    assert t.use(n, NC_WINDOW + 2, "new", 1000.0) is None


# -------------------------------------------------------------- bad input


def _bad(world: World, headers: list[tuple[str, str]], **kw: Any) -> tuple[Server, Response]:
    server, peer = world.server(), world.peer()
    resp = peer.ask(server, request("REGISTER", peer, headers=headers, **kw))
    return server, resp


def _assert_challenged(
    server: Server, resp: Response, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    assert resp.code() == 401
    assert [c.algorithm.name for c in challenges(resp)] == ["SHA-256", "MD5"]
    assert not any(c.stale for c in challenges(resp))
    assert server.passed == []
    assert any(text in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_bad_missing_field(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    value = f'Digest username="alice", realm="{REALM}", nonce="1.2", uri="sip:{REALM}"'
    server, resp = _bad(world, [("Authorization", value)])  # no response=
    _assert_challenged(server, resp, caplog, "no readable credentials")


def test_bad_ten_kilobytes_of_junk(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    junk = "Digest " + "x=" + "\x01junk" * 2048
    server, resp = _bad(world, [("Authorization", junk[:10240])])
    _assert_challenged(server, resp, caplog, "no readable credentials")
    # and the server goes on working
    assert world.register(server).codes() == [200]


def test_bad_wrong_realm(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)
    other = Challenge(ch.header, "elsewhere", ch.nonce, ch.algorithm, ch.qop)
    creds = [("Authorization", credentials(other, "REGISTER"))]
    resp = peer.ask(server, request("REGISTER", peer, headers=creds))
    _assert_challenged(server, resp, caplog, "no readable credentials")


def test_bad_wrong_uri(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)
    creds = [("Authorization", credentials(ch, "REGISTER", uri="sip:other.example"))]
    resp = peer.ask(server, request("REGISTER", peer, headers=creds))
    _assert_challenged(server, resp, caplog, "credentials refused")


def test_bad_unknown_algorithm(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)
    creds = credentials(ch, "REGISTER").replace("algorithm=SHA-256", "algorithm=ROT13")
    resp = peer.ask(server, request("REGISTER", peer, headers=[("Authorization", creds)]))
    _assert_challenged(server, resp, caplog, "no readable credentials")


def test_bad_algorithm_not_offered(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)
    weak = Challenge(ch.header, ch.realm, ch.nonce, digest.ALGORITHMS["SHA-512-256"], ch.qop)
    creds = [("Authorization", credentials(weak, "REGISTER"))]
    resp = peer.ask(server, request("REGISTER", peer, headers=creds))
    _assert_challenged(server, resp, caplog, "not offered: algorithm SHA-512-256")


def test_bad_forged_nonce(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netsip")
    server, peer = world.server(), world.peer()
    ch = first_challenge(server, peer)
    forged = Challenge(
        ch.header, ch.realm, f"{int(world.clock()):x}." + "0" * 64, ch.algorithm, ch.qop
    )
    creds = [("Authorization", credentials(forged, "REGISTER"))]
    resp = peer.ask(server, request("REGISTER", peer, headers=creds))
    _assert_challenged(server, resp, caplog, "credentials refused")


# ---------------------------------------------------------- ACK and CANCEL


def test_ack_and_cancel_are_never_challenged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "netsip")
    server, peer = world.server(), world.peer()
    peer.send(server, request("ACK", peer, callid="a"))
    peer.send(server, request("CANCEL", peer, callid="c"))
    # the OPTIONS sent after them is the only one answered
    resp = peer.ask(server, request("OPTIONS", peer, callid="o"))
    assert resp.callid() == "o" and resp.code() == 401
    assert server.passed == []
    assert server.handled == [401, 401, 401]
    assert sum("without valid credentials: dropped" in r.getMessage() for r in caplog.records) == 2


def test_ack_and_cancel_with_their_invite_credentials_pass(world: World) -> None:
    server, peer = world.server(max_age=60), world.peer()
    ch = first_challenge(server, peer)
    invite_creds = [("Authorization", credentials(ch, "INVITE"))]
    assert peer.ask(server, request("INVITE", peer, callid="i", headers=invite_creds)).code() == 200
    # an ACK and a CANCEL carry the INVITE's credentials (RFC 3261 22.1), even past the age
    world.clock.advance(120)
    peer.send(server, request("ACK", peer, callid="i", headers=invite_creds))
    cancel = peer.ask(server, request("CANCEL", peer, callid="i", headers=invite_creds))
    assert cancel.code() == 200
    assert [p.method() for p in server.passed] == ["INVITE", "ACK", "CANCEL"]


# ----------------------------------------------------------------- filters


def _req(frm: str, to: str) -> Request:
    p = pkt(
        (
            f"REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\n"
            f"From: {frm};tag=1\r\nTo: {to}\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(p, Request)
    return p


def test_filters_as_in_perl(world: World) -> None:
    server = world.server()
    leg, addr = server.disp.legs[0], server.addr
    same = _req(f"<sip:alice@{REALM}>", f"<sip:alice@{REALM}>")
    sub = _req(f'"Alice" <sip:Alice@pbx.{REALM}:5070>', f"<sip:bob@{REALM}>")
    other = _req("<sip:alice@evil.org>", f"<sip:alice@{REALM}>")
    assert from_is_realm(same, leg, addr, "alice", REALM)
    assert from_is_realm(sub, leg, addr, "alice", REALM)
    assert not from_is_realm(other, leg, addr, "alice", REALM)
    assert not from_is_realm(_req("<sip:a@notexample.org>", "<sip:a@x>"), leg, addr, "a", REALM)
    assert from_is_auth_user(sub, leg, addr, "alice", REALM)
    assert not from_is_auth_user(same, leg, addr, "bob", REALM)
    assert to_is_from(same, leg, addr, "alice", REALM)
    assert not to_is_from(sub, leg, addr, "alice", REALM)
    assert set(FILTERS) == {"FromIsRealm", "FromIsAuthUser", "ToIsFrom"}


def test_filter_per_method(world: World) -> None:
    calls: list[tuple[str, str]] = []

    def log_and_pass(packet: Request, leg: Leg, from_: Addr, user: str, realm: str) -> bool:
        calls.append((user, realm))
        return True

    # REGISTER: (To is From and From is the user) or the callback; INVITE: From in the realm
    server = world.server(
        filter={"register": [["ToIsFrom", "FromIsAuthUser"]], "INVITE": "FromIsRealm"}
    )
    peer = world.peer()
    ch = first_challenge(server, peer)

    def ask(method: str, nc: int, frm: str, to: str, user: str = "alice") -> int:
        password = USERS[user]
        creds = [("Authorization", credentials(ch, method, nc=nc, user=user, password=password))]
        data = request(method, peer, cseq=nc, frm=frm + ";tag=1", to=to, headers=creds)
        return peer.ask(server, data).code()

    alice = f"<sip:alice@{REALM}>"
    assert ask("REGISTER", 1, alice, alice) == 200
    # bob registering alice: refused with 403 (authorization will not help)
    assert ask("REGISTER", 2, alice, alice, user="bob") == 403
    assert ask("INVITE", 3, alice, "<sip:carol@elsewhere>") == 200
    assert ask("INVITE", 4, "<sip:alice@evil.org>", alice) == 403
    assert ask("OPTIONS", 5, "<sip:alice@evil.org>", alice) == 200  # no filter for OPTIONS
    assert server.handled.count(403) == 2

    server2 = world.server(filter={"REGISTER": [["FromIsRealm", "ToIsFrom"], log_and_pass]})
    ch = first_challenge(server2, peer)
    creds = [("Authorization", credentials(ch, "REGISTER"))]
    data = request("REGISTER", peer, frm="<sip:x@y>;tag=1", headers=creds)
    assert peer.ask(server2, data).code() == 200
    assert calls == [("alice", REALM)]


# ----------------------------------------------------------- construction


def test_constructor_refuses_misuse(world: World) -> None:
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], world.loop)
    world.dispatchers.append(disp)
    with pytest.raises(ValueError, match="user2pass or user2a1"):
        Authorize(dispatcher=disp, realm=REALM)
    with pytest.raises(ValueError, match="ROT13"):
        Authorize(dispatcher=disp, user2pass=USERS, algorithms=("ROT13",))
    with pytest.raises(ValueError, match="qop"):
        Authorize(dispatcher=disp, user2pass=USERS, qop=("auth-conf",))
    with pytest.raises(ValueError, match="needs a qop"):
        Authorize(dispatcher=disp, user2pass=USERS, algorithms=("MD5-sess",), qop=())
    with pytest.raises(TypeError, match="mapping"):
        Authorize(dispatcher=disp, user2pass=USERS, filter="FromIsRealm")  # type: ignore[arg-type]  # misuse on purpose
    with pytest.raises(ValueError, match="unknown filter"):
        Authorize(dispatcher=disp, user2pass=USERS, filter={"INVITE": "FromIsEvil"})


def test_responses_pass_untouched(world: World) -> None:
    server = world.server()
    resp = pkt(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert server.auth.receive(resp, server.disp.legs[0], server.addr) is None


# ------------------------------------------------- Simple.listen(auth_*=...)


def _ua(loop: EventLoop, name: str, auth: Any = None) -> Simple:
    return Simple(from_=f"sip:{name}@127.0.0.1", leg="udp:127.0.0.1:0", loop=loop, auth=auth)


def test_simple_listen_with_auth_lets_the_right_caller_in(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "netsip.authorize")
    bob = _ua(loop, "bob")
    alice = _ua(loop, "alice", auth=("alice", "wonderland"))
    mallory = _ua(loop, "mallory", auth=("alice", "guessed"))
    try:
        created: list[Any] = []

        def create(call: Any, *rest: Any) -> bool:
            created.append(call)
            return True

        front = bob.listen(
            auth_user2pass=USERS,
            auth_realm=REALM,
            auth_filter={"INVITE": "FromIsAuthUser"},
            cb_create=create,
        )
        assert isinstance(front, ReceiveChain)
        auth, endpoint = front.objects
        assert isinstance(auth, Authorize) and auth.realm == REALM and endpoint is bob.endpoint
        bob_uri = f"sip:bob@{bob.default_leg().src}"

        finals: list[str] = []
        call = alice.invite(bob_uri, cb_final=lambda status, c, info: finals.append(status))
        drive(loop, lambda: finals, what="alice's final response")
        assert finals == ["OK"] and call.established and len(created) == 1
        call.bye()
        drive(loop, lambda: call.closed, what="the BYE")

        bad: list[tuple[str, int]] = []
        mallory.invite(
            bob_uri, cb_final=lambda status, c, info: bad.append((status, info.get("code", 0)))
        )
        drive(loop, lambda: bad, what="mallory's final response")
        assert bad == [("FAIL", 401)]
        assert len(created) == 1  # the endpoint never saw mallory's INVITE
        assert any("credentials refused" in r.getMessage() for r in caplog.records)
    finally:
        for agent in (alice, mallory, bob):
            agent.cleanup()


def test_simple_create_auth_uses_its_dispatcher(loop: EventLoop) -> None:
    agent = _ua(loop, "bob")
    auth = agent.create_auth(user2pass=USERS, realm=REALM, i_am_proxy=True)
    assert isinstance(auth, Authorize) and auth.dispatcher is agent.dispatcher
    assert auth.i_am_proxy
    assert agent.listen() is agent.endpoint  # without auth_*: the endpoint, as before
    agent.cleanup()


# -------------------------------------------------------------- live peers

AUTH_CLIENT = Path(__file__).parent / "perl" / "auth_client.pl"
REGISTER_AUTH = Path(__file__).parent / "sipp" / "register_auth.xml"
PEER_WAIT = 30.0  # bound for driving netsip while a live peer runs


@pytest.mark.interop
@pytest.mark.parametrize(
    ("password", "expect"), [("wonderland", "REGISTERED 60"), ("guessed", "FAILED")]
)
def test_perl_simple_registers_through_authorize(
    loop: EventLoop, password: str, expect: str
) -> None:
    """Net::SIP::Simple answers the MD5 challenge (it skips SHA-256, offered first)."""
    perl = require_perl_netsip()
    server = make_server(loop)
    try:
        proc = subprocess.Popen(
            [perl, str(AUTH_CLIENT), "--registrar", str(server.addr), "--password", password],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            drive(loop, lambda: proc.poll() is not None, PEER_WAIT, "the Perl client ended")
            out, _ = proc.communicate(timeout=PEER_WAIT)
        finally:
            stop_process(proc)
        lines = out.decode("utf-8", "replace").splitlines()
        assert lines and lines[-1].startswith(expect), lines
        assert proc.returncode == (0 if expect.startswith("REGISTERED") else 1), lines
        assert len(server.passed) == (1 if expect.startswith("REGISTERED") else 0)
        assert server.handled[0] == 401
    finally:
        server.disp.close()


@pytest.mark.interop
def test_sipp_registers_through_authorize(loop: EventLoop, tmp_path: Path) -> None:
    """sipp's [authentication]: 500 registrations, none failed. sipp answers
    the first challenge whatever its algorithm (and knows only MD5), so the
    server offers MD5 alone here."""
    sipp = require_sipp()
    server = make_server(loop, algorithms=("MD5",))
    count = 500
    try:
        proc, stf = start_sipp(
            sipp,
            [
                str(server.addr),
                "-sf", str(REGISTER_AUTH), "-p", str(free_port()),
                "-m", str(count), "-r", "500", "-rp", "1000", "-l", "50",
            ],
            tmp_path,
        )  # fmt: skip
        try:
            drive(loop, lambda: proc.poll() is not None, PEER_WAIT, "sipp ended")
            rc = proc.wait(timeout=PEER_WAIT)
        finally:
            stop_process(proc)
        stats = sipp_stats(stf)
        errors = sipp_errors(tmp_path)
        assert stats["SuccessfulCall(C)"] == str(count), (stats, errors)
        assert stats["FailedCall(C)"] == "0", (stats, errors)
        assert rc == 0, errors
        assert len(server.passed) == count
        assert server.handled.count(401) >= count
    finally:
        server.disp.close()


def test_opaque_is_announced_and_must_come_back(world: World) -> None:
    server, peer = world.server(opaque="op-1"), world.peer()
    ch = first_challenge(server, peer)
    assert ch.opaque == "op-1"
    dropped = Challenge(ch.header, ch.realm, ch.nonce, ch.algorithm, ch.qop, opaque=None)
    creds = [("Authorization", credentials(dropped, "REGISTER"))]
    assert peer.ask(server, request("REGISTER", peer, headers=creds)).code() == 401
    creds = [("Authorization", credentials(ch, "REGISTER", nc=2))]
    assert peer.ask(server, request("REGISTER", peer, cseq=2, headers=creds)).code() == 200
    assert world.register(server).codes() == [200]  # the Endpoint echoes it
