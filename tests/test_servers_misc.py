"""Tests for netsip.redirect, netsip.chain, netsip.blocker and netsip.dropper.

Each runs as the receiver of a Dispatcher with a UDP leg on the loopback
(``tests.server_helpers``), fed raw requests from a UDP socket, the way
Net::SIP's ``examples/register_and_redirect.pl`` puts them together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from netsip.blocker import Blocker
from netsip.chain import ReceiveChain, Receiver
from netsip.dropper import ByField, ByIPPort, Dropper
from netsip.leg import Leg
from netsip.packet import Packet, Response
from netsip.redirect import Redirect
from netsip.registrar import Registrar
from netsip.testing import FakeClock, pkt
from netsip.util import Addr
from tests.server_helpers import Client, Server, close_server, make_server, request

ALICE = "sip:alice@example.org"


@pytest.fixture
def server() -> Iterator[Server]:
    s = make_server()
    yield s
    close_server(s)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(server)
    yield c
    c.sock.close()


def _leg(server: Server) -> Leg:
    return server.disp.legs[0]


# ------------------------------------------------------------------ Redirect


def test_register_and_redirect(server: Server, client: Client) -> None:
    """examples/register_and_redirect.pl without auth: REGISTER, then INVITE gets 302."""
    reg = Registrar(dispatcher=server.disp)
    redir = Redirect(dispatcher=server.disp, registrar=reg)
    server.disp.set_receiver(ReceiveChain([redir, reg]))
    assert (
        client.ask(
            request(contacts=["<sip:alice@10.0.0.1:5070>;q=0.4", "<sip:alice@10.0.0.2>"])
        ).code()
        == 200
    )
    resp = client.ask(request("INVITE", ALICE, to=f"<{ALICE}>", callid="inv"))
    assert (resp.code(), resp.msg()) == (302, "Moved Temporarily")
    assert resp.get_headers("contact") == ["<sip:alice@10.0.0.2>", "<sip:alice@10.0.0.1:5070>"]
    unknown = client.ask(request("INVITE", "sip:bob@example.org", to="<sip:bob@example.org>"))
    assert unknown.code() == 404
    assert client.ask(request("CANCEL", ALICE, to=f"<{ALICE}>", callid="inv")).code() == 200
    assert client.ask(request("OPTIONS", "tel:+123", to="<tel:+123>")).code() == 416
    # an ACK is swallowed (nothing sent back), responses are not redirect's business
    ack = pkt(request("ACK", ALICE, to=f"<{ALICE}>", callid="inv"))
    assert redir.receive(ack, _leg(server), client.addr) == -1
    assert client.silence(request("ACK", ALICE, to=f"<{ALICE}>")) == []
    ok = pkt(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert redir.receive(ok, _leg(server), client.addr) is None
    reg.close()


# ------------------------------------------------------------------ ReceiveChain


class _Recorder:
    def __init__(self, name: str, result: object, log: list[str]) -> None:
        self.name, self.result, self.log = name, result, log

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> object:
        self.log.append(f"{self.name}:{packet.method()}")
        return self.result


def test_chain_stops_at_first_handler(server: Server) -> None:
    calls: list[str] = []
    a, b, c = _Recorder("a", None, calls), _Recorder("b", 7, calls), _Recorder("c", 1, calls)
    chain = ReceiveChain([a, b, c])
    assert isinstance(chain, Receiver) and isinstance(a, Receiver)
    assert chain.receive(pkt(request("OPTIONS")), _leg(server), Addr.parse("127.0.0.1:9")) == 7
    assert calls == ["a:OPTIONS", "b:OPTIONS"]
    calls.clear()
    nobody = ReceiveChain([a, _Recorder("d", 0, calls)])
    assert nobody.receive(pkt(request("OPTIONS")), _leg(server), Addr.parse("127.0.0.1:9")) is None
    assert calls == ["a:OPTIONS", "d:OPTIONS"]


def test_chain_methods_filter_callbacks_and_nesting(server: Server) -> None:
    calls: list[str] = []
    inner = ReceiveChain([_Recorder("reg", 200, calls)], methods=["register"])
    seen: list[str] = []

    def fallback(packet: Packet, leg: Leg, from_: Addr) -> bool:
        seen.append(packet.method() or "")
        return True

    chain = ReceiveChain([inner, fallback])
    src = Addr.parse("127.0.0.1:9")
    assert chain.receive(pkt(request("REGISTER")), _leg(server), src) == 200
    assert chain.receive(pkt(request("INVITE")), _leg(server), src) is True
    assert calls == ["reg:REGISTER"] and seen == ["INVITE"]
    # a filter callback (invoke_callback shapes: here a regular expression on the args)
    only_local = ReceiveChain([_Recorder("x", 1, calls)], filter=lambda p, leg, f: f.port == 9)
    assert only_local.receive(pkt(request("INVITE")), _leg(server), src) == 1
    assert (
        only_local.receive(pkt(request("INVITE")), _leg(server), Addr.parse("127.0.0.1:10")) is None
    )


def test_chain_over_udp(server: Server, client: Client) -> None:
    """A chain as the dispatcher's receiver: Blocker first, then the registrar."""
    reg = Registrar(dispatcher=server.disp)
    server.disp.set_receiver(ReceiveChain([Blocker({"SUBSCRIBE": 489}, server.disp), reg]))
    assert client.ask(request("SUBSCRIBE", ALICE)).code() == 489
    assert client.ask(request(contacts=["<sip:a@10.0.0.1>"])).code() == 200
    reg.close()


