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
import hashlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsip import _abnf, _cache, _fields, _parser
from netsip import packet as packet_mod
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, PacketError, Request, Response
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import addr_of, datagrams, udp_socket

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


# ----------------------------------------------------------- header index


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


# ------------------------------------------------------- transaction id


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
def test_tid_of_parsed_packets(data: bytes) -> None:
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


def test_create_response_tid_with_replaced_callid() -> None:
    req = Packet.new_from_string(options(4))
    assert isinstance(req, Request)
    assert req.tid() == "4@127.0.0.1 1"
    resp = req.create_response(200, headers={"call-id": "other@h", "cseq": "08 OPTIONS"})
    assert resp.tid() == long_tid(resp) == "other@h 8"
    two = Request("OPTIONS", "sip:a@b", [("call-id", "1@h"), ("call-id", "2@h")])
    with pytest.raises(PacketError):
        two.tid()
    assert two.create_response(200).tid() == "2@h "  # the response has one Call-ID


# --------------------------------------------------------- prefix caches

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


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ADDR_HEADS + VIA_HEADS), st.text(
    st.sampled_from(list(";=tagbrch\"<>, \t-xé@")), max_size=10))  # fmt: skip
def test_prefix_caches_random_tails(head: str, tail: str) -> None:
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


# --------------------------------------------------- responses, wire form


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
def test_response_wire_form(code: int, msg: str | None, extra: list[tuple[str, str]],
                            body: bytes) -> None:  # fmt: skip
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
def test_has_tag_shortcut(to: str) -> None:
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
def test_insert_header_plain_string_shortcut(name: str, value: str, indexed: bool) -> None:
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


def _udp_pool(loop: EventLoop, on_packet: Callable[[Packet, Addr], None]) -> SocketPool:
    pool = SocketPool("udp", udp_socket())
    pool.attach_eventloop(loop, on_packet)
    return pool


def test_udp_responses_of_a_batch_go_out_after_it_in_order(loop: EventLoop) -> None:
    sent_during: list[int] = []
    pool: SocketPool

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        pool.sendto(packet.create_response(200), from_)
        # held: nothing has reached the client while the batch is delivered
        sent_during.append(len(datagrams(cli)))

    pool = _udp_pool(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.bind(("127.0.0.1", 0))
        for n in range(10):
            cli.sendto(options(n), pool.master().getsockname())
        for _ in range(3):
            loop.loop(0)
        got = datagrams(cli)
        assert sent_during == [0] * 10
        assert [Packet.new_from_string(d).callid() for d in got] == [
            f"{n}@127.0.0.1" for n in range(10)
        ]
        # outside a batch a datagram goes out at once
        pool.sendto(Packet.new_from_string(options(99)), addr_of(cli))
        assert len(datagrams(cli)) == 1
    pool.close()


def test_udp_held_responses_survive_a_raising_callback_and_close(loop: EventLoop) -> None:
    calls: list[int] = []
    pool: SocketPool

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        calls.append(1)
        pool.sendto(packet.create_response(200), from_)
        if len(calls) == 2:
            raise RuntimeError("application bug")
        if len(calls) == 4:
            pool.close()  # what it sent before goes out before the socket closes

    pool = _udp_pool(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.bind(("127.0.0.1", 0))
        for n in range(6):
            cli.sendto(options(n), pool.master().getsockname())
        with pytest.raises(RuntimeError, match="application bug"):
            loop.loop(0)
        assert len(datagrams(cli)) == 2  # the two responses before the raise
        for _ in range(3):
            loop.loop(0)
        assert len(calls) == 4
        assert len(datagrams(cli)) == 2  # the next two, then the pool closed
    assert pool.closed


def test_udp_held_send_failure_reaches_its_callback(loop: EventLoop) -> None:
    errors: list[int] = []
    pool: SocketPool

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        # port 0 cannot be sent to: the error comes after the batch
        pool.sendto(packet.create_response(200), Addr.parse("127.0.0.1:0"), errors.append)
        assert errors == []

    pool = _udp_pool(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.sendto(options(1), pool.master().getsockname())
        for _ in range(3):
            loop.loop(0)
    assert len(errors) == 1
    assert errors[0] != 0
    pool.close()


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
