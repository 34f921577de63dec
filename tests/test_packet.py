"""Tests for netsip.packet: parsing, header operations, serialisation, responses.

The last sections hold each shortcut of the parser's hot path (line, prefix
and start-line caches, the fast path, the header index, the cached
transaction id, the response wire form) to the long way it replaces.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import subprocess
from functools import partial
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import Phase, example, find, given, settings
from hypothesis import strategies as st

import netsip.framing
import netsip.packet
import netsip.respcache
from netsip import _abnf, _cache, _fields, _headers, _parser
from netsip import packet as packet_mod
from netsip._fields import make_tid
from netsip._native import compiled_modules
from netsip.packet import (
    REASON_PHRASES,
    BodyTruncatedError,
    Packet,
    PacketError,
    Request,
    Response,
    canonical_header_name,
    normalize_header_key,
    truncated_request,
)
from netsip.socketpool import import_settings
from netsip.util import NetSIPError
from tests.support import (
    check_parsed,
    imported_modules,
    options,
    rebuilt,
    require_perl_netsip,
    same_content,
    source_path,
)

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::1]:5061"
    b";branch=z9hG4bK2;received=2001:db8::1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice, A." <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)
REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b'Contact: "Bob, at home" <sip:bob@192.0.2.4;x="a,b">;expires=7200,'
    b" <sip:bob@192.0.2.5>;q=0.5\r\n"
    b"Expires: 7200\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
OPTIONS_COMPACT = (
    b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: <sip:carol@chicago.example.com>\r\n"
    b"f: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"m: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"k: timer, 100rel\r\n"
    b"Accept: application/sdp,\r\n"
    b"  text/plain\r\n"
    b"l: 0\r\n"
    b"\r\n"
)
RINGING = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
    b";received=192.0.2.1\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)
UNAUTH_401 = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=2493k59kd\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="atlanta.example.com", qop="auth,auth-int",\r\n'
    b' nonce="ea9c8e88df84f1cec4341ae6cbe5a359", opaque="", stale=FALSE,'
    b" algorithm=MD5\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
MESSAGES = {
    "invite": INVITE,
    "register": REGISTER,
    "options": OPTIONS_COMPACT,
    "180": RINGING,
    "200": OK_200,
    "401": UNAUTH_401,
}


def parse(data: bytes | bytearray | memoryview | str) -> Request | Response:
    return Packet.new_from_string(data)


def req(data: bytes) -> Request:
    p = parse(data)
    assert isinstance(p, Request)
    return p


def rsp(data: bytes) -> Response:
    p = parse(data)
    assert isinstance(p, Response)
    return p


# --------------------------------------------------------------------------
# module shape


# netsip.packet and the private modules below it
PACKET_MODULES = [netsip.packet, _abnf, _cache, _fields, _headers, _parser]


@pytest.mark.parametrize("module", PACKET_MODULES, ids=lambda m: m.__name__)
def test_module_is_pure(module: ModuleType) -> None:
    imported = imported_modules(source_path(module))
    assert not imported & {"socket", "selectors", "ssl", "time", "asyncio"}
    assert imported <= {
        "__future__",
        "hashlib",
        "logging",
        "os",
        "re",
        "collections",
        "types",
        "typing",
        "netsip",
    }


@pytest.mark.parametrize(
    "module",
    [*(m for m in PACKET_MODULES if m is not _abnf), netsip.framing, netsip.respcache],
    ids=lambda m: m.__name__,
)
def test_patterns_are_compiled_in_the_grammar_module_only(module: ModuleType) -> None:
    assert "re.compile(" not in source_path(module).read_text()


def test_no_pattern_twice() -> None:
    patterns = [v for v in vars(_abnf).values() if isinstance(v, re.Pattern)]
    assert len(patterns) > 15
    assert len({(p.pattern, p.flags) for p in patterns}) == len(patterns)


@pytest.mark.skipif(
    "packet" in compiled_modules(), reason="compiled: mypyc's classes have no copied methods"
)
def test_each_class_has_its_own_slot_writer() -> None:
    """CPython specialises the stores of one code object for one type."""
    codes = [Packet._set.__code__, Request._set.__code__, Response._set.__code__]
    assert len({id(c) for c in codes}) == 3  # (equal code objects compare equal)


def test_bounded_cache_empties_when_full() -> None:
    cache = _cache.BoundedCache[str, int](3)
    for i in range(3):
        cache.put(str(i), i)
    assert cache == {"0": 0, "1": 1, "2": 2}
    cache.put("3", 3)
    assert cache == {"3": 3}
    caches = [v for v in vars(_cache).values() if isinstance(v, _cache.BoundedCache)]
    assert len(caches) == 9
    assert all(0 < c.maxsize <= 4096 for c in caches)


def test_packet_error_hierarchy() -> None:
    assert issubclass(PacketError, NetSIPError)
    assert issubclass(PacketError, ValueError)
    with pytest.raises(ValueError, match="empty packet"):
        parse(b"")


# --------------------------------------------------------------------------
# parsing and round trips


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_round_trip(name: str) -> None:
    data = MESSAGES[name]
    p = parse(data)
    assert p.as_bytes() == data
    assert p.as_string() == data.decode()
    again = parse(p.as_bytes())
    assert again == p
    # rebuilt from the parts: the original lines are kept verbatim
    assert rebuilt(p) == data
    q = p.clone()
    q.set_header("Max-Forwards", 69)
    same_content(parse(q.as_bytes()), q)


def test_invite_parts() -> None:
    p = req(INVITE)
    assert p.is_request() and not p.is_response()
    assert p.method() == "INVITE"
    assert p.uri() == "sip:bob@biloxi.example.com"
    assert p.body() == SDP
    assert p.get_headers("via") == [
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1",
        "SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK2;received=2001:db8::1",
    ]
    assert p.get_header("from") == '"Alice, A." <sip:alice@atlanta.example.com>;tag=1928301774'
    assert p.get_headers("record-route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert p.get_header("Content-Length") == str(len(SDP))
    assert p.callid() == "a84b4c76e66710@pc33.atlanta.example.com"
    assert p.cseq() == "314159 INVITE"
    assert p.cseq_number() == 314159
    assert p.tid() == "a84b4c76e66710@pc33.atlanta.example.com 314159"
    assert p.dump() == "REQ  INVITE sip:bob@biloxi.example.com with body"
    assert "INVITE sip:bob@biloxi.example.com" in repr(p)


def test_response_parts() -> None:
    p = rsp(RINGING)
    assert p.is_response() and not p.is_request()
    assert p.code() == 180
    assert p.msg() == "Ringing"
    assert p.method() == "INVITE"
    assert p.tid() == req(INVITE).tid()
    assert p.dump() == "RESP 180 'Ringing'"
    assert "180" in repr(p)


def test_comma_lists_honour_quotes_and_angle_brackets() -> None:
    p = req(REGISTER)
    assert p.get_headers("contact") == [
        '"Bob, at home" <sip:bob@192.0.2.4;x="a,b">;expires=7200',
        "<sip:bob@192.0.2.5>;q=0.5",
    ]
    p2 = rsp(UNAUTH_401)
    # WWW-Authenticate is no list (Net::SIP's _hdrkey_parse_keep)
    [auth] = p2.get_headers("www-authenticate")
    assert auth.startswith('Digest realm="atlanta.example.com", qop="auth,auth-int", nonce=')
    date_hdr = b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    date = parse(INVITE.replace(b"Max-Forwards", date_hdr + b"Max-Forwards"))
    assert date.get_headers("date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_compact_forms_and_continuation_lines() -> None:
    p = req(OPTIONS_COMPACT)
    assert p.get_header("via") == "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877"
    assert p.get_header("To") == "<sip:carol@chicago.example.com>"
    assert p.get_header("t") == "<sip:carol@chicago.example.com>"
    assert p.get_header("CALL-ID") == "a84b4c76e66710"
    assert p.get_headers("supported") == ["timer", "100rel"]
    # folding is one SP (RFC 3261 7.3.1); the comma list spans the lines
    assert p.get_headers("accept") == ["application/sdp", "text/plain"]
    assert p.get_header("content-length") == "0"
    assert list(p.headers()) == [
        "via",
        "max-forwards",
        "to",
        "from",
        "call-id",
        "cseq",
        "contact",
        "supported",
        "accept",
        "content-length",
    ]
    assert p.get_header() == p.headers()


def test_folded_value_is_unfolded() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\n"
        b"Subject: I know you're there,\r\n"
        b"\tpick up the phone\r\n"
        b"   and talk to me!\r\n"
        b"Via:\r\n SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"\r\n"
    )
    p = parse(data)
    assert p.get_header("subject") == "I know you're there, pick up the phone and talk to me!"
    assert p.get_header("via") == "SIP/2.0/UDP h;branch=z9hG4bK1"
    assert rebuilt(p) == data.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")


def test_bare_lf_and_leading_crlf() -> None:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    data = head.replace(b"\r\n", b"\n") + b"\n\n" + body
    p = parse(b"\r\n\r\n" + data)
    same_content(p, parse(INVITE))
    assert p.as_bytes() == data
    assert parse(rebuilt(p)) == parse(INVITE)


def test_no_empty_line_and_unicode() -> None:
    p = parse("OPTIONS sip:a@b SIP/2.0\r\nSubject: Grüße\r\nFrom: Jürgen <sip:j@b>;tag=1")
    # the wire form gets the Content-Length and the empty line
    assert p.as_bytes().endswith(b"tag=1\r\nContent-Length: 0\r\n\r\n")
    assert p.get_header("subject") == "Grüße"
    assert p.get_header("from") == "Jürgen <sip:j@b>;tag=1"
    assert p.body() == b""


def test_any_bytes_round_trip_in_values() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nX-Bin: \xff\xfe\x00\x01 \xc3\xa4\r\nCall-ID: x\r\n\r\n"
    p = parse(data)
    assert p.get_header("x-bin") == "\udcff\udcfe\x00\x01 ä"
    assert rebuilt(p) == data.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")
    q = Request("OPTIONS", "sip:a@b", [("X-Bin", p.get_header("x-bin") or "")])
    assert b"X-Bin: \xff\xfe\x00\x01 \xc3\xa4\r\n" in q.as_bytes()
    assert parse(p.as_string()) == p


def test_trailing_octets_are_dropped() -> None:
    p = parse(INVITE + b"garbage after the body")
    assert p.body() == SDP
    assert p.as_bytes() == INVITE
    # without Content-Length the body runs to the end of the datagram (RFC 3261 18.3)
    nocl = INVITE.replace(b"Content-Length: " + str(len(SDP)).encode() + b"\r\n", b"")
    p = parse(nocl + b"more")
    assert p.body() == SDP + b"more"
    assert b"Content-Length: " + str(len(SDP) + 4).encode() in rebuilt(p)
    # the wire form always has one (stream transports need it, RFC 3261 20.14)
    assert p.as_bytes() == rebuilt(p)


def test_duplicate_identical_single_value_headers_are_tolerated() -> None:
    p = parse(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nMax-Forwards: 70\r\n"))
    assert p.get_header("max-forwards") == "70"
    assert p.get_headers("max-forwards") == ["70", "70"]


def test_unusual_but_valid() -> None:
    p = parse(b"SIP/2.0 100\r\nCall-ID: x\r\n\r\n")  # no reason phrase, no SP
    assert isinstance(p, Response) and p.msg() == ""
    p = parse(b"sip/2.0 200 Okay  \r\nCSeq: 0009 INVITE\r\n\r\n")
    assert isinstance(p, Response) and p.msg() == "Okay"
    assert p.tid() == " 9"  # no Call-ID: empty part; number without leading zeros
    p = parse(b"FOO.BAR sip:x SIP/2.0\r\nCSeq: 1 FOO.BAR\r\nContact: *\r\nSupported:\r\n\r\n")
    assert p.method() == "FOO.BAR"
    assert p.get_headers("supported") == [""]
    assert p.get_header("contact") == "*"


# --------------------------------------------------------------------------
# malformed input

MALFORMED = [
    (b"", "empty packet"),
    (b"\r\n\r\n", "empty packet"),
    (b"HELLO\r\n\r\n", "bad request: starts with 'HELLO'"),
    (b"INVITE sip:a@b SIP/3.0\r\n\r\n", "unsupported SIP version"),
    (b"SIP/1.0 200 OK\r\n\r\n", "unsupported SIP version"),
    (b"SIP/2.0 2000 OK\r\n\r\n", "invalid status code"),
    (b"SIP/2.0 099 Hmm\r\n\r\n", "status code out of range"),
    (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", "separated by one SP"),
    (b"INVITE sip:a@b SIP/2.0 \r\n\r\n", "trailing whitespace"),
    (b"INVITE sip:a@b; lr SIP/2.0\r\n\r\n", "whitespace in request URI"),
    (b"INV(TE sip:a@b SIP/2.0\r\n\r\n", "invalid method"),
    (b"INVITE <sip:a@b> SIP/2.0\r\n\r\n", "no scheme"),
    (b"INVITE sip:a@b?Subject=x SIP/2.0\r\n\r\n", "headers not allowed"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", "bad header line"),
    (b"OPTIONS sip:a@b SIP/2.0\r\n Via: x\r\n\r\n", "bad header line"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nX<Y: 1\r\n\r\n", "invalid header name"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n", "bare CR"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1x\r\n\r\n", "invalid content-length"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nl: -1\r\n\r\n", "invalid content-length"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nabc", "larger than the body"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: 256\r\n\r\n", "max-forwards out of range"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nExpires: 4294967296\r\n\r\n", "expires out of range"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: a b\r\n\r\n", "invalid callid"),
    (b"OPTIONS sip:a@b SIP/2.0\r\ni: a@b@c\r\n\r\n", "invalid callid"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: OPTIONS\r\n\r\n", "invalid cseq"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 4294967296 OPTIONS\r\n\r\n", "cseq number out of range"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n", "does not match method"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: a\r\ni: b\r\n\r\n", "conflicting definition of call-id"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nc: text/a\r\nc: text/b\r\n\r\n", "conflicting definition"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b\r\n\r\n", "unbalanced quote or '<' in to"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b> x\r\n\r\n", "invalid address in to"),
    (b'OPTIONS sip:a@b SIP/2.0\r\nm: "x <sip:a@b>\r\n\r\n', "unbalanced quote"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nm: <sip:a@b>;;\r\n\r\n", "invalid address in contact"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nRoute: <sip:a@b>,,<sip:c>\r\n\r\n", "invalid address"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP\r\n\r\n", "invalid via"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=1,\r\n\r\n", "invalid via"),
    (b'OPTIONS sip:a@b SIP/2.0\r\nAllow: "INVITE\r\n\r\n', "unbalanced quote"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse(data)


def test_bad_argument_types() -> None:
    with pytest.raises(TypeError):
        Packet.new_from_string(42)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(PacketError, match="cannot encode"):
        Packet.new_from_string("OPTIONS sip:\ud800 SIP/2.0\r\n\r\n")
    parse(bytearray(OPTIONS_COMPACT))
    parse(memoryview(OPTIONS_COMPACT))


# --------------------------------------------------------------------------
# building packets and header operations


def test_build_request_from_pairs_and_mapping() -> None:
    r = Request(
        "INVITE",
        "sip:bob@example.com",
        [
            ("via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
            ("v", ["SIP/2.0/UDP g;branch=z9hG4bK2"]),
            ("call-id", "abc"),
            ("cseq", "1 INVITE"),
            ("max-forwards", 70),
            ("x-none", None),
        ],
        "body ä",
    )
    assert r.as_bytes() == (
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"Via: SIP/2.0/UDP g;branch=z9hG4bK2\r\n"
        b"Call-ID: abc\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Max-Forwards: 70\r\n"
        b"Content-Length: 7\r\n"
        b"\r\n"
        b"body \xc3\xa4"
    )
    m = Request(
        "OPTIONS",
        "sip:x",
        {"WWW-Authenticate": 'Digest realm="x", nonce="y"', "Contact": ["<sip:a>", "<sip:b>"]},
    )
    assert m.get_headers("contact") == ["<sip:a>", "<sip:b>"]
    assert b'WWW-Authenticate: Digest realm="x", nonce="y"\r\n' in m.as_bytes()
    same_content(parse(m.as_bytes()), m, ignore=("content-length",))
    r2 = Response(404, "Not Found", {"call-id": "x"})
    assert r2.as_bytes() == b"SIP/2.0 404 Not Found\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    assert Packet.new_from_parts("200", "OK").is_response()
    assert Packet.new_from_parts("bye", "sip:x").method() == "BYE"
    assert Request("bye", "sip:x").method() == "bye"  # methods are case-sensitive


def test_constructor_validation() -> None:
    with pytest.raises(PacketError, match="invalid method"):
        Request("IN VITE", "sip:x")
    with pytest.raises(PacketError, match="invalid request URI"):
        Request("INVITE", "sip:x y")
    with pytest.raises(PacketError, match="out of range"):
        Response(700, "x")
    with pytest.raises(PacketError, match="invalid status code"):
        Response("abc", "x")
    with pytest.raises(PacketError, match="line break"):
        Response(200, "OK\r\nX: y")
    with pytest.raises(PacketError, match="invalid header name"):
        Request("INVITE", "sip:x", {"Bad Name": "x"})
    with pytest.raises(TypeError):
        Request("INVITE", "sip:x", {"X": 1.5})  # type: ignore[arg-type]  # deliberately wrong


def test_header_values_cannot_inject_lines() -> None:
    r = Request("OPTIONS", "sip:x", {"Subject": "a\r\nVia: evil\r\n  b", "X": "c\rd\ne"})
    assert r.get_header("subject") == "a Via: evil b"
    assert r.get_header("x") == "c d e"
    p = parse(r.as_bytes())
    assert p.get_headers("via") == []
    same_content(p, r, ignore=("content-length",))


def test_header_operations() -> None:
    p = req(INVITE)
    p.add_header("Route", "<sip:r1;lr>")
    p.add_header("route", ["<sip:r2;lr>", "<sip:r3;lr>"])
    assert p.get_headers("ROUTE") == ["<sip:r1;lr>", "<sip:r2;lr>", "<sip:r3;lr>"]
    p.insert_header("Via", ["SIP/2.0/UDP a;branch=z9hG4bKa", "SIP/2.0/UDP b;branch=z9hG4bKb"])
    assert p.get_headers("v")[:3] == [
        "SIP/2.0/UDP a;branch=z9hG4bKa",
        "SIP/2.0/UDP b;branch=z9hG4bKb",
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    ]
    assert p.header_items()[0] == ("via", "SIP/2.0/UDP a;branch=z9hG4bKa")
    with pytest.raises(PacketError, match="multiple values for via"):
        p.get_header("via")
    p.set_header("max-forwards", 69)
    assert p.get_header("Max-Forwards") == "69"
    p.del_header("record-route")
    assert p.get_header("record-route") is None
    assert p.get_headers("record-route") == []
    p.set_header("contact", None)
    assert "contact" not in p.headers()
    # set_header keeps the position of the first old value
    keys = [k for k, _ in p.header_items()]
    p.set_header("to", "<sip:x@y>")
    assert [k for k, _ in p.header_items()] == keys
    wire = p.as_bytes()
    assert wire.startswith(
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a;branch=z9hG4bKa\r\n"
        b"Via: SIP/2.0/UDP b;branch=z9hG4bKb\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        # an original line with several values is kept as it was
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/TCP"
    )
    assert b"Max-Forwards: 69\r\nTo: <sip:x@y>\r\n" in wire
    assert wire.endswith(
        b"Route: <sip:r1;lr>\r\nRoute: <sip:r2;lr>\r\nRoute: <sip:r3;lr>\r\n\r\n" + SDP
    )
    same_content(parse(wire), p)
    assert p.as_bytes() is wire  # cached until modified


def test_set_body_updates_content_length() -> None:
    p = req(INVITE)
    p.set_body("hello")
    wire = p.as_bytes()
    assert b"\r\nContent-Length: 5\r\n" in wire and wire.endswith(b"\r\n\r\nhello")
    assert parse(wire).body() == b"hello"
    p.set_body(None)
    assert parse(p.as_bytes()).get_header("content-length") == "0"
    # several Content-Length headers become one with the right value
    q = Request("MESSAGE", "sip:x", [("l", "3"), ("Content-Length", "3")], b"abcd")
    assert q.get_headers("content-length") == ["3", "3"]
    assert q.as_bytes().count(b"Content-Length: 4\r\n") == 1
    assert q.get_headers("content-length") == ["4"]


def test_set_uri_and_cseq() -> None:
    p = req(INVITE)
    p.set_uri("sip:bob@192.0.2.4")
    p.set_cseq(314160)
    assert p.as_bytes().startswith(b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\n")
    assert p.cseq() == "314160 INVITE"
    assert parse(p.as_bytes()).uri() == "sip:bob@192.0.2.4"  # type: ignore[union-attr]  # req


def test_clone_is_independent() -> None:
    p = req(INVITE)
    c = p.clone()
    assert c == p and c is not p and isinstance(c, Request)
    c.add_header("X", "1")
    c.set_uri("sip:other@x")
    assert p.get_header("x") is None and p.uri() == "sip:bob@biloxi.example.com"
    assert p.as_bytes() == INVITE
    assert c != p


def test_equality_semantics() -> None:
    assert parse(INVITE) == parse(INVITE)
    assert parse(INVITE) != parse(RINGING)
    assert parse(INVITE) != INVITE
    with pytest.raises(TypeError):
        hash(parse(INVITE))


def test_header_names() -> None:
    assert normalize_header_key("i") == "call-id"
    assert normalize_header_key("CALL-ID") == "call-id"
    assert normalize_header_key("o") == "event"
    assert canonical_header_name("cseq") == "CSeq"
    assert canonical_header_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_header_name("x-my-header") == "X-My-Header"
    assert canonical_header_name("V") == "Via"
    with pytest.raises(PacketError):
        normalize_header_key("a:b")


# --------------------------------------------------------------------------
# responses, ACK, CANCEL


def test_create_response() -> None:
    p = req(INVITE)
    r = p.create_response(180)
    assert r.code() == 180 and r.msg() == "Ringing"
    assert r.get_headers("via") == p.get_headers("via")
    assert r.get_headers("record-route") == p.get_headers("record-route")
    for k in ("from", "call-id", "cseq"):
        assert r.get_header(k) == p.get_header(k)
    to = r.get_header("to")
    assert to is not None and to.startswith("Bob <sip:bob@biloxi.example.com>;tag=")
    # every response to the request (and to retransmissions) gets the same tag
    assert p.create_response(200).get_header("to") == to
    assert req(INVITE).create_response(486).get_header("to") == to
    assert p.get_header("to") == "Bob <sip:bob@biloxi.example.com>"  # request untouched
    # 100 Trying gets no tag; a tag in the request is kept
    assert p.create_response(100).get_header("to") == "Bob <sip:bob@biloxi.example.com>"
    tagged = req(
        INVITE.replace(
            b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bob <sip:bob@biloxi.example.com>;tag=abc"
        )
    )
    tagged_to = tagged.create_response(200).get_header("to")
    assert tagged_to == "Bob <sip:bob@biloxi.example.com>;tag=abc"
    assert r.get_header("contact") is None
    assert r.tid() == p.tid() and r.method() == "INVITE"


def test_create_response_headers_body_and_phrases() -> None:
    p = req(REGISTER)
    r = p.create_response(
        200, headers={"Contact": ["<sip:a>;expires=60"], "To": "<sip:t>"}, body="x"
    )
    assert r.get_headers("contact") == ["<sip:a>;expires=60"]
    assert r.get_header("to") == "<sip:t>"  # given headers win
    assert r.body() == b"x"
    wire = r.as_bytes()
    assert wire.startswith(b"SIP/2.0 200 OK\r\n") and wire.endswith(b"Content-Length: 1\r\n\r\nx")
    same_content(parse(wire), r, ignore=("content-length",))
    assert p.create_response(481).msg() == "Call/Transaction Does Not Exist"
    assert p.create_response(499).msg() == ""
    assert p.create_response(403, "Go Away").msg() == "Go Away"
    assert REASON_PHRASES[200] == "OK" and REASON_PHRASES[488] == "Not Acceptable Here"
    with pytest.raises(PacketError):
        p.create_response(99)


def test_create_response_copies_timestamp_for_100() -> None:
    p = req(OPTIONS_COMPACT.replace(b"l: 0", b"Timestamp: 54\r\nl: 0"))
    assert p.create_response(100).get_header("timestamp") == "54"
    assert p.create_response(200).get_header("timestamp") is None


def test_create_ack_and_cancel() -> None:
    inv = req(
        INVITE.replace(
            b"Contact:",
            b'Route: <sip:r1;lr>\r\nProxy-Authorization: Digest username="a"\r\nContact:',
        )
    )
    busy = inv.create_response(486)
    ack = inv.create_ack(busy)
    assert ack.method() == "ACK" and ack.uri() == inv.uri()
    assert ack.get_headers("via") == inv.get_headers("via")[:1]
    assert ack.get_header("to") == busy.get_header("to")
    assert ack.get_header("from") == inv.get_header("from")
    assert ack.get_header("call-id") == inv.get_header("call-id")
    assert ack.cseq() == "314159 ACK"
    assert ack.get_headers("route") == ["<sip:r1;lr>"]
    assert ack.get_header("max-forwards") == "70"
    assert ack.get_header("proxy-authorization") == 'Digest username="a"'
    assert ack.body() == b"" and ack.tid() == inv.tid()
    cancel = inv.create_cancel()
    assert cancel.method() == "CANCEL" and cancel.cseq() == "314159 CANCEL"
    assert cancel.get_header("to") == inv.get_header("to")
    assert cancel.get_headers("via") == inv.get_headers("via")[:1]
    assert cancel.tid() == inv.tid()
    for p in (ack, cancel):
        same_content(parse(p.as_bytes()), p, ignore=("content-length",))


# --------------------------------------------------------------------------
# properties


@settings(max_examples=300)
@given(st.binary(max_size=400))
@example(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 9999999999999999999999999\r\n\r\n")
@example(b"SIP/2.0 200 OK\r\nCSeq: " + b"9" * 5000 + b" INVITE\r\n\r\n")
@example(b"SIP/2.0 200 OK\r\nTo: " + b'"' * 3000 + b"\r\n\r\n")
def test_any_bytes_parse_or_packet_error(data: bytes) -> None:
    try:
        p = Packet.new_from_string(data)
    except PacketError:
        return
    check_parsed(p)


_TOKENS = st.sampled_from(["INVITE", "ACK", "OPTIONS", "BYE", "REGISTER", "X!%*_+`'~.-y"])
_URIS = st.sampled_from(
    [
        "sip:bob@example.com",
        "sips:a@[2001:db8::1]:5061;transport=tcp",
        "tel:+123",
        "sip:u;p=a%40b@h",
        "sip:a@b?x=y",
        "<sip:a@b>",
        "sip:a b",
    ]
)
_ADDRS = st.sampled_from(
    [
        "<sip:a@b>",
        '"A, B" <sip:a@b>;tag=1',
        "sip:a@b;tag=2",
        "Al <sip:a@b> ; q = 0.5",
        "*",
        "<sip:a@b>;;",
        '"unterminated <sip:a@b>',
        "< sip:a@b >",
        "x, y <sip:a@b>",
        '"q\\"" <sip:a@b;lr>',
        '<sip:a@b>, <sip:c@d;x="1,2">',
        "",
    ]
)
_VIAS = st.sampled_from(
    [
        "SIP/2.0/UDP h;branch=z9hG4bK1",
        "SIP / 2.0 / TCP h:5060 ; branch = x",
        "SIP/2.0/TLS [::1]:5061;received=::1",
        "SIP/2.0/UDP h;;",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP a, SIP/2.0/UDP b",
        "SIP/2.0/UDP a,,",
    ]
)
_NUMBERS = st.sampled_from(["0", "70", "255", "256", "-1", "1x", "0009", "4294967296", ""])
_FREE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30
) | st.sampled_from(['a, "b,c", <d,e>', 'Digest realm="x", nonce="y"', '"open', "<open", "\\"])


@st.composite
def near_valid_messages(draw: st.DrawFn) -> bytes:
    """Mostly valid SIP messages with some wrong details, so that every rule gets exercised."""
    method = draw(_TOKENS)
    if draw(st.booleans()):
        first = f"{method} {draw(_URIS)} SIP/2.0"
    else:
        code = draw(st.sampled_from(["100", "180", "200", "401", "699", "700", "20", "2000"]))
        first = f"SIP/2.0 {code} " + draw(st.sampled_from(["OK", "", "Ünïcode reason"]))
    headers: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["addr", "via", "num", "cseq", "callid", "list", "free"]))
        if kind == "addr":
            name = draw(
                st.sampled_from(["From", "t", "TO", "Contact", "m", "Route", "Record-Route"])
            )
            value = draw(_ADDRS)
        elif kind == "via":
            name, value = draw(st.sampled_from(["Via", "v", "VIA "])), draw(_VIAS)
        elif kind == "num":
            name = draw(st.sampled_from(["Max-Forwards", "Expires", "Min-Expires", "l"]))
            value = draw(_NUMBERS)
        elif kind == "cseq":
            name = "CSeq"
            value = (
                draw(_NUMBERS)
                + draw(st.sampled_from([" ", "  ", ""]))
                + draw(st.sampled_from([method, "INVITE", ""]))
            )
        elif kind == "callid":
            name = draw(st.sampled_from(["Call-ID", "i"]))
            value = draw(
                st.sampled_from(["abc@host", "a b", "x@y@z", "w%ZK-!.*_+'@w`~)(><:\\/\"]["])
            )
        elif kind == "list":
            name = draw(st.sampled_from(["Allow", "Supported", "k", "Accept", "Warning"]))
            value = draw(_FREE)
        else:
            name = draw(
                st.sampled_from(
                    [
                        "Subject",
                        "X-Custom",
                        "WWW-Authenticate",
                        "Date",
                        "Content-Type",
                        "c",
                        "Bad Name",
                        "X:Y",
                    ]
                )
            )
            value = draw(_FREE)
        if draw(st.integers(0, 5)) == 0 and " " in value:
            value = value.replace(" ", "\r\n ", 1)  # a continuation line
        headers.append((name, value))
    body = draw(st.sampled_from([b"", b"v=0\r\n", b"\x00\xff binary", b"x" * 40]))
    cl = draw(st.sampled_from(["right", "none", "less", "more"]))
    if cl != "none":
        n = len(body) + {"right": 0, "less": -1, "more": 1}[cl]
        headers.append(("Content-Length", str(n)))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    text = first + eol + "".join(f"{k}: {v}{eol}" for k, v in headers) + eol
    data = text.encode("utf-8", "surrogateescape") + body
    if draw(st.integers(0, 9)) == 0:
        pos = draw(st.integers(0, len(data)))
        extra = draw(st.sampled_from([b"\r", b"\n", b'"', b"<", b",", b" "]))
        data = data[:pos] + extra + data[pos:]
    return data


@settings(max_examples=500)
@given(near_valid_messages())
def test_near_valid_messages_parse_or_packet_error(data: bytes) -> None:
    try:
        p = Packet.new_from_string(data)
    except PacketError:
        return
    check_parsed(p)
    if isinstance(p, Request) and p.get_header("cseq") is not None:
        r = p.create_response(200)
        same_content(Packet.new_from_string(r.as_bytes()), r, ignore=("content-length",))


def _parses(data: bytes) -> Request | Response | None:
    try:
        return Packet.new_from_string(data)
    except PacketError:
        return None


def _rejected_with(data: bytes, text: str) -> bool:
    try:
        Packet.new_from_string(data)
    except PacketError as exc:
        return text in str(exc)
    return False


def test_near_valid_messages_reach_deep_code_paths() -> None:
    # a property of the strategy, not of the parser: the generated messages
    # get past the first line and exercise the header rules
    def deep(d: bytes) -> bool:
        p = _parses(d)
        return p is not None and len(p.header_items()) >= 4 and p.body() != b""

    no_shrink = settings(phases=[Phase.generate], max_examples=2000, database=None)
    assert deep(find(near_valid_messages(), deep, settings=no_shrink))
    for text in (
        "invalid address",
        "invalid via",
        "conflicting definition",
        "invalid cseq",
        "larger than the body",
        "out of range",
    ):
        found = find(near_valid_messages(), partial(_rejected_with, text=text), settings=no_shrink)
        assert _rejected_with(found, text)


# --------------------------------------------------------------------------
# interop with Perl's Net::SIP

PERL_SCRIPT = r"""
use strict; use warnings;
use Net::SIP; use JSON::PP; use MIME::Base64;
local $/; my $in = decode_json(<STDIN>);
my @out;
for my $b64 (@$in) {
    my $data = decode_base64($b64);
    my $p = eval { Net::SIP::Packet->new_from_string($data) };
    if (!$p) { push @out, { ok => 0, err => "$@" }; next }
    my %r = (ok => 1, request => ($p->is_request ? 1 : 0), headers => $p->get_header,
             tid => $p->tid, wire => encode_base64($p->as_string, ''));
    if ($p->is_request) {
        $r{method} = $p->method; $r{uri} = $p->uri;
        my $resp = $p->create_response(486);
        $r{resp} = encode_base64($resp->as_string, '');
        $r{ack} = encode_base64($p->create_ack($resp)->as_string, '');
        $r{cancel} = encode_base64($p->create_cancel->as_string, '');
    } else {
        $r{code} = $p->code; $r{msg} = $p->msg; $r{method} = $p->method;
    }
    push @out, \%r;
}
print encode_json(\@out);
"""


def run_perl(perl: str, messages: list[bytes]) -> list[dict[str, object]]:
    payload = json.dumps([base64.b64encode(m).decode() for m in messages])
    res = subprocess.run(
        [perl, "-e", PERL_SCRIPT],
        input=payload.encode(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    out = json.loads(res.stdout)
    assert isinstance(out, list)
    return out


def b64parse(value: object) -> Request | Response:
    assert isinstance(value, str)
    return Packet.new_from_string(base64.b64decode(value))


def without(headers: dict[str, list[str]], *keys: str) -> dict[str, list[str]]:
    return {k: v for k, v in headers.items() if k not in keys}


@pytest.mark.interop
def test_interop_perl_parses_like_netsip() -> None:
    perl = require_perl_netsip()
    messages = list(MESSAGES.values())
    results = run_perl(perl, messages)
    for data, perl_res in zip(messages, results, strict=True):
        assert perl_res["ok"] == 1, perl_res
        p = parse(data)
        perl_hdrs = perl_res["headers"]
        assert isinstance(perl_hdrs, dict)
        # Net::SIP keeps folding as "\n" in values; netsip unfolds to one SP
        perl_hdrs = {
            k: [" ".join(v.split("\n")).replace("  ", " ") for v in vals]
            for k, vals in perl_hdrs.items()
        }
        assert perl_hdrs == {
            k: [" ".join(v.split("  ")) for v in vals] for k, vals in p.headers().items()
        }
        assert perl_res["tid"] == p.tid()
        assert perl_res["method"] == p.method()
        assert b64parse(perl_res["wire"]) == p
        if isinstance(p, Request):
            assert perl_res["uri"] == p.uri()
            # Perl's create_response: same headers; netsip adds the To-tag
            perl_resp = b64parse(perl_res["resp"])
            resp = p.create_response(486)
            wire_resp = parse(resp.as_bytes())
            assert (perl_resp.code(), perl_resp.msg()) == (486, resp.msg())  # type: ignore[union-attr]  # a response
            assert without(perl_resp.headers(), "to") == without(wire_resp.headers(), "to")
            assert resp.get_headers("to") == [
                f"{v};tag={Request._to_tag(p.callid(), p.get_header('from'))}"
                for v in perl_resp.get_headers("to")
            ]
            for kind in ("ack", "cancel"):
                made = p.create_ack(resp) if kind == "ack" else p.create_cancel()
                mine = parse(made.as_bytes())
                theirs = b64parse(perl_res[kind])
                assert theirs.as_parts()[:2] == mine.as_parts()[:2]
                assert without(theirs.headers(), "to") == without(mine.headers(), "to")
                if kind == "cancel":
                    assert theirs.get_headers("to") == mine.get_headers("to")
        else:
            assert (perl_res["code"], perl_res["msg"]) == (str(p.code()), p.msg())


@pytest.mark.interop
def test_interop_perl_parses_netsip_output() -> None:
    perl = require_perl_netsip()
    built: list[Request | Response] = []
    for data in MESSAGES.values():
        p = parse(data)
        if isinstance(p, Request):
            built += [p.create_response(200, body=b"v=0\r\n"), p.create_cancel()]
        q = p.clone()
        q.insert_header("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKnew")
        q.set_body(b"changed")
        built.append(q)
    results = run_perl(perl, [p.as_bytes() for p in built])
    for p, perl_res in zip(built, results, strict=True):
        assert perl_res["ok"] == 1, perl_res
        assert perl_res["tid"] == p.tid()
        assert base64.b64decode(str(perl_res["wire"])) == p.as_bytes()


# ------------------------------------------------- bounds against hostile input

_HEAD = "OPTIONS sip:x@h SIP/2.0\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"


@pytest.mark.usefixtures("restore_settings")
def test_header_lines_and_list_values_are_bounded() -> None:
    """MAX_HEADERS header lines, MAX_HEADER_VALUES values of one list header
    (Kamailio-like defaults): a message beyond them is refused."""
    ok = Packet.new_from_string(_HEAD + "a: b\r\n" * 990 + "Accept: " + "x," * 255 + "x\r\n\r\n")
    assert len(ok.get_headers("a")) == 990 and len(ok.get_headers("accept")) == 256
    with pytest.raises(PacketError, match="too many header lines"):
        Packet.new_from_string(_HEAD + "a: b\r\n" * 1000 + "\r\n")
    with pytest.raises(PacketError, match="too many values in accept"):
        Packet.new_from_string(_HEAD + "Accept: " + "," * 65_000 + "\r\n\r\n")
    import_settings(MAX_HEADERS=20_000, MAX_HEADER_VALUES=70_000)
    assert len(Packet.new_from_string(_HEAD + "a: b\r\n" * 10_000 + "\r\n").get_headers("a")) == (
        10_000
    )


def test_folded_lines_unfold_in_linear_time() -> None:
    """16,000 continuation lines of one header: one header, value joined by
    single spaces (RFC 3261 7.3.1), the raw folding kept for the wire."""
    msg = _HEAD + "Subject: s \r\n" + " x\r\n\t \r\n" * 8_000 + "\r\n"
    pkt = Packet.new_from_string(msg)
    assert pkt.get_header("subject") == "s " + " ".join(["x"] * 8_000)
    assert pkt.as_bytes().count(b"\r\n x") == 8_000


def test_datagram_shorter_than_its_content_length_keeps_the_request() -> None:
    """RFC 3261 18.3: the error carries the request, so it can be answered 400."""
    with pytest.raises(BodyTruncatedError) as err:
        Packet.new_from_string(_HEAD + "Content-Length: 10\r\n\r\nabc")
    req = truncated_request(err.value)
    assert isinstance(req, Request) and req.method() == "OPTIONS" and req.body() == b"abc"
    with pytest.raises(BodyTruncatedError) as err:
        Packet.new_from_string("SIP/2.0 200 OK\r\nCall-ID: c\r\nCSeq: 1 X\r\nl: 5\r\n\r\nab")
    assert truncated_request(err.value) is None


# --------------------------------------------------------------------------
# shortcuts of the hot path: the line cache and the fast path

# The parser's caches and fast path, the header index, the cached transaction
# id and the response wire form are shortcuts (docs/performance.md); each test
# below holds one to the behaviour it must not change, the long way. Timing
# is the business of benchmarks/, not of tests.

DATA = Path(__file__).resolve().parent / "data"


def outcome(data: bytes) -> tuple[str, object]:
    """What parsing ``data`` gives: the packet's content, or the error text."""
    try:
        p = Packet.new_from_string(data)
    except PacketError as exc:
        return ("error", str(exc))
    first = p.method() if isinstance(p, Request) else p.code()
    return ("packet", (type(p).__name__, first, p.header_items(), p.body(), p.as_bytes()))


