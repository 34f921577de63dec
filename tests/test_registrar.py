"""Tests for netsip.registrar: RFC 3261 10.3 over loopback UDP, expiry on a fake clock.

The registrar runs on a Dispatcher with one UDP leg; clients are bare UDP
sockets sending raw REGISTERs (``tests.server_helpers``), and netsip's own
Endpoint and Simple for the real client side (refreshes).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from netsip.dispatcher import Dispatcher
from netsip.endpoint import Endpoint
from netsip.leg import Leg
from netsip.packet import Request, Response
from netsip.registrar import (
    Binding,
    MemoryStore,
    Registrar,
    RegistrationStore,
    binding_key,
    canonical_aor,
)
from netsip.simple import Simple
from netsip.testing import drive, pkt
from netsip.util import Addr
from tests.server_helpers import Client, Server, close_server, make_server, request
from tests.support import free_udp_tcp_port, require_perl_netsip


@dataclass(eq=False)
class World:
    server: Server
    reg: Registrar
    client: Client

    def ask(self, **kw: object) -> Response:
        return self.client.ask(request(**kw))  # type: ignore[arg-type]  # (test shorthand)


@pytest.fixture
def world() -> Iterator[World]:
    server = make_server()
    reg = Registrar(dispatcher=server.disp, min_expires=30, max_expires=7200)
    server.disp.set_receiver(reg)
    client = Client(server)
    yield World(server, reg, client)
    client.sock.close()
    reg.close()
    close_server(server)


def contacts(resp: Response) -> list[str]:
    return resp.get_headers("contact")


ALICE = "sip:alice@example.org"


# ------------------------------------------------------------------ RFC 3261 10.3


def test_register_query_and_answer(world: World) -> None:
    """A binding is stored; the 200 lists it with its expiry, Date and Supported: path."""
    resp = world.ask(contacts=["<sip:alice@127.0.0.1:5070>"])
    assert resp.code() == 200
    assert contacts(resp) == ["<sip:alice@127.0.0.1:5070>;expires=3600"]
    assert resp.get_header("date") is not None
    assert resp.get_headers("supported") == ["path", "outbound"]
    assert world.reg.query(ALICE) == ["sip:alice@127.0.0.1:5070"]
    # the AOR is canonical: parameters dropped, host case and escapes do not matter
    assert world.reg.query("<sip:%61lice@EXAMPLE.org;transport=udp>") == [
        "sip:alice@127.0.0.1:5070"
    ]
    # a REGISTER without Contact is a query (step 8)
    resp = world.ask(callid="other", cseq=9)
    assert contacts(resp) == ["<sip:alice@127.0.0.1:5070>;expires=3600"]


def test_expires_header_parameter_and_caps(world: World) -> None:
    """The expires parameter beats the header; too long is capped at max_expires; 0 removes."""
    resp = world.ask(contacts=["<sip:a@10.0.0.1>;expires=100", "<sip:b@10.0.0.1>"], expires=200)
    assert sorted(contacts(resp)) == [
        "<sip:a@10.0.0.1>;expires=100",
        "<sip:b@10.0.0.1>;expires=200",
    ]
    resp = world.ask(contacts=["<sip:a@10.0.0.1>;expires=99999999"])
    assert "<sip:a@10.0.0.1>;expires=7200" in contacts(resp)
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], expires=0)
    assert contacts(resp) == ["<sip:b@10.0.0.1>;expires=200"]
    assert world.reg.query(ALICE) == ["sip:b@10.0.0.1"]


def test_interval_too_brief_423(world: World) -> None:
    """0 < expires < min_expires: 423 with Min-Expires, nothing stored (10.3 step 6)."""
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], expires=10)
    assert (resp.code(), resp.get_header("min-expires")) == (423, "30")
    assert world.reg.query(ALICE) == []
    resp = world.ask(contacts=["<sip:a@10.0.0.1>;expires=29", "<sip:b@10.0.0.1>"])
    assert resp.code() == 423 and world.reg.query(ALICE) == []
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], expires=30).code() == 200


def test_star_unregisters_all(world: World) -> None:
    """Contact: * with Expires: 0 removes every binding; otherwise 400."""
    world.ask(contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>"], callid="x")
    assert len(world.reg.query(ALICE)) == 2
    assert world.ask(contacts=["*"], callid="y").code() == 400  # no Expires
    assert world.ask(contacts=["*"], expires=60, callid="y").code() == 400
    assert world.ask(contacts=["*", "<sip:c@10.0.0.1>"], expires=0, callid="y").code() == 400
    assert len(world.reg.query(ALICE)) == 2
    resp = world.ask(contacts=["*"], expires=0, callid="y")
    assert resp.code() == 200 and contacts(resp) == []
    assert world.reg.query(ALICE) == [] and list(world.reg.store.aors()) == []


def test_refresh_ordering_by_callid_and_cseq(world: World) -> None:
    """Same Call-ID: a CSeq not higher fails with 500 and changes nothing (10.3 step 7)."""
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], callid="c", cseq=5, expires=100).code() == 200
    late = world.ask(contacts=["<sip:a@10.0.0.1>"], callid="c", cseq=4, expires=0)
    assert late.code() == 500
    same = world.ask(contacts=["<sip:a@10.0.0.1>"], callid="c", cseq=5, expires=0, from_tag="f2")
    assert same.code() == 500
    assert world.reg.query(ALICE) == ["sip:a@10.0.0.1"]
    # all or nothing: a good contact in the same request is not added either
    mixed = world.ask(contacts=["<sip:b@10.0.0.1>", "<sip:a@10.0.0.1>"], callid="c", cseq=3)
    assert mixed.code() == 500 and world.reg.query(ALICE) == ["sip:a@10.0.0.1"]
    # another Call-ID (another UA, or a rebooted one) may replace it whatever its CSeq
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], callid="d", cseq=1, expires=300)
    assert contacts(resp) == ["<sip:a@10.0.0.1>;expires=300"]
    assert world.reg.lookup(ALICE)[0].callid == "d"
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], callid="d", cseq=2, expires=0).code() == 200
    assert world.reg.query(ALICE) == []


def test_several_contacts_ordered_by_q(world: World) -> None:
    """Every binding is listed, highest q first; a contact without q counts as 1."""
    world.ask(
        contacts=['"Desk" <sip:desk@10.0.0.1>;q=0.5', "<sip:mobile@10.0.0.2>;q=0.9"], callid="1"
    )
    resp = world.ask(contacts=["<sip:soft@10.0.0.3>;q=0.1"], callid="2")
    assert contacts(resp) == [
        "<sip:mobile@10.0.0.2>;expires=3600;q=0.9",
        "<sip:desk@10.0.0.1>;expires=3600;q=0.5",
        "<sip:soft@10.0.0.3>;expires=3600;q=0.1",
    ]
    world.ask(contacts=["<sip:plain@10.0.0.4>"], callid="3")
    assert world.reg.query(ALICE)[0] == "sip:plain@10.0.0.4"
    assert world.ask(contacts=["<sip:x@10.0.0.5>;q=1.5"], callid="4").code() == 400


def test_equal_q_freshest_binding_first(world: World) -> None:
    """Among equal q the binding registered (or refreshed) last comes first: a phone that
    went away without unregistering must not win the calls of its successor."""
    world.ask(contacts=["<sip:old@10.0.0.1>"], callid="1", expires=600)
    world.server.advance(60)
    world.ask(contacts=["<sip:new@10.0.0.2>"], callid="2", expires=600)
    assert world.reg.query(ALICE) == ["sip:new@10.0.0.2", "sip:old@10.0.0.1"]
    world.server.advance(60)
    refresh = world.ask(contacts=["<sip:old@10.0.0.1>"], callid="1", expires=600)
    assert refresh.code() == 200
    assert world.reg.query(ALICE) == ["sip:old@10.0.0.1", "sip:new@10.0.0.2"]


def test_binding_matched_by_uri_rules(world: World) -> None:
    """19.1.4: host case does not matter, transport does; other parameters are ignored."""
    world.ask(contacts=["<sip:a@HOST.example;transport=tcp;foo=1>"], callid="1")
    world.ask(contacts=["<sip:a@host.example;transport=TCP>"], callid="2")
    assert len(world.reg.query(ALICE)) == 1
    world.ask(contacts=["<sip:a@host.example>"], callid="3")
    assert len(world.reg.query(ALICE)) == 2
    assert binding_key("sip:a@h:5060") != binding_key("sip:a@h")


def test_path_stored_returned_and_routed(world: World) -> None:
    """RFC 3327: Path is kept with the binding, echoed if supported, used as Route."""
    path = [("Path", "<sip:edge1.example;lr>"), ("Path", "<sip:edge2.example;lr>")]
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], headers=[*path, ("Supported", "path")], vias=3)
    assert resp.get_headers("path") == ["<sip:edge1.example;lr>", "<sip:edge2.example;lr>"]
    assert world.reg.lookup(ALICE)[0].path == ("<sip:edge1.example;lr>", "<sip:edge2.example;lr>")
    # not echoed to a UA that did not say it supports path
    resp = world.ask(contacts=["<sip:b@10.0.0.1>"], headers=path, callid="2", vias=3)
    assert resp.get_headers("path") == []
    # a request to the AOR is rewritten to the contact, with the path as Route
    invite = pkt(request("INVITE", ALICE, to=f"<{ALICE}>", callid="inv"))
    assert isinstance(invite, Request)
    assert world.reg.receive(invite, world.server.disp.legs[0], world.client.addr) is None
    assert invite.uri() in ("sip:a@10.0.0.1", "sip:b@10.0.0.1")
    assert invite.get_headers("route")[:2] == ["<sip:edge1.example;lr>", "<sip:edge2.example;lr>"]


def test_outbound_instance_and_reg_id(world: World) -> None:
    """RFC 5626 6: +sip.instance/reg-id kept and returned; the flow key replaces the URI."""
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    resp = world.ask(
        contacts=[f"<sip:a@10.0.0.1;ob>;{inst};reg-id=1"], headers=[("Supported", "outbound, path")]
    )
    assert resp.code() == 200 and resp.get_header("require") == "outbound"
    assert contacts(resp) == [f"<sip:a@10.0.0.1;ob>;expires=3600;{inst};reg-id=1"]
    b = world.reg.lookup(ALICE)[0]
    assert (b.instance, b.reg_id) == ('"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"', 1)
    # the same instance and reg-id from a new address (a new flow) replaces the binding
    world.ask(contacts=[f"<sip:a@10.0.0.9;ob>;{inst};reg-id=1"])
    assert world.reg.query(ALICE) == ["sip:a@10.0.0.9;ob"]
    # a second reg-id is a second flow of the same instance
    world.ask(contacts=[f"<sip:a@10.0.0.8;ob>;{inst};reg-id=2"])
    assert len(world.reg.query(ALICE)) == 2
    # two contacts to register when one has a reg-id: 400
    two = world.ask(contacts=[f"<sip:a@10.0.0.7>;{inst};reg-id=3", "<sip:z@10.0.0.7>"])
    assert two.code() == 400
    # but a flow may come with contacts it removes (expiry 0): here flow 2, by its key
    one = world.ask(
        contacts=[
            f"<sip:a@10.0.0.7>;{inst};reg-id=3",
            f"<sip:a@10.0.0.8>;{inst};reg-id=2;expires=0",
        ]
    )
    assert one.code() == 200 and len(world.reg.query(ALICE)) == 2


def test_outbound_not_first_hop(world: World) -> None:
    """Not the first hop and no ";ob" Path: 439 if the UA requires outbound, else reg-id ignored."""
    inst = '+sip.instance="<urn:uuid:1>"'
    resp = world.ask(
        contacts=[f"<sip:a@10.0.0.1>;{inst};reg-id=1"], vias=2, headers=[("Supported", "outbound")]
    )
    assert resp.code() == 439
    resp = world.ask(contacts=[f"<sip:a@10.0.0.1>;{inst};reg-id=1"], vias=2, callid="2")
    assert resp.code() == 200 and resp.get_header("require") is None
    assert world.reg.lookup(ALICE)[0].reg_id is None
    # an edge proxy that does outbound puts ";ob" on its Path: processing applies
    resp = world.ask(
        contacts=[f"<sip:a@10.0.0.2>;{inst};reg-id=1"],
        vias=2,
        callid="3",
        headers=[("Path", "<sip:edge.example;lr;ob>"), ("Supported", "outbound, path")],
    )
    assert resp.get_header("require") == "outbound"


def test_require_unknown_extension_420(world: World) -> None:
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], headers=[("Require", "path, foo")])
    assert (resp.code(), resp.get_header("unsupported")) == (420, "foo")


def test_domains(world: World) -> None:
    """Only served domains (and their subdomains): 404 for others (10.3 step 5, 21.4.5)."""
    reg = Registrar(dispatcher=world.server.disp, domains=["example.org"])
    world.server.disp.set_receiver(reg)
    assert world.ask(contacts=["<sip:a@10.0.0.1>"]).code() == 200
    sub = world.ask(
        contacts=["<sip:a@10.0.0.1>"], to="<sip:bob@sub.example.org>", uri="sip:127.0.0.1"
    )
    assert sub.code() == 200
    other = world.ask(
        contacts=["<sip:a@10.0.0.1>"], to="<sip:eve@badexample.org>", uri="sip:127.0.0.1"
    )
    assert other.code() == 404
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], uri="sip:other.net").code() == 404
    assert reg.query("sip:eve@badexample.org") == []
    # pass_foreign: left to the next receiver of a chain (a proxy forwards it)
    passing = Registrar(dispatcher=world.server.disp, domains="example.org", pass_foreign=True)
    foreign = pkt(request(to="<sip:eve@other.net>"))
    assert passing.receive(foreign, world.server.disp.legs[0], world.client.addr) is None
    reg.close()


# ------------------------------------------------------------------ expiry


def test_bindings_expire_on_the_timer(world: World) -> None:
    """Without any further request, the registrar's timer drops expired bindings."""
    world.ask(contacts=["<sip:a@10.0.0.1>"], expires=60)
    world.ask(contacts=["<sip:b@10.0.0.1>"], expires=120, to="<sip:bob@example.org>")
    store = world.reg.store
    assert isinstance(store, MemoryStore) and len(store) == 2
    world.server.advance(61)
    assert world.reg.query(ALICE) == [] and len(store) == 1
    assert world.reg.query("sip:bob@example.org") == ["sip:b@10.0.0.1"]
    world.server.advance(60)
    assert len(store) == 0 and store.heap_size() == 0


