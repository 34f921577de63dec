"""The shortcuts of the hot path give the same results as the long way.

Performance work (issue 7) added caches and batching: the parser's fast path
and line cache, the per-packet header index, UDP batch reads, write
coalescing on streams and the response cache holding wire bytes. Each test
here checks one of them against the behaviour it must not change; timing is
the business of ``benchmarks/``, not of tests.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsip import packet as packet_mod
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, PacketError, Request, Response
from netsip.socketpool import SocketPool
from netsip.util import Addr

DATA = Path(__file__).resolve().parent / "data"

OPTIONS = (
    b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-%d\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=%d\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: %d@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"Supported: timer, replaces\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def options(n: int) -> bytes:
    return OPTIONS % (n, n, n)


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


# ------------------------------------------------------------------ parser


@pytest.mark.parametrize("data", corpus(), ids=lambda d: d[:24].decode(errors="replace"))
def test_line_cache_and_fast_path_change_nothing(data: bytes) -> None:
    packet_mod._LINE_CACHE.clear()
    cold = outcome(data)
    warm = outcome(data)  # now the valid lines come from the cache
    assert warm == cold
    # the general path alone (no fast path, no cached lines) agrees too
    packet_mod._LINE_CACHE.clear()
    try:
        general: tuple[str, object] = ("packet", packet_mod._parse_general(data.lstrip(b"\r\n")))
    except PacketError as exc:
        general = ("error", str(exc))
    if cold[0] == "error":
        assert general == cold
    else:
        assert general[0] == "packet"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([
            b"Max-Forwards: 70", b"Max-Forwards: 71", b"Content-Type: a/b", b"Content-Type: c/d",
            b"CSeq: 1 OPTIONS", b"CSeq: 2 INVITE", b"To: <sip:b@h>", b"To: bad <<",
            b"Contact: <sip:a@h>, <sip:b@h>", b"Allow: A, B", b"X-Foo: bar", b"Expires: x",
            b" folded", b"Subject: a\r\n b",
        ]),
        max_size=8,
    )
)
def test_cached_lines_keep_per_message_checks(lines: list[bytes]) -> None:
    """Conflicting single values and the CSeq method are checked on every message."""
    msg = (b"OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
           b"Call-ID: 1@h\r\n" + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n")  # fmt: skip
    packet_mod._LINE_CACHE.clear()
    cold = outcome(msg)
    assert outcome(msg) == cold
    # every line cached by other messages first
    for ln in lines:
        outcome(b"OPTIONS sip:b@h SIP/2.0\r\n" + ln + b"\r\n\r\n")
    assert outcome(msg) == cold


def test_line_cache_is_bounded() -> None:
    packet_mod._LINE_CACHE.clear()
    for n in range(packet_mod._LINE_CACHE_MAX + 10):
        Packet.new_from_string(options(n))  # a new From line each time
    assert len(packet_mod._LINE_CACHE) <= packet_mod._LINE_CACHE_MAX
    long_value = "x" * (packet_mod._LINE_CACHE_LINE_MAX + 1)
    Packet.new_from_string(options(1).replace(b"\r\n\r\n", f"\r\nX-Long: {long_value}\r\n\r\n"
                                              .encode()))  # fmt: skip
    assert not any(k.startswith("X-Long") for k in packet_mod._LINE_CACHE)


# ----------------------------------------------------------- header index


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
        if op == "add":
            p.add_header(name, values)
        elif op == "insert":
            p.insert_header(name, values)
        elif op == "del":
            p.del_header(name)
        elif op == "set":
            p.set_header(name, values)
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


def test_get_headers_returns_a_copy() -> None:
    p = Packet.new_from_string(options(9))
    vias = p.get_headers("via")
    vias.append("changed")
    assert p.get_headers("via") == [vias[0]]


# ----------------------------------------------------------------- sockets


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


def test_udp_batch_reads_deliver_all_and_stop_when_closed(loop: EventLoop) -> None:
    master = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    master.bind(("127.0.0.1", 0))
    pool = SocketPool("udp", master)
    got: list[Packet] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        got.append(packet)
        if len(got) == 50:
            pool.close()  # from inside a batch: nothing more is read

    pool.attach_eventloop(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        for n in range(10):
            cli.sendto(b"\r\n\r\n", master.getsockname())  # keep-alives in between
            cli.sendto(options(n), master.getsockname())
        for _ in range(3):
            loop.loop(0)
        assert [p.callid() for p in got] == [f"{n}@127.0.0.1" for n in range(10)]
        for n in range(10, 100):
            cli.sendto(options(n), master.getsockname())
        for _ in range(10):
            loop.loop(0)
    assert len(got) == 50
    assert pool.closed


def test_stream_responses_to_a_burst_are_written_and_confirmed(loop: EventLoop) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pool = SocketPool("tcp", listener)
    written: list[int] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        pool.sendto(packet.create_response(200), from_, written.append)

    pool.attach_eventloop(loop, on_packet)
    with socket.create_connection(listener.getsockname()) as cli:
        cli.sendall(b"".join(options(n) for n in range(20)))  # one burst
        buf = b""
        for _ in range(200):
            loop.loop(0.01)
            cli.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                buf += cli.recv(65536)
            if buf.count(b"SIP/2.0 200 ") == 20:
                break
    assert buf.count(b"SIP/2.0 200 ") == 20
    assert written == [0] * 20
    pool.close()


# -------------------------------------------------------------- dispatcher


def _uas(loop: EventLoop) -> tuple[Dispatcher, list[Packet]]:
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
    got: list[Packet] = []

    def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
        got.append(packet)
        if isinstance(packet, Request):
            disp.deliver(packet.create_response(200), leg=leg, dst_addr=from_)

    disp.set_receiver(receive)
    return disp, got


def _exchange(
    loop: EventLoop, cli: socket.socket, data: bytes, dst: tuple[str, int]
) -> list[bytes]:
    cli.sendto(data, dst)
    out = []
    for _ in range(50):
        loop.loop(0.01)
        try:
            out.append(cli.recv(65536))
        except BlockingIOError:
            if out:
                break
    return out


def test_cached_response_is_the_one_sent(loop: EventLoop) -> None:
    disp, got = _uas(loop)
    dst = ("127.0.0.1", disp.legs[0].src.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.bind(("127.0.0.1", 0))
        cli.setblocking(False)
        first = _exchange(loop, cli, options(1), dst)
        again = _exchange(loop, cli, options(1), dst)  # a retransmission
    assert len(got) == 1
    assert len(first) == len(again) == 1 and first == again
    resp = Packet.new_from_string(first[0])
    assert isinstance(resp, Response) and resp.get_headers("allow")  # the leg added it
    disp.close()


def test_cached_response_that_does_not_parse_goes_to_receiver(loop: EventLoop) -> None:
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
    got: list[Packet] = []

    def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
        got.append(packet)
        if isinstance(packet, Request):
            resp = packet.create_response(200)
            resp.set_header("cseq", "not a cseq")  # sent as is, refused by the parser
            disp.deliver(resp, leg=leg, dst_addr=from_)

    disp.set_receiver(receive)
    dst = ("127.0.0.1", disp.legs[0].src.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.bind(("127.0.0.1", 0))
        cli.setblocking(False)
        _exchange(loop, cli, options(2), dst)
        _exchange(loop, cli, options(2), dst)
    assert len(got) == 2  # no cached answer: the receiver saw the retransmission
    disp.close()


def test_coalescing_does_not_make_the_write_limit_bite(loop: EventLoop) -> None:
    """A burst whose responses exceed MAX_WBUF together, each fits: all are written."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pool = SocketPool("tcp", listener, settings={"MAX_WBUF": 600})
    results: list[int] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        pool.sendto(packet.create_response(200), from_, results.append)

    pool.attach_eventloop(loop, on_packet)
    with socket.create_connection(listener.getsockname()) as cli:
        cli.sendall(b"".join(options(n) for n in range(5)))  # 5 x ~400 bytes of responses
        for _ in range(50):
            loop.loop(0.01)
            if len(results) == 5:
                break
    assert results == [0] * 5
    assert errno.ENOBUFS not in results
    pool.close()