def corpus() -> list[bytes]:
    msgs = [options(1)]
    for path in sorted((DATA / "rfc4475").glob("*.dat")) if (DATA / "rfc4475").is_dir() else []:
        msgs.append(path.read_bytes())
    return msgs


@pytest.mark.parametrize("data", corpus(), ids=lambda d: d[:24].decode(errors="replace"))
def test_line_cache_and_fast_path_change_nothing(data: bytes) -> None:
    _cache.LINE_CACHE.clear()
    cold = outcome(data)
    warm = outcome(data)  # now the valid lines come from the cache
    assert warm == cold
    # the general path alone (no fast path, no cached lines) agrees too
    _cache.LINE_CACHE.clear()
    try:
        general: tuple[str, object] = ("packet", _parser.parse_general(data.lstrip(b"\r\n")))
    except PacketError as exc:
        general = ("error", str(exc))
    if cold[0] == "error":
        assert general == cold
    else:
        assert general[0] == "packet"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Max-Forwards: 70",
                b"Max-Forwards: 71",
                b"Content-Type: a/b",
                b"Content-Type: c/d",
                b"CSeq: 1 OPTIONS",
                b"CSeq: 2 INVITE",
                b"To: <sip:b@h>",
                b"To: bad <<",
                b"Contact: <sip:a@h>, <sip:b@h>",
                b"Allow: A, B",
                b"X-Foo: bar",
                b"Expires: x",
                b" folded",
                b"Subject: a\r\n b",
            ]
        ),
        max_size=8,
    )
)
def test_cached_lines_keep_per_message_checks(lines: list[bytes]) -> None:
    """Conflicting single values and the CSeq method are checked on every message."""
    msg = (b"OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
           b"Call-ID: 1@h\r\n" + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n")  # fmt: skip
    _cache.LINE_CACHE.clear()
    cold = outcome(msg)
    assert outcome(msg) == cold
    # every line cached by other messages first
    for ln in lines:
        outcome(b"OPTIONS sip:b@h SIP/2.0\r\n" + ln + b"\r\n\r\n")
    assert outcome(msg) == cold


def test_line_cache_is_bounded() -> None:
    _cache.LINE_CACHE.clear()
    for n in range(_cache.LINE_CACHE.maxsize + 10):
        Packet.new_from_string(options(n))  # a new From line each time
    assert len(_cache.LINE_CACHE) <= _cache.LINE_CACHE.maxsize
    long_value = "x" * (_cache.LINE_CACHE_LINE_MAX + 1)
    Packet.new_from_string(options(1).replace(b"\r\n\r\n", f"\r\nX-Long: {long_value}\r\n\r\n"
                                              .encode()))  # fmt: skip
    assert not any(k.startswith("X-Long") for k in _cache.LINE_CACHE)


# --------------------------------------------------------------------------
# shortcuts: the header index


def edit_headers(p: Packet, op: str, name: str, values: list[str]) -> bool:
    """Apply a header operation of the property tests; False if ``op`` is not one."""
    if op == "add":
        p.add_header(name, values)
    elif op == "insert":
        p.insert_header(name, values)
    elif op == "del":
        p.del_header(name)
    elif op == "set":
        p.set_header(name, values)
    else:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "insert", "del", "set", "get", "bytes", "body"]),
            st.sampled_from(["Via", "to", "t", "Contact", "X-A", "content-length", "l"]),
            st.lists(st.sampled_from(["1", "<sip:x@h>", "a b", "9"]), max_size=3),
        ),
        max_size=12,
    )
)
def test_header_index_follows_every_change(ops: list[tuple[str, str, list[str]]]) -> None:
    p = Packet.new_from_string(options(7))
    for op, name, values in ops:
        if edit_headers(p, op, name, values):
            pass
        elif op == "bytes":
            p.as_bytes()
        elif op == "body":
            p.set_body("x" * len(values))
            p.as_bytes()  # corrects Content-Length in place
        for probe in ("via", "to", "contact", "x-a", "content-length", "call-id"):
            key = packet_mod.normalize_header_key(probe)
            want = [v for k, v in p.header_items() if k == key]
            assert p.get_headers(probe) == want
            if len(set(want)) <= 1:
                assert p.get_header(probe) == (want[0] if want else None)
            else:
                with pytest.raises(PacketError):
                    p.get_header(probe)
    clone = p.clone()
    clone.add_header("X-A", "clone only")
    assert "clone only" not in p.get_headers("x-a")
    resp = Packet.new_from_string(options(8))
    assert isinstance(resp, Request)
    r = resp.create_response(200)
    assert r.get_headers("via") == resp.get_headers("via")


