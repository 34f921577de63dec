"""Tests for the TLS transport of netsip.socketpool (netsip._tls), on IPv4 and IPv6 loopback.

Certificates come from test CAs (trustme) made at test time, once per module.
Both ends are netsip pools unless a test needs a raw peer (a plain-TCP client,
a silent client, a listener that never answers the ClientHello).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trustme

from netsip._conn import StreamIO
from netsip._log import BURST
from netsip._tls import TLS_READSIZE, TLSConn, make_contexts, server_hostname
from netsip.eventloop import EventLoop
from netsip.packet import Packet
from netsip.socketpool import SocketPool, get_settings
from netsip.util import Addr
from tests.support import (
    LOOPBACKS,
    FakeClock,
    TlsFiles,
    call_request,
    collector,
    connect,
    family,
    is_eof,
    make_tls_files,
    open_fds,
    peer_closed,
    pkt,
    poll,
    reset,
    spin,
    tcp_listener,
)
from tests.support import drive as support_drive

# --------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Certs:
    """PEM files: ``ca`` is trusted; each certificate file holds key and chain."""

    ca: str
    server: str  # localhost, 127.0.0.1, ::1
    server_cert: str  # the same, certificate only ...
    server_key: str  # ... and key only
    client: str  # a client certificate of the same CA
    named: str  # sip.example.org only (no IP address)
    wildcard: str  # *.example.org only
    untrusted_ca: str
    untrusted: str  # localhost, 127.0.0.1, ::1 from the other CA

    def tls(self, cert: str | None = None, **more: object) -> dict[str, object]:
        """Options trusting ``ca``, with ``cert`` as certfile if given."""
        opts: dict[str, object] = {"cafile": self.ca}
        if cert is not None:
            opts["certfile"] = cert
        opts.update(more)
        return opts


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d: Path = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    other = trustme.CA()

    def write(name: str, blob: trustme.Blob) -> str:
        blob.write_to_path(str(d / name))
        return str(d / name)

    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client.example.org")
    named = ca.issue_cert("sip.example.org")
    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        server=write("server.pem", server.private_key_and_cert_chain_pem),
        server_cert=write("server-cert.pem", server.cert_chain_pems[0]),
        server_key=write("server-key.pem", server.private_key_pem),
        client=write("client.pem", client.private_key_and_cert_chain_pem),
        named=write("named.pem", named.private_key_and_cert_chain_pem),
        wildcard=write(
            "wildcard.pem", ca.issue_cert("*.example.org").private_key_and_cert_chain_pem
        ),
        untrusted_ca=write("other-ca.pem", other.cert_pem),
        untrusted=write(
            "untrusted.pem",
            other.issue_cert("localhost", "127.0.0.1", "::1").private_key_and_cert_chain_pem,
        ),
    )


pytestmark = [pytest.mark.usefixtures("restore_settings"), pytest.mark.both_loops]


@pytest.fixture(params=LOOPBACKS)
def ip(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


# --------------------------------------------------------------------- helpers


def tls_pool(ip: str, tls: dict[str, object], rcvbuf: int = 0, **settings: float) -> SocketPool:
    listener = tcp_listener(ip, backlog=64, rcvbuf=rcvbuf)
    try:
        return SocketPool("tls", listener, tls=tls, settings=settings)
    except BaseException:
        listener.close()
        raise


def addr_of(s: socket.socket, host: str | None = None) -> Addr:
    a = Addr.parse(s.getsockname()[:2])
    return Addr(a.addr, a.port, a.family, host)


drive = partial(support_drive, seconds=10.0)  # TLS handshakes: a longer bound


def request(n: int = 1, body: bytes = b"", callid: str = "c1") -> Packet:
    return Packet.new_from_string(
        (
            f"OPTIONS sips:bob@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-{callid}-{n}\r\n"
            f"From: <sips:alice@example.com>;tag=a{n}\r\n"
            f"To: <sips:bob@example.com>\r\n"
            f"Call-ID: {callid}\r\n"
            f"CSeq: {n} OPTIONS\r\n"
            f"Max-Forwards: 70\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"\r\n"
        ).encode()
        + body
    )


def raw_request(n: int = 1) -> bytes:
    return request(n).as_bytes()


# --------------------------------------------------------------------- options


def test_make_contexts_options(certs: Certs) -> None:
    ctx = make_contexts(certs.tls(certs.server, verify_client=1))
    assert ctx.server.verify_mode == ssl.CERT_REQUIRED
    assert ctx.client.verify_mode == ssl.CERT_REQUIRED and ctx.client.check_hostname
    assert ctx.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert make_contexts(certs.tls(verify_client=-1)).server.verify_mode == ssl.CERT_OPTIONAL
    assert make_contexts(certs.tls()).server.verify_mode == ssl.CERT_NONE
    assert not make_contexts(certs.tls(check_hostname=False)).client.check_hostname
    # certificate and key in separate files
    make_contexts({"certfile": certs.server_cert, "keyfile": certs.server_key})
    # ready contexts are used as they are
    mine = ssl.create_default_context()
    assert make_contexts({"client_context": mine}).client is mine
    assert make_contexts(None).client.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("opts", "error", "match"),
    [
        ({"SSL_cert_file": "x"}, ValueError, "SSL_cert_file"),
        ({"verify_client": 2}, ValueError, "verify_client"),
        ({"keyfile": "k.pem"}, ValueError, "keyfile needs certfile"),
        ({"certfile": 42}, TypeError, "certfile"),
        ({"check_hostname": "no"}, TypeError, "check_hostname"),
        ({"server_context": "ctx"}, TypeError, "server_context"),
        ({"server_context": ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
          "verify_client": 1}, ValueError, "verify_client"),
        ({"certfile": "/nonexistent/cert.pem"}, FileNotFoundError, "No such file"),
    ],
)  # fmt: skip
def test_make_contexts_rejects(opts: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_contexts(opts)


def test_pool_constructor_tls_checks(certs: Certs) -> None:
    fds = open_fds()
    with tcp_listener("127.0.0.1", backlog=64) as t:
        with pytest.raises(ValueError, match="non-TLS"):
            SocketPool("tcp", t, tls=certs.tls())
        with pytest.raises(ValueError, match="unknown tls option"):
            SocketPool("tls", t, tls={"bogus": 1})
        with pytest.raises(OSError):
            SocketPool("tls", t, tls={"certfile": "/nonexistent.pem"})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, pytest.raises(ValueError):
        SocketPool("tls", u, tls=certs.tls())
    with tls_pool("127.0.0.1", certs.tls(certs.server)) as pool:
        assert pool.proto == "tls"
    assert open_fds() == fds


def test_server_hostname_choice() -> None:
    assert server_hostname(Addr("127.0.0.1", 5061, socket.AF_INET)) == "127.0.0.1"
    assert server_hostname(Addr("::1", 5061, socket.AF_INET6, "[::1]")) == "::1"
    assert server_hostname(Addr("127.0.0.1", 5061, socket.AF_INET, "SIP.example.org.")) == (
        "SIP.example.org"
    )


# --------------------------------------------------------------------- exchange


def test_request_and_response_over_one_connection(loop: EventLoop, certs: Certs, ip: str) -> None:
    got_a, cb_a = collector()
    got_b, cb_b = collector()
    tls = certs.tls(certs.server)
    with tls_pool(ip, tls) as a, tls_pool(ip, tls) as b:
        a.attach_eventloop(loop, cb_a)
        b.attach_eventloop(loop, cb_b)
        status: list[int] = []
        # queued while TCP connects and TLS shakes hands, written afterwards
        a.sendto(request(1), addr_of(b.master()), status.append)
        a.sendto(request(2), str(addr_of(b.master())), status.append)  # "[::1]:port" too
        assert a.connection_count() == 1
        assert a.queued_bytes() > 0
        drive(loop, lambda: len(got_b) == 2 and len(status) == 2)
        assert status == [0, 0]
        assert [p.cseq() for p, _ in got_b] == ["1 OPTIONS", "2 OPTIONS"]
        _, from_ = got_b[0]
        assert from_.proto == "tls"
        assert from_.family == family(ip)
        assert from_.addr == Addr.parse((ip, 0)).addr
        # the response goes back over the request's connection (tid routing)
        resp = got_b[0][0]
        assert resp.is_request()
        b.sendto(resp.create_response(200), addr_of(a.master()), status.append)  # type: ignore[attr-defined]  # a Request
        drive(loop, lambda: got_a and len(status) == 3)
        assert status == [0, 0, 0]
        packet, from_a = got_a[0]
        assert packet.is_response() and packet.cseq() == "1 OPTIONS"
        assert from_a.proto == "tls" and from_a.port == b.master().getsockname()[1]
        assert a.connection_count() == 1 and b.connection_count() == 1


def test_large_message_split_across_records(
    loop: EventLoop, certs: Certs, ip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 60 KiB body takes several TLS records and several reads of at most 16 KiB."""
    reads: list[int] = []
    original = TLSConn.recv_into

    def spy(self: TLSConn, view: memoryview, nbytes: int) -> int:
        n = original(self, view, nbytes)
        reads.append(n)
        return n

    monkeypatch.setattr(TLSConn, "recv_into", spy)
    got, cb = collector()
    body = bytes(range(256)) * 240  # 60 KiB of every byte value
    tls = certs.tls(certs.server)
    with tls_pool(ip, tls) as a, tls_pool(ip, tls) as b:
        a.attach_eventloop(loop, lambda *x: None)
        b.attach_eventloop(loop, cb)
        status: list[int] = []
        a.sendto(request(1, body), addr_of(b.master()), status.append)
        a.sendto(request(2, body[::-1]), addr_of(b.master()), status.append)
        drive(loop, lambda: len(got) == 2 and len(status) == 2)
    assert status == [0, 0]
    assert got[0][0].body() == body and got[1][0].body() == body[::-1]
    assert max(reads) <= TLS_READSIZE
    assert sum(1 for n in reads if n > 0) >= 8  # 2 x 60 KiB in records of <= 16 KiB


