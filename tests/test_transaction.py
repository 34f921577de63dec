"""Tests for netsip.transaction: client transactions over loopback sockets.

The client side is a Dispatcher with one leg and a TransactionClient; the
peer is a plain Leg on the same event loop whose receive callback answers as
each test needs. Everything is driven by the loop with a real-time bound
(``drive``), without sleeps.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.transaction import ClientTransaction, DialogRoute, TransactionClient, contact_uri
from netsip.util import Addr, Proto
from tests.support import drive, spin

Answer = Callable[["Responder", Request, Addr], None]


@dataclass(eq=False)
class Responder:
    """A Leg on the test's loop; ``answer`` is called for each request it gets."""

    leg: Leg
    answer: Answer | None = None
    requests: list[Request] = field(default_factory=list)

    def receive(self, packet: Packet, from_: Addr) -> None:
        if isinstance(packet, Request):
            self.requests.append(packet)
            if self.answer is not None:
                self.answer(self, packet, from_)

    def send(self, response: Response, to: Addr) -> None:
        self.leg.deliver(response, to)

    def methods(self) -> list[str]:
        return [r.method() for r in self.requests]


@dataclass(eq=False)
class Setup:
    loop: EventLoop
    disp: Dispatcher
    client: TransactionClient
    peer: Responder
    done: list[ClientTransaction] = field(default_factory=list)
    seen: list[tuple[ClientTransaction, int]] = field(default_factory=list)

    def on_done(self, txn: ClientTransaction) -> None:
        self.done.append(txn)

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        self.seen.append((txn, response.code()))

    def send(self, request: Request) -> ClientTransaction:
        return self.client.send(
            request, self.on_done, self.on_response, leg=self.disp.legs[0], dst_addr=self.peer_addr
        )

    @property
    def peer_addr(self) -> Addr:
        return self.peer.leg.src


_seq = iter(range(1, 1_000_000))


def _request(method: str, peer: Leg, callid: str | None = None) -> Request:
    n = next(_seq)
    uri = f"sip:bob@{peer.src}" + (";transport=tcp" if peer.proto == "tcp" else "")
    return Request(
        method,
        uri,
        {
            "from": f"<sip:alice@example.com>;tag=t{n}",
            "to": f"<{uri}>",
            "call-id": callid or f"call-{n}@example.com",
            "cseq": f"1 {method}",
            "max-forwards": "70",
        },
    )


@pytest.fixture
def make_setup() -> Iterator[Callable[..., Setup]]:
    """Build a client and a responder on one loop; everything is closed afterwards."""
    made: list[Setup] = []

    def make(proto: Proto = "udp", answer: Answer | None = None, timeout: float = 5.0) -> Setup:
        loop = EventLoop()
        disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto=proto)], loop)
        peer = Responder(Leg(addr="127.0.0.1", port=0, proto=proto), answer)
        peer.leg.socketpool().attach_eventloop(loop, peer.receive)
        setup = Setup(loop, disp, TransactionClient(disp, timeout=timeout), peer)
        made.append(setup)
        return setup

    yield make
    for s in made:
        s.client.close()
        s.disp.close()
        s.peer.leg.close()
        s.loop.close()


def _ok(code: int = 200, **headers: str) -> Answer:
    """An answer: a 100 Trying, then ``code`` with ``headers``."""

    def answer(peer: Responder, request: Request, from_: Addr) -> None:
        if request.method() == "ACK":
            return  # never answered (RFC 3261 17.1.1.3)
        peer.send(request.create_response(100), from_)
        peer.send(request.create_response(code, headers=headers), from_)

    return answer


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_request_answered(proto: Proto, make_setup: Callable[..., Setup]) -> None:
    """A 1xx and the final response reach on_response in order; on_done once with the 200."""
    s = make_setup(proto, _ok())
    txn = s.send(_request("OPTIONS", s.peer.leg))
    assert s.client.pending == 1 and not txn.done and txn.status is None
    drive(s.loop, lambda: s.done)
    spin(s.loop, 0.05)
    assert s.done == [txn]
    assert [code for _, code in s.seen] == [100, 200]
    assert [r.code() for r in txn.responses] == [100, 200]
    assert txn.response is txn.responses[-1] and txn.status == 200 and txn.ok and txn.done
    assert txn.error == 0 and txn.rtt >= 0
    assert txn.source is not None and txn.source.port == s.peer_addr.port
    assert s.client.pending == 0 and s.disp.queue_size() == 0
    assert s.peer.methods() == ["OPTIONS"]  # answered: no retransmission


