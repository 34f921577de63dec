"""Web phones on ``netsip proxy`` over WebSocket (RFC 7118): JsSIP and SIP.js
in Node, JsSIP in a real headless Chromium.

``netsip proxy`` runs as a subprocess listening on UDP, ``ws:`` and ``wss:``
(a certificate of a test CA) of 127.0.0.1, with digest for example.com. The
netsip user agent (:class:`~netsip.simple.Simple`, in this process) sits on
UDP behind it. The web phones are the npm packages of ``tests/webrtc``,
installed once per run into a temporary folder (:mod:`tests.webrtc_support`).

In each direction the call is established, a DTMF digit goes by INFO
(``application/dtmf-relay``), one side hangs up, and the web phone
unregisters. The netsip user agent calling a web phone shows the flow
routing: the phone's Contact is ``xxx.invalid`` and accepts no connection, so
the proxy reaches it only over the WebSocket connection it registered on.

Node has no RTCPeerConnection: ``tests/webrtc/node_env.js`` stands in with a
fixed RTP/AVP PCMU SDP and no media. Chromium offers real WebRTC SDP (ICE,
DTLS-SRTP); the netsip side answers it with a hand-made SDP that the browser
accepts (:func:`webrtc_answer`), and no media flows between them: signalling
is tested. Two browser phones calling each other through the proxy do have
media (ICE connects, RTP arrives): the proxy passes their SDP through.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Request, Response
from netsip.simple import Call, Simple
from netsip.testing import drive, open_fds
from netsip.util import Addr
from tests.support import Listen, netsip_command, write_certs
from tests.webrtc_support import (
    PEER_TIMEOUT,
    Chromium,
    NodePackages,
    NodePeer,
    PageServer,
    build_bundle,
    install_packages,
    page_server,
)

pytestmark = pytest.mark.interop

DOMAIN = "example.com"
SCRIPTS = {"jssip": "jssip_peer.js", "sipjs": "sipjs_peer.mjs"}
LIBS = [pytest.param("jssip", id="JsSIP"), pytest.param("sipjs", id="SIP.js")]
TRANSPORTS = ["ws", "wss"]
DIRECTIONS = ["out", "in"]


def user_pair(direction: str, lib: str, transport: str) -> tuple[str, str]:
    """The web phone's and the netsip UA's users of one test: each test its
    own, so that no test sees another one's bindings."""
    return f"{lib}-{transport}-{direction}", f"ua-{lib}-{transport}-{direction}"


USERS = [
    *(
        u
        for d, lib, t in itertools.product(DIRECTIONS, SCRIPTS, TRANSPORTS)
        for u in user_pair(d, lib, t)
    ),
    "browser",
    "browser2",
    "browser3",
    "bob",
]


def password(user: str) -> str:
    return f"pw-{user}"


@dataclass
class Proxy:
    """``netsip proxy`` on UDP, WS and WSS of 127.0.0.1."""

    proc: Listen
    addrs: dict[str, Addr]
    ca: str

    def ws_url(self, proto: str) -> str:
        a = self.addrs[proto]
        return f"{proto}://{a.addr}:{a.port}"


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> NodePackages:
    """The npm packages, installed once per test run."""
    return install_packages(tmp_path_factory.mktemp("webrtc-npm"))


#: the Node tests run through both kinds of ``netsip proxy``
KINDS = pytest.mark.parametrize("proxy", ["stateless", "stateful"], indirect=True)


@pytest.fixture(scope="module")
def proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """``netsip proxy`` (``--stateful`` with the parameter "stateful")."""
    kind = getattr(request, "param", "stateless")
    tmp = tmp_path_factory.mktemp(f"webrtc-proxy-{kind}")
    certs = write_certs(tmp)
    users = tmp / "users"
    users.write_text("".join(f"{u}:{password(u)}\n" for u in USERS))
    proc = Listen(
        [],
        tmp,
        command=[
            *netsip_command(),
            "proxy",
            "-l",
            "udp:127.0.0.1:0",
            "-l",
            "ws:127.0.0.1:0",
            "-l",
            "wss:127.0.0.1:0",
            "--tls-cert",
            str(certs["server_cert"]),
            "--tls-key",
            str(certs["server_key"]),
            "--domain",
            DOMAIN,
            "--users",
            str(users),
            *(["--stateful"] if kind == "stateful" else []),
        ],
    )
    try:
        found = proc.err.wait_for(r"listening on (udp|ws|wss):(\S+)$", 3)
        addrs = {m.group(1): Addr.parse(m.group(2)) for m in found}
        yield Proxy(proc, addrs, str(certs["ca"]))
        proc.stop(signal.SIGTERM)
        assert proc.returncode == 0, proc.err.lines
        assert not [line for line in proc.err.lines if "Traceback" in line], proc.err.lines
    finally:
        proc.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