def test_pending_plaintext_is_drained(loop: EventLoop, certs: Certs, ip: str) -> None:
    """Reads smaller than a record leave plaintext inside OpenSSL: no select reports it."""
    got, cb = collector()
    tls = certs.tls(certs.server)
    with tls_pool(ip, tls) as a, tls_pool(ip, tls, TCP_READSIZE=64) as b:
        a.attach_eventloop(loop, lambda *x: None)
        b.attach_eventloop(loop, cb)
        a.sendto(request(1, b"y" * 5000), addr_of(b.master()))  # one record
        drive(loop, lambda: got)
        assert got[0][0].body() == b"y" * 5000


def test_slow_reader_partial_writes(loop: EventLoop, certs: Certs, ip: str) -> None:
    """Megabytes to a peer with a tiny window: TLS writes wait and resume, in order."""
    got, cb = collector()
    bodies = [bytes([65 + i % 26]) * 50000 + str(i).encode() for i in range(50)]
    tls = certs.tls(certs.server)
    with tls_pool(ip, tls) as a, tls_pool(ip, tls, rcvbuf=4096) as b:
        a.attach_eventloop(loop, lambda *x: None)
        b.attach_eventloop(loop, cb)
        status: list[tuple[int, int]] = []
        for i, body in enumerate(bodies):
            a.sendto(request(i, body), addr_of(b.master()), lambda e, i=i: status.append((i, e)))
        drive(loop, lambda: len(got) == len(bodies) and len(status) == len(bodies), seconds=60)
        assert [p.body() for p, _ in got] == bodies
        assert status == [(i, 0) for i in range(len(bodies))]
        assert a.queued_bytes() == 0
        assert loop.fd_count() == 4  # two listeners, two connection ends: no write watch left


