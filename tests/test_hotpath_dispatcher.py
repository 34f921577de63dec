"""The shortcuts of the dispatcher's UAS path give the same results as the long way.

Performance work (issue 7) on Dispatcher, Leg and the response cache: the
cache key reads header tuples and cuts a plain To tag without the general
code, the Contact of INVITE/2xx takes the user part of ``<uri>;params``
without the general header parser, the leg's contact is split once, and a
response is looked up in the cache without a detour. Each test checks one of
them against a reference copy of the code it replaced, or against the wire
bytes the UAS produced before; timing is the business of ``benchmarks/``.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netsip import leg as leg_mod
from netsip import respcache
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import DEFAULT_ALLOW, Leg
from netsip.packet import Packet, Request, Response
from netsip.respcache import cache_key
from netsip.retransmit import retransmit_timers
from netsip.util import Addr, Proto, sip_hdrval2parts
from tests.support import LOOPBACKS, family

# ------------------------------------------------------- reference copies

# respcache.cache_key before issue 7's dispatcher work (with _strip_tag's
# pure regex form, which its fast case must equal)
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


# Leg._make_contact before issue 7's dispatcher work
def ref_make_contact(contact: str, packet: Packet, is_request: bool) -> str:
    hdr = packet.get_header("from" if is_request else "to")
    m = re.match(r"(\w+):(?:.*@)?(.*)\Z", contact)
    if hdr is None or m is None:
        return contact
    sproto, addr = m.group(1), m.group(2)
    user = sip_hdrval2parts("from", hdr)[0]
    um = re.search(r"([^<>@\s]+)@", user)
    if um is None:
        return contact
    # the user of the From/To without its scheme; the scheme is the leg's
    name = re.sub(r"\A[A-Za-z][A-Za-z0-9+.-]*:", "", um.group(1))
    out = f"{sproto}:{name}@{addr}"
    if ";" in out:
        out = f"<{out}>"
    return out


class GetHeadersOnly:
    """A HeaderSource in the protocol's original shape: only get_headers."""

    def __init__(self, packet: Packet) -> None:
        self._packet = packet

    def get_headers(self, name: str) -> list[str]:
        return self._packet.get_headers(name)


# ------------------------------------------------------------- strategies

# the characters that matter to tags, name-addrs, quoting and folding
_NASTY = '<>;=, \t"\\@:tagTAGsipSIP.1x\u0130\u017f\n\r'
nasty_text = st.text(alphabet=_NASTY, max_size=40)
# shapes near the shortcuts: "<...>" followed by a tag or other parameters
near_tag = st.builds(
    lambda a, t, b: f"{a}>{t}{b}",
    nasty_text,
    st.sampled_from([";tag=", ";TAG=", ";Tag=", "; tag=", ";tag =", ";tags=", ";", ""]),
    nasty_text,
)
near_addr = st.builds(lambda a, b: f"<{a}>{b}", nasty_text, nasty_text)

