"""Interop with Perl's Net::SIP (the library netsip ports) as the live peer.

``tests/perl/netsip_peer.pl`` drives Net::SIP::Leg and Net::SIP::Dispatcher:

* as a client it sends OPTIONS to a netsip :class:`SocketPool` responder;
* as a server it answers the OPTIONS a netsip pool sends it.

Over UDP, TCP and TLS, on IPv4 and IPv6 loopback; over TLS also with client
certificates (``verify_client``) and refused handshakes. TLS certificates come
from a test CA made by trustme for this module. The netsip event loop is
driven until the Perl process closes its stdout (the loop watches the pipe),
so nothing sleeps, and every wait is bounded.
"""

from __future__ import annotations

import errno
import gzip
import socket
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Request, Response
from netsip.socketpool import SocketPool
from netsip.util import Addr, Proto
from tests.support import (
    LOOPBACKS,
    Listen,
    PipeReader,
    missing_peer,
    require_perl_netsip,
    start_perl_peer,
    summary_counts,
)

pytestmark = pytest.mark.interop

# Upper bounds for one exchange; a healthy run takes well under a second.
PERL_TIMEOUT = 20.0
LOOP_TIMEOUT = 30.0
COUNT = 3


PROTOS: list[Proto] = ["udp", "tcp", "tls"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA: server certificate for localhost/127.0.0.1/::1, a client one."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    untrusted_cert: str  # localhost/127.0.0.1/::1, but from another CA
    untrusted_key: str


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("interop-tls")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    names: list[str] = []
    for name, cert in (
        ("server", ca.issue_cert("localhost", "127.0.0.1", "::1")),
        ("client", ca.issue_cert("perl-or-netsip.example.org")),
        ("untrusted", other.issue_cert("localhost", "127.0.0.1", "::1")),
    ):
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}-cert.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{name}-key.pem"))
        names += [str(d / f"{name}-cert.pem"), str(d / f"{name}-key.pem")]
    return TlsFiles(str(d / "ca.pem"), *names)


def _pool_tls(
    proto: Proto, files: TlsFiles, client_cert: bool = False, **more: object
) -> dict[str, object] | None:
    """The netsip pool's tls options: server certificate (or client one), trusting the CA."""
    if proto != "tls":
        return None
    cert, key = (files.client_cert, files.client_key) if client_cert else (files.cert, files.key)
    return {"certfile": cert, "keyfile": key, "cafile": files.ca, **more}


def _perl_tls(proto: Proto, files: TlsFiles, *extra: str) -> list[str]:
    """netsip_peer.pl's TLS arguments: server certificate, trusting the CA."""
    if proto != "tls":
        return []
    return ["--cert", files.cert, "--key", files.key, "--ca", files.ca, *extra]


def _master(proto: Proto, host: str) -> socket.socket:
    """A pool's master: a bound UDP socket or a listening TCP socket on port 0."""
    family = Addr.parse((host, 0)).family
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    try:
        sock.bind((host, 0))
        if proto != "udp":
            sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _run_loop(loop: EventLoop, until: Callable[[], bool], timeout: float = LOOP_TIMEOUT) -> None:
    """Run ``loop`` until ``until()`` is true; the timeout bounds it."""
    loop.loop(timeout, until)
    assert until(), f"not done after {timeout}s"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Reap ``proc``, killing it if it is still running, and close its stdout."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()