# --------------------------------------------------------------------------
# shortcuts: the cached transaction id


def long_tid(p: Packet) -> str:
    """Packet.tid() the long way: from the headers as they are now, no cache
    (the formatting itself is checked against Net::SIP in test_packet.py)."""
    return _fields.make_tid(p.get_header("call-id"), p.get_header("cseq"))


def tid_outcome(p: Packet, way: str) -> str:
    try:
        return p.tid() if way == "cached" else long_tid(p)
    except PacketError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("data", corpus(), ids=lambda d: d[:24].decode(errors="replace"))
def test_tid_of_parsed_packets_equals_the_long_way(data: bytes) -> None:
    try:
        p = Packet.new_from_string(data)
    except PacketError:
        return
    assert p.tid() == long_tid(p)
    assert p.clone().tid() == p.tid()
    if isinstance(p, Request):
        assert p.create_response(200).tid() == long_tid(p.create_response(200))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "insert", "del", "set", "tid", "clone", "cseq", "resp"]),
            st.sampled_from(["Call-ID", "i", "cseq", "CSeq", "Via", "x-a"]),
            st.lists(st.sampled_from(["1 OPTIONS", "007 INVITE", "a@b", "x", "", "2 BYE"]),
                     max_size=2),
        ),
        max_size=10,
    )
)  # fmt: skip
def test_tid_follows_every_change(ops: list[tuple[str, str, list[str]]]) -> None:
    start = Packet.new_from_string(options(3))
    assert isinstance(start, Request)
    p: Packet = start
    for op, name, values in ops:
        if edit_headers(p, op, name, values):
            pass
        elif op == "clone":
            p = p.clone()
        elif op == "cseq" and isinstance(p, Request):
            p.set_cseq(len(values) + 5)
        elif op == "resp" and isinstance(p, Request):
            extra = {name: values} if values else None
            with contextlib.suppress(PacketError):  # a value the parser would refuse
                p = p.create_response(len(values) * 100 + 180, headers=extra)
        tid_outcome(p, "cached")  # computed (and cached) before the next change
        assert tid_outcome(p, "cached") == tid_outcome(p, "long")


