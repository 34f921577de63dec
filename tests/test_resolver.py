"""Tests for netsip.resolver against a loopback DNS server (tests/dnsserver.py)."""

from __future__ import annotations

import random
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netsip.eventloop import EventLoop
from netsip.resolver import Resolver, Result
from netsip.util import Addr, NetSIPError
from tests.dnsserver import DNSServer, Rec
from tests.support import FakeClock, open_fds

ZONE: list[Rec] = [
    ("example.com", "NAPTR", '10 50 "s" "SIP+D2T" "" _sip._tcp.example.com.'),
    ("example.com", "NAPTR", '20 50 "s" "SIP+D2U" "" _sip._udp.example.com.'),
    ("example.com", "NAPTR", '30 50 "s" "SIPS+D2T" "" _sips._tcp.example.com.'),
    ("example.com", "NAPTR", '5 50 "s" "SIP+D2S" "" _sip._sctp.example.com.'),  # unsupported
    ("_sip._tcp.example.com", "SRV", "10 0 5070 tcp1.example.com."),
    ("_sip._udp.example.com", "SRV", "10 0 5080 udp1.example.com."),
    ("_sips._tcp.example.com", "SRV", "10 0 5091 tls1.example.com."),
    ("tcp1.example.com", "A", "127.0.0.2"),
    ("udp1.example.com", "A", "127.0.0.3"),
    ("tls1.example.com", "A", "127.0.0.4"),
    ("tls1.example.com", "AAAA", "::1"),
    # SRV without NAPTR, priorities given out of order
    ("_sip._udp.srv.test", "SRV", "20 0 5062 b.srv.test."),
    ("_sip._udp.srv.test", "SRV", "10 0 5061 a.srv.test."),
    ("_sip._tcp.srv.test", "SRV", "10 0 5063 a.srv.test."),
    ("a.srv.test", "A", "127.0.0.5"),
    ("a.srv.test", "A", "127.0.0.6"),
    ("b.srv.test", "AAAA", "::1"),
    # no NAPTR, no SRV: plain address records
    ("plain.test", 30, "A", "127.0.0.7"),
    ("plain.test", 30, "AAAA", "::1"),
    ("slow.test", "A", "127.0.0.8"),
    # RFC 2782: "." means no such service here (and no address fallback)
    ("_sip._udp.none.test", "SRV", "0 0 0 ."),
    ("none.test", "A", "127.0.0.9"),
]


