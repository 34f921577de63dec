"""Tests for netsip.leg: construction, Via/branch, received/rport, routing headers, deliver.

The last section holds the Contact shortcut (INVITE and its 2xx) to the
general header parser it replaces.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from netsip import leg as leg_mod
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import DEFAULT_ALLOW, MAGIC_COOKIE, Leg
from netsip.packet import Packet, Request, Response
from netsip.socketpool import SocketPool
from netsip.util import Addr, Proto, Var, sip_hdrval2parts
from tests.support import (
    TlsFiles,
    address,
    have_ipv6,
    make_tls_files,
    nasty_text,
    open_fds,
    require_perl_netsip,
)

HERE = Path(__file__).resolve().parent


needs_ipv6 = pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")


def _req(
    method: str = "OPTIONS", uri: str = "sip:bob@127.0.0.1:5070", **extra: str | list[str]
) -> Request:
    headers: dict[str, str | list[str]] = {
        "from": "<sip:alice@example.com>;tag=a1",
        "to": "<sip:bob@example.com>",
        "call-id": "c1@example.com",
        "cseq": f"1 {method}",
        "max-forwards": "70",
    }
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return Request(method, uri, headers)


@pytest.fixture
def udp_leg() -> Iterator[Leg]:
    leg = Leg(addr="127.0.0.1", port=0)
    yield leg
    leg.close()


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    """A plain UDP socket the tests send to and read from."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


def _recv(s: socket.socket) -> Packet:
    data = s.recv(65536)
    return Packet.new_from_string(data)


def _branch(via: str) -> str:
    b = sip_hdrval2parts("via", via)[1].get("branch")
    assert b is not None
    return b


# ------------------------------------------------------------- construction


def test_udp_leg_port0_gets_real_port(udp_leg: Leg) -> None:
    assert udp_leg.proto == "udp"
    assert udp_leg.src.port != 0
    sock = udp_leg.socketpool().master()
    assert sock.getsockname()[1] == udp_leg.src.port
    assert sock.type == socket.SOCK_DGRAM
    assert udp_leg.do_retransmits()
    p = udp_leg.src.port
    assert udp_leg.laddr(0) == "127.0.0.1"
    assert udp_leg.laddr(1) == f"127.0.0.1:{p}"
    assert udp_leg.laddr(2) == f"127.0.0.1:{p}"
    assert udp_leg.contact == f"sip:127.0.0.1:{p}"
    assert udp_leg.key() == f"Leg udp:127.0.0.1:{p}"
    assert udp_leg.branch.startswith(MAGIC_COOKIE)
    assert "udp" in repr(udp_leg)
    with pytest.raises(ValueError):
        udp_leg.laddr(3)


def test_tcp_leg_listens() -> None:
    with Leg(addr="127.0.0.1", port=0, proto="tcp") as leg:
        sock = leg.socketpool().master()
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not leg.do_retransmits()
        # a client can connect
        with socket.create_connection(("127.0.0.1", leg.src.port), timeout=5):
            pass