def test_response_tid_follows_a_replaced_callid_and_cseq() -> None:
    req = Packet.new_from_string(options(4))
    assert isinstance(req, Request)
    assert req.tid() == "4@127.0.0.1 1"
    resp = req.create_response(200, headers={"call-id": "other@h", "cseq": "08 OPTIONS"})
    assert resp.tid() == long_tid(resp) == "other@h 8"
    two = Request("OPTIONS", "sip:a@b", [("call-id", "1@h"), ("call-id", "2@h")])
    with pytest.raises(PacketError):
        two.tid()
    assert two.create_response(200).tid() == "2@h "  # the response has one Call-ID


# --------------------------------------------------------------------------
# shortcuts: the prefix and start-line caches


# pieces of Via and From/To values: valid and invalid prefixes and last
# parameters, so that every combination is tried with and without caches
VIA_HEADS = ["SIP/2.0/UDP h", "SIP/2.0/TCP 10.0.0.1:5060", "SIP/2.0/UDP [::1]:5",
             "SIP/2.0/UDP h;rport", 'SIP/2.0/UDP h;x="a;b"', "SIP/2.0/UDP h ", "SIP/2.0/UDP",
             "SIP/2.0/UDP h;x=", 'SIP/2.0/UDP h;x="', "SIP/2.0/UDP h;received=1.2.3.4;lr",
             "SIP/2.0/UDP h<"]  # fmt: skip
