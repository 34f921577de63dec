"""``netsip proxy`` with live peers: Perl Net::SIP::Simple, sipp, Kamailio, netsip's own UAs.

The command runs as a subprocess on a free loopback port (UDP and TCP); its
summary on SIGTERM says which requests went through it. The peers:

- Perl's Net::SIP::Simple (``tests/perl/simple_ua.pl``): bob and alice
  register with digest at ``netsip proxy --domain example.com --users FILE``
  (Perl answers the MD5 challenge, it skips SHA-256), alice calls bob through
  it (answering the 407), sends RTP that bob echoes back, and hangs up; the
  ACK and the BYE go to bob's Contact over the route set, through the proxy;
- sipp: 1,000 distinct users register with ``[authentication]`` (sipp answers
  only the first challenge and knows only MD5: ``--algorithms MD5``); and
  ``-sn uac`` calls ``-sn uas`` through the proxy (``-rsa``: the Request-URI
  names the uas, the proxy forwards it, serving no domain), also with a
  scenario that sends ACK and BYE along the route set;
- Kamailio as the next hop: a netsip UA calls, through ``netsip proxy``,
  a netsip UA registered at Kamailio (``tests/kamailio/registrar_auth.cfg``,
  which challenges the INVITE with 407);
- netsip's own UAs (:class:`netsip.simple.Simple`) register with digest and
  call each other through the proxy, with RTP echo, over UDP, TCP and both.

Every wait is bounded (subprocess timeouts, the peers' ``--timeout``,
:func:`netsip.testing.drive`). Skipped without the peers unless
``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Request
from netsip.simple import Call, Simple
from tests.support import (
    LOOPBACKS,
    AuthKamailio,
    LineReader,
    Listen,
    check_all_successful,
    drive,
    free_udp_tcp_port,
    netsip_command,
    require_kamailio,
    require_perl_netsip,
    require_sipp,
    run_sipp,
    sipp_errors,
    start_sipp,
    stop_process,
)

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
SIMPLE_UA = HERE / "perl" / "simple_ua.pl"
REGISTER_USERS = HERE / "sipp" / "register_auth_users.xml"
UAC_ROUTE_SET = HERE / "sipp" / "uac_route_set.xml"
USERS = "# netsip proxy users\nalice:wonderland\nbob:builder\n"
WAIT = 20.0  # seconds for one step of a peer (its own --timeout is below)
RTP_PACKETS = 50


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture
def started() -> Iterator[list[Listen]]:
    procs: list[Listen] = []
    yield procs
    for p in procs:
        p.close()


@pytest.fixture
def peers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Peer processes to stop at the end of the test, whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop_process(p)


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_proxy(
    started: list[Listen], tmp: Path, *args: str, host: str = "127.0.0.1"
) -> tuple[Listen, int]:
    """``netsip proxy -v -l HOST:0 ARGS`` (UDP and TCP on one port); it and the port."""
    command = [*netsip_command(), "proxy", "-v", "-l", hostport(host, 0), *args]
    proc = Listen([], tmp, command=command)
    started.append(proc)
    addrs = proc.addresses(2)
    assert addrs["udp"].port == addrs["tcp"].port, addrs
    return proc, addrs["udp"].port


def users_file(tmp: Path, text: str = USERS) -> str:
    path = tmp / "users"
    path.write_text(text)
    return str(path)


def stop_proxy(proc: Listen) -> tuple[dict[str, int], int, int, list[str]]:
    """SIGTERM; (requests per method, responses, registered users, the ``-v`` lines)."""
    out = proc.stop(signal.SIGTERM)
    assert proc.returncode == 0, out
    m = re.search(r"^--- netsip proxy: (\d+) requests, (\d+) responses", out, re.M)
    r = re.search(r"^requests: (.*); registered users: (\d+)$", out, re.M)
    assert m is not None and r is not None, out
    methods = {} if r[1] == "-" else {k: int(v) for k, v in (x.split() for x in r[1].split(", "))}
    assert sum(methods.values()) == int(m[1]), out
    verbose = [line for line in out.splitlines() if re.match(r"[A-Z]+ \S+ from ", line)]
    return methods, int(m[2]), int(r[2]), verbose


# ------------------------------------------------------------ Perl Net::SIP::Simple


def perl_ua(peers: list[subprocess.Popen[bytes]], *args: str) -> LineReader:
    """Start ``tests/perl/simple_ua.pl ARGS``; a reader of its output (stderr included)."""
    proc = subprocess.Popen(
        [require_perl_netsip(), str(SIMPLE_UA), "--timeout", "15", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peers.append(proc)
    assert proc.stdout is not None
    return LineReader(proc.stdout.fileno(), timeout=WAIT)


def finished(peers: list[subprocess.Popen[bytes]], out: LineReader, index: int) -> int:
    """Read ``out`` to its end; the exit status of ``peers[index]``."""
    out.wait_for(r"^DONE ")
    out.drain()
    return peers[index].wait(timeout=WAIT)


PASSWORDS = {"alice": "wonderland", "bob": "builder"}


def perl_call(
    peers: list[subprocess.Popen[bytes]], common: list[str], at: str, caller: str, callee: str
) -> str:
    """Perl's ``callee`` registers and listens, ``caller`` registers, calls, unregisters.

    Returns:
        The callee's Contact URI (the remote target of the dialog).
    """
    first = len(peers)
    listener = perl_ua(
        peers, "--mode", "listen", "--user", callee, "--password", PASSWORDS[callee], *common
    )
    ip, port = listener.wait_for(r"^LISTENING (\S+) (\d+)$")[0].groups()
    listener.wait_for(r"^REGISTERED 300$")
    out = perl_ua(
        peers, "--mode", "call", "--user", caller, "--password", PASSWORDS[caller], *common,
        "--proxy", at, "--to", f"sip:{callee}@example.com", "--packets", str(RTP_PACKETS),
    )  # fmt: skip
    assert finished(peers, out, first + 1) == 0, out.lines
    assert finished(peers, listener, first) == 0, listener.lines
    assert out.lines == [
        "REGISTERED 300",
        "FINAL OK 200",
        f"RTP sent={RTP_PACKETS} echoed={RTP_PACKETS}",
        "BYE-DONE 200",
        "UNREGISTERED 0",
        "DONE ok",
    ]
    assert listener.lines[-4:] == ["CALL-CREATED", "ESTABLISHED", "PEER-BYE", "DONE ok"]
    return f"sip:{callee}@{hostport(ip, int(port))}"


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_perl_uas_register_and_call_each_other_with_rtp_echo(
    started: list[Listen],
    peers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    proto: str,
    host: str,
) -> None:
    """Perl's alice and bob register with digest and call each other; RTP is echoed."""
    require_perl_netsip()
    proxy, port = start_proxy(
        started, tmp_path, "--domain", "example.com", "--users", users_file(tmp_path), host=host
    )
    at = hostport(host, port)
    common = ["--proto", proto, "--listen", hostport(host, 0), "--domain", "example.com"]
    common += ["--registrar", at]
    transport = ";transport=tcp" if proto == "tcp" else ""
    bob_uri = perl_call(peers, common, at, "alice", "bob") + transport
    alice_uri = perl_call(peers, common, at, "bob", "alice") + transport
    methods, responses, registered, lines = stop_proxy(proxy)
    # 3 REGISTERs per round (and a 401 to each); each INVITE challenged once (407)
    assert methods.keys() == {"REGISTER", "INVITE", "ACK", "BYE"}, methods
    assert methods["REGISTER"] >= 12 and methods["INVITE"] >= 4, methods
    assert responses >= 4  # the 200s to each INVITE and each BYE
    assert registered == 2  # the listeners (each caller removed its binding)
    # the ACK of the 407 is hop by hop, to the AOR; the ACK of the 200 and the BYE
    # go to the callee's Contact, through the proxy (its Record-Route)
    in_dialog = [tuple(line.split()[:2]) for line in lines if line.startswith(("ACK", "BYE"))]
    assert list(dict.fromkeys(in_dialog)) == [
        ("ACK", "sip:bob@example.com"),
        ("ACK", bob_uri),
        ("BYE", bob_uri),
        ("ACK", "sip:alice@example.com"),
        ("ACK", alice_uri),
        ("BYE", alice_uri),
    ]