@needs_ipv6
def test_ipv6_leg_with_host_and_port_in_addr() -> None:
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    probe.bind(("::1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with Leg(addr=f"[::1]:{port}", host="localhost6") as leg:
        assert leg.src == Addr("::1", port, socket.AF_INET6, "localhost6", "udp")
        assert leg.laddr(1) == f"[::1]:{port}"
        assert leg.laddr(2) == f"localhost6:{port}"
        assert leg.contact == f"sip:localhost6:{port}"
        assert leg.match(addr="localhost6") and leg.match(addr="::1")
        req = _req()
        leg.add_via(req)
        assert req.get_headers("via")[0].startswith(f"SIP/2.0/UDP localhost6:{port};branch=")


def test_default_port_omitted_in_contact_and_via() -> None:
    # a socket of our own stands in, so no well-known port is bound
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        leg = Leg(addr="127.0.0.1", port=5060, sock=s.dup())
    try:
        assert leg.contact == "sip:127.0.0.1"
        assert leg.laddr(1) == "127.0.0.1"
        req = _req()
        leg.add_via(req)
        assert req.get_headers("via")[0].startswith("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK")
    finally:
        leg.close()


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="both"):
        Leg(addr="127.0.0.1:5000", port=5001)
    with pytest.raises(ValueError, match="IP address"):
        Leg(addr="example.com", port=0)
    with pytest.raises(ValueError):
        Leg(port=0)
    with pytest.raises(ValueError):
        Leg(addr="127.0.0.1", port=0, proto="sctp")  # type: ignore[arg-type]  # bad on purpose
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with SocketPool("udp", s.dup()) as pool, pytest.raises(ValueError, match="only one"):
            Leg(sock=s, socketpool=pool)


def test_constructor_does_not_leak_fds_on_error() -> None:
    before = open_fds()
    with pytest.raises(OSError):
        Leg(addr="192.0.2.1", port=0)  # not a local address: bind fails
    assert open_fds() == before


def test_leg_from_sock_and_from_socketpool() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    with Leg(sock=s) as leg:
        assert leg.proto == "tcp"
        assert leg.src.port == s.getsockname()[1]
        assert leg.dst is None

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    pool = SocketPool("udp", u)
    with Leg(socketpool=pool, contact="sip:me@example.com") as leg:
        assert leg.socketpool() is pool
        assert leg.proto == "udp"
        assert leg.src.port == u.getsockname()[1]
        assert leg.contact == "sip:me@example.com"
    assert pool.closed


def test_dst_makes_connected_udp_leg(sink: socket.socket) -> None:
    peer = Addr.parse(sink.getsockname())
    with Leg(dst=peer) as leg:
        assert leg.dst == peer
        assert leg.src.addr == "127.0.0.1"
        assert leg.socketpool().master().getpeername() == sink.getsockname()
        # whatever destination is given, the connected socket reaches dst
        leg.deliver(_req(), peer)
        got = _recv(sink)
        assert got.is_request()
    # a ready connected socket is recognised too
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.connect(sink.getsockname())
    with Leg(sock=c) as leg:
        assert leg.dst == peer


def test_tls_leg_passes_options_or_reports_missing_tls() -> None:
    try:
        leg = Leg(addr="127.0.0.1", port=0, tls={"certfile": "/nonexistent"})
    except NotImplementedError:
        pytest.skip("SocketPool has no TLS yet")
    except (OSError, ValueError):
        return  # TLS exists and rejected the bogus certificate: options were passed on
    with leg:
        assert leg.proto == "tls"
        assert leg.contact.startswith("sips:")


# --------------------------------------------------------------- Via, branch


def test_add_via_and_branch_stability(udp_leg: Leg) -> None:
    r1, r2 = _req(), _req()
    udp_leg.add_via(r1)
    udp_leg.add_via(r2)
    via = r1.get_headers("via")
    assert len(via) == 1
    assert via[0].startswith(f"SIP/2.0/UDP 127.0.0.1:{udp_leg.src.port};branch=z9hG4bK")
    # same request -> same branch (a retransmission is recognisable)
    assert via == r2.get_headers("via")
    b = _branch(via[0])
    assert b.startswith(udp_leg.via_branch(r1, 2))
    assert udp_leg.via_branch(r1, 1) == udp_leg.branch
    # another transaction -> another branch
    r3 = _req(cseq="2 OPTIONS")
    udp_leg.add_via(r3)
    assert _branch(r3.get_headers("via")[0]) != b


def test_cancel_gets_branch_of_invite(udp_leg: Leg) -> None:
    invite = _req("INVITE")
    cancel = invite.create_cancel()
    sent_invite = invite.clone()
    udp_leg.add_via(sent_invite)
    udp_leg.add_via(cancel)
    assert _branch(sent_invite.get_headers("via")[0]) == _branch(cancel.get_headers("via")[0])


def test_branch_depends_on_previous_hop_branch_only(udp_leg: Leg) -> None:
    a = _req(via="SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKabc;received=1.2.3.4")
    b = _req(via="SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKabc")
    c = _req(via="SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKother")
    assert udp_leg.via_branch(a, 3) == udp_leg.via_branch(b, 3)
    assert udp_leg.via_branch(a, 3) != udp_leg.via_branch(c, 3)


def test_check_via(udp_leg: Leg) -> None:
    other = Leg(addr="127.0.0.1", port=0)
    try:
        req = _req()
        udp_leg.add_via(req)
        resp = req.create_response(200)
        assert udp_leg.check_via(resp)
        assert not other.check_via(resp)
        assert not udp_leg.check_via(_req().create_response(200))  # no Via at all
    finally:
        other.close()


def test_add_received_and_rport(udp_leg: Leg) -> None:
    src = Addr("127.0.0.1", 40000, socket.AF_INET)
    # sent-by matches the source: nothing to add
    r = _req(via="SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1")
    udp_leg.add_received(r, src)
    assert r.get_headers("via") == ["SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1"]
    # sent-by differs: received (RFC 3261 18.2.1)
    r = _req(
        via=["SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK1", "SIP/2.0/UDP 10.9.9.9;branch=z9hG4bK0"]
    )
    udp_leg.add_received(r, src)
    vias = r.get_headers("via")
    assert vias[0] == "SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK1;received=127.0.0.1"
    assert vias[1] == "SIP/2.0/UDP 10.9.9.9;branch=z9hG4bK0"  # only the top one
    # empty rport: filled in, and received is then required (RFC 3581 4)
    r = _req(via="SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bK1")
    udp_leg.add_received(r, src)
    assert r.get_headers("via") == [
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;received=127.0.0.1;rport=40000"
    ]
    # a host name in sent-by always gets received
    r = _req(via="SIP/2.0/TCP client.example.com;branch=z9hG4bK1")
    udp_leg.add_received(r, src)
    assert r.get_headers("via")[0].endswith(";received=127.0.0.1")
    # responses are left alone
    resp = _req(via="SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK1").create_response(200)
    udp_leg.add_received(resp, src)
    assert resp.get_headers("via") == ["SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK1"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.tuples(
        st.sampled_from(["SIP/2.0/UDP ", "SIP/2.0/TCP  ", "SIP/2.0/UDP\t", "SIP/2.1/UDP "]),
        st.sampled_from(["127.0.0.1", "127.0.0.2", "[::1]", "::1", "h.example", "127.0.0.1 x"]),
        st.sampled_from(["", ":5060", ":40000"]),
        st.sampled_from([";branch=z9hG4bK1", " ;branch=z9hG4bK2", ";rport;branch=z9hG4bK3", ""]),
    ),
    st.sampled_from(["127.0.0.1", "::1"]),
)
def test_add_received_remembers_nothing_but_its_rule(
    udp_leg: Leg, parts: tuple[str, str, str, str], src: str
) -> None:
    """add_received's memo of its fast rule gives what the rule gives afresh,
    also when the same Via comes from several sources in turn."""
    via = "".join(parts)
    sources = [src, "127.0.0.1" if src != "127.0.0.1" else "::1"]

    def received(source: str) -> tuple[str, object]:
        addr = Addr(source, 40000, socket.AF_INET6 if ":" in source else socket.AF_INET)
        try:
            r = _req(via=via)
            udp_leg.add_received(r, addr)
        except ValueError as exc:
            return ("error", str(exc))
        return ("via", r.get_headers("via"))

    fresh = {}
    for source in sources:
        leg_mod._SENTBY_SAME.clear()
        fresh[source] = received(source)
    for source in sources + sources[::-1]:
        assert received(source) == fresh[source]


# ------------------------------------------------------------ forwarding


def test_forward_incoming_response_strips_top_via(udp_leg: Leg) -> None:
    resp = _req(via=["SIP/2.0/UDP me;branch=z9hG4bK1", "SIP/2.0/UDP you;branch=z9hG4bK2"])
    r = resp.create_response(180)
    assert udp_leg.forward_incoming(r) is None
    assert r.get_headers("via") == ["SIP/2.0/UDP you;branch=z9hG4bK2"]


def test_forward_incoming_request_max_forwards_and_record_route(udp_leg: Leg) -> None:
    r = _req(max_forwards="10")
    assert udp_leg.forward_incoming(r) is None
    assert r.get_header("max-forwards") == "9"
    assert r.get_headers("record-route") == [f"<{udp_leg.contact};lr>"]
    # huge values are capped at 70
    r = _req(max_forwards="99999")
    udp_leg.forward_incoming(r)
    assert r.get_header("max-forwards") == "69"
    # 1 -> would become 0: dropped
    r = _req(max_forwards="1")
    err = udp_leg.forward_incoming(r)
    assert err is not None and err[0] is None and "max-forwards" in err[1]
    # no Record-Route for REGISTER (RFC 3261 10.2)
    r = _req("REGISTER")
    udp_leg.forward_incoming(r)
    assert r.get_headers("record-route") == []
    # with from_, received is added as well
    r = _req(via="SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1")
    udp_leg.forward_incoming(r, Addr("127.0.0.1", 1234, socket.AF_INET))
    assert "received=127.0.0.1" in r.get_headers("via")[0]


def test_forward_incoming_loose_route_removes_me(udp_leg: Leg) -> None:
    me = f"<{udp_leg.contact};lr>"
    r = _req(route=[me, "<sip:next.example.com;lr>"])
    udp_leg.forward_incoming(r)
    assert r.get_headers("route") == ["<sip:next.example.com;lr>"]
    assert r.uri() == "sip:bob@127.0.0.1:5070"
    # someone else on top: untouched
    r = _req(route=["<sip:next.example.com;lr>", me])
    udp_leg.forward_incoming(r)
    assert r.get_headers("route") == ["<sip:next.example.com;lr>", me]


def test_forward_incoming_strict_router_restores_uri(udp_leg: Leg) -> None:
    # a strict router put me into the URI; the real target is the last Route
    r = _req(uri=udp_leg.contact, route=["<sip:p2.example.com>", "<sip:bob@example.com>"])
    udp_leg.forward_incoming(r)
    assert r.uri() == "sip:bob@example.com"
    assert r.get_headers("route") == ["<sip:p2.example.com>"]


def test_forward_outgoing(udp_leg: Leg) -> None:
    other = Leg(addr="127.0.0.1", port=0)
    try:
        r = _req(route=[f"<{other.contact};lr>", "<sip:next.example.com;lr>"])
        assert other.forward_outgoing(r, udp_leg) is None
        assert r.get_headers("record-route") == [f"<{other.contact};lr>"]
        assert r.get_headers("route") == ["<sip:next.example.com;lr>"]
        # the top Record-Route is already me: not added twice
        other.forward_outgoing(r, udp_leg)
        assert r.get_headers("record-route") == [f"<{other.contact};lr>"]
        # REGISTER: no Record-Route
        reg = _req("REGISTER")
        other.forward_outgoing(reg)
        assert reg.get_headers("record-route") == []
        # loop: the request already went out through this leg
        looped = _req(via="SIP/2.0/UDP p.example.com;branch=z9hG4bKx")
        looped.add_header("via", f"SIP/2.0/UDP 127.0.0.1;branch={other.via_branch(looped, 3)}")
        err = other.forward_outgoing(looped)
        assert err is not None and "loop" in err[1]
        # responses are not touched
        resp = _req().create_response(200)
        assert other.forward_outgoing(resp) is None
        assert resp.get_headers("record-route") == []
    finally:
        other.close()


# ------------------------------------------------------------------ deliver


def test_deliver_request_clones_and_adds_via(udp_leg: Leg, sink: socket.socket) -> None:
    req = _req()
    udp_leg.deliver(req, sink.getsockname())
    got = _recv(sink)
    assert req.get_headers("via") == []  # the original is untouched
    assert got.get_headers("via")[0].startswith("SIP/2.0/UDP 127.0.0.1:")
    assert got.get_headers("contact") == []  # OPTIONS requests need none
    # the same request again: same Via (a retransmission)
    udp_leg.deliver(req, Addr.parse(sink.getsockname()))
    assert _recv(sink).get_headers("via") == got.get_headers("via")


def test_deliver_invite_adds_contact_allow_supported(udp_leg: Leg, sink: socket.socket) -> None:
    udp_leg.deliver(_req("INVITE"), sink.getsockname())
    got = _recv(sink)
    assert got.get_headers("contact") == [f"sip:alice@127.0.0.1:{udp_leg.src.port}"]
    assert ", ".join(got.get_headers("allow")) == DEFAULT_ALLOW
    assert got.get_header("supported") == ""
    # present headers are kept
    udp_leg.deliver(
        _req("INVITE", contact="<sip:x@y>", allow="INVITE, ACK", supported="100rel"),
        sink.getsockname(),
    )
    got = _recv(sink)
    assert got.get_headers("contact") == ["<sip:x@y>"]
    assert got.get_headers("allow") == ["INVITE", "ACK"]
    assert got.get_headers("supported") == ["100rel"]


@pytest.mark.parametrize(
    ("method", "code", "want"),
    [
        ("INVITE", 200, (True, True)),
        ("INVITE", 180, (False, False)),
        ("INVITE", 486, (False, False)),
        ("OPTIONS", 200, (False, True)),
        ("BYE", 405, (False, True)),
        ("BYE", 200, (False, False)),
    ],
)
def test_deliver_response_headers(
    udp_leg: Leg, sink: socket.socket, method: str, code: int, want: tuple[bool, bool]
) -> None:
    contact, allow = want
    resp = _req(method, via="SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1").create_response(code)
    udp_leg.deliver(resp, sink.getsockname())
    got = _recv(sink)
    assert isinstance(got, Response) and got.code() == code
    assert got.get_headers("via") == ["SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1"]  # no Via added
    assert bool(got.get_headers("contact")) == contact
    if contact:
        assert got.get_headers("contact") == [f"sip:bob@127.0.0.1:{udp_leg.src.port}"]
    assert bool(got.get_headers("allow")) == allow
    assert bool(got.get_headers("supported")) == allow


def test_deliver_rejects_other_protocol(udp_leg: Leg, sink: socket.socket) -> None:
    a = Addr.parse(sink.getsockname())
    with pytest.raises(ValueError, match="does not match"):
        udp_leg.deliver(_req(), Addr(a.addr, a.port, a.family, None, "tcp"))


def test_deliver_tcp_callback_and_refused() -> None:
    loop = EventLoop()
    with Leg(addr="127.0.0.1", port=0, proto="tcp") as leg:
        leg.socketpool().attach_eventloop(loop, lambda *_: None)
        # nothing listens on a port we bound but never listened on
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:
            dead.bind(("127.0.0.1", 0))
            res: Var[int] = Var()
            leg.deliver(_req(), dead.getsockname(), res)
            loop.loop(10, lambda: res.value is not None)
        assert res.value == errno.ECONNREFUSED
        # a listening peer: callback 0 once written
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            ok: Var[int] = Var()
            leg.deliver(_req(), srv.getsockname(), ok)
            loop.loop(10, lambda: ok.value is not None)
            assert ok.value == 0
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                assert conn.recv(65536).startswith(b"OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0\r\n")
    loop.close()


# ----------------------------------------------------------------- matching


def test_match_and_can_deliver_to(udp_leg: Leg) -> None:
    p = udp_leg.src.port
    assert udp_leg.match()
    assert udp_leg.match(addr="127.0.0.1", port=p, proto="udp")
    assert not udp_leg.match(addr="127.0.0.2")
    assert not udp_leg.match(port=p + 1)
    assert not udp_leg.match(proto="tcp")
    assert udp_leg.match(sub=lambda leg: leg is udp_leg)
    assert not udp_leg.match(sub=lambda leg: False)

    assert udp_leg.can_deliver_to("sip:10.0.0.1")
    assert udp_leg.can_deliver_to("10.0.0.1:5070")
    assert udp_leg.can_deliver_to("sip:host.example.com;transport=udp")
    assert not udp_leg.can_deliver_to("sip:10.0.0.1;transport=tcp")
    assert not udp_leg.can_deliver_to("sips:10.0.0.1")
    assert not udp_leg.can_deliver_to("sip:[::1]:5060")  # wrong family
    assert not udp_leg.can_deliver_to("not a uri at all")
    assert udp_leg.can_deliver_to(proto="udp", addr="10.0.0.1")
    assert not udp_leg.can_deliver_to(proto="tcp")
    assert not udp_leg.can_deliver_to(addr="::1")
    assert not udp_leg.can_deliver_to(family=socket.AF_INET6)


def test_receive_passes_through(udp_leg: Leg) -> None:
    r = _req()
    src = Addr("127.0.0.1", 1, socket.AF_INET, None, "udp")
    assert udp_leg.receive(r, src) == (r, src)


# ------------------------------------------------------------ Perl compare

_PERL_LEG = r"""
use strict; use warnings;
use IO::Socket::INET;
use Net::SIP::Leg; use Net::SIP::Packet;
use JSON::PP;
my ($port, @pkts) = @ARGV;
my $s = IO::Socket::INET->new(Proto => 'udp', LocalAddr => '127.0.0.1') or die;
my $leg = Net::SIP::Leg->new(sock => $s, addr => '127.0.0.1', port => $port);
my @out;
for my $raw (@pkts) {
    my %r;
    my $p = Net::SIP::Packet->new($raw);
    my $v = $p->clone; $leg->add_via($v);
    $r{via} = [ $v->get_header('via') ];
    my $fi = $p->clone; my $err = $leg->forward_incoming($fi);
    $r{fi_err} = $err ? 1 : 0;
    $r{fi_rr} = [ $fi->get_header('record-route') ];
    $r{fi_route} = [ $fi->get_header('route') ];
    $r{fi_uri} = $fi->is_request ? $fi->uri : '';
    $r{fi_maxf} = "" . ($fi->get_header("max-forwards") // "");
    my $fo = $p->clone; $err = $leg->forward_outgoing($fo, $leg);
    $r{fo_err} = $err ? 1 : 0;
    $r{fo_rr} = [ $fo->get_header('record-route') ];
    $r{fo_route} = [ $fo->get_header('route') ];
    push @out, \%r;
}
print encode_json({contact => $leg->{contact}, out => \@out});
"""


@pytest.mark.interop
def test_via_and_routing_match_perl() -> None:
    """Via branch, Record-Route and Route handling agree with Perl's Net::SIP::Leg."""
    perl = require_perl_netsip()
    port = 5099  # only used in the header texts; the sockets are bound elsewhere
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        leg = Leg(sock=s.dup(), addr="127.0.0.1", port=port)
    try:
        me = f"<{leg.contact};lr>"
        pkts = [
            _req(),
            _req("INVITE", via="SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKprev;rport"),
            _req(route=[me, "<sip:next.example.com;lr>"], proxy_require="foo"),
            _req(uri=leg.contact, route=["<sip:p2.example.com>", "<sip:bob@example.com>"]),
            _req(
                "REGISTER",
                proxy_authorization='Digest username="a", realm="r", nonce="n", response="x"',
            ),
            _req(max_forwards="1"),
        ]
        looped = _req(via="SIP/2.0/UDP p.example.com;branch=z9hG4bKx")
        looped.add_header("via", f"SIP/2.0/UDP 127.0.0.1;branch={leg.via_branch(looped, 3)}")
        pkts.append(looped)
        raw = [p.as_string() for p in pkts]
        res = subprocess.run(
            [perl, "-e", _PERL_LEG, str(port), *raw],
            capture_output=True,
            timeout=60,
            check=True,
        )
        want = json.loads(res.stdout)
        assert want["contact"] == leg.contact
        for p, w in zip(pkts, want["out"], strict=True):
            v = p.clone()
            leg.add_via(v)
            assert v.get_headers("via") == w["via"]
            fi = p.clone()
            assert (leg.forward_incoming(fi) is not None) == bool(w["fi_err"])
            if not w["fi_err"]:
                assert isinstance(fi, Request)
                assert fi.get_headers("record-route") == w["fi_rr"]
                assert fi.get_headers("route") == w["fi_route"]
                assert fi.uri() == w["fi_uri"]
                assert fi.get_header("max-forwards") == w["fi_maxf"]
            fo = p.clone()
            assert (leg.forward_outgoing(fo, leg) is not None) == bool(w["fo_err"])
            if not w["fo_err"]:
                assert fo.get_headers("record-route") == w["fo_rr"]
                assert fo.get_headers("route") == w["fo_route"]
    finally:
        leg.close()


# ------------------------------------------- Contact and Record-Route transport


@pytest.fixture(scope="module")
def leg_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory, "127.0.0.1")