ADDR_HEADS = ["<sip:a@b>", "A <sip:a@b>", '"A;B" <sip:a@b>', "sip:a@b", "<sip:a@b;lr>",
              "<sip:a@b> ", "<sip:a@b", 'x;tag=1" <sip:a@b>', "<sip:a@b>;x", "<sip:a@b>;x=",
              '<sip:a@b>;x="q;', "sip:a@b?x", "A <sip:a@b>;y=2", "<sip:a@b>;tag=1"]  # fmt: skip
TAILS = [";branch=z9hG4bK-1", ";tag=abc", ";tag=a\\b", ";tag=", ";tag", ";tag=a b", ";tag=a>",
         ';tag="q"', ";t@g=1", ";tag=é", ";a=b=c", ";tag=x,y", "",
         " ;tag=1", ";tag=1;"]  # fmt: skip


def clear_caches() -> None:
    _cache.LINE_CACHE.clear()
    _cache.DIALOG_LINE_CACHE.clear()
    _cache.PREFIX_CACHE.clear()
    _cache.PREFIX_SEEN.clear()
    _cache.FIRST_CACHE.clear()


def message_with(name: str, value: str) -> bytes:
    return (f"OPTIONS sip:b@h SIP/2.0\r\nCall-ID: 1@h\r\n{name}: {value}\r\n"
            "Content-Length: 0\r\n\r\n").encode()  # fmt: skip


