"""Tests for netsip.framing: SIP stream framing without sockets (h11-style vectors).

The last sections hold the parser's stream shortcut
(:func:`netsip.packet.parse_stream`, which the framer calls) to ``frame``
and the parser, first on buffers and then through a SocketPool over
loopback TCP, the framer's one user.
"""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netsip.framing
from netsip.eventloop import EventLoop
from netsip.framing import FramingError, Message, NeedMore, frame
from netsip.packet import Packet, PacketError, Request, Response, parse_stream
from netsip.socketpool import SocketPool
from netsip.util import Addr, NetSIPError
from tests.support import LOOPBACKS, imported_modules, is_eof, tcp_listener

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


# --- the parser's shortcut (parse_stream) against frame and the parser ---------

# For a header block on the parser's fast path, netsip.packet.parse_stream
# frames and parses a stream message in one go; anything else goes the long
# way, frame() and Packet.new_from_string. For every message start of many
# streams (valid, invalid, odd Content-Length spellings, folded and bare-LF
# headers, bodies that look like headers, cut off bodies) parse_stream either
# declines or gives exactly the frame's end and the parser's packet.

STREAM_MAX_HEADER = 2048
STREAM_MAX_BODY = 600

Outcome = tuple[str, object]


def outcome(p: Packet) -> Outcome:
    """Everything a receiver can see of a packet."""
    if isinstance(p, Request):
        first: tuple[object, str] = (p.method(), p.uri())
    else:
        assert isinstance(p, Response)
        first = (p.code(), p.msg())
    return (type(p).__name__, (first, p.header_items(), p.body(), p.as_bytes(), p.tid()))


def long_way(buf: bytes) -> tuple[list[Outcome], str]:
    """What framing and parsing message by message make of ``buf``:
    the packets, and ``"need"`` (waits for more), ``"framing"`` or ``"packet"``
    (the connection is dropped)."""
    got: list[Outcome] = []
    pos = scan = 0
    while True:
        try:
            r = frame(buf, STREAM_MAX_HEADER, STREAM_MAX_BODY, pos, scan)
        except FramingError:
            return got, "framing"
        if isinstance(r, NeedMore):
            return got, "need"
        try:
            got.append(outcome(Packet.new_from_string(buf[r.start : r.end])))
        except PacketError:
            return got, "packet"
        pos = scan = r.end


def check_every_start(buf: bytes) -> int:
    """``parse_stream`` at every message start of ``buf`` against the long way;
    how often it took the message."""
    taken = 0
    pos = 0
    while pos < len(buf):
        hend = buf.find(b"\r\n\r\n", pos, pos + STREAM_MAX_HEADER + 4)
        got = parse_stream(buf, pos, hend, STREAM_MAX_BODY) if hend > pos else None
        try:
            r: Message | NeedMore | None = frame(buf, STREAM_MAX_HEADER, STREAM_MAX_BODY, pos, pos)
        except FramingError:
            r = None
        if got is not None:
            # taken: the frame must agree and the parser must give the same packet
            assert isinstance(r, Message)
            assert (r.start, r.end) == (pos, got[1])
            assert outcome(got[0]) == outcome(Packet.new_from_string(buf[pos : got[1]]))
            taken += 1
        if not isinstance(r, Message):
            break
        pos = r.end
    return taken


def stream_msg(
    headers: list[bytes],
    body: bytes = b"",
    first: bytes = b"OPTIONS sip:b@127.0.0.1 SIP/2.0",
    cl: bytes | None = None,
) -> bytes:
    """A message; ``cl`` is the Content-Length line (default: the right one)."""
    lines = [first, *headers]
    lines.append(b"Content-Length: %d" % len(body) if cl is None else cl)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


BASE = [
    b"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1",
    b"From: <sip:a@127.0.0.1>;tag=1",
    b"To: <sip:b@127.0.0.1>",
    b"Call-ID: c1@127.0.0.1",
    b"CSeq: 1 OPTIONS",
]

# single messages, each on purpose somewhere near a rule
PIECES: list[bytes] = [
    stream_msg(BASE),
    stream_msg(BASE, b"v=0\r\n"),
    stream_msg(BASE, b"\r\nContent-Length: 99\r\n\r\n"),  # a body that looks like a header
    stream_msg(BASE, b"abc", cl=b"content-length: 3"),
    stream_msg(BASE, b"abc", cl=b"l: 3"),
    stream_msg(BASE, b"abc", cl=b"L:3"),
    stream_msg(BASE, b"abc", cl=b"CONTENT-LENGTH :\t 3 "),
    stream_msg(BASE, b"abc", cl=b"Content-Length: 003"),
    stream_msg([*BASE, b"Content-Length: 3"], b"abc"),  # the same value twice
    stream_msg([*BASE, b"l: 4"], b"abc"),  # conflicting
    stream_msg([*BASE, b"Content-Length: 4"], b"abc"),  # conflicting, same spelling
    stream_msg(BASE, cl=b"Max-Forwards: 70"),  # no Content-Length at all
    stream_msg(BASE, b"x" * (STREAM_MAX_BODY + 1)),  # body too big
    stream_msg(BASE, b"abc", cl=b"Content-Length: 3x"),
    stream_msg(BASE, b"abc", cl=b"Content-Length: +3"),
    stream_msg(BASE, b"abc", cl=b"Content-Length: 3\r\n 0"),  # folded value
    stream_msg(BASE, b"abc", cl=b"Content-Length: \x0c3"),  # stripped by the framer only
    stream_msg([*BASE[:2], b"Subject: one\r\n two"]),  # folded header
    stream_msg([*BASE[:2], b"Subject: bare\nlf"]),
    stream_msg([*BASE[:2], b"Subject: bare\rcr"]),
    stream_msg([*BASE[:2], b"Subject: x\n\nl: 5"]),  # a bare-LF header end before CRLF CRLF
    stream_msg([*BASE[:2], b"Subject: caf\xc3\xa9 \xff"]),
    stream_msg([*BASE[:3], b"Call-ID: c1@127.0.0.1", b"Call-ID: other"]),
    stream_msg(BASE, first=b"SIP/2.0 200 OK"),
    stream_msg(BASE, first=b"INVITE sip:b@127.0.0.1 SIP/2.0"),  # CSeq method differs
    stream_msg(BASE, first=b"OPTIONS  sip:b SIP/2.0"),
    stream_msg(BASE, first=b"\nOPTIONS sip:b@127.0.0.1 SIP/2.0"),
    b"\r\n\r\n",  # keep-alives
    b"\r\n",
    b"garbage\r\n\r\n",
    b"\x00\x01\x02",
]