def _proto_leg(proto: Proto, files: TlsFiles) -> Leg:
    tls = {"certfile": files.cert, "keyfile": files.key, "cafile": files.ca}
    return Leg(addr="127.0.0.1", port=0, proto=proto, tls=tls if proto == "tls" else None)


@pytest.mark.parametrize(
    ("proto", "scheme", "param"),
    [("udp", "sip", ""), ("tcp", "sip", ";transport=tcp"), ("tls", "sips", "")],
)
def test_leg_uri_says_how_to_reach_the_leg(
    leg_tls_files: TlsFiles, proto: Proto, scheme: str, param: str
) -> None:
    """The leg's URI, and so its Record-Route, carries the transport (RFC 3261 19.1.4)."""
    with _proto_leg(proto, leg_tls_files) as leg:
        assert leg.contact == f"{scheme}:127.0.0.1:{leg.src.port}{param}"
        r = _req()
        assert leg.forward_outgoing(r, leg) is None
        assert r.get_headers("record-route") == [f"<{leg.contact};lr>"]


@pytest.mark.parametrize(
    ("proto", "want"),
    [
        ("udp", "sip:bob@127.0.0.1:{port}"),
        ("tcp", "<sip:bob@127.0.0.1:{port};transport=tcp>"),
        ("tls", "sips:bob@127.0.0.1:{port}"),
    ],
)
def test_contact_of_2xx_reaches_the_uas_over_its_transport(
    loop: EventLoop, leg_tls_files: TlsFiles, proto: Proto, want: str
) -> None:
    """A UAC sends its in-dialog request to the Contact of the 2xx and reaches the UAS.

    The Contact's scheme and transport come from the leg, not from the To
    (here a ``sip:`` To on a TLS leg); without ``;transport=tcp`` a TCP-only
    UAS would get the BYE over UDP, or not at all.
    """
    uac = Dispatcher([_proto_leg(proto, leg_tls_files)], loop)
    uas = Dispatcher([_proto_leg(proto, leg_tls_files)], loop)
    got: list[tuple[Packet, str]] = []

    def answer(packet: Packet, leg: Leg, from_: Addr) -> None:
        got.append((packet, "uas"))
        if isinstance(packet, Request) and packet.method() != "ACK":
            uas.deliver(packet.create_response(200), leg=leg, dst_addr=from_)

    uas.set_receiver(answer)
    uac.set_receiver(lambda p, leg, a: got.append((p, "uac")))
    try:
        port = uas.legs[0].src.port
        invite = _req("INVITE", uri=f"sip:bob@127.0.0.1:{port}")
        invite.set_header("to", "<sip:bob@example.com>")
        uac.deliver(invite, leg=uac.legs[0], dst_addr=uas.legs[0].src)
        loop.loop(10, lambda: any(w == "uac" for _, w in got))
        ok = next(p for p, w in got if w == "uac")
        assert isinstance(ok, Response) and ok.code() == 200
        contact = ok.get_header("contact")
        assert contact == want.format(port=port)
        target = contact.strip("<>")
        bye = _req("BYE", uri=target)
        errors: list[int] = []
        uac.deliver(bye, callback=errors.append)
        # (a reliable transport calls back with 0 once written: only errors stop)
        loop.loop(
            10, lambda: any(p.method() == "BYE" and w == "uas" for p, w in got) or any(errors)
        )
        assert [p.method() for p, w in got if w == "uas"] == ["INVITE", "BYE"], errors
    finally:
        uac.close()
        uas.close()