def test_refresh_moves_expiry(world: World) -> None:
    world.ask(contacts=["<sip:a@10.0.0.1>"], expires=60, cseq=1, callid="r")
    world.server.advance(50)
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], expires=60)
    assert contacts(resp) == ["<sip:a@10.0.0.1>;expires=60"]
    world.server.advance(50)
    assert world.reg.query(ALICE) == ["sip:a@10.0.0.1"]
    world.server.advance(11)
    assert world.reg.query(ALICE) == []


class _CountingDict(dict[str, tuple[Binding, ...]]):
    reads = 0

    def __getitem__(self, key: str) -> tuple[Binding, ...]:
        _CountingDict.reads += 1
        return super().__getitem__(key)


def test_memory_store_expire_pops_only_due() -> None:
    """expire() looks at the AORs that are due, not at the whole store."""
    store = MemoryStore()
    assert isinstance(store, RegistrationStore)
    for i in range(5000):
        store.put(f"sip:u{i}@h", [Binding(f"sip:u{i}@10.0.0.1", 1000.0 + i, "c", 1)], 0.0)
    store._table = _CountingDict(store._table)  # (counts the table reads of expire)
    _CountingDict.reads = 0
    assert store.expire(1002.5) == 3
    assert _CountingDict.reads == 3 and len(store) == 4997
    assert store.expire(1002.5) == 0 and _CountingDict.reads == 3
    assert store.next_expiry() == 1003.0


