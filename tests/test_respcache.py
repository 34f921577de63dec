"""Tests for netsip.respcache: the dispatcher's response cache and its key (no I/O).

The last section holds the cache key's shortcuts (header tuples, a plain To
tag cut without the general code) to a reference copy of the long way.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netsip import respcache
from netsip.dispatcher import _cache_key
from netsip.packet import Packet, Request
from netsip.respcache import CACHE_TIME, ResponseCache, cache_key
from tests.support import address, nasty_text


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


# ------------------------------------------------------------- key and cache


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


# ------------------------------------------- the key's shortcuts against the long way

# respcache.cache_key as it was before the shortcuts (with _strip_tag's pure
# regex form, which its fast case must equal)
_REF_TAG_RX = re.compile(r";[ \t]*tag[ \t]*=[ \t]*[^;, \t]*", re.IGNORECASE)


def ref_strip_tag(to: str) -> str:
    i = to.rfind(">")
    if i < 0:
        return _REF_TAG_RX.sub("", to)
    return to[: i + 1] + _REF_TAG_RX.sub("", to[i + 1 :])


def ref_key_to(to: str) -> str:
    return ref_strip_tag(to) if "tag" in to.lower() else to


def ref_cache_key(packet: Packet) -> str:
    g = packet.get_headers
    to = ",".join(g("to"))
    return "\0".join(
        (",".join(g("cseq")), ",".join(g("call-id")), ",".join(g("from")), ref_key_to(to))
    )


class GetHeadersOnly:
    """A HeaderSource in the protocol's original shape: only get_headers."""

    def __init__(self, packet: Packet) -> None:
        self._packet = packet

    def get_headers(self, name: str) -> list[str]:
        return self._packet.get_headers(name)


# the characters that matter to tags, name-addrs, quoting and folding, in
# shapes near the shortcut: "<...>" followed by a tag or other parameters
near_tag = st.builds(
    lambda a, t, b: f"{a}>{t}{b}",
    nasty_text,
    st.sampled_from([";tag=", ";TAG=", ";Tag=", "; tag=", ";tag =", ";tags=", ";", ""]),
    nasty_text,
)

_names = {
    "to": ["To", "t", "TO"],
    "from": ["From", "f", "fROM"],
    "call-id": ["Call-ID", "i", "call-id"],
    "cseq": ["CSeq", "CSEQ"],
}
_value_of = {
    "to": address,
    "from": address,
    "call-id": st.text(alphabet="abc123@.-", min_size=1, max_size=12),
    "cseq": st.sampled_from(["1 OPTIONS", "2 INVITE", "1 invite", "x", "10 ACK"]),
}