def test_perl_ua_with_a_wrong_password_is_refused(
    started: list[Listen], peers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    require_perl_netsip()
    proxy, port = start_proxy(
        started, tmp_path, "--domain", "example.com", "--users", users_file(tmp_path)
    )
    args = ["--mode", "register", "--registrar", f"127.0.0.1:{port}", "--user", "bob"]
    mallory = perl_ua(peers, *args, "--password", "guessed")
    assert finished(peers, mallory, 0) == 1, mallory.lines
    assert mallory.lines == ["FAILED register 401", "DONE failed: not registered"]
    methods, _responses, registered, _lines = stop_proxy(proxy)
    assert methods.keys() == {"REGISTER"} and methods["REGISTER"] >= 2 and registered == 0


# ------------------------------------------------------------ sipp

SIPP_USERS = 1000


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_registers_1000_users_with_digest(
    started: list[Listen], tmp_path: Path, transport: str
) -> None:
    """1,000 distinct users (an -inf file) register with MD5 digest at 200/s: none fails."""
    sipp = require_sipp()
    names = [f"user{n:04d}" for n in range(SIPP_USERS)]
    users = users_file(tmp_path, "".join(f"{u}:pw-{u}\n" for u in names))
    inf = tmp_path / "users.csv"
    inf.write_text(
        "SEQUENTIAL\n"
        + "".join(f"{u};[authentication username={u} password=pw-{u}]\n" for u in names)
    )
    proxy, port = start_proxy(started, tmp_path, "--users", users, "--algorithms", "MD5")
    rc, stats, errors = run_sipp(
        sipp,
        [
            f"127.0.0.1:{port}", "-sf", str(REGISTER_USERS), "-inf", str(inf), "-t", transport,
            "-m", str(SIPP_USERS), "-r", "200",
        ],
        tmp_path,
    )  # fmt: skip
    check_all_successful(rc, stats, errors, SIPP_USERS)
    methods, _responses, registered, _lines = stop_proxy(proxy)
    assert registered == SIPP_USERS
    # one challenge and one answer each (more only if UDP retransmitted under load)
    assert methods.keys() == {"REGISTER"} and methods["REGISTER"] >= 2 * SIPP_USERS


SIPP_CALLS = 100


@pytest.mark.parametrize("transport", ["u1", "t1"])
@pytest.mark.parametrize("scenario", ["uac", "route_set"])
def test_sipp_uac_through_netsip_proxy_to_sipp_uas(
    started: list[Listen], tmp_path: Path, transport: str, scenario: str
) -> None:
    """sipp -sn uac -> netsip proxy -> sipp -sn uas; ``route_set``: ACK and BYE by the route set."""
    sipp = require_sipp()
    proxy, port = start_proxy(started, tmp_path)
    uas_port = free_udp_tcp_port()
    uas, _ = start_sipp(sipp, ["-sn", "uas", "-t", transport, "-p", str(uas_port)], tmp_path)
    try:
        how = ["-sn", "uac"] if scenario == "uac" else ["-sf", str(UAC_ROUTE_SET)]
        rc, stats, errors = run_sipp(
            sipp,
            [
                f"127.0.0.1:{uas_port}", *how, "-rsa", f"127.0.0.1:{port}", "-t", transport,
                "-m", str(SIPP_CALLS), "-r", "100",
            ],
            tmp_path,
        )  # fmt: skip
        check_all_successful(rc, stats, errors + sipp_errors(tmp_path), SIPP_CALLS)
    finally:
        stop_process(uas)
    methods, responses, _registered, lines = stop_proxy(proxy)
    assert methods.keys() == {"INVITE", "ACK", "BYE"}, methods
    assert all(n >= SIPP_CALLS for n in methods.values()), methods
    assert responses >= 3 * SIPP_CALLS  # 180 and 200 to each INVITE, 200 to each BYE
    if scenario == "route_set":
        # the ACK and the BYE went to the uas's Contact, which names the transport
        target = f"sip:127.0.0.1:{uas_port};transport={'UDP' if transport == 'u1' else 'TCP'}"
        acks = {line.split()[1] for line in lines if line.startswith(("ACK", "BYE"))}
        assert acks == {target}, acks


# ------------------------------------------------------------ netsip UAs


def send_echo(ua: Simple, to: str, echoed: list[bytes]) -> tuple[Call, list[str]]:
    """Invite ``to``, send :data:`RTP_PACKETS` distinct payloads; those echoed in ``echoed``."""
    payloads = iter([bytes([n]) * 160 for n in range(1, RTP_PACKETS + 1)])
    final: list[str] = []
    call = ua.invite(
        to,
        init_media=ua.rtp(
            "media_send_recv", lambda *_: next(payloads, None), 1, lambda p, *_: echoed.append(p)
        ),
        cb_final=lambda status, _call, _info: final.append(status),
    )
    return call, final


def answer_echo(ua: Simple, calls: list[Call], invites: list[Request] | None = None) -> None:
    """Answer every call, echoing its RTP; the calls (and their INVITEs) in the lists."""

    def created(call: Call, request: Request, *_rest: object) -> bool:
        calls.append(call)
        if invites is not None:
            invites.append(request)
        return True

    ua.listen(init_media=ua.rtp("media_recv_echo"), cb_create=created)


def talk_and_hang_up(loop: EventLoop, alice: Simple, to: str, bob_calls: list[Call]) -> None:
    """Alice calls ``to``; every RTP payload comes back; she hangs up, the BYE gets through."""
    echoed: list[bytes] = []
    call, final = send_echo(alice, to, echoed)
    drive(loop, lambda: bool(final), WAIT, f"the final response to alice's call to {to}")
    assert final == ["OK"], alice.error()
    drive(loop, lambda: len(echoed) >= RTP_PACKETS, WAIT, "the echo of alice's RTP")
    assert echoed == [bytes([n]) * 160 for n in range(1, RTP_PACKETS + 1)]
    assert len(bob_calls) == 1
    call.bye()
    drive(loop, lambda: call.closed and bob_calls[0].closed, WAIT, "the BYE reached bob")


def ua_at(loop: EventLoop, aor: str, proto: str, proxy_port: int, auth: tuple[str, str]) -> Simple:
    """A UA for ``aor`` on a ``proto`` leg; the proxy is its registrar and outgoing proxy."""
    at = f"sip:127.0.0.1:{proxy_port};transport={proto}"
    return Simple(
        from_=aor, leg=f"{proto}:127.0.0.1:0", loop=loop, outgoing_proxy=at, registrar=at, auth=auth
    )


@pytest.mark.parametrize(("a_proto", "b_proto"), [("udp", "udp"), ("tcp", "tcp"), ("udp", "tcp")])
def test_netsip_uas_register_and_call_through_netsip_proxy(
    loop: EventLoop, started: list[Listen], tmp_path: Path, a_proto: str, b_proto: str
) -> None:
    """Simple UAs register with digest (SHA-256) and call each other, with RTP echo."""
    proxy, port = start_proxy(
        started, tmp_path, "--domain", "example.com", "--users", users_file(tmp_path)
    )
    alice = ua_at(loop, "sip:alice@example.com", a_proto, port, auth=("alice", "wonderland"))
    bob = ua_at(loop, "sip:bob@example.com", b_proto, port, auth=("bob", "builder"))
    try:
        assert bob.register() is not None, bob.error()
        assert alice.register() is not None, alice.error()
        a_calls: list[Call] = []
        b_calls: list[Call] = []
        answer_echo(bob, b_calls)
        answer_echo(alice, a_calls)
        talk_and_hang_up(loop, alice, "sip:bob@example.com", b_calls)
        talk_and_hang_up(loop, bob, "sip:alice@example.com", a_calls)
    finally:
        alice.cleanup()
        bob.cleanup()
    methods, _responses, registered, lines = stop_proxy(proxy)
    assert registered == 2
    # each REGISTER and each INVITE challenged once; both BYEs through the proxy
    assert methods["REGISTER"] >= 4 and methods["INVITE"] >= 4, methods
    assert methods["ACK"] >= 4 and methods["BYE"] >= 2, methods
    byes = [line for line in lines if line.startswith("BYE ")]
    assert any(" from " + a_proto in b for b in byes) and any(" from " + b_proto in b for b in byes)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_netsip_proxy_to_kamailio_to_a_registered_netsip_ua(
    loop: EventLoop, started: list[Listen], tmp_path: Path, proto: str
) -> None:
    """alice -> netsip proxy -> Kamailio (registrar, 407) -> bob registered there; RTP echo."""
    require_kamailio()
    kam = AuthKamailio(tmp_path)
    try:
        proxy, port = start_proxy(started, tmp_path)  # serves no domain: forwards everything
        bob = Simple(
            from_=f"<sip:bob@127.0.0.1:{kam.port}>",
            leg=f"{proto}:127.0.0.1:0",
            loop=loop,
            auth=("bob", "bob-secret"),
        )
        alice = Simple(
            from_=f"<sip:alice@127.0.0.1:{kam.port}>",
            leg=f"{proto}:127.0.0.1:0",
            loop=loop,
            outgoing_proxy=f"sip:127.0.0.1:{port};transport={proto}",
            auth=("alice", "alice-secret"),
        )
        try:
            assert bob.register(registrar=kam.uri(proto), expires=600) is not None, bob.error()
            b_calls: list[Call] = []
            invites: list[Request] = []
            answer_echo(bob, b_calls, invites)
            talk_and_hang_up(loop, alice, kam.uri(proto, "bob"), b_calls)
        finally:
            alice.cleanup()
            bob.cleanup()
    except BaseException:
        print(kam.log.read_text()[-3000:])
        raise
    finally:
        kam.close()
    methods, responses, registered, lines = stop_proxy(proxy)
    assert registered == 0
    # Kamailio's 407 and the INVITE with credentials, each ACKed; the BYE by the route set
    assert methods.keys() == {"INVITE", "ACK", "BYE"}, methods
    assert methods["INVITE"] >= 2 and methods["ACK"] >= 2, methods
    assert responses >= 4  # 407, 200 to the INVITE, 200 to the BYE (and 100s, 180)
    assert all(f" from {proto}:" in line for line in lines), lines
    # the route set bob got: Kamailio's Record-Route on top of netsip's
    rr = invites[0].get_headers("record-route")
    assert len(rr) == 2 and f"127.0.0.1:{kam.port}" in rr[0], rr
    assert re.search(rf"127\.0\.0\.1:{port}\b.*;lr", rr[1]), rr