def test_sendto_before_attach(loop: EventLoop, certs: Certs, ip: str) -> None:
    got, cb = collector()
    tls = certs.tls(certs.server)
    with tls_pool(ip, tls) as a, tls_pool(ip, tls) as b:
        b.attach_eventloop(loop, cb)
        status: list[int] = []
        a.sendto(request(), addr_of(b.master()), status.append)
        spin(loop, 0.05)  # B accepts and waits for a ClientHello that is not sent yet
        assert status == [] and got == []
        a.attach_eventloop(loop, lambda *x: None)
        drive(loop, lambda: got and status)
        assert status == [0]


def test_connected_master_is_tls_client(loop: EventLoop, certs: Certs, ip: str) -> None:
    got_a, cb_a = collector()
    got_b, cb_b = collector()
    with tls_pool(ip, certs.tls(certs.server)) as b:
        b.attach_eventloop(loop, cb_b)
        client = connect(addr_of(b.master()))
        with SocketPool("tls", client, connected=True, tls=certs.tls()) as a:
            a.attach_eventloop(loop, cb_a)
            status: list[int] = []
            a.sendto(request(), "192.0.2.1:5061", status.append)  # goes to the peer
            drive(loop, lambda: got_b and status)
            assert status == [0]
            b.sendto(got_b[0][0].create_response(200), got_b[0][1])  # type: ignore[attr-defined]  # a Request
            drive(loop, lambda: got_a)
            assert got_a[0][1].proto == "tls"
            assert a.connection_count() == 0


