"""Stream messages framed by the parser (``parse_stream``) come out as the long way does.

The SocketPool frames a TCP/TLS read buffer and parses each message. For a
header block on the parser's fast path, :func:`netsip.packet.parse_stream`
does both in one go; anything else goes to :func:`netsip.framing.frame` and
:meth:`Packet.new_from_string`. These tests hold the shortcut to that: for
every message start of many streams (valid, invalid, odd Content-Length
spellings, folded and bare-LF headers, bodies that look like headers, cut
off bodies) ``parse_stream`` either declines or gives exactly the frame's
end and the parser's packet; and a real SocketPool fed the same streams over
loopback TCP delivers what the long way delivers and drops the connection
where the long way does.
"""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsip.eventloop import EventLoop
from netsip.framing import FramingError, Message, NeedMore, frame
from netsip.packet import Packet, PacketError, Request, Response, parse_stream
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import LOOPBACKS, is_eof, tcp_listener

MAX_HEADER = 2048
MAX_BODY = 600

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
            r = frame(buf, MAX_HEADER, MAX_BODY, pos, scan)
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
        hend = buf.find(b"\r\n\r\n", pos, pos + MAX_HEADER + 4)
        got = parse_stream(buf, pos, hend, MAX_BODY) if hend > pos else None
        try:
            r: Message | NeedMore | None = frame(buf, MAX_HEADER, MAX_BODY, pos, pos)
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


def msg(headers: list[bytes], body: bytes = b"", first: bytes = b"OPTIONS sip:b@127.0.0.1 SIP/2.0",
        cl: bytes | None = None) -> bytes:  # fmt: skip
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
    msg(BASE),
    msg(BASE, b"v=0\r\n"),
    msg(BASE, b"\r\nContent-Length: 99\r\n\r\n"),  # a body that looks like a header
    msg(BASE, b"abc", cl=b"content-length: 3"),
    msg(BASE, b"abc", cl=b"l: 3"),
    msg(BASE, b"abc", cl=b"L:3"),
    msg(BASE, b"abc", cl=b"CONTENT-LENGTH :\t 3 "),
    msg(BASE, b"abc", cl=b"Content-Length: 003"),
    msg([*BASE, b"Content-Length: 3"], b"abc"),  # the same value twice
    msg([*BASE, b"l: 4"], b"abc"),  # conflicting
    msg([*BASE, b"Content-Length: 4"], b"abc"),  # conflicting, same spelling
    msg(BASE, cl=b"Max-Forwards: 70"),  # no Content-Length at all
    msg(BASE, b"x" * (MAX_BODY + 1)),  # body too big
    msg(BASE, b"abc", cl=b"Content-Length: 3x"),
    msg(BASE, b"abc", cl=b"Content-Length: +3"),
    msg(BASE, b"abc", cl=b"Content-Length: 3\r\n 0"),  # folded value
    msg(BASE, b"abc", cl=b"Content-Length: \x0c3"),  # stripped by the framer only
    msg([*BASE[:2], b"Subject: one\r\n two"]),  # folded header
    msg([*BASE[:2], b"Subject: bare\nlf"]),
    msg([*BASE[:2], b"Subject: bare\rcr"]),
    msg([*BASE[:2], b"Subject: x\n\nl: 5"]),  # a bare-LF header end before CRLF CRLF
    msg([*BASE[:2], b"Subject: caf\xc3\xa9 \xff"]),
    msg([*BASE[:3], b"Call-ID: c1@127.0.0.1", b"Call-ID: other"]),
    msg(BASE, first=b"SIP/2.0 200 OK"),
    msg(BASE, first=b"INVITE sip:b@127.0.0.1 SIP/2.0"),  # CSeq method differs
    msg(BASE, first=b"OPTIONS  sip:b SIP/2.0"),
    msg(BASE, first=b"\nOPTIONS sip:b@127.0.0.1 SIP/2.0"),
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
    whole = msg(BASE, b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")  # 31 octets of body
    buf = whole[: len(whole) - 31 + cut // 10]
    hend = buf.find(b"\r\n\r\n")
    assert hend > 0
    assert parse_stream(buf, 0, hend, MAX_BODY) is None
    assert isinstance(frame(buf, MAX_HEADER, MAX_BODY), NeedMore)
    assert parse_stream(whole, 0, hend, MAX_BODY) is not None


def test_parse_stream_gives_the_wire_form_and_a_body_of_its_own() -> None:
    buf = bytearray(PIECES[1] + PIECES[0])
    hend = buf.find(b"\r\n\r\n")
    got = parse_stream(buf, 0, hend, MAX_BODY)
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
def test_random_streams_agree(pieces: list[bytes], cut: int) -> None:
    buf = b"".join(pieces)
    check_every_start(buf[: max(len(buf) - cut, 1)])


# ------------------------------------------------------ through a SocketPool


def pool_run(ip: str, buf: bytes, chunk: int, want: int, drop: bool) -> tuple[list[Outcome], bool]:
    """Send ``buf`` in chunks of ``chunk`` octets to a SocketPool over TCP and
    run its loop until it delivered ``want`` packets (and, with ``drop``,
    closed the connection), then a little longer to show that nothing more
    happens; the packets delivered and whether the connection was closed."""
    loop = EventLoop()
    pool = SocketPool("tcp", tcp_listener(ip, backlog=4))
    pool.import_settings(MAX_SIP_HEADER=MAX_HEADER, MAX_SIP_BODY=MAX_BODY)
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