@pytest.mark.parametrize("name,heads", [("Via", VIA_HEADS), ("From", ADDR_HEADS),
                                        ("To", ADDR_HEADS)])  # fmt: skip
def test_prefix_caches_accept_exactly_what_the_patterns_accept(name: str, heads: list[str]) -> None:
    pattern = _abnf.VIA_RE if name == "Via" else _abnf.ADDR_RE
    for head in heads:
        for tail in TAILS:
            value = head + tail
            clear_caches()
            cold = outcome(message_with(name, value))
            # the long way: the pattern on the whole value
            valid = pattern.fullmatch(value.strip(" \t")) is not None
            assert (cold[0] == "packet") == valid, value
            # every prefix learned that can be (each head with a valid last parameter)
            for h in heads:  # a prefix is learned the second time it is seen
                outcome(message_with(name, h + ";tag=warm1"))
                outcome(message_with(name, h + ";tag=warm2"))
                outcome(message_with(name, h))
            # the shortcut is taken for valid heads
            assert f"{name}: {heads[0]}" in _cache.PREFIX_CACHE
            assert outcome(message_with(name, value)) == cold, value
            # and again: a tagged From/To line taken by the shortcut is a whole
            # line the cache knows now (the dialog's ACK and BYE repeat it)
            assert outcome(message_with(name, value)) == cold, value


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ADDR_HEADS + VIA_HEADS), st.text(
    st.sampled_from(list(";=tagbrch\"<>, \t-xé@")), max_size=10))  # fmt: skip