Make = Callable[..., tuple[DNSServer, Resolver]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    # A fake clock everywhere: no test depends on real time passing, and a
    # timeout only fires when the test moves the clock.
    with EventLoop(clock=clock) as lp:
        yield lp


@pytest.fixture
def make(loop: EventLoop) -> Iterator[Make]:
    made: list[tuple[DNSServer, Resolver]] = []

    def factory(records: list[Rec] = ZONE, **kw: Any) -> tuple[DNSServer, Resolver]:
        srv = DNSServer(loop, records)
        made.append((srv, Resolver(loop, [srv.address], **kw)))
        return made[-1]

    yield factory
    for srv, res in made:
        res.close()
        srv.close()


def drive(loop: EventLoop, done: Callable[[], bool], cycles: int = 200) -> None:
    """Poll the loop until ``done()`` (loopback I/O needs no real waiting)."""
    for _ in range(cycles):
        if done():
            return
        loop.loop(0)


def resolve(
    loop: EventLoop, res: Resolver, host: str, protos: tuple[str, ...] = ("udp", "tcp"), **kw: Any
) -> Result:
    got: list[Result] = []
    res.resolve(host, protos, got.append, **kw)
    assert got == []  # never called back from inside resolve()
    drive(loop, lambda: bool(got))
    drive(loop, lambda: False, 5)
    assert len(got) == 1, "callback must run exactly once"
    return got[0]


def flat(result: Result) -> list[tuple[str, str, int, str | None]]:
    for proto, addr in result:
        assert addr.proto == proto
    return [(p, a.addr, a.port, a.host) for p, a in result]


def test_ip_literal_needs_no_dns(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    assert resolve(loop, res, "192.0.2.1") == [
        ("udp", Addr("192.0.2.1", 5060, socket.AF_INET, "192.0.2.1", "udp")),
        ("tcp", Addr("192.0.2.1", 5060, socket.AF_INET, "192.0.2.1", "tcp")),
    ]
    assert flat(resolve(loop, res, "[::1]", ("udp", "tls"), sips=True)) == [
        ("tls", "::1", 5061, "::1")
    ]
    assert flat(resolve(loop, res, "::1", ("tcp",), port=7000)) == [("tcp", "::1", 7000, "::1")]
    assert srv.queries == []


def test_explicit_port_asks_address_records_only(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    assert flat(resolve(loop, res, "tls1.example.com", port=5999)) == [
        ("udp", "::1", 5999, "tls1.example.com"),
        ("udp", "127.0.0.4", 5999, "tls1.example.com"),
        ("tcp", "::1", 5999, "tls1.example.com"),
        ("tcp", "127.0.0.4", 5999, "tls1.example.com"),
    ]
    assert sorted(t for _, _, t in srv.queries) == ["A", "AAAA"]


def test_naptr_srv_address_chain(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    # NAPTR order (tcp 10, udp 20) wins over the caller's preference; tls not offered
    assert flat(resolve(loop, res, "example.com")) == [
        ("tcp", "127.0.0.2", 5070, "tcp1.example.com"),
        ("udp", "127.0.0.3", 5080, "udp1.example.com"),
    ]
    asked = {(n, t) for _, n, t in srv.queries}
    assert ("example.com", "NAPTR") in asked
    assert ("_sip._tcp.example.com", "SRV") in asked
    assert ("_sips._tcp.example.com", "SRV") not in asked
    assert flat(resolve(loop, res, "EXAMPLE.com.", ("udp", "tcp", "tls")))[2:] == [
        ("tls", "::1", 5091, "tls1.example.com"),
        ("tls", "127.0.0.4", 5091, "tls1.example.com"),
    ]


def test_sips_uses_tls_only(loop: EventLoop, make: Make) -> None:
    _, res = make()
    assert flat(resolve(loop, res, "example.com", ("udp", "tcp", "tls"), sips=True)) == [
        ("tls", "::1", 5091, "tls1.example.com"),
        ("tls", "127.0.0.4", 5091, "tls1.example.com"),
    ]
    assert resolve(loop, res, "example.com", ("udp", "tcp"), sips=True) == []


def test_protos_filter(loop: EventLoop, make: Make) -> None:
    _, res = make()
    assert flat(resolve(loop, res, "example.com", ("udp",))) == [
        ("udp", "127.0.0.3", 5080, "udp1.example.com")
    ]


def test_srv_without_naptr_priority_and_failover_order(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    # no NAPTR: SRV per proto in the caller's order, by priority, every address
    # (the order of addresses inside one RRset is not defined: compare as sets)
    result = flat(resolve(loop, res, "srv.test", ("tcp", "udp")))
    assert [r[::2] for r in result] == [
        ("tcp", 5063),
        ("tcp", 5063),
        ("udp", 5061),
        ("udp", 5061),
        ("udp", 5062),
    ]
    assert {r[1] for r in result[:2]} == {r[1] for r in result[2:4]} == {"127.0.0.5", "127.0.0.6"}
    assert result[4] == ("udp", "::1", 5062, "b.srv.test")
    # a.srv.test's addresses were asked once although two SRV records name it
    assert srv.queries.count(("udp", "a.srv.test", "A")) == 1


def test_address_fallback_without_srv(loop: EventLoop, make: Make) -> None:
    _, res = make()
    assert flat(resolve(loop, res, "plain.test")) == [
        ("udp", "::1", 5060, "plain.test"),
        ("udp", "127.0.0.7", 5060, "plain.test"),
        ("tcp", "::1", 5060, "plain.test"),
        ("tcp", "127.0.0.7", 5060, "plain.test"),
    ]
    assert flat(resolve(loop, res, "plain.test", (), sips=True)) == [
        ("tls", "::1", 5061, "plain.test"),
        ("tls", "127.0.0.7", 5061, "plain.test"),
    ]


def test_srv_dot_target_means_no_service(loop: EventLoop, make: Make) -> None:
    _, res = make()
    assert resolve(loop, res, "none.test", ("udp",)) == []


def test_raising_callback_does_not_starve_others(loop: EventLoop, make: Make) -> None:
    _, res = make()
    got: list[Result] = []

    def bad(result: Result) -> None:
        raise RuntimeError("callback bug")

    res.resolve("plain.test", ["udp"], bad)
    res.resolve("plain.test", ["udp"], got.append)
    with pytest.raises(RuntimeError, match="callback bug"):
        drive(loop, lambda: False)
    drive(loop, lambda: bool(got))
    assert len(got) == 1 and len(got[0]) == 2


def test_address_types_order_is_configurable(loop: EventLoop, make: Make) -> None:
    srv, res = make(addr_types=("A", "AAAA"))
    assert [a.addr for _, a in resolve(loop, res, "plain.test", ("udp",))] == ["127.0.0.7", "::1"]
    srv, res = make(addr_types=("A",))
    assert [a.addr for _, a in resolve(loop, res, "plain.test", ("udp",))] == ["127.0.0.7"]
    assert all(t != "AAAA" for _, _, t in srv.queries)


def test_nxdomain_gives_empty_list_and_is_cached(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    assert resolve(loop, res, "nowhere.test") == []
    asked = len(srv.queries)
    assert asked > 0
    assert resolve(loop, res, "nowhere.test") == []
    assert len(srv.queries) == asked


def test_timeout_retries_then_empty(loop: EventLoop, make: Make, clock: FakeClock) -> None:
    srv, res = make(timeout=2.0, attempts=2)
    srv.silent.add("slow.test")
    got: list[Result] = []
    res.resolve("slow.test", ["udp"], got.append, port=5060)
    drive(loop, lambda: len(srv.queries) == 2)
    assert srv.queries == [("udp", "slow.test", "AAAA"), ("udp", "slow.test", "A")]
    clock.now += 1.9
    drive(loop, lambda: False, 5)
    assert len(srv.queries) == 2 and got == []
    clock.now += 0.2  # first tries timed out: both retried
    drive(loop, lambda: len(srv.queries) == 4)
    assert srv.queries[2:] == srv.queries[:2]
    clock.now += 2.1  # second (last) tries timed out
    drive(loop, lambda: bool(got))
    assert got == [[]]


def test_spoofed_and_junk_answers_are_ignored(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    srv.spoof.add("plain.test")
    assert [a.addr for _, a in resolve(loop, res, "plain.test", ("udp",))] == ["::1", "127.0.0.7"]


def test_truncated_answer_retried_over_tcp(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    srv.truncate.add("_sip._udp.srv.test")
    assert [(p, port, h) for p, _, port, h in flat(resolve(loop, res, "srv.test", ("udp",)))] == [
        ("udp", 5061, "a.srv.test"),
        ("udp", 5061, "a.srv.test"),
        ("udp", 5062, "b.srv.test"),
    ]
    assert ("tcp", "_sip._udp.srv.test", "SRV") in srv.queries


def test_close_with_query_in_flight(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    srv.silent.add("slow.test")
    fds = open_fds()
    got: list[Result] = []
    res.resolve("slow.test", ["udp"], got.append)
    drive(loop, lambda: any(n == "slow.test" for _, n, _ in srv.queries))
    assert open_fds() > fds
    res.close()
    assert open_fds() == fds
    assert loop.timer_count() == 0
    drive(loop, lambda: False, 5)
    assert got == []
    res.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        res.resolve("slow.test", ["udp"], got.append)


def test_cache_hit_and_expiry(loop: EventLoop, make: Make, clock: FakeClock) -> None:
    srv, res = make()
    first = resolve(loop, res, "plain.test", ("udp",))
    asked = len(srv.queries)
    assert resolve(loop, res, "plain.test", ("udp",)) == first
    assert len(srv.queries) == asked  # all from the cache
    clock.now += 31  # the address records had TTL 30
    loop.loop(0)  # looptime follows the clock
    assert resolve(loop, res, "plain.test", ("udp",)) == first
    assert srv.queries[asked:] == [("udp", "plain.test", "AAAA"), ("udp", "plain.test", "A")]


def test_concurrent_resolutions_share_queries(loop: EventLoop, make: Make) -> None:
    srv, res = make()
    got: list[Result] = []
    res.resolve("example.com", ["udp"], got.append)
    res.resolve("example.com", ["udp"], got.append)
    drive(loop, lambda: len(got) == 2)
    assert got[0] == got[1] != []
    assert len(srv.queries) == len(set(srv.queries))


def test_srv_weighted_selection(loop: EventLoop, make: Make) -> None:
    zone: list[Rec] = [
        ("_sip._udp.w.test", "SRV", "10 1 5060 light.w.test."),
        ("_sip._udp.w.test", "SRV", "10 99 5060 heavy.w.test."),
        ("_sip._udp.w.test", "SRV", "20 0 5060 backup.w.test."),
        ("light.w.test", "A", "127.0.0.1"),
        ("heavy.w.test", "A", "127.0.0.2"),
        ("backup.w.test", "A", "127.0.0.3"),
    ]
    _, res = make(zone, rng=random.Random(7), addr_types=("A",))
    firsts = []
    for _ in range(20):
        result = resolve(loop, res, "w.test", ("udp",))
        assert sorted(a.host or "" for _, a in result[:2]) == ["heavy.w.test", "light.w.test"]
        assert result[2][1].host == "backup.w.test"
        firsts.append(result[0][1].host)
    assert firsts.count("heavy.w.test") >= 15


def test_refused_nameserver_fails_over_at_once(loop: EventLoop, make: Make) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    srv, _ = make()
    # ICMP port unreachable -> ECONNREFUSED: next server, no timeout (the clock stands still)
    res = Resolver(loop, [dead, f"127.0.0.1:{srv.port}"], attempts=1)
    try:
        assert len(resolve(loop, res, "plain.test", ("udp",))) == 2
    finally:
        res.close()
    res = Resolver(loop, [dead], attempts=2)
    try:
        assert resolve(loop, res, "plain.test", ("udp",)) == []
    finally:
        res.close()


def test_dnsresolv_hook(loop: EventLoop) -> None:
    asked: list[tuple[str, str]] = []
    answers: dict[tuple[str, str], list[Any]] = {
        ("SRV", "_sip._udp.hook.test"): [
            ["SRV", 10, "t.hook.test", 5077],
            ["A", "127.0.0.9", "t.hook.test"],
        ],
        ("A", "t.hook.test"): [["A", "127.0.0.9", "t.hook.test"], ["A", "bogus", "x"]],
    }

    def hook(typ: str, name: str, cb: Callable[[list[Any]], None]) -> None:
        asked.append((typ, name))
        cb(answers.get((typ, name), []))

    res = Resolver(loop, dnsresolv=hook, addr_types=("A",))
    assert flat(resolve(loop, res, "hook.test", ("udp",))) == [
        ("udp", "127.0.0.9", 5077, "t.hook.test")
    ]
    assert asked == [("NAPTR", "hook.test"), ("SRV", "_sip._udp.hook.test"), ("A", "t.hook.test")]
    res.close()


def test_missing_dnspython_is_a_clear_error(
    loop: EventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dns.message", None)
    with pytest.raises(NetSIPError, match="dnspython"):
        Resolver(loop, ["127.0.0.1"])
    Resolver(loop, dnsresolv=lambda *a: None).close()  # a hook needs no dnspython


def test_bad_arguments(loop: EventLoop, make: Make) -> None:
    _, res = make()
    with pytest.raises(ValueError, match="proto"):
        res.resolve("x.test", ["sctp"], print)
    with pytest.raises(ValueError, match="port"):
        res.resolve("x.test", ["udp"], print, port=70000)
    with pytest.raises(ValueError, match="empty"):
        res.resolve(".", ["udp"], print)
    with pytest.raises(ValueError):
        Resolver(loop, ["127.0.0.1"], addr_types=("MX",))
    assert Resolver(loop, None).nameservers  # resolv.conf or 127.0.0.1