# ------------------------------------------------------------------ Blocker


def test_blocker(server: Server, client: Client) -> None:
    block = Blocker(
        block={"subscribe": 405, "MESSAGE": "403 No messages here", "INVITE": "603"},
        dispatcher=server.disp,
        allow=["INVITE", "ACK", "BYE"],
    )
    server.disp.set_receiver(block)
    resp = client.ask(request("SUBSCRIBE", ALICE))
    assert (resp.code(), resp.get_headers("allow")) == (405, ["INVITE", "ACK", "BYE"])
    resp = client.ask(request("MESSAGE", ALICE))
    assert (resp.code(), resp.msg()) == (403, "No messages here")
    assert client.ask(request("INVITE", ALICE, callid="i")).code() == 603
    # the ACK of the 603 is swallowed (and stops its retransmission)
    assert block.receive(pkt(request("ACK", ALICE, callid="i")), _leg(server), client.addr) == 603
    assert block.receive(pkt(request("OPTIONS", ALICE)), _leg(server), client.addr) is None
    assert client.silence(request("OPTIONS", ALICE)) == []
    with pytest.raises(ValueError, match="DDD"):
        Blocker({"INVITE": "abc"}, server.disp)
    with pytest.raises(ValueError, match="DDD"):
        Blocker({"INVITE": 200}, server.disp)
    with pytest.raises(ValueError, match="no mapping"):
        Blocker({}, server.disp)


# ------------------------------------------------------------------ Dropper


def test_dropper_callbacks(server: Server) -> None:
    src = Addr.parse("127.0.0.1:9")
    drop_sub = Dropper(cb=lambda p, leg, f: p.method() == "SUBSCRIBE")
    assert drop_sub.receive(pkt(request("SUBSCRIBE")), _leg(server), src) is True
    assert drop_sub.receive(pkt(request("INVITE")), _leg(server), src) is None
    both = Dropper(cbs=[lambda *a: False, re.compile("INVITE")])
    assert both.receive(pkt(request("INVITE")), _leg(server), src) is True
    with pytest.raises(ValueError, match="cb or cbs"):
        Dropper()


def test_by_ip_port_rate(server: Server, client: Client) -> None:
    """A source sending `attempts` messages within `interval` is dropped until it slows down."""
    clock = FakeClock(5000.0)
    by_ip = ByIPPort(attempts=3, interval=10, methods=["REGISTER"], clock=clock)
    reg = Registrar(dispatcher=server.disp)
    server.disp.set_receiver(ReceiveChain([Dropper(cb=by_ip), reg]))
    assert client.ask(request(contacts=["<sip:a@10.0.0.1>"])).code() == 200
    assert client.ask(request(contacts=["<sip:a@10.0.0.1>"])).code() == 200
    assert client.silence(request(contacts=["<sip:a@10.0.0.1>"])) == []  # the third: dropped
    # other methods are not counted nor dropped
    server.disp.set_receiver(
        ReceiveChain([Dropper(cb=by_ip), Blocker({"OPTIONS": 405}, server.disp)])
    )
    assert client.ask(request("OPTIONS")).code() == 405
    data = by_ip.data()
    assert sum(data["127.0.0.1"][client.addr.port].values()) == 3
    clock.advance(11)  # the window has passed: counts expire, the source is let in again
    server.disp.set_receiver(ReceiveChain([Dropper(cb=by_ip), reg]))
    assert client.ask(request(contacts=["<sip:a@10.0.0.1>"])).code() == 200
    assert list(by_ip.data()["127.0.0.1"][client.addr.port].values()) == [1]
    reg.close()