@st.composite
def header_sets(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Headers for a packet: each of the key's headers absent, once, or repeated."""
    out: list[tuple[str, str]] = []
    for key, names in _names.items():
        for _ in range(draw(st.integers(0, 3))):
            out.append((draw(st.sampled_from(names)), draw(_value_of[key])))
    out.append(("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1"))
    return draw(st.permutations(out))


@settings(max_examples=1500)
@given(st.one_of(nasty_text, near_tag))
@example("<sip:a@b>;tag=1")
@example('"x>" <sip:a@b>;TAG=1')
@example("<sip:a@b>;tag=1;tag=2")
@example("<sip:a@b>;tag=a>b")
@example("<sip:a@b>;tag=")
@example("<sip:a@b>\n;tag=1")
@example("sip:a@b;tag=1")
@example("<sip:a>;tag=1,<sip:b>;tag=2")
@example("")
def test_key_to_equals_the_long_way(to: str) -> None:
    assert respcache._key_to(to) == ref_key_to(to)
    assert respcache._strip_tag(to) == ref_strip_tag(to)


@given(header_sets())
def test_cache_key_equals_the_reference_copy(headers: list[tuple[str, str]]) -> None:
    req = Request("OPTIONS", "sip:bob@127.0.0.1", headers)
    want = ref_cache_key(req)
    assert cache_key(req) == want
    assert cache_key(GetHeadersOnly(req)) == want  # the protocol's get_headers-only shape
    # and so does the key of the response (the To gets a tag unless it has one)
    resp = req.create_response(200)
    assert cache_key(resp) == ref_cache_key(resp)
    # a parsed packet reads its values from the header index
    try:
        parsed = Packet.new_from_string(req.as_bytes())
    except ValueError:
        return  # the values do not make a valid message
    assert cache_key(parsed) == ref_cache_key(parsed)


def test_request_and_response_share_the_key() -> None:
    req = Packet.new_from_string(
        b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        b'f: "A" <sip:a@127.0.0.1>;tag=9\r\n'
        b"t: <sip:bob@127.0.0.1>;Tag=x;lr\r\n"
        b"i: 1@h\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(req, Request)
    for code in (100, 180, 200, 486):
        assert cache_key(req.create_response(code)) == cache_key(req) == ref_cache_key(req)
    fresh = Request("OPTIONS", "sip:bob@h", [("To", "<sip:bob@h>"), ("Call-ID", "c")])
    assert cache_key(fresh.create_response(200)) == cache_key(fresh)


def test_an_entry_bigger_than_the_bound_is_not_kept() -> None:
    cache: ResponseCache[bytes] = ResponseCache(max_bytes=100, size=len)
    cache.put("small", b"x" * 10, now=0.0)
    cache.put("huge", b"y" * 101, now=0.0)
    assert cache.get("huge", 0.0) is None
    assert cache.get("small", 0.0) == b"x" * 10 and cache.bytes == 10
    cache.put("small", b"z" * 200, now=1.0)  # replaced by a huge one: gone
    assert (len(cache), cache.bytes) == (0, 0)


# the dispatcher's memo of the key on the packet (dispatcher._cache_key), and
# the response that inherits its request's key from create_response

_extra_headers = st.lists(
    st.tuples(
        st.sampled_from(["Contact", "X-A", "To", "t", "From", "CSeq", "Call-ID", "Content-Type"]),
        st.one_of(address, st.sampled_from(["1 OPTIONS", "x", "a/b"])),
    ),
    max_size=3,
)


@settings(max_examples=500)
@given(header_sets(), st.sampled_from([100, 180, 200, 486]), _extra_headers)
def test_a_response_inherits_its_request_key_only_when_equal(
    headers: list[tuple[str, str]], code: int, extra: list[tuple[str, str]]
) -> None:
    req = Request("OPTIONS", "sip:bob@127.0.0.1", headers)
    assert _cache_key(req) == ref_cache_key(req)  # (and now memorised)
    resp = req.create_response(code, headers=extra)
    assert _cache_key(resp) == ref_cache_key(resp)
    try:
        parsed = Packet.new_from_string(req.as_bytes())
    except ValueError:
        pass  # the values do not make a valid message
    else:
        assert _cache_key(parsed) == ref_cache_key(parsed)
        assert _cache_key(parsed.clone()) == ref_cache_key(parsed)
    # a change of a header in the key forgets it, on request and response
    for pkt in (req, resp):
        for name, value in (("To", "<sip:z@h>;tag=2"), ("CSeq", "9 BYE"), ("f", "<sip:y@h>")):
            pkt.set_header(name, value)
            assert _cache_key(pkt) == ref_cache_key(pkt)


def test_a_parsed_invite_hands_its_key_to_its_responses() -> None:
    req = Packet.new_from_string(
        b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        b'f: "A" <sip:a@127.0.0.1>;tag=9\r\nt: <sip:bob@127.0.0.1>\r\n'
        b"i: 1@h\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(req, Request)
    key = _cache_key(req)
    for code in (100, 180, 200, 486):
        resp = req.create_response(code, headers={"contact": "<sip:b@h>"})
        assert resp._ckey == key == ref_cache_key(resp)  # inherited, not computed
