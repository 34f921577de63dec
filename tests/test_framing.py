"""Tests for netsip.framing: SIP stream framing without sockets (h11-style vectors)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import netsip.framing
from netsip.framing import FramingError, Message, NeedMore, frame
from netsip.util import NetSIPError
from tests.support import imported_modules

MAX_HEADER = 2**14
MAX_BODY = 2**16

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 23\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 x\r\n"
)
OK_COMPACT = (
    b"SIP/2.0 200 OK\r\n"
    b"v: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n"
    b"i: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"l: 0\r\n"
    b"\r\n"
)
# the body contains something that looks like a Content-Length header
BODY_TRAP = (
    b"MESSAGE sip:a@b SIP/2.0\r\n"
    b"CONTENT-LENGTH : 40\r\n"
    b"Call-ID: x\r\n"
    b"\r\n"
    b"\r\nContent-Length: 99999\r\n\r\n...........\r\n"
)
VECTORS = [INVITE, OK_COMPACT, BODY_TRAP]


def msg(headers: str, body: bytes = b"", first: str = "OPTIONS sip:x SIP/2.0") -> bytes:
    return (first + "\r\n" + headers + "\r\n").encode() + body


def extract(
    chunks: list[bytes], max_header: int = MAX_HEADER, max_body: int = MAX_BODY
) -> tuple[list[bytes], bytearray]:
    """Feed chunks into a read buffer the way SocketPool does; return messages and leftover."""
    buf = bytearray()
    scan = need = 0
    out: list[bytes] = []
    for chunk in chunks:
        buf += chunk
        if len(buf) < need:
            continue
        pos = 0
        while True:
            r = frame(buf, max_header, max_body, pos, scan)
            if isinstance(r, NeedMore):
                break
            out.append(bytes(buf[r.start : r.end]))
            pos = scan = r.end
        del buf[: r.start]
        scan = r.scan - r.start
        need = r.need - r.start if r.need else 0
        assert 0 <= scan <= len(buf)
    return out, buf


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- complete vectors -------------------------------------------------------


@pytest.mark.parametrize("data", VECTORS)
def test_whole(data: bytes) -> None:
    assert frame(data, MAX_HEADER, MAX_BODY) == Message(0, len(data))


@pytest.mark.parametrize("data", VECTORS)
def test_whole_bytearray_with_trailing_bytes(data: bytes) -> None:
    buf = bytearray(data + b"INVITE sip:partial")
    assert frame(buf, MAX_HEADER, MAX_BODY) == Message(0, len(data))


@pytest.mark.parametrize("data", VECTORS)
def test_one_byte_at_a_time(data: bytes) -> None:
    out, rest = extract(bytewise(data))
    assert out == [data]
    assert rest == b""


@pytest.mark.parametrize("data", VECTORS)
def test_every_prefix_needs_more(data: bytes) -> None:
    for i in range(len(data)):
        r = frame(data[:i], MAX_HEADER, MAX_BODY)
        assert isinstance(r, NeedMore), i


def test_several_messages_in_one_buffer() -> None:
    data = INVITE + b"\r\n\r\n" + OK_COMPACT + BODY_TRAP + b"\r\n"
    out, rest = extract([data])
    assert out == [INVITE, OK_COMPACT, BODY_TRAP]
    assert rest == b""


def test_several_messages_byte_by_byte_with_trailing() -> None:
    data = b"\r\n" + INVITE + OK_COMPACT + b"\r\n" + BODY_TRAP + b"SIP/2.0 1"
    out, rest = extract(bytewise(data))
    assert out == [INVITE, OK_COMPACT, BODY_TRAP]
    assert rest == b"SIP/2.0 1"


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_random_splits(cuts: list[int]) -> None:
    data = INVITE + b"\r\n" + OK_COMPACT + BODY_TRAP
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out, rest = extract(chunks)
    assert out == [INVITE, OK_COMPACT, BODY_TRAP]
    assert rest == b""


# --- keep-alives -------------------------------------------------------------


def test_keepalive_crlfs_are_skipped() -> None:
    assert frame(b"\r\n\r\n" + OK_COMPACT, MAX_HEADER, MAX_BODY) == Message(4, 4 + len(OK_COMPACT))
    assert frame(b"\r\n\r\n\r\n", MAX_HEADER, MAX_BODY) == NeedMore(6, 6, 0)
    assert frame(b"\r\n\r", MAX_HEADER, MAX_BODY) == NeedMore(2, 2, 0)


def test_keepalive_only_stream_leaves_nothing_buffered() -> None:
    out, rest = extract([b"\r\n\r\n"] * 1000 + [b"\r", b"\n"])
    assert out == []
    assert rest == b""


def test_start_offset() -> None:
    data = b"garbage" + OK_COMPACT
    assert frame(data, MAX_HEADER, MAX_BODY, start=7) == Message(7, len(data))


# --- header/body details -------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Content-Length: 3",
        "content-length:3",
        "CONTENT-LENGTH  :   3   ",
        "l: 3",
        "L:3",
        "Content-Length:\r\n   3",  # folded value (RFC 3261 7.3.1)
        "Content-Length: 3\r\nl: 3",  # repeated with the same value is fine (as in Perl)
        "l: 3\r\nContent-Length: 03",
    ],
)
def test_content_length_forms(header: str) -> None:
    data = msg(f"Call-ID: a\r\n{header}\r\n", b"abc")
    assert frame(data + b"xyz", MAX_HEADER, MAX_BODY) == Message(0, len(data))


def test_content_length_zero_and_first_line_not_a_header() -> None:
    data = msg("l: 0\r\n", first="Content-Length: 5 sip:x SIP/2.0")
    assert frame(data, MAX_HEADER, MAX_BODY) == Message(0, len(data))


def test_similar_header_names_are_not_content_length() -> None:
    data = msg("Lx: 5\r\nContent-Length-X: 5\r\nl: 1\r\n", b"a")
    assert frame(data, MAX_HEADER, MAX_BODY) == Message(0, len(data))


def test_need_reports_full_length_once_header_is_complete() -> None:
    data = msg("Content-Length: 10\r\n", b"0123456789")
    hdr_len = len(data) - 10
    r = frame(data[: hdr_len + 3], MAX_HEADER, MAX_BODY)
    assert r == NeedMore(0, hdr_len - 4, len(data))
    # resuming at scan finds the header end at once
    assert frame(data, MAX_HEADER, MAX_BODY, 0, r.scan) == Message(0, len(data))


# --- violations ---------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(FramingError, NetSIPError)
    assert issubclass(FramingError, ValueError)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ("Call-ID: a\r\n", "missing Content-Length"),
        ("Content-Length: 3\r\nl: 4\r\n", "conflicting Content-Length"),
        ("Content-Length: -3\r\n", "invalid Content-Length"),
        ("Content-Length: 3, 3\r\n", "invalid Content-Length"),
        ("Content-Length: \r\n", "invalid Content-Length"),
        ("Content-Length: 0x10\r\n", "invalid Content-Length"),
        ("Content-Length: " + "9" * 5000 + "\r\n", "invalid Content-Length"),
        ("Content-Length: 65537\r\n", "body is too big"),
    ],
)
def test_header_violations(headers: str, match: str) -> None:
    data = msg(headers)
    with pytest.raises(FramingError, match=match):
        frame(data, MAX_HEADER, MAX_BODY)
    # same result when the data trickles in
    with pytest.raises(FramingError, match=match):
        extract(bytewise(data))


def test_body_too_big_is_rejected_before_the_body_arrives() -> None:
    data = msg("Content-Length: 1001\r\n")
    with pytest.raises(FramingError, match="body is too big: 1001 > 1000"):
        frame(data, MAX_HEADER, 1000)
    assert isinstance(frame(msg("Content-Length: 1000\r\n"), MAX_HEADER, 1000), NeedMore)


def test_header_size_limit_boundary() -> None:
    base = msg("l: 0\r\n")
    hdr_len = len(base) - 4  # Perl's rule: index of CRLFCRLF <= MAX_SIP_HEADER
    assert frame(base, hdr_len, 0) == Message(0, len(base))
    with pytest.raises(FramingError, match="header is too big"):
        frame(base, hdr_len - 1, 0)
    # trickling in: accepted at the exact limit, rejected one byte above it
    assert extract(bytewise(base), hdr_len, 0)[0] == [base]
    with pytest.raises(FramingError, match="header is too big"):
        extract(bytewise(base), hdr_len - 1, 0)


def test_incomplete_header_over_limit_fails_at_once() -> None:
    # no header end and already too long: no point waiting for more
    with pytest.raises(FramingError, match="header is too big"):
        frame(b"INVITE " + b"x" * 104, 100, 0)
    # a terminator could still start at offset 100 with 3 bytes of it present
    assert isinstance(frame(b"INVITE " + b"x" * 93 + b"\r\n\r", 100, 0), NeedMore)
    assert isinstance(frame(b"INVITE " + b"x" * 96, 100, 0), NeedMore)
    with pytest.raises(FramingError):
        frame(b"INVITE " + b"x" * 97, 100, 0)


def test_huge_buffer_is_not_scanned_beyond_the_limit() -> None:
    # a multi-megabyte buffer without header end fails on the first call
    with pytest.raises(FramingError, match="header is too big"):
        frame(bytearray(b"A" * 5_000_000), MAX_HEADER, MAX_BODY)


def test_bare_lf_header_end_is_not_accepted() -> None:
    data = b"OPTIONS sip:x SIP/2.0\nl: 0\n\n"
    assert isinstance(frame(data, MAX_HEADER, MAX_BODY), NeedMore)
    with pytest.raises(FramingError, match="header is too big"):
        frame(data + b"x" * 200, 50, 0)


def test_body_content_length_trap_is_ignored() -> None:
    # only the header block is searched for Content-Length
    data = msg("Content-Length: 4\r\n", b"\r\nl:")
    assert frame(data, MAX_HEADER, MAX_BODY) == Message(0, len(data))


# --- purity --------------------------------------------------------------------------


def test_framing_is_pure() -> None:
    """framing.py imports nothing that does I/O or reads the clock (STYLE.md)."""
    imported = imported_modules(netsip.framing.__file__)
    forbidden = {"socket", "selectors", "ssl", "time", "select", "asyncio", "os"}
    assert not imported & forbidden
    assert imported <= {"__future__", "re", "typing", "netsip"}