def test_memory_store_heap_bounded() -> None:
    """Expiries moved earlier again and again do not grow the heap without bound."""
    store = MemoryStore()
    for i in range(10):
        store.put(f"sip:u{i}@h", [Binding("sip:x@h", 10_000.0, "c", 1)], 0.0)
    for n in range(5000):
        store.put("sip:u0@h", [Binding("sip:x@h", 9_000.0 - n, "c", n + 2)], 0.0)
    assert store.heap_size() <= 2 * 10 + 1024 + 1
    assert store.next_expiry() == 9_000.0 - 4999
    assert store.expire(20_000.0) == 10 and store.heap_size() == 0


# ------------------------------------------------------------------ netsip's clients


def test_endpoint_registers_and_refreshes(world: World) -> None:
    """netsip's Endpoint registers, its refresh (same Call-ID, next CSeq) keeps the binding."""
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], world.server.loop)
    ep = Endpoint(disp)
    codes: list[int] = []
    try:
        ep.register(
            registrar=f"sip:{world.server.addr}",
            from_=f"<{ALICE}>",
            contact=f"<sip:alice@{disp.legs[0].src}>",
            expires=60,
            callback=lambda _ep, _ctx, _err, code, *_: codes.append(code),
        )
        drive(world.server.loop, lambda: codes, 5.0)
        assert codes == [200]
        world.server.advance(100)  # refreshed at 30 s, 60 s, 90 s
        assert codes[-1] == 200 and len(codes) >= 3
        assert world.reg.query(ALICE) == [f"sip:alice@{disp.legs[0].src}"]
    finally:
        ep.close()
        disp.close()