@dataclass
class Seen:
    """What the netsip user agent saw of its call."""

    calls: list[Call] = field(default_factory=list)
    established: int = 0
    infos: list[bytes] = field(default_factory=list)
    byes: int = 0

    def digits(self) -> list[str]:
        """The DTMF digits of the INFO requests (``Signal=``, RFC 2976 + dtmf-relay)."""
        found = (re.search(rb"Signal=\s*([0-9A-D*#])", b) for b in self.infos)
        return [m.group(1).decode() for m in found if m]

    def params(self) -> dict[str, Any]:
        """The call parameters that count what happens."""

        def established(*_args: object) -> None:
            self.established += 1

        def info(_call: Call, request: Request) -> None:
            self.infos.append(request.body())

        def bye(*_args: object) -> None:
            self.byes += 1

        return {"cb_established": established, "cb_info": info, "recv_bye": bye}


def netsip_ua(loop: EventLoop, proxy: Proxy, user: str) -> Simple:
    """A netsip user agent of ``user`` on UDP, registered at the proxy."""
    udp = proxy.addrs["udp"]
    hostport = f"{udp.addr}:{udp.port}"
    ua = Simple(
        from_=f"sip:{user}@{DOMAIN}",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=f"sip:{hostport}",
        registrar=f"sip:{hostport}",
        auth=(user, password(user)),
    )
    assert ua.register() is not None, ua.error()
    return ua


def peer_config(proxy: Proxy, transport: str, user: str, **kw: object) -> dict[str, object]:
    return {
        "ws": proxy.ws_url(transport),
        "uri": f"sip:{user}@{DOMAIN}",
        "password": password(user),
        **kw,
    }


def check_registered(peer: NodePeer) -> None:
    """The web phone registered with a Contact it cannot be reached at (RFC 7118 5)."""
    contact = peer.event("registered")["contact"]
    assert ".invalid" in contact, contact


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("lib", LIBS)
@KINDS
def test_web_phone_calls_netsip(
    packages: NodePackages, proxy: Proxy, loop: EventLoop, lib: str, transport: str
) -> None:
    """The web phone registers over WS/WSS, calls the netsip UA on UDP, sends
    DTMF by INFO, hangs up; the netsip UA answers and sees the digit and BYE."""
    js, ua_user = user_pair("out", lib, transport)
    before = open_fds()
    ua = netsip_ua(loop, proxy, ua_user)
    seen = Seen()

    def created(call: Call, *_rest: object) -> bool:
        seen.calls.append(call)
        return True

    ua.listen(cb_create=created, **seen.params())
    config = peer_config(
        proxy, transport, js, mode="call", target=f"sip:{ua_user}@{DOMAIN}", dtmf="5", hangup="self"
    )
    peer = NodePeer(packages, SCRIPTS[lib], loop, config, ca=proxy.ca)
    try:
        status = peer.finish()
        assert status == 0, peer.describe()
        names = peer.names()
        for step in ("registered", "confirmed", "dtmf_sent", "hangup", "ended", "unregistered"):
            assert step in names, peer.describe()
        check_registered(peer)
        drive(loop, lambda: seen.byes == 1, what="the web phone's BYE at the netsip UA")
        assert len(seen.calls) == 1 and seen.established == 1
        assert seen.digits() == ["5"], seen.infos
        assert seen.calls[0].closed
    finally:
        peer.close()
        ua.cleanup()
    assert open_fds() == before


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("lib", LIBS)
@KINDS
def test_netsip_calls_web_phone(
    packages: NodePackages, proxy: Proxy, loop: EventLoop, lib: str, transport: str
) -> None:
    """The netsip UA on UDP calls the web phone registered over WS/WSS: the
    proxy reaches it over its connection (its Contact is ``.invalid``); the
    phone answers and sends DTMF by INFO, the netsip UA hangs up."""
    js, ua_user = user_pair("in", lib, transport)
    before = open_fds()
    ua = netsip_ua(loop, proxy, ua_user)
    config = peer_config(proxy, transport, js, mode="answer", dtmf="3", hangup="peer")
    peer = NodePeer(packages, SCRIPTS[lib], loop, config, ca=proxy.ca)
    try:
        peer.wait_for("registered")
        check_registered(peer)
        seen = Seen()
        final: list[str] = []
        call = ua.invite(
            f"sip:{js}@{DOMAIN}",
            cb_final=lambda status, _c, _info: final.append(status),
            **seen.params(),
        )
        drive(loop, lambda: bool(final), seconds=PEER_TIMEOUT, what="the web phone's answer")
        assert final == ["OK"], (call.error, peer.describe())
        drive(loop, lambda: bool(seen.infos), seconds=10, what="the web phone's DTMF INFO")
        assert seen.digits() == ["3"], seen.infos
        call.bye()
        drive(loop, lambda: call.closed, what="the BYE to the web phone")
        assert peer.finish() == 0, peer.describe()
        names = peer.names()
        for step in ("incoming", "confirmed", "dtmf_sent", "ended", "unregistered"):
            assert step in names, peer.describe()
        assert peer.event("incoming")["from"] == f"sip:{ua_user}@{DOMAIN}"
    finally:
        peer.close()
        ua.cleanup()
    assert open_fds() == before


