"""Tests for netsip._redisstore (RedisStore) and ``netsip proxy --store redis:// --workers N``.

Every test runs against a real ``redis-server`` that the tests start on a
free loopback port (``tests.support.RedisServer``; skipped without it unless
``NETSIP_REQUIRE_PEERS=1``). The store's protocol behaviour is checked on
both stores (parametrised), and the registrar tests of
``tests/test_registrar.py`` that do not look inside the memory store run
again on Redis. The registrar's loop runs on a fake clock: binding expiries
follow it, while Redis' TTLs are real (relative to the fake ``now``), so the
TTL tests look at ``PTTL`` or wait (bounded) for Redis' expiry event.
Faults: Redis killed and started again, Redis stalled by ``DEBUG SLEEP``.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import tests.test_registrar as memory_tests
from netsip._redisstore import RedisStore, RedisStoreError, decode_binding, encode_binding
from netsip.chain import ReceiveChain
from netsip.eventloop import EventLoop
from netsip.proxy import StatelessProxy
from netsip.registrar import Binding, MemoryStore, Registrar, RegistrationStore
from netsip.simple import Call
from netsip.testing import drive
from netsip.util import Addr
from tests.server_helpers import Client, Server, close_server, make_server, request
from tests.support import Listen, RedisServer, netsip_command, run_cli
from tests.test_cli_proxy import answer_calls, call, phone, summary
from tests.test_registrar import ALICE, World, contacts

#: bounded waits on real time (Redis' expiry, a subprocess)
WAIT = 10.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, for the tests that kill or stall it."""
    server = RedisServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def rstore(redis_server: RedisServer) -> Iterator[RedisStore]:
    redis_server.client().flushall()
    store = RedisStore(redis_server.url)
    yield store
    store.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> RegistrationStore:
    if request.param == "memory":
        return MemoryStore()
    rs: RedisStore = request.getfixturevalue("rstore")
    return rs


def _world(store: RegistrationStore) -> World:
    server = make_server()
    reg = Registrar(dispatcher=server.disp, min_expires=30, max_expires=7200, store=store)
    server.disp.set_receiver(reg)
    return World(server, reg, Client(server))


def _close(world: World) -> None:
    world.client.sock.close()
    world.reg.close()
    close_server(world.server)


@pytest.fixture
def world(rstore: RedisStore) -> Iterator[World]:
    """The fixture of tests/test_registrar.py, on Redis."""
    w = _world(rstore)
    yield w
    _close(w)


# --------------------------------------------- the registrar tests, again on Redis

test_register_query_and_answer = memory_tests.test_register_query_and_answer
test_expires_header_parameter_and_caps = memory_tests.test_expires_header_parameter_and_caps
test_interval_too_brief_423 = memory_tests.test_interval_too_brief_423
test_star_unregisters_all = memory_tests.test_star_unregisters_all
test_refresh_ordering_by_callid_and_cseq = memory_tests.test_refresh_ordering_by_callid_and_cseq
test_several_contacts_ordered_by_q = memory_tests.test_several_contacts_ordered_by_q
test_binding_matched_by_uri_rules = memory_tests.test_binding_matched_by_uri_rules
test_path_stored_returned_and_routed = memory_tests.test_path_stored_returned_and_routed
test_outbound_instance_and_reg_id = memory_tests.test_outbound_instance_and_reg_id
test_outbound_not_first_hop = memory_tests.test_outbound_not_first_hop
test_refresh_moves_expiry = memory_tests.test_refresh_moves_expiry


# --------------------------------------------- the store protocol, on both stores

FULL = Binding(
    contact="sip:a@10.0.0.1;ob",
    expires=1060.5,
    callid="c1",
    cseq=7,
    q=0.25,
    params=';methods="INVITE";audio',
    path=("<sip:edge1;lr>", "<sip:edge2;lr>"),
    instance='"<urn:uuid:1>"',
    reg_id=2,
)


def test_store_put_get_delete(store: RegistrationStore) -> None:
    """What is put comes back whole; put [] and delete forget the AOR."""
    assert isinstance(store, RegistrationStore)
    plain = Binding("sip:b@10.0.0.2", 2000.0, "c2", 1)
    assert store.get(ALICE, 1000.0) == []
    store.put(ALICE, [FULL, plain], 1000.0)
    assert sorted(store.get(ALICE, 1000.0), key=lambda b: b.contact) == [FULL, plain]
    store.put("sip:bob@example.org", [plain], 1000.0)
    assert sorted(store.aors()) == ["sip:alice@example.org", "sip:bob@example.org"]
    store.put(ALICE, [], 1000.0)
    assert store.get(ALICE, 1000.0) == [] and list(store.aors()) == ["sip:bob@example.org"]
    store.delete("sip:bob@example.org")
    store.delete("sip:nobody@example.org")  # (unknown: no error)
    assert list(store.aors()) == [] and store.get("sip:bob@example.org", 1000.0) == []


