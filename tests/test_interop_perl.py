"""Interop with Perl's Net::SIP (the library netsip ports) as the live peer.

``tests/perl/netsip_peer.pl`` drives Net::SIP::Leg and Net::SIP::Dispatcher:

* as a client it sends OPTIONS to a netsip :class:`SocketPool` responder;
* as a server it answers the OPTIONS a netsip pool sends it.

Both over UDP and TCP, on IPv4 and IPv6 loopback. The netsip event loop is
driven until the Perl process closes its stdout (the loop watches the pipe),
so nothing sleeps, and every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netsip.eventloop import EV_READ, EventLoop
from netsip.packet import Request, Response
from netsip.socketpool import SocketPool
from netsip.util import Addr, Proto, Var
from tests.support import require_perl_netsip

pytestmark = pytest.mark.interop

PEER = Path(__file__).resolve().parent / "perl" / "netsip_peer.pl"

# Upper bounds for one exchange; a healthy run takes well under a second.
PERL_TIMEOUT = 20.0
LOOP_TIMEOUT = 30.0
COUNT = 3


def _have_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not _have_ipv6(), reason="no IPv6 loopback"),
    ),
]
PROTOS: list[Proto] = ["udp", "tcp"]


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


@dataclass
class PipeReader:
    """Collects a subprocess's output inside the event loop; ``eof`` is set at EOF."""

    loop: EventLoop
    fd: int
    data: bytearray = field(default_factory=bytearray)
    eof: Var[bool] = field(default_factory=Var)

    def __post_init__(self) -> None:
        os.set_blocking(self.fd, False)
        self.loop.add_fd(self.fd, EV_READ, self._readable, name="perl-stdout")

    def _readable(self, fd: object) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            self.data += chunk
        else:
            self.loop.del_fd(self.fd)
            self.eof.value = True

    def lines(self) -> list[str]:
        return self.data.decode("utf-8", "replace").splitlines()

    def has_line(self) -> bool:
        return b"\n" in self.data or bool(self.eof)


def _run_loop(loop: EventLoop, until: Callable[[], bool], timeout: float = LOOP_TIMEOUT) -> None:
    """Run ``loop`` until ``until()`` is true; the timeout bounds it."""
    loop.loop(timeout, until)
    assert until(), f"not done after {timeout}s"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Reap ``proc``, killing it if it is still running."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _perl(*args: str) -> subprocess.Popen[bytes]:
    perl = require_perl_netsip()
    return subprocess.Popen(
        [perl, str(PEER), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe, so neither can fill up unread
    )


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("proto", PROTOS)
def test_perl_client_to_netsip_responder(proto: Proto, host: str) -> None:
    """Perl's Dispatcher sends OPTIONS; a netsip pool answers each with 200."""
    require_perl_netsip()
    loop = EventLoop()
    requests: list[tuple[Request, Addr]] = []
    delivered: list[int] = []
    with SocketPool(proto, _master(proto, host)) as pool:

        def on_packet(packet: Request | Response, from_: Addr) -> None:
            if isinstance(packet, Request):
                requests.append((packet, from_))
                if packet.method() != "ACK":
                    pool.sendto(packet.create_response(200), from_, delivered.append)

        pool.attach_eventloop(loop, on_packet)
        port = Addr.parse(pool.master().getsockname()).port
        to = str(Addr.parse((host, port)))
        proc = _perl(
            "--mode", "client", "--proto", proto, "--to", to,
            "--count", str(COUNT), "--timeout", str(PERL_TIMEOUT),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            out = PipeReader(loop, proc.stdout.fileno())
            _run_loop(loop, lambda: bool(out.eof))
            rc = proc.wait(timeout=10)
        finally:
            _stop(proc)
            assert proc.stdout is not None
            proc.stdout.close()
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
    uri = f"sip:perl@{dst}" + ("" if proto == "udp" else f";transport={proto}")
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


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("proto", PROTOS)
def test_netsip_client_to_perl_server(proto: Proto, host: str) -> None:
    """A netsip pool sends OPTIONS to Perl's Dispatcher and receives its 200s."""
    require_perl_netsip()
    loop = EventLoop()
    listen = str(Addr.parse((host, 0)))
    proc = _perl(
        "--mode", "server", "--proto", proto, "--listen", listen,
        "--count", str(COUNT), "--timeout", str(PERL_TIMEOUT),
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

        with SocketPool(proto, _master(proto, host)) as pool:
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
        assert proc.stdout is not None
        proc.stdout.close()
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