_tag_name = st.sampled_from(["tag", "TAG", "Tag", "tAg", "tags", "xtag", "ta g"])
_param_value = st.text(alphabet="abc12-.>;, \t", max_size=8)
_param = st.one_of(
    st.builds(lambda n, v: f";{n}={v}", _tag_name, _param_value),
    st.builds(lambda n, v: f" ; {n} = {v}", _tag_name, _param_value),
    st.sampled_from([";lr", ";transport=udp", ";x=tag", ";", ";user=phone"]),
)
_uri = st.sampled_from(["sip:bob@127.0.0.1", "sip:bob@[::1]:5062", "sips:b@x;tag=u", "tel:+1"])
_display = st.sampled_from(["", '"Bob" ', "Bob ", '"a<b>;tag=x" ', '"Q\\"x" '])
_params = st.lists(_param, max_size=3)
address = st.one_of(
    st.builds(lambda d, u, ps: f"{d}<{u}>{''.join(ps)}", _display, _uri, _params),
    st.builds(lambda u, ps: u + "".join(ps), _uri, _params),
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


# ------------------------------------------------------------- cache key


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
def test_cache_key_equals_the_old_one(headers: list[tuple[str, str]]) -> None:
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


# ---------------------------------------------------------------- Contact


@settings(max_examples=1500)
@given(st.one_of(nasty_text, near_addr))
@example("<sip:bob@127.0.0.1>;tag=1")
@example("<sip:bob@127.0.0.1>")
@example("<sip:bob@h>x;tag=1")
@example("<sip:bob@h> ;tag=1")
@example("<sip:b<o>b@h>;tag=1")
@example("<sip:bob@h;tag=1")
@example("<sip:bob@h>;tag=\\1")
@example('<sip:bob@h>;x="a;b"')
@example("<sip:bob@h>\r\n ;tag=1")
@example("<>")
@example("<")
def test_addr_data_equals_hdrval2parts(value: str) -> None:
    assert leg_mod._addr_data(value) == sip_hdrval2parts("from", value)[0]


@pytest.fixture(scope="module")
def udp_leg() -> Iterator[Leg]:
    with Leg(addr="127.0.0.1", port=0, proto="udp") as leg:
        yield leg


_CONTACTS = [
    "",  # the leg's own (filled in by the test)
    "sip:127.0.0.1:5070",
    "sips:uas@[::1]:5061",
    "sip:host.example;transport=tcp",
    "no-scheme",
    "<sip:x@y>",
]


@given(address, address, st.sampled_from(_CONTACTS), st.booleans())
@example("<sip:alice@h>;tag=1", "<sip:bob@h>", "", True)
@example("<sip:alice@h>;tag=1", "<sip:bob@h>;tag=2", "", False)
@example('"Bob" <sip:bob@h>;tag=1', "sip:bob@h;tag=2", "sip:host.example;transport=tcp", False)
def test_make_contact_equals_the_old_one(
    udp_leg: Leg, frm: str, to: str, contact: str, is_request: bool
) -> None:
    own = udp_leg.contact
    udp_leg.contact = contact or own
    try:
        packet = Request("INVITE", "sip:bob@h", [("From", frm), ("To", to)])
        assert udp_leg._make_contact(packet, is_request) == ref_make_contact(
            udp_leg.contact, packet, is_request
        )
    finally:
        udp_leg.contact = own


def test_make_contact_follows_a_changed_leg_contact(udp_leg: Leg) -> None:
    own = udp_leg.contact
    packet = Request("INVITE", "sip:bob@h", [("From", "<sip:al@h>;tag=1")])
    try:
        for contact in ("sip:10.0.0.1:5070", "sip:10.0.0.2:5070", own):
            udp_leg.contact = contact
            want = ref_make_contact(contact, packet, True)
            assert udp_leg._make_contact(packet, True) == want
            assert want.endswith(contact.split(":", 1)[1])
    finally:
        udp_leg.contact = own


# ----------------------------------------------------- retransmit decision

_METHODS = ["INVITE", "invite", "Invite", "ACK", "OPTIONS", "BYE", "CANCEL", "REGISTER", "X-FOO"]
_CODES = [100, 101, 180, 199, 200, 202, 299, 300, 399, 405, 486, 500, 603, 699]


def test_what_is_queued_for_retransmission_follows_retransmit_timers(loop: EventLoop) -> None:
    """UDP: a packet is kept for retransmission exactly if retransmit_timers says so."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        dst = Addr("127.0.0.1", peer.getsockname()[1], socket.AF_INET)
        disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
        leg = disp.legs[0]
        cases: list[tuple[bool, str, int | None]] = [(True, m, None) for m in _METHODS]
        cases += [(False, m, c) for m in _METHODS for c in _CODES]
        for n, (is_request, method, code) in enumerate(cases):
            hdrs = [
                ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1"),
                ("From", "<sip:a@h>;tag=1"),
                ("To", "<sip:b@h>"),
                ("Call-ID", f"rt{n}"),
                ("CSeq", f"1 {method}"),
            ]
            packet: Packet = (
                Request(method, "sip:b@h", hdrs) if code is None else Response(code, "X", hdrs)
            )
            disp.deliver(packet, leg=leg, dst_addr=dst)
            entries = disp.queue_entries()
            want = retransmit_timers(is_request, method, code)
            assert [e.schedule is not None for e in entries] == ([True] if want else []), (
                is_request,
                method,
                code,
            )
            if entries:
                sched = entries[0].schedule
                assert sched is not None and want is not None
                assert (sched.t1, sched.cap) == want
                disp.cancel_delivery(entries[0])
        assert disp.queue_size() == 0
        disp.close()


# ------------------------------------------------------ UAS over loopback

_DEADLINE = 5.0


def _uas(loop: EventLoop, ip: str, proto: Proto) -> tuple[Dispatcher, list[Packet]]:
    """A dispatcher answering every request but ACK with 200, and what it received."""
    disp = Dispatcher([Leg(addr=ip, port=0, proto=proto)], loop)
    got: list[Packet] = []

    def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
        got.append(packet)
        if isinstance(packet, Request) and packet.method() != "ACK":
            disp.deliver(packet.create_response(200), leg=leg, dst_addr=from_)

    disp.set_receiver(receive)
    return disp, got


def _poll(loop: EventLoop, read: Callable[[], bytes | None]) -> bytes:
    """Poll the loop (bounded in rounds and time) until ``read`` returns data."""
    deadline = time.monotonic() + _DEADLINE
    for _ in range(100_000):
        loop.loop(0)
        data = read()
        if data is not None:
            return data
        if time.monotonic() > deadline:
            break
    raise AssertionError("no answer in time")


class UdpClient:
    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(family(ip), socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def exchange(self, loop: EventLoop, data: bytes, dst: tuple[str, int]) -> bytes:
        self.sock.sendto(data, dst)

        def read() -> bytes | None:
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                return None

        return _poll(loop, read)

    def close(self) -> None:
        self.sock.close()


class TcpClient:
    def __init__(self, ip: str, dst: tuple[str, int]) -> None:
        self.sock = socket.create_connection(dst, timeout=_DEADLINE)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.buf = b""

    def exchange(self, loop: EventLoop, data: bytes, dst: tuple[str, int]) -> bytes:
        self.sock.sendall(data)

        def read() -> bytes | None:
            # the responses have no body: each ends with the empty line
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                try:
                    chunk = self.sock.recv(65536)
                except BlockingIOError:
                    return None
                assert chunk, "connection closed"
                self.buf += chunk
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return None
            msg, self.buf = self.buf[: end + 4], self.buf[end + 4 :]
            return msg

        return _poll(loop, read)

    def close(self) -> None:
        self.sock.close()


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_TO_FORMS = ["<sip:uas@{h}>", '"The UAS" <sip:uas@{h}>', "sip:uas@{h}"]


@pytest.mark.parametrize("to_form", _TO_FORMS, ids=["name-addr", "display", "addr-spec"])
@pytest.mark.parametrize("method", ["OPTIONS", "INVITE"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("ip", LOOPBACKS)
def test_uas_answers_with_the_bytes_it_always_sent(
    loop: EventLoop, ip: str, proto: Proto, method: str, to_form: str
) -> None:
    disp, got = _uas(loop, ip, proto)
    leg = disp.legs[0]
    dst = (ip, leg.src.port)
    client: UdpClient | TcpClient = UdpClient(ip) if proto == "udp" else TcpClient(ip, dst)
    try:
        host = f"[{ip}]" if ":" in ip else ip
        cport = client.port
        # over UDP the Via asks for rport and names another host: received and
        # rport are added (RFC 3261 18.2.1, RFC 3581); over TCP it is exact
        if proto == "udp":
            via = f"SIP/2.0/UDP client.invalid:{cport};branch=z9hG4bK-{method}-1;rport"
            via_out = (
                f"SIP/2.0/UDP client.invalid:{cport};branch=z9hG4bK-{method}-1"
                f";received={ip};rport={cport}"
            )
        else:
            via = via_out = f"SIP/2.0/TCP {_hostport(ip, cport)};branch=z9hG4bK-{method}-1"
        frm = f'"Al" <sip:al@{host}>;tag=a1'
        to = to_form.format(h=host)
        callid = f"{method}-{proto}-{_TO_FORMS.index(to_form)}@{host}"
        request = (
            f"{method} sip:uas@{_hostport(ip, leg.src.port)} SIP/2.0\r\n"
            f"Via: {via}\r\n"
            f"From: {frm}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {callid}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Max-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

        first = client.exchange(loop, request, dst)
        m = re.search(rb"\r\nTo: [^\r]*;tag=([0-9a-f]{16})\r\n", first)
        assert m is not None, first
        lines = ["SIP/2.0 200 OK", "Supported: ", f"Allow: {DEFAULT_ALLOW}"]
        if method == "INVITE":
            # RFC 3261 13.3.1.4: the user part of To at the leg's address,
            # with the leg's transport (19.1.4)
            contact = f"sip:uas@{_hostport(ip, leg.src.port)}"
            if proto == "tcp":
                contact = f"<{contact};transport=tcp>"
            lines.append(f"Contact: {contact}")
        lines += [
            f"Via: {via_out}",
            f"From: {frm}",
            f"To: {to};tag={m.group(1).decode()}",
            f"Call-ID: {callid}",
            f"CSeq: 1 {method}",
            "Content-Length: 0",
            "",
            "",
        ]
        assert first == "\r\n".join(lines).encode()

        # a retransmission is answered from the response cache, byte for byte
        again = client.exchange(loop, request, dst)
        assert again == first
        assert len(got) == 1

        if method == "INVITE":
            # the ACK ends the retransmission of the 2xx (over UDP) and reaches the receiver
            ack = (
                f"ACK sip:uas@{_hostport(ip, leg.src.port)} SIP/2.0\r\n"
                f"Via: {via.replace('-1;', '-2;')}\r\n"
                f"From: {frm}\r\nTo: {to};tag={m.group(1).decode()}\r\n"
                f"Call-ID: {callid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            if proto == "udp":
                assert disp.queue_size() == 1
            if proto == "udp":
                client.sock.sendto(ack, dst)
            else:
                client.sock.sendall(ack)
            deadline = time.monotonic() + _DEADLINE
            while len(got) < 2 and time.monotonic() < deadline:
                loop.loop(0)
            assert [p.method() for p in got if isinstance(p, Request)] == [method, "ACK"]
        assert disp.queue_size() == 0
    finally:
        client.close()
        disp.close()