def test_store_get_filters_expired(store: RegistrationStore) -> None:
    """get never returns a binding expired at ``now``, whether or not it is still stored."""
    early = Binding("sip:a@10.0.0.1", 1010.0, "c", 1)
    late = Binding("sip:b@10.0.0.1", 1050.0, "c", 1)
    store.put(ALICE, [early, late], 1000.0)
    assert len(store.get(ALICE, 1009.9)) == 2
    assert store.get(ALICE, 1010.0) == [late]
    assert store.get(ALICE, 1050.0) == []


def test_store_put_replaces(store: RegistrationStore) -> None:
    """put replaces every binding of the AOR, after a get of it or without one."""
    a = Binding("sip:a@10.0.0.1", 1100.0, "c", 1)
    b = Binding("sip:b@10.0.0.1", 1100.0, "c", 1)
    store.put(ALICE, [a, b], 1000.0)
    current = store.get(ALICE, 1000.0)
    store.put(ALICE, [x for x in current if x.contact == b.contact], 1000.0)
    assert store.get(ALICE, 1000.0) == [b]
    store.put(ALICE, [a], 1000.0)  # (no get before)
    assert store.get(ALICE, 1000.0) == [a]


# --------------------------------------------- Redis specifics


def test_binding_encoding_round_trip() -> None:
    for b in (FULL, Binding("sip:x@h", 1.0, "", 0)):
        assert decode_binding(encode_binding(b)) == b
    for bad in ("[]", '{"c": "sip:x@h"}', '{"c":1,"e":1,"i":"","n":0}', "{"):
        with pytest.raises(ValueError):
            decode_binding(bad)


def test_ttl_at_the_latest_expiry_no_timer(world: World, redis_server: RedisServer) -> None:
    """The AOR's key lives until its latest binding expires; the registrar arms no timer."""
    r = redis_server.client()
    key = "netsip:reg:" + ALICE
    world.ask(contacts=["<sip:a@10.0.0.1>"], expires=60, callid="1")
    assert 55_000 < r.pttl(key) <= 60_000
    world.ask(contacts=["<sip:b@10.0.0.1>"], expires=120, callid="2")
    assert 115_000 < r.pttl(key) <= 120_000
    world.ask(contacts=["<sip:b@10.0.0.1>"], expires=0, callid="2")  # (a new, higher CSeq)
    assert 0 < r.pttl(key) <= 60_000  # (lowered again: PEXPIRE on every write)
    assert world.reg.store.next_expiry() is None and world.reg.expire() == 0
    # expired bindings are filtered (the key is still there) and dropped by the next write
    world.server.advance(61)
    assert world.reg.query(ALICE) == [] and r.exists(key) == 1
    world.ask(contacts=["<sip:c@10.0.0.1>"], expires=30, callid="3")
    assert r.hkeys(key) == [b"sip:c@10.0.0.1"]
    world.ask(contacts=["*"], expires=0, callid="3")
    assert r.exists(key) == 0


def test_redis_expires_the_key(rstore: RedisStore, redis_server: RedisServer) -> None:
    """With a 1 s registration, Redis itself drops the AOR (its expired event), no scan."""
    r = redis_server.client()
    r.config_set("notify-keyspace-events", "Ex")
    events = r.pubsub()
    events.subscribe("__keyevent@0__:expired")
    try:
        first = events.get_message(timeout=WAIT)
        assert first is not None and first["type"] == "subscribe"
        w = _world(rstore)
        try:
            w.reg.min_expires = 1
            resp = w.ask(contacts=["<sip:a@10.0.0.1>"], expires=1)
            assert contacts(resp) == ["<sip:a@10.0.0.1>;expires=1"]
            msg = events.get_message(timeout=WAIT)
            assert msg is not None and msg["data"] == ("netsip:reg:" + ALICE).encode()
            assert r.exists("netsip:reg:" + ALICE) == 0 and list(rstore.aors()) == []
        finally:
            _close(w)
    finally:
        events.close()
        r.config_set("notify-keyspace-events", "")