def test_by_ip_port_whole_ip_and_expiry(server: Server) -> None:
    clock = FakeClock(100.0)
    by_ip = ByIPPort(attempts=5, interval=60, clock=clock)
    # port 0 blocks every port of the IP (Net::SIP's convention), here "forever"
    by_ip.data()["10.1.1.1"] = {0: {10**9: 5}}
    assert by_ip.run(pkt(request()), _leg(server), Addr.parse("10.1.1.1:5060")) is True
    assert by_ip.run(pkt(request()), _leg(server), Addr.parse("10.1.1.2:5060")) is None
    # many sources, then time passes: the table empties without a full scan per packet
    for i in range(200):
        by_ip.run(pkt(request()), _leg(server), Addr.parse(f"10.2.0.{i % 250}:{5000 + i}"))
        clock.advance(0.25)
    assert len(by_ip.data()) == 1 + 1 + 200
    clock.advance(61)
    by_ip.run(pkt(request()), _leg(server), Addr.parse("10.3.0.1:5060"))
    assert set(by_ip.data()) == {"10.1.1.1", "10.3.0.1"}
    by_ip.expire()  # the full scan keeps the hand-made entry (its time is in the future)
    assert "10.1.1.1" in by_ip.data()
    with pytest.raises(ValueError):
        ByIPPort(attempts=0, interval=10)


def test_by_ip_port_database_file(server: Server, tmp_path: Path) -> None:
    db = tmp_path / "drop.json"
    clock = FakeClock(1000.0)
    first = ByIPPort(attempts=2, interval=100, database=str(db), clock=clock)
    assert json.loads(db.read_text()) == {}
    first.run(pkt(request()), _leg(server), Addr.parse("10.0.0.1:5060"))
    assert json.loads(db.read_text()) == {"10.0.0.1": {"5060": {"1000": 1}}}
    # a new dropper (a restarted server) loads the counts and drops the second attempt
    second = ByIPPort(attempts=2, interval=100, database=db, clock=clock)
    assert second.run(pkt(request()), _leg(server), Addr.parse("10.0.0.1:5060")) is True
    saved: list[object] = []
    third = ByIPPort(
        attempts=2, interval=100, database=lambda d, save=None: saved.append(save), clock=clock
    )
    third.run(pkt(request()), _leg(server), Addr.parse("10.0.0.1:5060"))
    assert saved == [None, True]


def test_by_field(server: Server, client: Client) -> None:
    by_field = ByField(
        {"User-Agent": re.compile(r"^friendly-scanner$")},
        methods=["REGISTER", "INVITE", ""],
        From=re.compile(r"sip(?:vicious|sscuser)"),
    )
    reg = Registrar(dispatcher=server.disp)
    server.disp.set_receiver(ReceiveChain([Dropper(cb=by_field), reg]))
    scanner = request(contacts=["<sip:a@10.0.0.1>"], headers=[("User-Agent", "friendly-scanner")])
    assert client.silence(scanner) == []
    assert (
        client.ask(
            request(contacts=["<sip:a@10.0.0.1>"], headers=[("User-Agent", "netsip")])
        ).code()
        == 200
    )
    src = Addr.parse("127.0.0.1:9")
    options = pkt(request("OPTIONS", headers=[("User-Agent", "friendly-scanner")]))
    assert by_field.run(options, _leg(server), src) is None  # not a method looked at
    resp = pkt(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:sipvicious@x>\r\n"
        b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    assert isinstance(resp, Response) and by_field.run(resp, _leg(server), src) is True
    with_cb = ByField({"Subject": lambda *values: "spam" in values})
    assert with_cb.run(pkt(request(headers=[("Subject", "spam")])), _leg(server), src) is True
    with pytest.raises(ValueError, match=r"re\.compile"):
        ByField({"From": "sipvicious"})
    reg.close()