def test_endpoint_over_tcp() -> None:
    """Over TCP the answer goes back on the client's connection."""
    server = make_server("tcp")
    reg = Registrar(dispatcher=server.disp)
    server.disp.set_receiver(reg)
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="tcp")], server.loop)
    ep = Endpoint(disp)
    codes: list[int] = []
    try:
        ep.register(
            registrar=f"sip:{server.addr};transport=tcp",
            from_=f"<{ALICE}>",
            contact=f"<sip:alice@{disp.legs[0].src};transport=tcp>",
            callback=lambda _ep, _ctx, _err, code, *_: codes.append(code),
            refresh=False,
        )
        drive(server.loop, lambda: codes, 5.0)
        assert codes == [200]
        assert reg.query(ALICE) == [f"sip:alice@{disp.legs[0].src};transport=tcp"]
    finally:
        ep.close()
        disp.close()
        reg.close()
        close_server(server)


def test_simple_register(world: World) -> None:
    """Simple.register returns the expiry the registrar granted (capped at max_expires)."""
    with Simple(from_=ALICE, leg="udp:127.0.0.1:0", loop=world.server.loop) as ua:
        granted = ua.register(registrar=f"{world.server.addr}", expires=86400, refresh=False)
        assert granted == 7200
        assert len(world.reg.query(ALICE)) == 1