def test_2xx_to_invite_acked_and_retransmitted_2xx_acked_again(
    make_setup: Callable[..., Setup],
) -> None:
    """RFC 3261 13.2.2.4: the ACK of a 2xx has its Contact as Request-URI, and a
    retransmitted 2xx is ACKed again."""
    answers: list[tuple[Response, Addr]] = []

    def answer(peer: Responder, request: Request, from_: Addr) -> None:
        if request.method() == "INVITE":
            contact = f"<sip:bob@{peer.leg.src};ob>"
            response = request.create_response(200, headers={"Contact": contact})
            answers.append((response, from_))
            peer.send(response, from_)

    s = make_setup("udp", answer)
    invite = _request("INVITE", s.peer.leg)
    txn = s.send(invite)
    drive(s.loop, lambda: s.peer.methods() == ["INVITE", "ACK"])
    assert s.done == [txn] and txn.ok
    ack = s.peer.requests[1]
    assert ack.uri() == f"sip:bob@{s.peer_addr};ob" == contact_uri(answers[0][0])
    assert ack.cseq() == "1 ACK" and ack.callid() == invite.callid()
    assert ack.get_header("to") == answers[0][0].get_header("to")
    assert ";tag=" in (ack.get_header("to") or "")

    # the peer did not get the ACK: it retransmits its 2xx
    response, to = answers[0]
    s.peer.send(response, to)
    drive(s.loop, lambda: s.peer.methods() == ["INVITE", "ACK", "ACK"])
    assert s.peer.requests[2].as_bytes() == ack.as_bytes()
    assert s.done == [txn] and len(txn.responses) == 1  # the transaction ended with the first
    assert [code for _, code in s.seen] == [200]


def test_non_2xx_to_invite_acked_to_the_request_uri(make_setup: Callable[..., Setup]) -> None:
    """RFC 3261 17.1.1.3: the ACK of a 300-699 has the INVITE's Request-URI."""
    s = make_setup("udp", _ok(486))
    invite = _request("INVITE", s.peer.leg)
    txn = s.send(invite)
    drive(s.loop, lambda: s.peer.methods() == ["INVITE", "ACK"])
    assert s.done == [txn] and txn.status == 486 and not txn.ok
    assert s.peer.requests[1].uri() == invite.uri()


def test_timeout_reaches_on_done_as_etimedout(make_setup: Callable[..., Setup]) -> None:
    """No answer: on_done gets ETIMEDOUT once the client's timeout is over; the
    request is retransmitted until then (UDP), and no longer afterwards."""
    s = make_setup("udp", None, timeout=0.7)
    txn = s.send(_request("OPTIONS", s.peer.leg))
    drive(s.loop, lambda: s.done)
    spin(s.loop, 0.05)
    assert s.done == [txn] and txn.error == errno.ETIMEDOUT and txn.done
    assert txn.response is None and txn.status is None and not txn.ok and not txn.responses
    assert s.seen == [] and s.client.pending == 0 and s.disp.queue_size() == 0
    assert len(s.peer.requests) == 2  # sent at 0 and 0.5 s (T1, RFC 3261 17.1.2.2)


def test_response_for_another_transaction_is_ignored(make_setup: Callable[..., Setup]) -> None:
    """Responses are matched by tid (Call-ID, CSeq number) and the CSeq method."""

    def answer(peer: Responder, request: Request, from_: Addr) -> None:
        other_call = request.create_response(200)
        other_call.set_header("call-id", "someone-else@example.com")
        other_number = request.create_response(200)
        other_number.set_header("cseq", "2 OPTIONS")
        other_method = request.create_response(200)
        other_method.set_header("cseq", "1 INFO")
        for response in (other_call, other_number, other_method):
            peer.send(response, from_)
        peer.send(request.create_response(202), from_)

    s = make_setup("udp", answer)
    txn = s.send(_request("OPTIONS", s.peer.leg))
    drive(s.loop, lambda: s.done)
    spin(s.loop, 0.05)
    assert s.done == [txn] and txn.status == 202
    assert [code for _, code in s.seen] == [202] and len(txn.responses) == 1


def test_two_transactions_each_get_their_own_response(make_setup: Callable[..., Setup]) -> None:
    """Two pending requests, answered in reverse order: each gets its own response."""
    held: list[tuple[Request, Addr]] = []

    def answer(peer: Responder, request: Request, from_: Addr) -> None:
        held.append((request, from_))
        if len(held) == 2:
            for i, (req, to) in reversed(list(enumerate(held))):
                peer.send(req.create_response(200 + i), to)

    s = make_setup("udp", answer)
    first = s.send(_request("OPTIONS", s.peer.leg))
    second = s.send(_request("OPTIONS", s.peer.leg))
    drive(s.loop, lambda: len(s.done) == 2)
    assert s.done == [second, first]
    assert (first.status, second.status) == (200, 201)


def test_delivery_error_ends_the_transaction(make_setup: Callable[..., Setup]) -> None:
    """A refused TCP connection reaches on_done as ECONNREFUSED."""
    s = make_setup("tcp")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
        dst = Addr("127.0.0.1", closed.getsockname()[1], socket.AF_INET, proto="tcp")
        txn = s.client.send(
            _request("OPTIONS", s.peer.leg), s.on_done, leg=s.disp.legs[0], dst_addr=dst
        )
        drive(s.loop, lambda: s.done)
    assert s.done == [txn] and txn.error == errno.ECONNREFUSED and txn.response is None
    assert s.client.pending == 0