# --------------------------------------------------------------------- verification


def test_mutual_tls_client_certificate_required(
    loop: EventLoop, certs: Certs, ip: str, caplog: pytest.LogCaptureFixture
) -> None:
    got, cb = collector()
    with (
        tls_pool(ip, certs.tls(certs.server, verify_client=1)) as server,
        tls_pool(ip, certs.tls(certs.client)) as with_cert,
        tls_pool(ip, certs.tls()) as without_cert,
    ):
        server.attach_eventloop(loop, cb)
        with_cert.attach_eventloop(loop, lambda *x: None)
        without_cert.attach_eventloop(loop, lambda *x: None)
        dst = addr_of(server.master())
        status: list[int] = []
        with_cert.sendto(request(1, callid="ok"), dst, status.append)
        drive(loop, lambda: got and status)
        assert status == [0]
        refused: list[int] = []
        with caplog.at_level(logging.INFO, logger="netsip.socketpool"):
            without_cert.sendto(request(1, callid="nocert"), dst, refused.append)
            # TLS 1.3: the client is done with its part before the server checks
            # it, so its write may succeed (or fail on the alert or the close);
            # the server's alert ends the connection all the same
            drive(loop, lambda: refused and without_cert.connection_count() == 0)
            drive(loop, lambda: server.connection_count() == 1)
        assert refused in ([0], [errno.EPROTO], [errno.ECONNRESET])
        assert [p.callid() for p, _ in got] == ["ok"]
        assert "TLS handshake failed" in caplog.text
        assert "certificate" in caplog.text.lower()