def _run_perl_client(loop: EventLoop, *args: str) -> tuple[int, PipeReader]:
    """Run netsip_peer.pl with ``args``, driving ``loop`` until its output ends."""
    proc = start_perl_peer(*args)
    try:
        assert proc.stdout is not None
        out = PipeReader(loop, proc.stdout.fileno())
        _run_loop(loop, lambda: bool(out.eof))
        rc = proc.wait(timeout=10)
    finally:
        _stop(proc)
    return rc, out


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("proto", PROTOS)
def test_perl_client_to_netsip_responder(proto: Proto, host: str, tls_files: TlsFiles) -> None:
    """Perl's Dispatcher sends OPTIONS; a netsip pool answers each with 200."""
    require_perl_netsip(tls=proto == "tls")
    loop = EventLoop()
    requests: list[tuple[Request, Addr]] = []
    delivered: list[int] = []
    with SocketPool(proto, _master(proto, host), tls=_pool_tls(proto, tls_files)) as pool:

        def on_packet(packet: Request | Response, from_: Addr) -> None:
            if isinstance(packet, Request):
                requests.append((packet, from_))
                if packet.method() != "ACK":
                    pool.sendto(packet.create_response(200), from_, delivered.append)

        pool.attach_eventloop(loop, on_packet)
        port = Addr.parse(pool.master().getsockname()).port
        to = str(Addr.parse((host, port)))
        rc, out = _run_perl_client(
            loop,
            "--mode", "client", "--proto", proto, "--to", to,
            "--count", str(COUNT), "--timeout", str(PERL_TIMEOUT),
            *_perl_tls(proto, tls_files),
        )  # fmt: skip
        loop.close()

    lines = out.lines()
    assert rc == 0, lines
    assert lines[-1] == f"DONE ok={COUNT} failed=0", lines
    answered = [line.split() for line in lines if line.startswith("RESPONSE ")]
    assert [a[1] for a in answered] == ["200"] * COUNT

    # what netsip saw: COUNT OPTIONS from Perl's leg, in order. Over UDP a
    # loaded machine may make Perl's Dispatcher retransmit (T1 = 500 ms,
    # RFC 3261 17.1.2.2): keep the first copy of each.
    if proto == "udp":
        first: dict[tuple[str | None, str | None], tuple[Request, Addr]] = {}
        for req, from_ in requests:
            first.setdefault((req.callid(), req.cseq()), (req, from_))
        requests = list(first.values())
    assert len(requests) == COUNT
    assert [req.method() for req, _ in requests] == ["OPTIONS"] * COUNT
    assert [req.callid() for req, _ in requests] == [a[2] for a in answered]
    assert [req.cseq() for req, _ in requests] == [f"{i} OPTIONS" for i in range(1, COUNT + 1)]
    for req, from_ in requests:
        assert from_.proto == proto
        assert from_.addr == Addr.parse((host, 0)).addr
        via = req.get_headers("via")
        assert len(via) == 1
        assert via[0].upper().startswith(f"SIP/2.0/{proto.upper()} ")
        assert "branch=z9hG4bK" in via[0]
    if proto == "udp":
        assert delivered == []  # UDP callbacks report failures only
    else:
        assert delivered == [0] * COUNT
        # every request of the one Perl connection came from the same port
        assert len({from_ for _, from_ in requests}) == 1


