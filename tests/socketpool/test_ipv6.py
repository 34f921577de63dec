"""IPv6 counterparts of the SocketPool tests that ``test_core.py`` runs on IPv4 only.

Everything else there is parametrised over 127.0.0.1 and ::1 already; TLS over
::1 is in tests/test_tls.py. Here: address family mismatches, the destination
forms a Leg uses ("[::1]:port", tuples, dicts) and receive callback shapes,
all over ::1.
"""

from __future__ import annotations

import errno
import socket
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Packet
from netsip.socketpool import SocketPool
from netsip.util import Addr, Proto
from tests.support import collector, have_ipv6
from tests.support import drive as support_drive

pytestmark = pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")


@pytest.fixture(scope="module")
def tls_opts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    trustme = pytest.importorskip("trustme")
    d: Path = tmp_path_factory.mktemp("tls6")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "cert.pem"))
    return {"certfile": str(d / "cert.pem"), "cafile": str(d / "ca.pem")}


def master(proto: Proto, ip: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 0))
        if proto != "udp":
            s.listen(1024)
    except OSError:
        s.close()
        raise
    return s


def pool(proto: Proto, ip: str, tls: dict[str, object]) -> SocketPool:
    sock = master(proto, ip)
    try:
        return SocketPool(proto, sock, tls=tls if proto == "tls" else None)
    except BaseException:
        sock.close()
        raise


drive = partial(support_drive, seconds=10.0)


def request(n: int = 1, callid: str = "c6") -> bytes:
    return (
        f"OPTIONS sip:bob@[::1] SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-{callid}-{n}\r\n"
        f"From: <sip:alice@[::1]>;tag=a{n}\r\n"
        f"To: <sip:bob@[::1]>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Length: 0\r\n"
        f"\r\n"
    ).encode()


PROTOS: list[Proto] = ["udp", "tcp", "tls"]


@pytest.mark.parametrize("proto", PROTOS)
def test_family_mismatch_is_eafnosupport(proto: Proto, tls_opts: dict[str, object]) -> None:
    with pool(proto, "::1", tls_opts) as six, pool(proto, "127.0.0.1", tls_opts) as four:
        errors: list[int] = []
        six.sendto(Packet.new_from_string(request()), "127.0.0.1:5060", errors.append)
        four.sendto(Packet.new_from_string(request()), "[::1]:5060", errors.append)
        assert errors == [errno.EAFNOSUPPORT, errno.EAFNOSUPPORT]
        assert six.connection_count() == four.connection_count() == 0


@pytest.mark.parametrize("proto", PROTOS)
def test_destination_forms(loop: EventLoop, proto: Proto, tls_opts: dict[str, object]) -> None:
    """ "[::1]:port", (ip, port), (ip, port, family), dicts and Addr all reach an IPv6 pool."""
    got_a, cb_a = collector()
    got_b, cb_b = collector()
    with pool(proto, "::1", tls_opts) as a, pool(proto, "::1", tls_opts) as b:
        a.attach_eventloop(loop, cb_a)
        b.attach_eventloop(loop, cb_b)
        port = b.master().getsockname()[1]
        forms: list[object] = [
            f"[::1]:{port}",
            f"[0:0::1]:{port}",  # not canonical: the same address
            ("::1", port),
            ("::1", port, socket.AF_INET6),
            {"addr": "::1", "port": port, "family": socket.AF_INET6},
            Addr("::1", port, socket.AF_INET6),
        ]
        status: list[int] = []
        for i, dst in enumerate(forms):
            a.sendto(Packet.new_from_string(request(i)), dst, status.append)
        drive(loop, lambda: len(got_b) == len(forms))
        assert [p.cseq() for p, _ in got_b] == [f"{i} OPTIONS" for i in range(len(forms))]
        for _, from_ in got_b:
            assert from_.family == socket.AF_INET6
            assert from_.addr == "::1" and from_.proto == proto
            assert str(from_).startswith("[::1]:")
        if proto == "udp":
            assert status == []
        else:
            drive(loop, lambda: len(status) == len(forms))
            assert status == [0] * len(forms)
            assert a.connection_count() == 1  # one connection for every form
        # answer to str(from_), the form the Leg uses
        b.sendto(Packet.new_from_string(request(99)), str(got_b[0][1]))
        drive(loop, lambda: got_a)
        assert got_a[0][1].family == socket.AF_INET6


def test_receive_callback_shapes(loop: EventLoop) -> None:
    """The receive callback follows invoke_callback: a (func, *bound) tuple, over ::1."""
    seen: list[Any] = []
    with (
        SocketPool("udp", master("udp", "::1")) as p,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as peer,
    ):
        peer.bind(("::1", 0))
        p.attach_eventloop(loop, (lambda tag, pk, f: seen.append((tag, pk, f)), "leg6"))
        peer.sendto(request(), p.master().getsockname())
        drive(loop, lambda: seen)
        tag, _, from_ = seen[0]
        assert tag == "leg6"
        assert from_ == Addr("::1", peer.getsockname()[1], socket.AF_INET6, None, "udp")