# ------------------------------------------- the Contact's shortcuts against the long way


# Leg._make_contact as it was before the shortcut (the general header parser)
def ref_make_contact(contact: str, packet: Packet, is_request: bool) -> str:
    hdr = packet.get_header("from" if is_request else "to")
    m = re.match(r"(\w+):(?:.*@)?(.*)\Z", contact)
    if hdr is None or m is None:
        return contact
    sproto, addr = m.group(1), m.group(2)
    user = sip_hdrval2parts("from", hdr)[0]
    um = re.search(r"([^<>@\s]+)@", user)
    if um is None:
        return contact
    # the user of the From/To without its scheme; the scheme is the leg's
    name = re.sub(r"\A[A-Za-z][A-Za-z0-9+.-]*:", "", um.group(1))
    out = f"{sproto}:{name}@{addr}"
    if ";" in out:
        out = f"<{out}>"
    return out


# values near the shortcut: "<...>" followed by anything
near_addr = st.builds(lambda a, b: f"<{a}>{b}", nasty_text, nasty_text)


@settings(max_examples=1500)
@given(st.one_of(nasty_text, near_addr))
@example("<sip:bob@127.0.0.1>;tag=1")
@example("<sip:bob@127.0.0.1>")
@example("<sip:bob@h>x;tag=1")
@example("<sip:bob@h> ;tag=1")
@example("<sip:b<o>b@h>;tag=1")
@example("<sip:bob@h;tag=1")
@example("<sip:bob@h>;tag=\\1")
@example('<sip:bob@h>;x="a;b"')
@example("<sip:bob@h>\r\n ;tag=1")
@example("<>")
@example("<")
def test_addr_data_equals_hdrval2parts(value: str) -> None:
    assert leg_mod._addr_data(value) == sip_hdrval2parts("from", value)[0]