def test_two_registrars_see_each_other(rstore: RedisStore, redis_server: RedisServer) -> None:
    """Two registrars (two stores, two dispatchers) on one Redis: each sees the other's at once."""
    other = RedisStore(redis_server.url)
    one, two = _world(rstore), _world(other)
    try:
        assert one.ask(contacts=["<sip:a@10.0.0.1>"], callid="1").code() == 200
        assert two.reg.query(ALICE) == ["sip:a@10.0.0.1"]
        resp = two.ask(contacts=["<sip:b@10.0.0.2>;q=0.5"], callid="2")
        assert contacts(resp) == [
            "<sip:a@10.0.0.1>;expires=3600",
            "<sip:b@10.0.0.2>;expires=3600;q=0.5",
        ]
        assert one.reg.query(ALICE) == ["sip:a@10.0.0.1", "sip:b@10.0.0.2"]
        # the refresh ordering (10.3 step 7) holds across registrars too
        assert two.ask(contacts=["<sip:a@10.0.0.1>"], callid="1", cseq=1).code() == 500
        assert one.ask(contacts=["*"], expires=0, callid="3").code() == 200
        assert two.reg.query(ALICE) == []
    finally:
        _close(one)
        _close(two)
        other.close()


def test_concurrent_updates_lose_nothing(rstore: RedisStore, redis_server: RedisServer) -> None:
    """Two processes read one AOR, then both write: different bindings are both kept;
    the same binding changed by both: the second write fails (OSError: a 500)."""
    other = RedisStore(redis_server.url)
    try:
        a = Binding("sip:a@10.0.0.1", 1100.0, "ca", 1)
        rstore.put(ALICE, [a], 1000.0)
        seen_1, seen_2 = rstore.get(ALICE, 1000.0), other.get(ALICE, 1000.0)
        other.put(ALICE, [*seen_2, Binding("sip:b@10.0.0.2", 1200.0, "cb", 1)], 1000.0)
        rstore.put(ALICE, [*seen_1, Binding("sip:c@10.0.0.3", 1300.0, "cc", 1)], 1000.0)
        got = {b.contact for b in other.get(ALICE, 1000.0)}
        assert got == {"sip:a@10.0.0.1", "sip:b@10.0.0.2", "sip:c@10.0.0.3"}
        # both refresh a: the first wins, the second is refused and changes nothing
        seen_1, seen_2 = rstore.get(ALICE, 1000.0), other.get(ALICE, 1000.0)
        other.put(ALICE, [Binding("sip:a@10.0.0.1", 1500.0, "ca", 2)], 1000.0)
        with pytest.raises(RedisStoreError, match="changed meanwhile"):
            rstore.put(ALICE, [Binding("sip:a@10.0.0.1", 1400.0, "ca", 2)], 1000.0)
        assert {(b.contact, b.expires) for b in rstore.get(ALICE, 1000.0)} == {
            ("sip:a@10.0.0.1", 1500.0)
        }
    finally:
        other.close()