def test_parse_stream_takes_only_what_the_long_way_agrees_with() -> None:
    taken = 0
    for piece in PIECES:
        taken += check_every_start(piece)
        taken += check_every_start(PIECES[0] + piece + PIECES[1])
    assert taken > 20  # the shortcut is used, not just declined


@pytest.mark.parametrize("cut", [0, 1, 10, 60, 100, 130, 135, 136, 138])
def test_parse_stream_declines_a_message_not_yet_complete(cut: int) -> None:
    whole = stream_msg(BASE, b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")  # 31 octets of body
    buf = whole[: len(whole) - 31 + cut // 10]
    hend = buf.find(b"\r\n\r\n")
    assert hend > 0
    assert parse_stream(buf, 0, hend, STREAM_MAX_BODY) is None
    assert isinstance(frame(buf, STREAM_MAX_HEADER, STREAM_MAX_BODY), NeedMore)
    assert parse_stream(whole, 0, hend, STREAM_MAX_BODY) is not None


def test_parse_stream_gives_the_wire_form_and_a_body_of_its_own() -> None:
    buf = bytearray(PIECES[1] + PIECES[0])
    hend = buf.find(b"\r\n\r\n")
    got = parse_stream(buf, 0, hend, STREAM_MAX_BODY)
    assert got is not None
    pkt, end = got
    assert end == len(PIECES[1])
    assert pkt.as_bytes() == PIECES[1]
    assert pkt.body() == b"v=0\r\n"
    buf[:] = b"x" * len(buf)  # the packet holds copies, not views of the buffer
    assert pkt.as_bytes() == PIECES[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6),
       st.integers(0, 40))  # fmt: skip
def test_parse_stream_agrees_with_frame_on_random_streams(pieces: list[bytes], cut: int) -> None:
    buf = b"".join(pieces)
    check_every_start(buf[: max(len(buf) - cut, 1)])


# --- the same streams through a SocketPool over loopback TCP --------------------

# A real SocketPool fed the streams above in chunks delivers what the long
# way delivers and drops the connection where the long way does.


def pool_run(ip: str, buf: bytes, chunk: int, want: int, drop: bool) -> tuple[list[Outcome], bool]:
    """Send ``buf`` in chunks of ``chunk`` octets to a SocketPool over TCP and
    run its loop until it delivered ``want`` packets (and, with ``drop``,
    closed the connection), then a little longer to show that nothing more
    happens; the packets delivered and whether the connection was closed."""
    loop = EventLoop()
    pool = SocketPool("tcp", tcp_listener(ip, backlog=4))
    pool.import_settings(MAX_SIP_HEADER=STREAM_MAX_HEADER, MAX_SIP_BODY=STREAM_MAX_BODY)
    got: list[Outcome] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        got.append(outcome(packet))

    pool.attach_eventloop(loop, on_packet)
    try:
        with socket.create_connection(pool.master().getsockname()[:2], timeout=5) as cli:
            cli.settimeout(None)  # is_eof peeks with MSG_DONTWAIT
            cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(buf), chunk):
                try:
                    cli.sendall(buf[i : i + chunk])
                except (BrokenPipeError, ConnectionResetError):
                    break  # dropped already: the rest cannot matter
                loop.loop(0)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (
                len(got) >= want and (not drop or is_eof(cli))
            ):
                loop.loop(0.01)
            for _ in range(5):
                loop.loop(0.005)
            return got, is_eof(cli)
    finally:
        pool.close()
        loop.close()


STREAMS = [
    [0, 1, 2, 3],
    [0, 9, 0],  # conflicting Content-Length: dropped after the first
    [0, 11],  # no Content-Length
    [1, 12],  # body too big
    [0, 17, 0],  # folded header: the long way
    [0, 20, 0],  # bare-LF header end
    [27, 0, 28, 1],  # keep-alives in between
    [2, 2, 2, 4, 5, 6, 7, 8],
    [0, 21, 23, 24],
]


@pytest.mark.parametrize("ip", LOOPBACKS)
@pytest.mark.parametrize("chunk", [1, 7, 100, 65536])
@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: "-".join(map(str, s)))
def test_pool_delivers_what_the_long_way_does(ip: str, chunk: int, stream: list[int]) -> None:
    buf = b"".join(PIECES[i] for i in stream)
    want, verdict = long_way(buf)
    drop = verdict != "need"
    got, closed = pool_run(ip, buf, chunk, len(want), drop)
    assert got == want
    assert closed == drop