@pytest.fixture(scope="module")
def module_udp_leg() -> Iterator[Leg]:
    """One UDP leg for the module: hypothesis runs a test many times with one fixture."""
    with Leg(addr="127.0.0.1", port=0, proto="udp") as leg:
        yield leg


_CONTACTS = [
    "",  # the leg's own (filled in by the test)
    "sip:127.0.0.1:5070",
    "sips:uas@[::1]:5061",
    "sip:host.example;transport=tcp",
    "no-scheme",
    "<sip:x@y>",
]


@given(address, address, st.sampled_from(_CONTACTS), st.booleans())
@example("<sip:alice@h>;tag=1", "<sip:bob@h>", "", True)
@example("<sip:alice@h>;tag=1", "<sip:bob@h>;tag=2", "", False)
@example('"Bob" <sip:bob@h>;tag=1', "sip:bob@h;tag=2", "sip:host.example;transport=tcp", False)
def test_make_contact_equals_the_reference_copy(
    module_udp_leg: Leg, frm: str, to: str, contact: str, is_request: bool
) -> None:
    own = module_udp_leg.contact
    module_udp_leg.contact = contact or own
    try:
        packet = Request("INVITE", "sip:bob@h", [("From", frm), ("To", to)])
        assert module_udp_leg._make_contact(packet, is_request) == ref_make_contact(
            module_udp_leg.contact, packet, is_request
        )
    finally:
        module_udp_leg.contact = own


def test_make_contact_follows_a_changed_leg_contact(module_udp_leg: Leg) -> None:
    own = module_udp_leg.contact
    packet = Request("INVITE", "sip:bob@h", [("From", "<sip:al@h>;tag=1")])
    try:
        for contact in ("sip:10.0.0.1:5070", "sip:10.0.0.2:5070", own):
            module_udp_leg.contact = contact
            want = ref_make_contact(contact, packet, True)
            assert module_udp_leg._make_contact(packet, True) == want
            assert want.endswith(contact.split(":", 1)[1])
    finally:
        module_udp_leg.contact = own


def test_forward_incoming_sees_a_strict_router_put_a_tcp_leg_in_the_uri() -> None:
    """RFC 3261 16.4: the URI is this leg (its URI has ;transport=tcp now): the
    original URI is the last Route, which is removed."""
    with Leg(addr="127.0.0.1", port=0, proto="tcp") as leg:
        r = _req(uri=leg.contact, route=["<sip:p2.example.com>", "<sip:bob@example.com>"])
        assert leg.forward_incoming(r) is None
        assert r.uri() == "sip:bob@example.com"
        assert r.get_headers("route") == ["<sip:p2.example.com>"]