def test_pending_tid_refused_and_close_abandons(make_setup: Callable[..., Setup]) -> None:
    """A second request with a pending tid is misuse; close() drops the pending silently."""
    s = make_setup("udp")
    request = _request("OPTIONS", s.peer.leg)
    s.send(request)
    with pytest.raises(ValueError, match="pending"):
        s.send(request)
    assert s.client.pending == 1
    s.client.close()
    assert s.client.pending == 0 and s.disp.queue_size() == 0
    spin(s.loop, 0.05)
    assert s.done == []


def test_requests_go_to_on_request(make_setup: Callable[..., Setup]) -> None:
    """A request that reaches the client goes to on_request (the client answers none)."""
    s = make_setup("udp")
    got: list[tuple[str, Addr]] = []
    client = TransactionClient(
        s.disp, on_request=lambda req, leg, from_: got.append((req.method(), from_))
    )
    s.peer.leg.deliver(_request("MESSAGE", s.disp.legs[0]), s.disp.legs[0].src)
    drive(s.loop, lambda: got)
    assert got[0][0] == "MESSAGE" and got[0][1].port == s.peer_addr.port
    assert client.pending == 0


# ----------------------------------------------------------- dialog route


def _two_hundred(*record_route: str, contact: str = "<sip:bob@192.0.2.7:5070>") -> Response:
    invite = Request(
        "INVITE",
        "sip:bob@example.com",
        {
            "from": "<sip:a@x>;tag=1",
            "to": "<sip:bob@example.com>",
            "call-id": "c",
            "cseq": "1 INVITE",
        },
    )
    resp = invite.create_response(200)
    if contact:
        resp.set_header("contact", contact)
    for rr in record_route:
        resp.add_header("record-route", rr)
    return resp


def _invite() -> Request:
    return Request("INVITE", "sip:bob@example.com", {"call-id": "c", "cseq": "1 INVITE"})


def test_dialog_route_loose_routing() -> None:
    """RFC 3261 12.1.2/12.2.1.1: Route is the Record-Route reversed; URI the Contact."""
    rr = ("<sip:p2.example.com;lr>", "<sip:127.0.0.1:5999;transport=tcp;lr>")
    route = DialogRoute.of_response(_invite(), _two_hundred(*rr))
    assert route == DialogRoute("sip:bob@192.0.2.7:5070", tuple(reversed(rr)))
    bye = Request("BYE", "sip:placeholder", {"route": "<sip:stale;lr>"})
    route.apply(bye)
    assert bye.uri() == "sip:bob@192.0.2.7:5070"
    assert bye.get_headers("route") == list(reversed(rr))
    # the next hop is the first route, over its transport
    assert route.next_hop(None) == Addr("127.0.0.1", 5999, socket.AF_INET, None, "tcp")


def test_dialog_route_strict_router() -> None:
    """A first route without ;lr is a strict router: it becomes the Request-URI."""
    route = DialogRoute.of_response(
        _invite(), _two_hundred("<sip:10.0.0.9>", "<sip:strict.example>")
    )
    bye = Request("BYE", "sip:placeholder")
    route.apply(bye)
    assert bye.uri() == "sip:strict.example"
    assert bye.get_headers("route") == ["<sip:10.0.0.9>", "<sip:bob@192.0.2.7:5070>"]
    # a host name: its URI, resolved by the dispatcher (RFC 3263); the top
    # Route would be the hop behind the strict router
    assert route.next_hop(None) == "sip:strict.example"


def test_dialog_route_without_route_set_goes_to_the_contact() -> None:
    route = DialogRoute.of_response(_invite(), _two_hundred())
    bye = Request("BYE", "sip:placeholder", {"route": "<sip:x;lr>"})
    route.apply(bye)
    assert bye.uri() == "sip:bob@192.0.2.7:5070" and bye.get_headers("route") == []
    assert route.next_hop(None) == Addr("192.0.2.7", 5070, socket.AF_INET, None, "udp")
    # no transport parameter: the transport of the INVITE's leg
    with Leg(addr="127.0.0.1", port=0, proto="tcp") as leg:
        assert route.next_hop(leg) == Addr("192.0.2.7", 5070, socket.AF_INET, None, "tcp")
    # no Contact at all: the INVITE's Request-URI
    assert DialogRoute.of_response(_invite(), _two_hundred(contact="")).target == (
        "sip:bob@example.com"
    )


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("sips:bob@[::1]:5081", Addr("::1", 5081, socket.AF_INET6, None, "tls")),
        ("sip:bob@127.0.0.1;transport=TCP", Addr("127.0.0.1", 5060, socket.AF_INET, None, "tcp")),
        ("sip:bob@127.0.0.1;maddr=10.0.0.1", "sip:bob@127.0.0.1;maddr=10.0.0.1"),
        ("sip:bob@example.com;transport=tcp", "sip:bob@example.com;transport=tcp"),
        ("sip:bob@127.0.0.1;transport=sctp", None),
        ("tel:+123", None),
    ],
)
def test_dialog_route_next_hop(target: str, want: Addr | str | None) -> None:
    assert DialogRoute(target).next_hop(None) == want