def _closed_by_peer(c: socket.socket) -> bool:
    """Read what the peer sent (a TLS alert, say) and tell whether it then closed."""
    try:
        while c.recv(4096, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_handshake_failures_are_logged_at_the_default_level_rate_limited(
    loop: EventLoop, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed handshake (here: clients that speak no TLS) logs a WARNING with
    the peer; twenty of them in a row log a few lines, not twenty."""
    with tls_pool("127.0.0.1", certs.tls(certs.server)) as server:
        server.attach_eventloop(loop, lambda *x: None)
        dst = server.master().getsockname()
        with caplog.at_level(logging.WARNING, logger="netsip.socketpool"):
            for _ in range(20):
                with socket.create_connection(dst, timeout=5) as c:
                    c.sendall(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
                    c.setblocking(False)  # (a timeout would make recv wait in poll)
                    # the server closes the connection once the handshake failed
                    drive(loop, partial(_closed_by_peer, c))
        lines = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
        assert 1 <= len(lines) <= 2 * BURST, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.WARNING
        assert "127.0.0.1:" in lines[0].getMessage()  # the peer


def test_missing_client_certificate_tls12_fails_handshake(
    loop: EventLoop, certs: Certs, ip: str
) -> None:
    """With TLS 1.2 the server refuses before the client's handshake ends: EPROTO."""
    got, cb = collector()
    client_ctx = ssl.create_default_context(cafile=certs.ca)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        tls_pool(ip, certs.tls(certs.server, verify_client=1)) as server,
        tls_pool(ip, {"client_context": client_ctx}) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        client.sendto(request(), addr_of(server.master()), status.append)
        drive(loop, lambda: status and server.connection_count() == 0)
        assert status == [errno.EPROTO]
        assert got == [] and client.connection_count() == 0


def test_optional_client_certificate(loop: EventLoop, certs: Certs, ip: str) -> None:
    got, cb = collector()
    with (
        tls_pool(ip, certs.tls(certs.server, verify_client=-1)) as server,
        tls_pool(ip, certs.tls()) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        client.sendto(request(), addr_of(server.master()), status.append)
        drive(loop, lambda: got and status)
        assert status == [0]


def test_untrusted_server_certificate(
    loop: EventLoop, certs: Certs, ip: str, caplog: pytest.LogCaptureFixture
) -> None:
    got, cb = collector()
    with (
        tls_pool(ip, {"certfile": certs.untrusted}) as server,
        tls_pool(ip, certs.tls()) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        with caplog.at_level(logging.INFO, logger="netsip.socketpool"):
            client.sendto(request(1), addr_of(server.master()), status.append)
            client.sendto(request(2), addr_of(server.master()), status.append)  # queued too
            drive(loop, lambda: len(status) == 2 and server.connection_count() == 0)
        assert status == [errno.EPROTO, errno.EPROTO]
        assert got == []
        assert client.connection_count() == 0
        assert "certificate verify failed" in caplog.text


@pytest.mark.parametrize(
    "case",
    [
        ("sip.example.org", True, True),  # SNI and name match
        ("other.example.org", True, False),  # name mismatch
        (None, True, False),  # bare IP: checked against IP entries, there are none
        ("other.example.org", False, True),  # checking off: the chain is enough
    ],
    ids=["match", "mismatch", "bare-ip", "unchecked"],
)
def test_hostname_check(
    loop: EventLoop, certs: Certs, ip: str, case: tuple[str | None, bool, bool]
) -> None:
    host, check, ok = case
    got, cb = collector()
    sni: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.named)
    server_ctx.sni_callback = lambda _obj, name, _ctx: sni.append(name)
    with (
        tls_pool(ip, {"server_context": server_ctx}) as server,
        tls_pool(ip, certs.tls(check_hostname=check)) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        client.sendto(request(), addr_of(server.master(), host), status.append)
        drive(loop, lambda: status and (got or not ok))
        assert status == [0 if ok else errno.EPROTO]
        assert sni == [host]  # the name when there is one, never an IP address
        if not ok:
            drive(loop, lambda: server.connection_count() == 0)
            assert got == []


@pytest.mark.parametrize("check", [True, False])
def test_wildcard_certificate_refused(
    loop: EventLoop, certs: Certs, check: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 5922 7.2: *.example.org does not name sip.example.org for SIP (when checking)."""
    got, cb = collector()
    with (
        tls_pool("127.0.0.1", {"certfile": certs.wildcard}) as server,
        tls_pool("127.0.0.1", certs.tls(check_hostname=check)) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        with caplog.at_level(logging.INFO, logger="netsip.socketpool"):
            client.sendto(request(), addr_of(server.master(), "sip.example.org"), status.append)
            drive(loop, lambda: status and (got or check))
        if check:
            assert status == [errno.EPROTO]
            assert "wildcard" in caplog.text
            drive(loop, lambda: server.connection_count() == 0)
            assert got == []
        else:
            assert status == [0]


def test_sni_and_ip_check_for_bare_ip(loop: EventLoop, certs: Certs, ip: str) -> None:
    """A bare IP destination: no SNI, the certificate's IP entry is checked."""
    got, cb = collector()
    sni: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server)
    server_ctx.sni_callback = lambda _obj, name, _ctx: sni.append(name)
    with (
        tls_pool(ip, {"server_context": server_ctx}) as server,
        tls_pool(ip, certs.tls()) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        client.sendto(request(1), addr_of(server.master()), status.append)
        drive(loop, lambda: got and status)
        assert status == [0] and sni == [None]
        # a name given for the same address reuses the connection (as Perl does)
        client.sendto(request(2), addr_of(server.master(), "localhost"), status.append)
        drive(loop, lambda: len(got) == 2)
        assert client.connection_count() == 1


# --------------------------------------------------------------------- robustness


def test_plain_tcp_client_dropped_tls_client_unaffected(
    loop: EventLoop, certs: Certs, ip: str, caplog: pytest.LogCaptureFixture
) -> None:
    got, cb = collector()
    with (
        tls_pool(ip, certs.tls(certs.server)) as server,
        tls_pool(ip, certs.tls()) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        dst = addr_of(server.master())
        client.sendto(request(1, callid="tls"), dst)
        drive(loop, lambda: got)
        with caplog.at_level(logging.INFO, logger="netsip.socketpool"), connect(dst) as plain:
            plain.sendall(raw_request(1))  # SIP in the clear where a ClientHello belongs
            drive(loop, lambda: is_eof(plain))
            assert server.connection_count() == 1
        assert "TLS handshake failed" in caplog.text
        client.sendto(request(2, callid="tls"), dst)
        drive(loop, lambda: len(got) == 2)
        assert [p.callid() for p, _ in got] == ["tls", "tls"]
        assert len({f for _, f in got}) == 1  # the same TLS connection throughout


def test_silent_client_dropped_at_connect_timeout(certs: Certs, ip: str) -> None:
    clock = FakeClock()
    got, cb = collector()
    with (
        EventLoop(clock=clock) as loop,
        tls_pool(ip, certs.tls(certs.server), CONNECT_TIMEOUT=5) as server,
        tls_pool(ip, certs.tls(), CONNECT_TIMEOUT=5) as client,
    ):
        server.attach_eventloop(loop, cb)
        client.attach_eventloop(loop, lambda *x: None)
        with connect(addr_of(server.master())) as silent:
            drive(loop, lambda: server.connection_count() == 1)
            # a real TLS client meanwhile: its handshake ends the deadline
            client.sendto(request(), addr_of(server.master()))
            drive(loop, lambda: got)
            assert server.connection_count() == 2
            clock.now += 4.5
            loop.loop(0)
            assert server.connection_count() == 2
            clock.now += 1
            loop.loop(0)
            assert server.connection_count() == 1  # the silent one is gone
            assert is_eof(silent)
            client.sendto(request(2), addr_of(server.master()))
            drive(loop, lambda: len(got) == 2)


def test_handshake_counts_against_connect_timeout(certs: Certs, ip: str) -> None:
    """A server that accepts TCP but never answers the ClientHello: ETIMEDOUT."""
    clock = FakeClock()
    with (
        EventLoop(clock=clock) as loop,
        tcp_listener(ip, backlog=64) as mute,
        tls_pool(ip, certs.tls(), CONNECT_TIMEOUT=5) as client,
    ):
        client.attach_eventloop(loop, lambda *x: None)
        status: list[int] = []
        loop.loop(0)  # fresh looptime: timers are relative to it
        client.sendto(request(), addr_of(mute), status.append)
        peer, _ = mute.accept()
        with peer:
            # the ClientHello arrives: TCP is up, TLS is waiting
            deadline = time.monotonic() + 10
            while not select.select([peer], [], [], 0.01)[0]:
                assert time.monotonic() < deadline
                loop.loop(0)
            assert status == []
            clock.now += 5.5
            loop.loop(0)
            assert status == [errno.ETIMEDOUT]
            assert client.connection_count() == 0
            assert loop.fd_count() == 1


def test_close_sends_close_notify(loop: EventLoop, certs: Certs, ip: str) -> None:
    """The pool closes with a close_notify; a strict peer reads a clean EOF."""
    got, cb = collector()
    ctx = ssl.create_default_context(cafile=certs.ca)
    pool = tls_pool(ip, certs.tls(certs.server))
    pool.attach_eventloop(loop, cb)
    raw = connect(addr_of(pool.master()))
    raw.setblocking(False)
    with ctx.wrap_socket(
        raw, server_hostname=ip, do_handshake_on_connect=False, suppress_ragged_eofs=False
    ) as peer:
        deadline = time.monotonic() + 10
        while True:  # the pool's side of the handshake runs in the loop
            try:
                peer.do_handshake()
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                assert time.monotonic() < deadline
                loop.loop(0.01)
        peer.settimeout(5)
        peer.sendall(raw_request())
        drive(loop, lambda: got)
        pool.close()
        assert peer.recv(100) == b""  # SSLEOFError here if there was no close_notify


def test_no_fd_leak_with_failures(loop: EventLoop, certs: Certs) -> None:
    fds = open_fds()
    got, cb = collector()
    with (
        tls_pool("127.0.0.1", certs.tls(certs.server)) as server,
        tls_pool("127.0.0.1", certs.tls(certs.untrusted)) as stranger,
        tls_pool("127.0.0.1", certs.tls()) as client,
    ):
        for p in (server, stranger, client):
            p.attach_eventloop(loop, cb)
        status: list[int] = []
        for i in range(20):
            client.sendto(request(i, callid=f"c{i}"), addr_of(server.master()), status.append)
            stranger.sendto(request(i), addr_of(server.master()))  # untrusted client cert: fine
            client.sendto(request(i), addr_of(stranger.master()), status.append)  # untrusted
        drive(loop, lambda: len(status) == 40 and len(got) >= 40)
        assert sorted(status) == [0] * 20 + [errno.EPROTO] * 20
    assert open_fds() == fds


# --------------------------------------------------------------------- direction switching


def test_read_waiting_for_write_is_retried_on_ev_write(
    loop: EventLoop, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSLWantWriteError on a read (a TLS 1.3 KeyUpdate answer ...): the pool watches EV_WRITE."""
    original = TLSConn.recv_into
    calls: list[str] = []

    def recv_into(self: TLSConn, view: memoryview, nbytes: int) -> int:
        if not calls:
            calls.append("want-write")
            self.read_wants_write = True
            raise BlockingIOError(errno.EAGAIN, "simulated")
        calls.append("read")
        return original(self, view, nbytes)

    writable_calls: list[int] = []
    original_writable = TLSConn._writable

    def tls_writable(self: TLSConn, io: StreamIO, _fd: object = None) -> None:
        writable_calls.append(self.fd)
        original_writable(self, io, _fd)

    got, cb = collector()
    tls = certs.tls(certs.server)
    with tls_pool("127.0.0.1", tls) as a, tls_pool("127.0.0.1", tls) as b:
        a.attach_eventloop(loop, lambda *x: None)
        b.attach_eventloop(loop, cb)
        monkeypatch.setattr(TLSConn, "recv_into", recv_into)
        monkeypatch.setattr(TLSConn, "_writable", tls_writable)
        a.sendto(request(), addr_of(b.master()))
        drive(loop, lambda: got)
        assert calls[0] == "want-write" and "read" in calls
        assert writable_calls  # the read was retried from the EV_WRITE handler
        spin(loop, 0.05)
        conns: list[Any] = list(b._conns.values())
        assert not conns[0].watch_write  # and EV_WRITE is not watched any more


def test_write_waiting_for_read_does_not_spin(
    loop: EventLoop, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSLWantReadError on a write: no EV_WRITE watch; the write resumes when readable."""
    original = TLSConn.send
    attempts: list[int] = []

    def send(self: TLSConn, data: bytearray) -> int:
        attempts.append(len(data))
        if len(attempts) == 1:
            self.write_wants_read = True
            raise BlockingIOError(errno.EAGAIN, "simulated")
        return original(self, data)

    got_a, cb_a = collector()
    got_b, cb_b = collector()
    tls = certs.tls(certs.server)
    with tls_pool("127.0.0.1", tls) as a, tls_pool("127.0.0.1", tls) as b:
        a.attach_eventloop(loop, cb_a)
        b.attach_eventloop(loop, cb_b)
        a.sendto(request(1), addr_of(b.master()))
        drive(loop, lambda: got_b)
        monkeypatch.setattr(TLSConn, "send", send)
        status: list[int] = []
        a.sendto(request(2), addr_of(b.master()), status.append)
        spin(loop, 0.1)
        assert attempts == [len(request(2).as_bytes())]  # tried once, then no spinning
        assert status == []
        conn: Any = next(iter(a._conns.values()))
        assert not conn.watch_write and conn.write_wants_read
        # B answers request 1: A's socket becomes readable, the write goes first
        b.sendto(got_b[0][0].create_response(200), got_b[0][1])  # type: ignore[attr-defined]  # a Request
        drive(loop, lambda: status and len(got_b) == 2 and got_a)
        assert status == [0]


# --------------------------------------------------------------------- hostile handshakes


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory, "localhost", "127.0.0.1")


def tls_pool_from_files(files: TlsFiles, **kw: object) -> SocketPool:
    """A TLS pool on a fresh listener, or skip while SocketPool has no TLS."""
    lst = tcp_listener()
    opts = {"certfile": files.cert, "keyfile": files.key, "cafile": files.ca}
    try:
        return SocketPool("tls", lst, tls=opts, **kw)  # type: ignore[arg-type]  # settings
    except NotImplementedError:
        lst.close()
        pytest.skip("SocketPool has no TLS transport yet")


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello record)."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_hostile_handshakes_leave_a_real_tls_client_served(tls_files: TlsFiles) -> None:
    """Half a ClientHello and a RST, garbage instead of TLS, and a client that
    never starts the handshake (closed by CONNECT_TIMEOUT): none of them
    disturbs a real TLS client of the same pool."""
    clock = FakeClock(1_000_000.0)
    with EventLoop(clock=clock) as loop, tls_pool_from_files(tls_files) as pool:
        got, cb = collector()
        pool.attach_eventloop(loop, cb)
        server = addr_of(pool.master())
        hello = client_hello()
        half = connect(server)
        half.sendall(hello[: len(hello) // 2])
        garbage = connect(server)
        garbage.sendall(call_request(1, "not-tls"))
        silent = connect(server)
        try:
            poll(loop)
            reset(half)
            support_drive(loop, lambda: peer_closed(garbage))
            support_drive(loop, lambda: pool.connection_count() == 1)
            # a real client (another pool) completes its handshake and delivers
            with tls_pool_from_files(tls_files) as client:
                client.attach_eventloop(loop, None)
                errs: list[int] = []
                client.sendto(pkt(call_request(2, "tls")), server, errs.append)
                support_drive(loop, lambda: errs == [0] and len(got) == 1)
            assert got[0][0].tid() == "tls 2" and got[0][1].proto == "tls"
            clock.now += float(get_settings()["CONNECT_TIMEOUT"]) + 1
            support_drive(loop, lambda: peer_closed(silent))
        finally:
            garbage.close()
            silent.close()
