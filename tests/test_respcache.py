"""Tests for netsip.respcache: the dispatcher's response cache (no I/O)."""

from __future__ import annotations

import pytest

from netsip.respcache import CACHE_TIME, ResponseCache, cache_key


class _Hdrs:
    """A stand-in packet: only get_headers is needed for the key."""

    def __init__(self, **h: str | list[str]) -> None:
        self.h = {
            k.rstrip("_").replace("_", "-"): ([v] if isinstance(v, str) else v)
            for k, v in h.items()
        }

    def get_headers(self, name: str) -> list[str]:
        return list(self.h.get(name, []))


def _pkt(cseq: str = "1 OPTIONS", callid: str = "abc") -> _Hdrs:
    return _Hdrs(cseq=cseq, call_id=callid, from_="<sip:a@b>;tag=1", to="<sip:c@d>")


def test_key_identifies_transaction() -> None:
    req = _Hdrs(cseq="1 OPTIONS", call_id="x", **{"from": "<sip:a@b>;tag=1"}, to="<sip:c@d>")
    resp = _Hdrs(cseq="1 OPTIONS", call_id="x", **{"from": "<sip:a@b>;tag=1"}, to="<sip:c@d>")
    other = _Hdrs(cseq="2 OPTIONS", call_id="x", **{"from": "<sip:a@b>;tag=1"}, to="<sip:c@d>")
    assert cache_key(req) == cache_key(resp)
    assert cache_key(req) != cache_key(other)
    # the To tag the UAS added does not count: a retransmitted initial request has none
    tagged = _Hdrs(
        cseq="1 OPTIONS", call_id="x", **{"from": "<sip:a@b>;tag=1"}, to="<sip:c@d>;tag=uas7"
    )
    assert cache_key(tagged) == cache_key(req)
    bare = _Hdrs(
        cseq="1 OPTIONS", call_id="x", **{"from": "<sip:a@b>;tag=1"}, to="sip:c@d;Tag = uas7"
    )
    assert cache_key(bare) == cache_key(
        _Hdrs(cseq="1 OPTIONS", call_id="x", **{"from": "<sip:a@b>;tag=1"}, to="sip:c@d")
    )
    # duplicated headers don't raise (malformed input must not break lookups)
    assert cache_key(_Hdrs(cseq=["1 A", "2 A"])) == "1 A,2 A\0\0\0"


def test_put_get_and_expire() -> None:
    c: ResponseCache[str] = ResponseCache()
    assert c.lifetime == CACHE_TIME == 32.0
    k = cache_key(_pkt())
    assert not c
    c.put(k, "200", now=100.0)
    assert len(c) == 1 and c
    assert c.get(k, 100.0) == "200"
    assert c.get(k, 132.0) == "200"  # still valid at exactly 32 s
    assert c.get("other", 101.0) is None
    assert c.next_expire() == 132.0
    assert c.get(k, 132.5) is None
    assert len(c) == 0
    assert c.next_expire() is None


def test_replace_moves_entry_to_the_end() -> None:
    c: ResponseCache[str] = ResponseCache(lifetime=10.0)
    c.put("a", "180", 0.0)
    c.put("b", "200", 1.0)
    c.put("a", "200", 2.0)  # the final response replaces the provisional one
    assert c.get("a", 3.0) == "200"
    assert c.expire(11.5) == 12.0  # "b" (expired at 11) is gone, "a" lives until 12
    assert c.get("b", 11.5) is None
    assert c.get("a", 11.5) == "200"
    assert c.expire(12.5) is None
    assert len(c) == 0


def test_put_expires_old_entries() -> None:
    c: ResponseCache[int] = ResponseCache(lifetime=1.0)
    for i in range(1000):
        c.put(str(i), i, now=float(i))
    # only entries not yet expired at the last put remain
    assert len(c) == 2
    c.clear()
    assert not c


def test_bad_lifetime() -> None:
    with pytest.raises(ValueError):
        ResponseCache(lifetime=0)


def test_bounded_in_bytes_oldest_go_first() -> None:
    cache: ResponseCache[bytes] = ResponseCache(max_bytes=100, size=len)
    for n in range(10):
        cache.put(f"k{n}", b"x" * 30, now=float(n))
    assert cache.bytes <= 100
    assert [cache.get(f"k{n}", 10.0) for n in range(10)][-3:] == [b"x" * 30] * 3
    assert cache.get("k0", 10.0) is None  # the oldest made room
    # replacing an entry counts its new size only
    cache.put("k9", b"y" * 90, now=11.0)
    assert cache.bytes == 90 and len(cache) == 1
    cache.discard("k9")
    assert cache.bytes == 0
    # expiry gives the bytes back too
    cache.put("a", b"z" * 10, now=0.0)
    cache.expire(100.0)
    assert (len(cache), cache.bytes) == (0, 0)
    with pytest.raises(ValueError, match="go together"):
        ResponseCache(max_bytes=10)