def test_prefix_caches_change_nothing_for_random_tails(head: str, tail: str) -> None:
    for name in ("Via", "From", "f", "v"):
        for value in (
            head + tail,
            f"{head + tail}\r\n{name}: {head};tag=other",  # two lines
            f"{head + tail}\r\n{name}: {head + tail}",
            f"\r\n {head + tail}",
        ):  # folded
            clear_caches()
            cold = outcome(message_with(name, value))
            outcome(message_with(name, head + ";tag=warm1"))
            outcome(message_with(name, head + ";tag=warm2"))
            assert outcome(message_with(name, value)) == cold


BARE = [b"To: <sip:b@h>\r", b"To: <sip:b@h>\nX: y", b"Max-Forwards: 70\n", b"\nMax-Forwards: 70",
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK\n1", b"Via: SIP/2.0/UDP h\n;branch=z9hG4bK1",
        b"From: <sip:a@h>;tag=\r1", b"CSeq: 1 OPTIONS\r\rX: y", b"X: \n\n"]  # fmt: skip


@pytest.mark.parametrize("line", BARE)
def test_bare_line_breaks_go_the_general_way(line: bytes) -> None:
    """A bare CR or LF next to lines the caches know: the same as without caches."""
    msg = b"OPTIONS sip:b@h SIP/2.0\r\nCall-ID: 1@h\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n"
    clear_caches()
    try:
        general: tuple[str, object] = ("packet", _parser.parse_general(msg))
    except PacketError as exc:
        general = ("error", str(exc))
    cold = outcome(msg)
    for warm in (b"To: <sip:b@h>", b"Max-Forwards: 70", b"Via: SIP/2.0/UDP h;branch=z9hG4bK2",
                 b"From: <sip:a@h>;tag=2", b"CSeq: 1 OPTIONS", b"X: "):  # fmt: skip
        outcome(b"OPTIONS sip:b@h SIP/2.0\r\n" + warm + b"\r\n\r\n")
    assert outcome(msg) == cold
    if cold[0] == "error":
        assert general == cold


def test_prefix_caches_are_bounded() -> None:
    clear_caches()
    for n in range(_cache.PREFIX_CACHE.maxsize + 10):
        for tag in ("a", "b"):  # seen twice: learned
            Packet.new_from_string(message_with("From", f"<sip:u{n}@h>;tag={tag}"))
    assert 0 < len(_cache.PREFIX_CACHE) <= _cache.PREFIX_CACHE.maxsize
    assert 0 < len(_cache.PREFIX_SEEN) <= _cache.PREFIX_CACHE.maxsize


def test_prefix_seen_once_is_not_kept() -> None:
    """A connection per call puts a new port in every Via and From: such
    prefixes are validated and kept only when they come back."""
    clear_caches()
    Packet.new_from_string(message_with("From", "<sip:u@h:5071>;tag=1"))
    assert "From: <sip:u@h:5071>" not in _cache.PREFIX_CACHE
    Packet.new_from_string(message_with("From", "<sip:u@h:5071>;tag=2"))
    assert "From: <sip:u@h:5071>" in _cache.PREFIX_CACHE
    pkt = Packet.new_from_string(message_with("From", "<sip:u@h:5071>;tag=3"))
    assert pkt.get_header("from") == "<sip:u@h:5071>;tag=3"


def test_start_line_cache_changes_nothing() -> None:
    lines = ["OPTIONS sip:a@b SIP/2.0", "OPTIONS sip:a@b?x=1 SIP/2.0", "OPTIONS a@b SIP/2.0",
             "SIP/2.0 200 OK", "SIP/2.0 200 OK  ", "SIP/2.0 200", "SIP/2.0 99 x", "sip/2.0 404 Not",
             "INVITE sip:x SIP/2.1", "SIP/2.0 200 Ok \x01"]  # fmt: skip
    for first in lines:
        data = f"{first}\r\nCall-ID: 1@h\r\nContent-Length: 0\r\n\r\n".encode()
        clear_caches()
        cold = outcome(data)
        assert outcome(data) == cold
    for n in range(_cache.FIRST_CACHE.maxsize + 10):
        Packet.new_from_string(f"OPTIONS sip:{n}@h SIP/2.0\r\n\r\n".encode())
    assert len(_cache.FIRST_CACHE) <= _cache.FIRST_CACHE.maxsize


# --------------------------------------------------------------------------
# shortcuts: the response wire form and header edits


def long_wire(p: Packet) -> bytes:
    """as_bytes() of a packet built from parts, the long way."""
    if isinstance(p, Response):
        out = [f"SIP/2.0 {p.code()} {p.msg()}"]
    else:
        assert isinstance(p, Request)
        out = [f"{p.method()} {p.uri()} SIP/2.0"]
    out += [f"{packet_mod.canonical_header_name(k)}: {v}" for k, v in p.header_items()]
    if not any(k == "content-length" for k, _ in p.header_items()):
        out.append(f"Content-Length: {len(p.body())}")
    return ("\r\n".join(out) + "\r\n\r\n").encode("utf-8", "surrogateescape") + p.body()


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([100, 180, 200, 202, 404, 486, 499, 555, 608, 699]),
    st.one_of(st.none(), st.sampled_from(["OK", "", "Custom phrase", "Grüße"])),
    st.lists(st.tuples(st.sampled_from(["content-length", "l", "x-foo", "via", "to", "Contact"]),
                       st.sampled_from(["0", "5", "<sip:x@y>", "a"])), max_size=4),
    st.binary(max_size=6),
)  # fmt: skip
def test_response_wire_form_equals_the_long_way(
    code: int, msg: str | None, extra: list[tuple[str, str]], body: bytes
) -> None:
    req = Packet.new_from_string(options(5))
    assert isinstance(req, Request)
    resp = req.create_response(code, msg)
    assert resp.msg() == (packet_mod.REASON_PHRASES.get(code, "") if msg is None else msg)
    for name, value in extra:
        resp.add_header(name, value)
    resp.set_body(body)
    # several Content-Lengths, or a wrong one: as_bytes corrects them in place
    cls = [v for k, v in resp.header_items() if k == "content-length"]
    wire = resp.as_bytes()
    if cls:
        assert [v for k, v in resp.header_items() if k == "content-length"] == [str(len(body))]
    assert wire == long_wire(resp)


def test_response_status_lines_and_checks() -> None:
    req = Packet.new_from_string(options(6))
    assert isinstance(req, Request)
    for code, phrase in packet_mod.REASON_PHRASES.items():
        resp = req.create_response(code)
        assert resp.as_bytes().startswith(f"SIP/2.0 {code} {phrase}\r\n".encode())
        assert (resp.code(), resp.msg()) == (code, phrase)
    assert req.create_response(299).as_bytes().startswith(b"SIP/2.0 299 \r\n")
    for bad in (99, 700):
        with pytest.raises(PacketError):
            req.create_response(bad)
    with pytest.raises(PacketError):
        req.create_response(200, "a\r\nX-Injected: 1")


def test_to_tag_is_the_keyed_hash() -> None:
    for callid, frm in [("a@b", "<sip:x@y>;tag=1"), (None, None), ("é\udcff", "")]:
        seed = f"{callid}\x00{frm}".encode("utf-8", "surrogateescape")
        want = hashlib.blake2s(seed, digest_size=8, key=packet_mod._TAG_KEY).hexdigest()
        assert Request._to_tag(callid, frm) == want


TOS = [
    "<sip:a@b>",
    "B <sip:a@b>",
    '"x;tag=1" <sip:a@b>',
    "<sip:a;tag=1@b>",
    "<sip:a@b>;tag=1",
    "<sip:a@b> ; TAG = 2",
    "sip:a@b;tag=3",
    "sip:a@b>",
    "a>",
    ">",
    "",
    "<sip:a@b>;x=>",
]


@pytest.mark.parametrize("to", TOS)
def test_has_tag_shortcut_equals_the_tag_pattern(to: str) -> None:
    params = to.rpartition(">")[2] if "<" in to else to
    assert packet_mod._has_tag(to) == (_abnf.TAG_PARAM_RE.search(params) is not None)