def _options(proto: Proto, local: Addr, dst: Addr, seq: int, callid: str) -> Request:
    scheme = "sips" if proto == "tls" else "sip"
    uri = f"{scheme}:perl@{dst}" + ("" if proto == "udp" else f";transport={proto}")
    return Request(
        "OPTIONS",
        uri,
        [
            ("Via", f"SIP/2.0/{proto.upper()} {local};branch=z9hG4bK{callid[:12]}{seq}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:netsip@{local}>;tag=nt{seq}"),
            ("To", f"<{uri}>"),
            ("Call-ID", callid),
            ("CSeq", f"{seq} OPTIONS"),
            ("Content-Length", "0"),
        ],
    )


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("proto", PROTOS)
def test_netsip_client_to_perl_server(proto: Proto, host: str, tls_files: TlsFiles) -> None:
    """A netsip pool sends OPTIONS to Perl's Dispatcher and receives its 200s."""
    require_perl_netsip(tls=proto == "tls")
    loop = EventLoop()
    listen = str(Addr.parse((host, 0)))
    proc = start_perl_peer(
        "--mode", "server", "--proto", proto, "--listen", listen,
        "--count", str(COUNT), "--timeout", str(PERL_TIMEOUT),
        *_perl_tls(proto, tls_files),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        out = PipeReader(loop, proc.stdout.fileno())
        _run_loop(loop, out.has_line)
        first = out.lines()[0].split()
        assert first[0] == "LISTENING", out.lines()
        dst = Addr.parse((first[1], int(first[2])))

        responses: list[tuple[Response, Addr]] = []
        sent: list[int] = []

        def on_packet(packet: Request | Response, from_: Addr) -> None:
            if isinstance(packet, Response):
                responses.append((packet, from_))

        with SocketPool(proto, _master(proto, host), tls=_pool_tls(proto, tls_files)) as pool:
            pool.attach_eventloop(loop, on_packet)
            local = Addr.parse(pool.master().getsockname())
            requests = [
                _options(proto, local, dst, seq, f"{uuid.uuid4().hex}@netsip")
                for seq in range(1, COUNT + 1)
            ]
            for req in requests:
                pool.sendto(req, dst, sent.append)
            _run_loop(loop, lambda: len(responses) >= COUNT)
            # the Perl server exits after answering COUNT requests
            _run_loop(loop, lambda: bool(out.eof))
        rc = proc.wait(timeout=10)
    finally:
        _stop(proc)
        loop.close()

    lines = out.lines()
    assert rc == 0, lines
    assert lines[-1] == f"DONE answered={COUNT}", lines
    by_callid = {resp.callid(): resp for resp, _ in responses}
    assert len(responses) == COUNT
    for req in requests:
        resp = by_callid[req.callid()]
        assert resp.code() == 200
        assert resp.cseq() == req.cseq()
        assert resp.method() == "OPTIONS"
        # Perl's Leg adds Allow and Supported to 2xx answers to OPTIONS
        assert "OPTIONS" in resp.get_headers("allow")
        # our Via came back, with Perl's received/rport processing at most
        assert resp.get_headers("via")[0].startswith(req.get_headers("via")[0].split(";")[0])
    for _, from_ in responses:
        assert from_.proto == proto
        # UDP: from the Perl leg's socket; TCP: over the connection we opened to it
        assert (from_.addr, from_.port) == (dst.addr, dst.port)
    if proto == "udp":
        assert sent == []
    else:
        assert sent == [0] * COUNT
    # Perl saw the requests with the Call-IDs we sent
    seen = [line.split() for line in lines if line.startswith("REQUEST ")]
    assert sorted(s[2] for s in seen) == sorted(str(r.callid()) for r in requests)
    assert all(s[1] == "OPTIONS" and s[-1].startswith(f"{proto}:") for s in seen)


# --------------------------------------------------------------------- TLS specifics


@pytest.mark.parametrize("host", LOOPBACKS)
def test_perl_client_certificate_to_netsip_verify_client(host: str, tls_files: TlsFiles) -> None:
    """Mutual TLS: netsip requires a client certificate, Perl presents one."""
    require_perl_netsip(tls=True)
    loop = EventLoop()
    got: list[Addr] = []
    tls = _pool_tls("tls", tls_files, verify_client=1)
    with SocketPool("tls", _master("tls", host), tls=tls) as pool:

        def on_packet(packet: Request | Response, from_: Addr) -> None:
            if isinstance(packet, Request):
                got.append(from_)
                pool.sendto(packet.create_response(200), from_)

        pool.attach_eventloop(loop, on_packet)
        to = str(Addr.parse((host, pool.master().getsockname()[1])))
        rc, out = _run_perl_client(
            loop,
            "--mode", "client", "--proto", "tls", "--to", to, "--count", "2",
            "--timeout", str(PERL_TIMEOUT), "--cert", tls_files.client_cert,
            "--key", tls_files.client_key, "--ca", tls_files.ca, "--host", "localhost",
        )  # fmt: skip
        loop.close()
    assert rc == 0, out.lines()
    assert out.lines()[-1] == "DONE ok=2 failed=0", out.lines()
    assert len(got) == 2 and all(f.proto == "tls" for f in got)


def _perl_server(
    loop: EventLoop, host: str, *tls_args: str
) -> tuple[subprocess.Popen[bytes], PipeReader, Addr]:
    """Start netsip_peer.pl as a TLS server answering forever; its reader and address."""
    proc = start_perl_peer(
        "--mode", "server", "--proto", "tls", "--listen", str(Addr.parse((host, 0))),
        "--count", "0", "--timeout", str(PERL_TIMEOUT), *tls_args,
    )  # fmt: skip
    assert proc.stdout is not None
    out = PipeReader(loop, proc.stdout.fileno())
    _run_loop(loop, out.has_line)
    first = out.lines()[0].split()
    assert first[0] == "LISTENING", out.lines()
    return proc, out, Addr.parse((first[1], int(first[2])))


@pytest.mark.parametrize(
    "case",
    [
        # (what netsip presents, what Perl's server presents/asks, expected result)
        ("client-cert", "verify-client", "ok"),
        ("no-cert", "verify-client", "refused"),
        ("no-cert", "untrusted-server", "EPROTO"),
    ],
    ids=["mutual", "no-client-cert", "untrusted-server"],
)
def test_netsip_tls_client_to_perl_server_verification(
    case: tuple[str, str, str], tls_files: TlsFiles
) -> None:
    """netsip's client side against Perl's checks, and against a certificate it must refuse."""
    require_perl_netsip(tls=True)
    mine, theirs, expect = case
    perl_args = (
        ["--cert", tls_files.untrusted_cert, "--key", tls_files.untrusted_key]
        if theirs == "untrusted-server"
        else ["--cert", tls_files.cert, "--key", tls_files.key, "--verify-client", "1"]
    )
    loop = EventLoop()
    proc, out, dst = _perl_server(loop, "127.0.0.1", "--ca", tls_files.ca, *perl_args)
    try:
        responses: list[Response] = []
        sent: list[int] = []
        tls = _pool_tls("tls", tls_files, client_cert=True)
        assert tls is not None
        if mine == "no-cert":
            tls = {"cafile": tls_files.ca}

        def on_packet(packet: Request | Response, from_: Addr) -> None:
            if isinstance(packet, Response):
                responses.append(packet)

        with SocketPool("tls", _master("tls", "127.0.0.1"), tls=tls) as pool:
            pool.attach_eventloop(loop, on_packet)
            local = Addr.parse(pool.master().getsockname())
            req = _options("tls", local, dst, 1, f"{uuid.uuid4().hex}@netsip")
            pool.sendto(req, dst, sent.append)
            if expect == "ok":
                _run_loop(loop, lambda: bool(responses))
                assert responses[0].code() == 200 and sent == [0]
            else:
                # the connection ends: refused by Perl, or by netsip itself
                _run_loop(loop, lambda: bool(sent) and pool.connection_count() == 0)
                assert responses == []
                if expect == "EPROTO":
                    assert sent == [errno.EPROTO]
                else:
                    # TLS 1.3: the client's handshake ends before Perl checks it, so
                    # the write may succeed, or fail on Perl's alert or close
                    assert sent in ([0], [errno.EPROTO], [errno.ECONNRESET])
        proc.terminate()
        _run_loop(loop, lambda: bool(out.eof))
        rc = proc.wait(timeout=10)
    finally:
        _stop(proc)
        loop.close()
    assert rc == 0, out.lines()
    seen = [line for line in out.lines() if line.startswith("REQUEST ")]
    assert len(seen) == (1 if expect == "ok" else 0), out.lines()


def test_perl_client_refuses_untrusted_netsip_server(tls_files: TlsFiles) -> None:
    """Perl's client side checks netsip's certificate: an untrusted one fails delivery."""
    require_perl_netsip(tls=True)
    loop = EventLoop()
    got: list[Request | Response] = []
    tls = {"certfile": tls_files.untrusted_cert, "keyfile": tls_files.untrusted_key}
    with SocketPool("tls", _master("tls", "127.0.0.1"), tls=tls) as pool:
        pool.attach_eventloop(loop, lambda packet, _from: got.append(packet))
        to = str(Addr.parse(("127.0.0.1", pool.master().getsockname()[1])))
        rc, out = _run_perl_client(
            loop,
            "--mode", "client", "--proto", "tls", "--to", to, "--count", "1",
            "--timeout", str(PERL_TIMEOUT), "--ca", tls_files.ca,
        )  # fmt: skip
        _run_loop(loop, lambda: pool.connection_count() == 0)
        loop.close()
    assert rc == 1, out.lines()
    assert out.lines()[-1] == "DONE ok=0 failed=1", out.lines()
    assert got == []


# ------------------------------------------------ Net::SIP's own examples

EXAMPLES = Path("/usr/share/doc/libnet-sip-perl/examples")


def _example(name: str, tmp: Path) -> Path:
    """A script from libnet-sip-perl's examples (Debian may ship it gzipped)."""
    plain = EXAMPLES / name
    if plain.exists():
        return plain
    packed = EXAMPLES / f"{name}.gz"
    if not packed.exists():
        missing_peer(f"Net::SIP's example {name}", "apt-get install libnet-sip-perl")
    out = tmp / name
    out.write_bytes(gzip.decompress(packed.read_bytes()))
    return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_perl_invite_and_recv_example_calls_netsip_listen(tmp_path: Path) -> None:
    """Net::SIP's ``invite_and_recv.pl`` calls ``netsip listen``, then hangs up.

    The Perl UA insists on an SDP answer in the 200 ("No or malformed SDP
    body" otherwise, RFC 3264): the call must come up, and its BYE get 200.
    """
    perl = require_perl_netsip()
    script = _example("invite_and_recv.pl", tmp_path)
    srv = Listen(["--listen", "udp:127.0.0.1:0"], tmp_path)
    try:
        port = srv.addresses(1)["udp"].port
        res = subprocess.run(
            [perl, str(script), "-T", "1", "-L", f"127.0.0.1:{_free_udp_port()}",
             "sip:perl@127.0.0.1", f"sip:bob@127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=PERL_TIMEOUT, check=False,
        )  # fmt: skip
        out = (res.stdout + res.stderr).decode(errors="replace")
        assert res.returncode == 0, out
        stdout = srv.stop()
    finally:
        srv.close()
    assert summary_counts(stdout) == {"INVITE": 1, "ACK": 1, "BYE": 1}, stdout