def test_wss_certificate_is_checked(packages: NodePackages, proxy: Proxy, loop: EventLoop) -> None:
    """Without the test CA the web phone refuses the proxy's certificate: the
    WSS tests above run over verified TLS."""
    config = peer_config(proxy, "wss", "sipjs-wss-out", mode="call", target=f"sip:bob@{DOMAIN}")
    peer = NodePeer(packages, SCRIPTS["sipjs"], loop, config)
    try:
        assert peer.finish() == 1, peer.describe()
        assert "registered" not in peer.names()
        assert "WebSocket closed" in peer.event("failed")["why"], peer.describe()
    finally:
        peer.close()


# ------------------------------------------------------------ the real browser


def webrtc_answer(offer: str, ufrag: str = "nsip", pwd: str = "netsipnetsipnetsipnetsip") -> str:
    """A WebRTC SDP answer to Chromium's ``offer`` that it accepts, for signalling only.

    One audio stream (the offer's first m-line, its mid), PCMU, RTCP muxed,
    ICE credentials, a (made-up) DTLS fingerprint and ``setup:active``
    (RFC 8842 5.3: the answerer picks active or passive). No media flows: the
    ICE checks would fail after the test has hung up.
    """
    m = re.search(r"^m=audio \d+ (\S+) ", offer, re.M)
    mid = re.search(r"^a=mid:(\S+)", offer, re.M)
    assert m is not None and mid is not None, offer
    fingerprint = ":".join(["AB"] * 32)
    lines = [
        "v=0",
        "o=- 4242 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mid.group(1)}",
        "a=msid-semantic: WMS",
        f"m=audio 9 {m.group(1)} 0",
        "c=IN IP4 127.0.0.1",
        "a=rtcp:9 IN IP4 127.0.0.1",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:active",
        f"a=mid:{mid.group(1)}",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:0 PCMU/8000",
    ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class BrowserCallee:
    """The netsip side of the browser's call: an application on the netsip
    UA's endpoint that answers an INVITE with :func:`webrtc_answer` (netsip's
    own SDP offers RTP/AVP, which a browser refuses), takes INFO and BYE."""

    offers: list[str] = field(default_factory=list)
    acked: int = 0
    infos: list[bytes] = field(default_factory=list)
    byes: int = 0
    contact: str = ""

    def __call__(
        self, endpoint: Endpoint, ctx: Context, request: object, leg: Leg, from_: Addr
    ) -> None:
        if not isinstance(request, Request) or request.method() != "INVITE":
            return
        offer = request.body().decode()
        self.offers.append(offer)
        ctx.set_callback(self.in_dialog)
        response = request.create_response(
            200,
            headers={"contact": self.contact, "content-type": "application/sdp"},
            body=webrtc_answer(offer).encode(),
        )
        endpoint.new_response(ctx, response, leg, from_)

    def in_dialog(  # noqa: PLR0917  (the Endpoint's callback convention)
        self,
        endpoint: Endpoint,
        ctx: Context,
        err: int,
        code: int,
        packet: object,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        del err, code
        if not isinstance(packet, Request):
            return
        method = packet.method()
        if method == "ACK":
            self.acked += 1
            return
        if method == "INFO":
            self.infos.append(packet.body())
        elif method == "BYE":
            self.byes += 1
        endpoint.new_response(ctx, packet.create_response(200), leg, from_)
        if method == "BYE":
            endpoint.close_context(ctx)


BROWSER_TIMEOUT = 45.0  # one page's whole run in Chromium, on a loaded machine


@pytest.fixture(scope="session")
def bundle(packages: NodePackages) -> Path:
    """JsSIP for the browser, bundled once per run."""
    return build_bundle(packages)


def run_page(  # noqa: PLR0917  (a test helper: the page and its surroundings)
    loop: EventLoop,
    bundle: Path,
    page: str,
    cfg: dict[str, object],
    profile: Path,
    step: Callable[[PageServer], bool] | None = None,
) -> PageServer:
    """Serve ``page`` (and its script, and the bundle) to headless Chromium
    with ``cfg``, run the netsip loop until the page has unregistered (or
    failed, or the browser ended), stop the browser; the server with the events.

    ``step`` runs after each loop cycle with the events so far (the test's
    moves in the call); the run ends early when it returns True.
    """
    script = page.replace(".html", ".js")
    with page_server(bundle.parent, (page, script, bundle.name)) as server:
        url = f"{server.url}{page}#{urllib.parse.quote(json.dumps(cfg))}"
        browser = Chromium(url, profile)
        try:
            try:
                drive(
                    loop,
                    lambda: (
                        (step is not None and step(server))
                        or bool({"unregistered", "failed"} & set(server.names()))
                        or browser.proc.poll() is not None
                    ),
                    seconds=BROWSER_TIMEOUT,
                    what=f"the browser's run of {page}",
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}: {server.events()}") from None
            names = server.names()
            assert "failed" not in names and "unregistered" in names, (
                server.events(),
                browser.log(),
            )
        finally:
            browser.close()
    return server


def test_browser_calls_netsip(bundle: Path, proxy: Proxy, loop: EventLoop, tmp_path: Path) -> None:
    """Headless Chromium with JsSIP (bundled by esbuild) registers over WSS,
    calls the netsip UA with real WebRTC SDP, sends DTMF by INFO, hangs up."""
    before = open_fds()
    ua = netsip_ua(loop, proxy, "bob")
    callee = BrowserCallee(contact=f"<sip:bob@{ua.dispatcher.get_legs()[0].src}>")
    ua.endpoint.set_application(callee)
    cfg = peer_config(
        proxy, "wss", "browser", mode="call", target=f"sip:bob@{DOMAIN}", dtmf="9", hangup="self"
    )
    try:
        server = run_page(loop, bundle, "page.html", cfg, tmp_path / "chromium-profile")
    finally:
        ua.cleanup()
    assert open_fds() == before
    names = server.names()
    for step in ("loaded", "registered", "confirmed", "dtmf_sent", "hangup", "ended"):
        assert step in names, server.events()
    assert ".invalid" in server.event("registered")["contact"]
    assert server.event("local_sdp") == {
        "event": "local_sdp",
        "type": "offer",
        "profile": "UDP/TLS/RTP/SAVPF",
    }
    assert server.event("confirmed")["signalingState"] == "stable"
    assert server.event("ended")["originator"] == "local"
    assert len(callee.offers) == 1 and "a=fingerprint:" in callee.offers[0]
    assert callee.acked == 1 and callee.byes == 1
    assert [re.search(rb"Signal=\s*(\S)", b) is not None for b in callee.infos] == [True]
    assert b"Signal=9" in callee.infos[0].replace(b" ", b"")


@dataclass
class BrowserCaller:
    """The netsip side calling the browser, on the netsip UA's endpoint: an
    INVITE without SDP (RFC 3261 13.2.1), so that the browser offers WebRTC
    media in its 2xx; the ACK carries :func:`webrtc_answer`."""

    codes: list[int] = field(default_factory=list)
    offers: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __call__(  # noqa: PLR0917  (the Endpoint's callback convention)
        self,
        endpoint: Endpoint,
        ctx: Context,
        err: int,
        code: int,
        packet: object,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        if isinstance(packet, Request):
            self.requests.append(packet.method())  # (the browser sends none here)
            return
        if not isinstance(packet, Response):
            return
        self.codes.append(code)
        if packet.method() == "INVITE" and 200 <= code < 300 and ctx.ack is not None and not err:
            offer = packet.body().decode()
            self.offers.append(offer)
            # the Endpoint sends the ACK after this callback: our answer goes in it
            ctx.ack.set_header("content-type", "application/sdp")
            ctx.ack.set_body(webrtc_answer(offer).encode())


def test_netsip_calls_browser(bundle: Path, proxy: Proxy, loop: EventLoop, tmp_path: Path) -> None:
    """The netsip UA on UDP calls the browser registered over WSS (``.invalid``
    Contact: the proxy uses its flow) with a delayed offer; the browser offers
    WebRTC in the 200, takes the answer from the ACK, gets a DTMF INFO, and
    the netsip side hangs up."""
    before = open_fds()
    ua = netsip_ua(loop, proxy, "bob")
    endpoint = ua.endpoint
    caller = BrowserCaller()
    cfg = peer_config(proxy, "wss", "browser3", mode="answer")
    profile = tmp_path / "chromium-profile"
    ctx: list[Context] = []
    sent: list[str] = []

    def call_when_registered(server: PageServer) -> bool:
        """Call once registered, INFO once confirmed, BYE once the digit is in."""
        names = server.names()
        if "registered" in names and not ctx:
            ctx.append(
                endpoint.invite(
                    {
                        "from_": f"<sip:bob@{DOMAIN}>",
                        "to": f"<sip:browser3@{DOMAIN}>",
                        "contact": f"<sip:bob@{ua.dispatcher.get_legs()[0].src}>",
                        "auth": ("bob", password("bob")),
                    },
                    caller,
                )
            )
        if "confirmed" in names and "INFO" not in sent:
            sent.append("INFO")
            endpoint.new_request(
                "INFO",
                ctx[0],
                caller,
                body=b"Signal=2\r\nDuration=100\r\n",
                headers={"content-type": "application/dtmf-relay"},
            )
        if "dtmf_received" in names and caller.codes.count(200) == 2 and "BYE" not in sent:
            sent.append("BYE")
            endpoint.new_request("BYE", ctx[0], caller)
        return False

    try:
        server = run_page(loop, bundle, "page.html", cfg, profile, step=call_when_registered)
    finally:
        ua.cleanup()
    assert open_fds() == before
    names = server.names()
    for step in ("registered", "incoming", "confirmed", "dtmf_received", "ended"):
        assert step in names, server.events()
    assert ".invalid" in server.event("registered")["contact"]
    assert server.event("incoming") == {
        "event": "incoming",
        "from": f"sip:bob@{DOMAIN}",
        "offer": False,
    }
    assert server.event("local_sdp")["type"] == "offer"  # in the browser's 200
    assert server.event("remote_sdp")["type"] == "answer"  # from our ACK
    assert server.event("confirmed")["signalingState"] == "stable"
    assert [e["tone"] for e in server.events() if e["event"] == "dtmf_received"] == ["2"]
    assert server.event("ended")["originator"] == "remote"
    assert len(caller.offers) == 1 and "UDP/TLS/RTP/SAVPF" in caller.offers[0]
    assert caller.codes.count(200) == 3, caller.codes  # INVITE, INFO, BYE
    assert caller.requests == []


def test_two_browser_phones_call_with_media(
    bundle: Path, proxy: Proxy, loop: EventLoop, tmp_path: Path
) -> None:
    """Two JsSIP phones in Chromium, both over WSS: one calls the other through
    the proxy (the callee's Contact is ``.invalid``: reached over its flow),
    ICE connects and RTP flows between them (the proxy passes the SDP
    through), DTMF by INFO arrives, the caller hangs up."""
    cfg: dict[str, object] = {
        "ws": proxy.ws_url("wss"),
        "caller": {"uri": f"sip:browser@{DOMAIN}", "password": password("browser")},
        "callee": {"uri": f"sip:browser2@{DOMAIN}", "password": password("browser2")},
        "dtmf": "4",
    }
    server = run_page(loop, bundle, "pair.html", cfg, tmp_path / "chromium-profile")
    names = server.names()
    for step in ("callee_registered", "caller_registered", "incoming", "confirmed", "media"):
        assert step in names, server.events()
    assert ".invalid" in server.event("callee_registered")["contact"]
    assert server.event("incoming")["from"] == f"sip:browser@{DOMAIN}"
    media = server.event("media")
    assert media["packets"] > 0, media
    assert server.event("dtmf_received")["tone"] == "4"
    assert server.event("caller_ended")["originator"] == "local"
    assert server.event("callee_ended")["originator"] == "remote"