def test_header_changes_with_a_bad_value_change_nothing() -> None:
    p = Packet.new_from_string(options(10))
    before = p.header_items()
    p.get_header("via")  # the index is built and must stay right
    for op in (p.add_header, p.insert_header, p.set_header):
        with pytest.raises(TypeError):
            op("via", ["SIP/2.0/UDP h;branch=z9hG4bKx", None])  # type: ignore[list-item]  # on purpose
        assert p.header_items() == before
        assert p.get_headers("via") == [v for k, v in before if k == "via"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["Allow", "supported", "X-Thing", "via", "l"]),
       st.text(alphabet=st.sampled_from(list(" \t\r\nabc,;=<>\u00e9\u2028")), max_size=12),
       st.booleans())  # fmt: skip
def test_insert_header_with_one_string_equals_a_list_of_it(
    name: str, value: str, indexed: bool
) -> None:
    """insert_header with one str (the shortcut) is insert_header with a list of it."""
    fast = Packet.new_from_string(options(11))
    slow = Packet.new_from_string(options(11))
    if indexed:  # the index is kept up to date, or built later: both ways
        fast.get_headers("via")
        slow.get_headers("via")
    fast.insert_header(name, value)
    slow.insert_header(name, [value])
    assert fast.header_items() == slow.header_items()
    assert fast.get_headers(name) == slow.get_headers(name)
    assert fast.as_bytes() == slow.as_bytes()
    assert fast.tid() == slow.tid()


def test_get_headers_returns_a_copy() -> None:
    p = Packet.new_from_string(options(9))
    vias = p.get_headers("via")
    vias.append("changed")
    assert p.get_headers("via") == [vias[0]]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Contact", "m", "X-A", "x-a", "To", "CSeq", "Via", "Content-Length"]),
            st.one_of(
                st.sampled_from(["<sip:b@h>", "1 INVITE", "a\r\n b", " 7 "]),
                st.lists(st.sampled_from(["<sip:c@h>", "2"]), max_size=2),
                st.none(),
            ),
        ),
        max_size=5,
    ),
    st.booleans(),
)
def test_create_response_headers_as_set_header_one_by_one(
    extra: list[tuple[str, str | list[str] | None]], as_dict: bool
) -> None:
    """create_response appends a header it did not copy without set_header's scan."""
    p = req(INVITE)
    headers = dict(extra) if as_dict else extra
    items = headers.items() if isinstance(headers, dict) else headers
    fast = p.create_response(200, headers=headers, body=b"x")
    plain = p.create_response(200, body=b"x")
    for name, values in items:
        plain.set_header(name, values)
    assert fast.header_items() == plain.header_items()
    assert fast.as_bytes() == plain.as_bytes()
    for pkt in (fast, plain):  # (several CSeq values: both have no tid)
        with contextlib.suppress(PacketError):
            assert pkt.tid() == make_tid(pkt.get_header("call-id"), pkt.get_header("cseq"))


def plain_response_method(p: Packet) -> str | None:
    """Response.method the long way: from its CSeq header, every time."""
    cseq = p.get_header("cseq")
    parts = cseq.split() if cseq else []
    return parts[1] if len(parts) > 1 else None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "insert", "del", "set", "clone"]),
            st.sampled_from(["CSeq", "cseq", "Call-ID", "To"]),
            st.lists(st.sampled_from(["1 INVITE", "2 BYE", "3", "<sip:x@h>"]), max_size=2),
        ),
        max_size=8,
    )
)
def test_response_method_follows_cseq_changes(ops: list[tuple[str, str, list[str]]]) -> None:
    """A response remembers its method until its CSeq changes."""
    r: Packet = req(INVITE).create_response(200, headers={"cseq": "5 INVITE"})
    for op, name, values in ops:
        if op == "clone":
            r = r.clone()
        else:
            edit_headers(r, op, name, values)
        with contextlib.suppress(PacketError):  # (several different CSeqs)
            want = plain_response_method(r)
            assert r.method() == want
            assert r.method() == want  # (remembered)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["1 INVITE", "1  INVITE", "2 BYE", "3", "", "4 X Y"]), max_size=3),
    st.sampled_from([None, "7 OPTIONS", "8"]),
)
def test_create_response_knows_its_method(cseqs: list[str], given: str | None) -> None:
    """A response made by create_response knows its method (from the CSeq
    it copied or was given) as Response.method would find it."""
    p = Request("INVITE", "sip:b@127.0.0.1", [("cseq", c) for c in cseqs])
    r = p.create_response(180, headers={"cseq": given} if given is not None else None)
    with contextlib.suppress(PacketError):  # (several different CSeqs)
        assert r.method() == plain_response_method(r)


# ------------------------------------------------- refused requests get a 400

_REFUSED_HEAD = (
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKrefused\r\n"
    "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\n"
    "Call-ID: refused-1\r\n"
)


@pytest.mark.parametrize(
    "bad",
    ["Expires: 1" + "0" * 40, "Contact: garbage", "Max-Forwards: many", "Contact: <>"],
)
def test_refused_request_keeps_what_a_400_needs(bad: str) -> None:
    data = f"INVITE sip:b@127.0.0.1 SIP/2.0\r\n{_REFUSED_HEAD}CSeq: 1 INVITE\r\n{bad}\r\n\r\n"
    with pytest.raises(PacketError) as err:
        Packet.new_from_string(data.encode())
    req = packet_mod.refused_request(data.encode())
    assert req is not None and req.method() == "INVITE"
    resp = req.create_response(400, "Bad Request", {"warning": packet_mod.warning(err.value)})
    assert resp.get_header("call-id") == "refused-1"
    assert (resp.get_header("via") or "").endswith("branch=z9hG4bKrefused")
    assert (resp.get_header("warning") or "").startswith('399 netsip "')


@pytest.mark.parametrize(
    "data",
    [
        # an ACK is never answered (RFC 3261 17.2.1)
        f"ACK sip:b@127.0.0.1 SIP/2.0\r\n{_REFUSED_HEAD}CSeq: 1 ACK\r\nContact: <>\r\n\r\n",
        # a response neither
        f"SIP/2.0 200 OK\r\n{_REFUSED_HEAD}CSeq: 1 INVITE\r\nContact: <>\r\n\r\n",
        # nothing to answer with: no Via
        "INVITE sip:b@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContact: <>\r\n\r\n",
        # not SIP at all
        "\x00\x01garbage\r\n\r\n",
    ],
)
def test_refused_request_none_when_nothing_may_be_answered(data: str) -> None:
    assert packet_mod.refused_request(data.encode()) is None


def test_warning_text_is_quoted_printable_ascii_and_bounded() -> None:
    text = packet_mod.warning('bad "value" \\ \r\n\x00é' + "x" * 200)
    assert text.startswith('399 netsip "bad ?value? ? ????')
    assert len(text) == len('399 netsip ""') + 100 and text.endswith('"')


@pytest.mark.parametrize(
    "cseq", ["1 INVITE", "007 ACK", "1", "x INVITE", "2\tBYE", "3 BYE extra", "4294967295 BYE", ""]
)
def test_cseq_number_remembered_as_matched(cseq: str) -> None:
    """cseq_number remembers a CSeq value's number (the same the second time)."""
    p = Request("INVITE", "sip:b@127.0.0.1", [("cseq", cseq)] if cseq else [])
    m = _abnf.CSEQ_RE.fullmatch(cseq)
    want = int(m.group(1)) if m else None
    assert p.cseq_number() == want
    assert p.cseq_number() == want


@given(st.lists(st.sampled_from(["Via", "To", "v", "X-A", "Route", "Call-ID"]), max_size=6))
def test_header_index_as_the_long_way(names: list[str]) -> None:
    """The index (one comprehension unless a header repeats) holds every value in order."""
    p = Request("OPTIONS", "sip:b@127.0.0.1", [(n, f"<sip:{i}@h>") for i, n in enumerate(names)])
    for key in {normalize_header_key(n) for n in names} | {"from"}:
        want = tuple(v for k, v in p.header_items() if k == key)
        assert p.header_values(key) == want


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(list('ab1@.-_ ;:<>"\t')), min_size=0, max_size=8))
def test_a_remembered_callid_line_parses_as_the_first_time(callid: str) -> None:
    """A Call-ID line validated by its pattern enters the line cache: the
    next message with it (the dialog's ACK, BYE) parses the same."""
    data = (f"OPTIONS sip:b@h SIP/2.0\r\nCall-ID: {callid}\r\n"
            "Content-Length: 0\r\n\r\n").encode()  # fmt: skip
    clear_caches()
    cold = outcome(data)
    assert outcome(data) == cold
    assert outcome(data) == cold