# ------------------------------------------------------------------ bad input


def _store_empty(world: World) -> bool:
    store = world.reg.store
    assert isinstance(store, MemoryStore)
    return len(store) == 0 and store.heap_size() == 0


@pytest.mark.parametrize(
    "contact",
    ["<sip:>", "<sip:a@h:99999>", "<sip:a@h>;q=x", "<sip:a@[zz]>", "<foo>", '<sip:a@h;x="y">'],
)
def test_garbage_contact_400_not_stored(
    world: World, contact: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Contact that is no URI (Net::SIP stored it, leak bug #69): 400, logged, nothing kept."""
    with caplog.at_level(logging.INFO, logger="netsip.registrar"):
        for _ in range(20):
            resp = world.ask(contacts=[contact])
            assert (resp.code(), resp.msg()) == (400, "Bad Contact"), contact
    assert "400 Bad Contact" in caplog.text
    assert _store_empty(world)


class _Recording:
    """The registrar's dispatcher, but what it delivers is recorded instead.

    (A stand-in rather than a patched ``deliver``: the compiled build's
    Dispatcher takes no replaced methods.)
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.sent: list[Response] = []

    def deliver(self, packet: Response, **_kw: object) -> None:
        self.sent.append(packet)

    def __getattr__(self, name: str) -> object:
        return getattr(self._dispatcher, name)


def _direct(world: World, req: Request) -> tuple[int | None, list[Response]]:
    """Hand ``req`` to the registrar as the dispatcher would; what it answered."""
    real = world.reg.dispatcher
    recording = _Recording(real)
    world.reg.dispatcher = recording  # type: ignore[assignment]  # (duck-typed stand-in)
    try:
        code = world.reg.receive(req, real.legs[0], Addr.parse("127.0.0.1:9"))
    finally:
        world.reg.dispatcher = real
    return code, recording.sent


def _register(*contact_values: str, to: str | None = f"<{ALICE}>") -> Request:
    headers = [("via", "SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-d"), ("from", f"<{ALICE}>;tag=1")]
    headers += [("to", to)] if to is not None else []
    headers += [("call-id", "d"), ("cseq", "1 REGISTER")]
    headers += [("contact", c) for c in contact_values]
    return Request("REGISTER", "sip:example.org", headers)


@pytest.mark.parametrize(
    "contact",
    ["garbage", "<>", "sip:a@h;;;=", "<sip:a@host name>", "<sip:a@h>junk", '<sip:a@h>;"x'],
)
def test_garbage_contact(world: World, contact: str) -> None:
    """A garbage Contact (Net::SIP's leak bug #69): 400 and nothing stored; on the wire
    from the socket pool (the parser refuses it, the Warning says why), given directly
    from the registrar."""
    resp = world.ask(contacts=[contact])
    assert resp.code() == 400 and "contact" in (resp.get_header("warning") or "")
    code, sent = _direct(world, _register(contact))
    assert code == 400 and [r.code() for r in sent] == [400]
    assert _store_empty(world)


@pytest.mark.parametrize(
    ("param", "granted"),
    [("10" + "0" * 40, 7200), ("-5", 3600), ("abc", 3600), ("1e5", 3600), ("4294967296", 7200)],
)
def test_contact_expires_odd_values(world: World, param: str, granted: int) -> None:
    """Huge values are capped at max_expires; malformed ones count as 3600 (RFC 3261 20.10)."""
    resp = world.ask(contacts=[f"<sip:a@10.0.0.1>;expires={param}"])
    assert contacts(resp) == [f"<sip:a@10.0.0.1>;expires={granted}"]


@pytest.mark.parametrize("value", ["1" + "0" * 40, "-5", "abc"])
def test_expires_header_out_of_range_refused_by_parser(world: World, value: str) -> None:
    """An Expires header that is no 32-bit number never gets past the parser: the socket
    pool answers 400 with a Warning; the registrar keeps serving."""
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], expires=value)
    assert resp.code() == 400 and "expires" in (resp.get_header("warning") or "")
    assert _store_empty(world)
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], expires=60).code() == 200


def test_too_many_contacts_403(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """More Contact values than max_contacts (20): 403 Too Many Contacts, nothing stored."""
    many = [f"<sip:u{i}@10.0.{i // 250}.{i % 250}>" for i in range(200)]
    with caplog.at_level(logging.INFO, logger="netsip.registrar"):
        resp = world.ask(contacts=[", ".join(many)])
    assert (resp.code(), resp.msg()) == (403, "Too Many Contacts")
    assert "200 contacts" in caplog.text
    assert _store_empty(world)
    # the limit also holds per AOR across requests
    for i in range(20):
        assert world.ask(contacts=[f"<sip:u{i}@10.0.0.1>"], callid=f"c{i}").code() == 200
    assert world.ask(contacts=["<sip:u99@10.0.0.1>"], callid="c99").code() == 403
    assert len(world.reg.query(ALICE)) == 20


def test_thousand_contacts(world: World) -> None:
    """1,000 contacts: the parser refuses such a datagram (more than 256 values of a
    header) and the socket pool answers 400; handed over directly, the registrar
    answers 403 without parsing them."""
    many = [f"<sip:u{i}@10.0.{i // 250}.{i % 250}>" for i in range(1000)]
    resp = world.ask(contacts=[", ".join(many)])
    assert resp.code() == 400 and "too many values" in (resp.get_header("warning") or "")
    code, sent = _direct(world, _register(*many))
    assert code == 403 and sent[0].msg() == "Too Many Contacts"
    assert _store_empty(world)


@pytest.mark.parametrize(
    ("to", "code"),
    [("<tel:+4930123>", 404), ("<mailto:a@example.org>", 404), ("garbage here", 400), ("<>", 400)],
)
def test_to_not_a_sip_uri(world: World, to: str, code: int) -> None:
    """A To that is no SIP URI: 404 (no AOR of a domain here), no URI at all: 400."""
    code_got, sent = _direct(world, _register("<sip:a@10.0.0.1>", to=to))
    assert code_got == code and [r.code() for r in sent] == [code]
    assert _store_empty(world)


def test_to_tel_over_the_wire(world: World) -> None:
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], to="<tel:+4930123>").code() == 404


def test_missing_to(world: World) -> None:
    """No To: the dispatcher answers 400 first; called directly, the registrar does."""
    resp = world.ask(contacts=["<sip:a@10.0.0.1>"], to=None)
    assert resp.code() == 400
    code, sent = _direct(world, _register("<sip:a@10.0.0.1>", to=None))
    assert code == 400 and sent[0].msg() == "Missing To"
    assert _store_empty(world)


def test_request_uri_not_sip_416(world: World) -> None:
    assert world.ask(contacts=["<sip:a@10.0.0.1>"], uri="tel:+123").code() == 416


def test_canonical_aor() -> None:
    assert (
        canonical_aor("sip:Alice@EXAMPLE.org:5070;transport=tcp?x=1")
        == "sip:Alice@example.org:5070"
    )
    assert canonical_aor("<sips:%62ob@h>") == "sips:bob@h"
    assert canonical_aor("tel:+1") is None and canonical_aor("garbage here") is None


# ------------------------------------------------------------------ Perl's Net::SIP as the client

_PERL_REGISTER = r"""
use strict; use warnings; use Net::SIP;
my ($reg, $port, $expires) = @ARGV;
my $ua = Net::SIP::Simple->new(
    registrar => "127.0.0.1:$reg", from => 'sip:bob@example.org', leg => "127.0.0.1:$port");
my $done;
$ua->register(expires => $expires, cb_final => sub {
    my ($status, %info) = @_;
    my $p = $info{packet};
    my @c = $p ? $p->get_header('contact') : ();
    print "$status ", ($p ? $p->code : '-'), " ", join(',', @c), "\n";
    $done = 1;
});
$ua->loop(10, \$done);
"""


def test_perl_netsip_registers(world: World) -> None:
    """Perl's Net::SIP::Simple registers and unregisters with netsip's registrar."""
    perl = require_perl_netsip()
    port = free_udp_tcp_port()

    def perl_register(expires: int) -> str:
        args = [perl, "-e", _PERL_REGISTER, str(world.server.addr.port), str(port), str(expires)]
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            drive(world.server.loop, lambda: proc.poll() is not None, 20.0, "perl exits")
            out, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode().strip()

    assert perl_register(1800) == f"OK 200 <sip:bob@127.0.0.1:{port}>;expires=1800"
    assert world.reg.query("sip:bob@example.org") == [f"sip:bob@127.0.0.1:{port}"]
    assert perl_register(0) == "OK 200"
    assert world.reg.query("sip:bob@example.org") == []


class _FailingStore(MemoryStore):
    """A store whose commits fail (a database down)."""

    def put(self, aor: str, bindings: Sequence[Binding], now: float) -> None:
        raise ConnectionRefusedError("store down")


def test_store_failure_500(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A store that cannot commit: 500, nothing half-done (10.3 step 7)."""
    reg = Registrar(dispatcher=world.server.disp, store=_FailingStore())
    world.server.disp.set_receiver(reg)
    with caplog.at_level(logging.INFO, logger="netsip.registrar"):
        assert world.ask(contacts=["<sip:a@10.0.0.1>"]).code() == 500
    assert "store down" in caplog.text and reg.query(ALICE) == []


def test_domain_alias_and_aor_without_user(world: World) -> None:
    """Net::SIP's ``domain=``; an AOR without user part is checked by its host too."""
    reg = Registrar(dispatcher=world.server.disp, domain="example.org")
    world.server.disp.set_receiver(reg)
    assert reg.domains == ("example.org",)
    ok = world.ask(contacts=["<sip:gw@10.0.0.1>"], to="<sip:example.org>", uri="sip:127.0.0.1")
    assert ok.code() == 200 and reg.query("sip:example.org") == ["sip:gw@10.0.0.1"]
    bad = world.ask(contacts=["<sip:gw@10.0.0.1>"], to="<sip:other.net>", uri="sip:127.0.0.1")
    assert bad.code() == 404
    reg.close()