def test_garbage_in_redis_is_ignored(
    rstore: RedisStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A field that is no binding (another program wrote it): logged, skipped, then dropped."""
    r = redis_server.client()
    key = "netsip:reg:" + ALICE
    r.hset(key, mapping={"junk": "not json", "half": '{"c":"sip:x@h"}'})
    with caplog.at_level(logging.WARNING, logger="netsip._redisstore"):
        assert rstore.get(ALICE, 1000.0) == []
    assert "not a binding" in caplog.text
    rstore.put(ALICE, [Binding("sip:a@10.0.0.1", 1100.0, "c", 1)], 1000.0)
    assert r.hkeys(key) == [b"sip:a@10.0.0.1"]


def test_store_errors() -> None:
    with pytest.raises(ValueError):
        RedisStore("redis://127.0.0.1:6379/0", timeout=0)
    with pytest.raises(ValueError):
        RedisStore("http://127.0.0.1/")


def test_without_redis_py(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-py is optional: the module imports, making a store says what to install."""
    monkeypatch.setitem(sys.modules, "redis", None)  # (import redis: ImportError)
    with pytest.raises(ImportError, match=re.escape("pip install 'netsip[redis]'")):
        RedisStore()
    status, _out, err = run_cli(["proxy", "-l", "udp:127.0.0.1:0", "--store", "redis://h"], capsys)
    assert status == 2 and "netsip[redis]" in err


# --------------------------------------------- faults: Redis down, Redis slow


def _proxy_world(store: RedisStore) -> tuple[World, StatelessProxy]:
    """A registrar for REGISTER and a stateless proxy for the rest (netsip proxy's chain)."""
    w = _world(store)
    proxy = StatelessProxy(dispatcher=w.server.disp, lookup=w.reg.query)
    w.server.disp.set_receiver(ReceiveChain([ReceiveChain([w.reg], methods=["REGISTER"]), proxy]))
    return w, proxy


def _options(server: Server) -> bytes:
    uri = f"sip:{server.addr.addr}:{server.addr.port}"
    return request("OPTIONS", uri, to=f"<{uri}>", callid="o")


def test_redis_down_500_then_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed: REGISTER 500 with a log line, OPTIONS still 200; back: 200, same store
    (which loads its script into the new Redis: EVALSHA fails, EVAL)."""
    store = RedisStore(own_redis.url)
    w, _proxy = _proxy_world(store)
    try:
        assert w.ask(contacts=["<sip:a@10.0.0.1>"], callid="1").code() == 200
        own_redis.kill()
        with caplog.at_level(logging.INFO):
            assert w.ask(contacts=["<sip:a@10.0.0.1>"], callid="2").code() == 500
            assert w.client.ask(_options(w.server)).code() == 200
            assert w.reg.query(ALICE) == []  # (a lookup finds nothing: logged)
        assert re.search(r"Redis at redis://127\.0\.0\.1:\d+/0 failed", caplog.text)
        assert "REGISTER from" in caplog.text and "500 Server Internal Error" in caplog.text
        own_redis.start()  # (empty: nothing was saved)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert w.ask(contacts=["<sip:b@10.0.0.2>"], callid="3").code() == 200
        assert "answers again" in caplog.text
        assert w.reg.query(ALICE) == ["sip:b@10.0.0.2"]
    finally:
        _close(w)
        store.close()


class _KillAfterGet(RedisStore):
    """Kills Redis between the read and the write of one REGISTER."""

    kill: Callable[[], None] | None = None

    def get(self, aor: str, now: float) -> list[Binding]:
        got = super().get(aor, now)
        if self.kill is not None:
            self.kill()
            self.kill = None
        return got


def test_redis_killed_during_register(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis gone after the REGISTER read its bindings: the write fails, 500, logged."""
    store = _KillAfterGet(own_redis.url)
    w = _world(store)
    try:
        assert w.ask(contacts=["<sip:a@10.0.0.1>"], callid="1").code() == 200
        store.kill = own_redis.kill
        with caplog.at_level(logging.INFO):
            assert w.ask(contacts=["<sip:b@10.0.0.2>"], callid="2").code() == 500
        assert store.kill is None and "store failed" in caplog.text
        own_redis.start()
        assert w.ask(contacts=["<sip:b@10.0.0.2>"], callid="2").code() == 200
    finally:
        _close(w)
        store.close()


class _Sleeper:
    """Another client stalls Redis with DEBUG SLEEP; its reply tells when Redis woke up."""

    def __init__(self, server: RedisServer, seconds: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        self.sock.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())
        # Redis is asleep once a PING on a third connection gets no answer at once
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as probe:
            probe.settimeout(0.05)
            for _ in range(200):
                probe.sendall(b"PING\r\n")
                try:
                    assert probe.recv(64).startswith(b"+PONG")
                except TimeoutError:
                    return
            raise AssertionError("Redis did not fall asleep")

    def awake(self) -> bool:
        self.sock.setblocking(False)
        try:
            return self.sock.recv(64).startswith(b"+OK")
        except BlockingIOError:
            return False

    def wait(self) -> None:
        self.sock.settimeout(WAIT)
        assert self.sock.recv(64).startswith(b"+OK")

    def close(self) -> None:
        self.sock.close()


def test_redis_slow_500_within_timeout(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stalled (DEBUG SLEEP 3): REGISTER is 500 and OPTIONS answered while Redis
    still sleeps; for the back-off the store fails at once; then it works again."""
    store = RedisStore(own_redis.url, timeout=0.25, backoff=1.0)
    w, _proxy = _proxy_world(store)
    sleeper: _Sleeper | None = None
    try:
        assert w.ask(contacts=["<sip:a@10.0.0.1>"], callid="1").code() == 200
        sleeper = _Sleeper(own_redis, 3)
        with caplog.at_level(logging.INFO):
            assert w.ask(contacts=["<sip:a@10.0.0.1>"], callid="2").code() == 500
            assert w.client.ask(_options(w.server)).code() == 200
            # within the back-off (the fake clock stands still), no waiting for Redis
            assert w.ask(contacts=["<sip:a@10.0.0.1>"], callid="3").code() == 500
            assert not sleeper.awake()  # (all of the above happened during the stall)
        assert "Timeout" in caplog.text and "not asked again" in caplog.text
        sleeper.wait()
        w.server.advance(1.5)  # (past the back-off)
        assert w.ask(contacts=["<sip:b@10.0.0.2>"], callid="4").code() == 200
        assert sorted(w.reg.query(ALICE)) == ["sip:a@10.0.0.1", "sip:b@10.0.0.2"]
    finally:
        if sleeper is not None:
            sleeper.close()
        _close(w)
        store.close()


# --------------------------------------------- netsip proxy --store redis:// --workers N


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


def start_proxy(started: list[Listen], tmp: Path, *args: str) -> tuple[Listen, Addr]:
    proc = Listen([], tmp, command=[*netsip_command(), "proxy", "-l", "127.0.0.1:0", *args])
    started.append(proc)
    return proc, proc.addresses(2)["udp"]


def test_two_proxies_share_registrations(
    loop: EventLoop, started: list[Listen], tmp_path: Path, rstore: RedisStore
) -> None:
    """bob registers at one netsip proxy, alice calls him through another: found in Redis."""
    one, at_one = start_proxy(started, tmp_path, "--store", rstore.url)
    two, at_two = start_proxy(started, tmp_path, "--store", rstore.url)
    bob = phone(loop, "sip:bob@example.com", at_one)
    alice = phone(loop, "sip:alice@example.com", at_two)
    try:
        assert bob.register() is not None, bob.error()
        calls: list[Call] = []
        answer_calls(bob, calls)
        status, _code, c = call(loop, alice, "sip:bob@example.com")
        assert status == "OK" and len(calls) == 1
        c.bye()
        drive(loop, lambda: c.closed, what="the BYE")
    finally:
        bob.cleanup()
        alice.cleanup()
    methods_one, _, users_one = summary(one.stop())
    methods_two, _, users_two = summary(two.stop())
    assert one.returncode == two.returncode == 0
    assert methods_one.get("REGISTER") == 1 and "REGISTER" not in methods_two
    assert methods_two["INVITE"] >= 1 and users_one == users_two == 1


def test_proxy_redis_down_and_back(
    started: list[Listen], tmp_path: Path, own_redis: RedisServer
) -> None:
    """netsip proxy with Redis killed: 500 and a log line, OPTIONS 200; Redis back: 200."""
    proc, addr = start_proxy(started, tmp_path, "--store", own_redis.url)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(WAIT)

    def ask(data: bytes) -> int:
        client.sendto(data, addr.sockaddr())
        m = re.match(rb"SIP/2\.0 (\d{3}) ", client.recv(65536))
        assert m is not None
        return int(m[1])

    to_proxy = f"sip:{addr.addr}:{addr.port}"
    try:
        assert ask(request(uri=to_proxy, contacts=["<sip:a@10.0.0.1>"], callid="1")) == 200
        own_redis.kill()
        assert ask(request(uri=to_proxy, contacts=["<sip:a@10.0.0.1>"], callid="2")) == 500
        assert ask(request("OPTIONS", to_proxy, to=f"<{to_proxy}>", callid="o")) == 200
        proc.err.wait_for(r"Redis at redis://127\.0\.0\.1:\d+/0 failed")
        own_redis.start()
        assert ask(request(uri=to_proxy, contacts=["<sip:b@10.0.0.2>"], callid="3")) == 200
    finally:
        client.close()
    own_redis.kill()  # (the summary cannot count the users: it says so)
    out = proc.stop()
    assert proc.returncode == 0 and "registered users: unknown (the store failed)" in out, out


def test_proxy_redis_slow(started: list[Listen], tmp_path: Path, own_redis: RedisServer) -> None:
    """netsip proxy with Redis stalled: REGISTER 500 and OPTIONS 200 while Redis sleeps."""
    proc, addr = start_proxy(started, tmp_path, "--store", own_redis.url)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(WAIT)
    to_proxy = f"sip:{addr.addr}:{addr.port}"
    sleeper: _Sleeper | None = None

    def ask(data: bytes) -> bytes:
        client.sendto(data, addr.sockaddr())
        return client.recv(65536)

    try:
        reply = ask(request(uri=to_proxy, contacts=["<sip:a@10.0.0.1>"], callid="1"))
        assert reply.startswith(b"SIP/2.0 200 "), reply
        sleeper = _Sleeper(own_redis, 3)
        reply = ask(request(uri=to_proxy, contacts=["<sip:a@10.0.0.1>"], callid="2"))
        assert reply.startswith(b"SIP/2.0 500 "), reply
        reply = ask(request("OPTIONS", to_proxy, to=f"<{to_proxy}>", callid="o"))
        assert reply.startswith(b"SIP/2.0 200 "), reply
        assert not sleeper.awake()
        proc.err.wait_for(r"Redis at redis://127\.0\.0\.1:\d+/0 failed: Timeout")
    finally:
        client.close()
        if sleeper is not None:
            sleeper.close()
    proc.stop()
    assert proc.returncode == 0


def test_workers_share_port_and_store(
    started: list[Listen], tmp_path: Path, rstore: RedisStore
) -> None:
    """--workers 2: both processes answer on one port, each sees what the other stored."""
    proc, addr = start_proxy(started, tmp_path, "--store", rstore.url, "--workers", "2")
    to_proxy = f"sip:{addr.addr}:{addr.port}"
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        for c in clients:
            c.bind(("127.0.0.1", 0))
            c.settimeout(WAIT)

        def ask(i: int, data: bytes) -> bytes:
            clients[i].sendto(data, addr.sockaddr())
            return clients[i].recv(65536)

        # every client registers its AOR (the kernel spreads the clients over the workers) ...
        for i in range(16):
            aor = f"<sip:u{i}@example.org>"
            reply = ask(i, request(uri=to_proxy, to=aor, contacts=[f"<sip:u{i}@10.0.0.{i}>"]))
            assert reply.startswith(b"SIP/2.0 200 "), reply
        # ... and asks for the bindings of the next one (registered through any worker)
        for i in range(16):
            j = (i + 1) % 16
            reply = ask(i, request(uri=to_proxy, to=f"<sip:u{j}@example.org>", callid="q"))
            assert f"<sip:u{j}@10.0.0.{j}>;expires=3600".encode() in reply, reply
    finally:
        for c in clients:
            c.close()
    out = proc.stop()
    assert proc.returncode == 0, out
    methods, _, users = summary(out)
    assert methods == {"REGISTER": 32} and users == 16
    m = re.search(r"^workers: 2 of 2 ok; requests per worker: #1 (\d+), #2 (\d+)$", out, re.M)
    assert m is not None, out
    assert int(m[1]) > 0 and int(m[2]) > 0 and int(m[1]) + int(m[2]) == 32


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--workers", "2"], "--workers 2 needs a shared store"),
        (["--store", "mongodb://127.0.0.1/0"], "unknown store"),
        (["--store", "redis://127.0.0.1:port/0"], "--store 'redis://127.0.0.1:port/0'"),
        (["--workers", "0"], "must be at least 1"),
        (
            ["--workers", "2", "--store", "redis://127.0.0.1:1/0", "--stateful"],
            "--workers 2 with --stateful",
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run_cli(["proxy", "-l", "udp:127.0.0.1:0", *args], capsys)
    assert status == 2 and why in err and err.count("\n") == 1


def test_sigint_stops_workers(started: list[Listen], tmp_path: Path, rstore: RedisStore) -> None:
    proc, _addr = start_proxy(started, tmp_path, "--store", rstore.url, "-w", "3")
    out = proc.stop(signal.SIGINT)
    assert proc.returncode == 0 and "workers: 3 of 3 ok" in out, out


def test_workers_end_with_their_parent(
    started: list[Listen], tmp_path: Path, rstore: RedisStore
) -> None:
    """The parent killed (SIGKILL, no chance to forward): its workers stop too (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    proc, _addr = start_proxy(started, tmp_path, "--store", rstore.url, "-w", "2")
    (m,) = proc.err.wait_for(r"2 workers: (\d+) (\d+)$")
    workers = [psutil.Process(int(m[1])), psutil.Process(int(m[2]))]
    proc.proc.kill()
    proc.proc.wait(timeout=WAIT)
    _gone, alive = psutil.wait_procs(workers, timeout=WAIT)
    for p in alive:
        p.kill()
    assert alive == []
