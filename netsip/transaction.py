"""Client transactions above the Dispatcher: send a request, match its responses, ACK.

This is the outgoing-request half of Perl's ``Net::SIP::Endpoint``
(``Endpoint::new_request`` and ``receive_response``, with
``Endpoint::Context::handle_response`` and ``request_delivery_done``) without
the dialog state that Net::SIP keeps in its contexts. It is what ``netsip
options``, ``send`` and ``bench`` send their requests through, and the layer
a later ``Endpoint`` (dialogs, RFC 3261 12 and 13) builds on.

How it works:

* :meth:`TransactionClient.send` records a :class:`ClientTransaction` under
  the request's transaction id (``Request.tid()``: Call-ID and CSeq number, as
  in Net::SIP), arms a timeout in the dispatcher's event loop and hands the
  request to :meth:`Dispatcher.deliver <netsip.dispatcher.Dispatcher.deliver>`,
  which retransmits it over UDP (RFC 3261 17.1.1.2, 17.1.2.2) until the
  delivery is cancelled.
* The client is the dispatcher's receiver. A response whose transaction id
  and CSeq method match a pending transaction is recorded and passed to the
  transaction's ``on_response``; a provisional one (1xx) leaves the
  transaction open, a final one ends it: the timer is cancelled, the
  retransmission stopped, a final response to INVITE ACKed (RFC 3261 17.1.1.3
  for 300-699, 13.2.2.4 for 2xx with the Contact as Request-URI), then
  ``on_done`` is called once.
* A delivery error (connection refused, unreachable, the dispatcher's own
  64*T1 limit) or the client's timeout end the transaction without a final
  response; ``error`` says why (``errno.ETIMEDOUT`` for a timeout).
* The ACKs of the last :data:`ACK_MEMORY` 2xx responses to INVITE are kept,
  so that a retransmitted 2xx (the peer did not get our ACK) is ACKed again
  (RFC 3261 13.2.2.4).
* Requests are not this layer's business: they go to ``on_request`` or are
  dropped.

Performance plan: ``netsip bench`` runs its load through here, so the cost
per transaction is fixed and small: one record, one dict entry and one timer
per request; one dict lookup per response; no scan over the pending
transactions anywhere (timeouts are per-transaction timers, cancelled lazily
by the event loop).

Differences from Net::SIP:

- no contexts (dialogs), no authentication retry on 401/407 and no CANCEL:
  those belong to the Endpoint above;
- every response of a transaction reaches ``on_response`` (Perl forwards
  provisional responses to INVITE only), and the outcome is a typed record
  instead of the ``(endpoint, ctx, error, code, packet, leg, from)`` callback;
- a timeout of its own per transaction besides the dispatcher's 64*T1 limit
  (needed over TCP/TLS, where the dispatcher does not time a request out);
- a retransmitted 2xx to INVITE is ACKed again (Perl drops it as a response
  to an unknown transaction); retransmitted 300-699 responses are not;
- the ACK of a 2xx goes, as in Perl, along the dialog's route set
  (:class:`DialogRoute`: Record-Route reversed, then the Contact); the ACK
  of a non-2xx goes where the INVITE went (17.1.1.3). A remote target or
  first route with an IP address and no ``transport`` parameter is reached
  over the INVITE's transport: peers such as Net::SIP itself leave the
  parameter out of their Contact over TCP;
- the Via of a response is not checked against the leg (Perl's
  ``Leg::check_via``).
"""

from __future__ import annotations

import errno
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final, TypeAlias, cast

from netsip._log import get_logger
from netsip.dispatcher import Dispatcher
from netsip.eventloop import TimerLike
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.util import DEFAULT_PORTS, Addr, Proto, ip_string2parts, sip_uri2parts

__all__ = [
    "ACK_MEMORY",
    "DEFAULT_TIMEOUT",
    "ClientTransaction",
    "DialogRoute",
    "TransactionClient",
    "contact_uri",
]

log = get_logger(__name__)

#: How many 2xx responses to INVITE keep their ACK, to ACK retransmissions of
#: the 2xx (RFC 3261 13.2.2.4).
ACK_MEMORY: Final = 4096
#: Seconds a transaction waits for its final response by default: 64*T1,
#: Timer B and F of RFC 3261 17.1.1.2 and 17.1.2.2.
DEFAULT_TIMEOUT: Final = 32.0

#: Where a request went: an Addr or anything else ``Dispatcher.deliver`` takes
#: as ``dst_addr`` (None: by its Route or Request-URI).
Destination: TypeAlias = Addr | str | None


@dataclass(slots=True, eq=False)
class ClientTransaction:
    """One request sent by a :class:`TransactionClient` and what became of it.

    Attributes:
        request: the request as given to :meth:`TransactionClient.send`.
        tid: its transaction id (``request.tid()``).
        start: when it was sent, in the client's clock.
        on_done: called once with this record when the transaction ends.
        on_response: called with this record and each response.
        leg: the leg it was sent through (None: the dispatcher chose).
        dst_addr: where it was sent; an ACK goes the same way.
        responses: every response received for it, in order: provisional ones,
            then the final one.
        response: the final response; None while pending or after an error.
        source: where the final response came from.
        error: 0, or the errno that ended the transaction without a final
            response (``ETIMEDOUT``, ``ECONNREFUSED`` ...).
        rtt: seconds from sending to the final response.
        timer: the pending timeout (the client's; None once it ended).
    """

    request: Request
    tid: str
    start: float
    on_done: Callable[[ClientTransaction], None] = field(repr=False)
    on_response: Callable[[ClientTransaction, Response], None] | None = field(
        default=None, repr=False
    )
    leg: Leg | None = field(default=None, repr=False)
    dst_addr: Destination = None
    responses: list[Response] = field(default_factory=list, repr=False)
    response: Response | None = None
    source: Addr | None = None
    error: int = 0
    rtt: float = 0.0
    timer: TimerLike | None = field(default=None, repr=False)

    @property
    def status(self) -> int | None:
        """The final status code; None while pending or after an error."""
        return None if self.response is None else self.response.code()

    @property
    def ok(self) -> bool:
        """True if the final response is a 2xx."""
        return self.response is not None and 200 <= self.response.code() < 300

    @property
    def done(self) -> bool:
        """True once a final response or an error ended the transaction."""
        return self.response is not None or self.error != 0


def contact_uri(message: Packet) -> str | None:
    """The URI of the first Contact of ``message``: the remote target
    (RFC 3261 12.1.2, 12.1.1) that the ACK of a 2xx and later requests go to."""
    contact = message.get_headers("contact")
    if not contact:
        return None
    value = contact[0]
    if "<" in value:
        start = value.index("<") + 1
        end = value.find(">", start)
        return value[start:end] if end > 0 else None
    return value.split(";", 1)[0].strip() or None


@dataclass(frozen=True, slots=True)
class DialogRoute:
    """Where the requests of a dialog go, as its UAC sees it (RFC 3261 12.1.2).

    Attributes:
        target: the remote target: the URI of the Contact of the 2xx (or the
            Request-URI of the INVITE when the 2xx has none).
        routes: the route set: the Record-Route values of the 2xx, reversed.
    """

    target: str
    routes: tuple[str, ...] = ()

    @classmethod
    def of_response(cls, request: Request, response: Response) -> DialogRoute:
        """The route of the dialog that ``response`` (a 2xx to ``request``) sets up."""
        target = contact_uri(response) or request.uri()
        return cls(target, tuple(reversed(response.get_headers("record-route"))))

    def apply(self, request: Request) -> None:
        """Give an in-dialog request its Request-URI and Route (RFC 3261 12.2.1.1).

        A loose router (``;lr`` on the first route) leaves the remote target
        in the Request-URI and gets the route set as Route; a strict router
        gets the Request-URI itself, and the remote target goes last into Route.
        """
        request.del_header("route")
        if not self.routes:
            request.set_uri(self.target)
            return
        first = _route_uri(self.routes[0])
        parts = sip_uri2parts(first)
        if parts is not None and "lr" in parts[3]:
            request.set_uri(self.target)
            routes: tuple[str, ...] = self.routes
        else:
            request.set_uri(first)
            routes = (*self.routes[1:], f"<{self.target}>")
        for value in routes:
            request.add_header("route", value)

    def next_hop(self, leg: Leg | None) -> Addr | str | None:
        """Where the request goes: the address of the next hop, or its URI.

        The next hop is the first route, or the remote target without a
        route set. With an IP address in it, it is used directly; its
        transport is its ``transport`` parameter, else the leg's (see the
        differences above). A host name, or ``maddr``, gives the URI itself,
        for the dispatcher's RFC 3263 resolution: the dispatcher would
        otherwise follow the top Route, which after a strict router is the
        hop behind it (RFC 3261 12.2.1.1). None: no usable URI.
        """
        uri = _route_uri(self.routes[0]) if self.routes else self.target
        parts = sip_uri2parts(uri)
        if parts is None:
            return None
        if "maddr" in parts[3]:
            return uri
        domain, _user, scheme, params, _ = parts
        try:
            ip, port, family = ip_string2parts(domain)
        except ValueError:
            return uri
        if family is None:
            return uri
        transport = params.get("transport")
        proto: str | None = transport.lower() if transport else None
        if scheme == "sips":
            proto = "tls"
        if proto is None:
            proto = leg.proto if leg is not None else "udp"
        if proto not in DEFAULT_PORTS:
            return None
        return Addr(ip, port or DEFAULT_PORTS[proto], family, None, cast(Proto, proto))


def _route_uri(value: str) -> str:
    """The URI of a Route/Record-Route value (``<sip:p.example.com;lr>;x=1``)."""
    data = value.strip()
    if "<" in data:
        start = data.index("<") + 1
        end = data.find(">", start)
        return data[start:end] if end > 0 else data[start:]
    return data  # (Route is always a name-addr, RFC 3261 25.1; be lenient)


class TransactionClient:
    """Sends requests through a Dispatcher and matches their responses.

    The client makes itself the dispatcher's receiver (see
    :meth:`Dispatcher.set_receiver <netsip.dispatcher.Dispatcher.set_receiver>`).

    Args:
        dispatcher: the dispatcher to send and receive through.
        timeout: seconds a transaction waits for its final response.
        clock: the clock of ``ClientTransaction.start`` and ``rtt``.
        on_request: gets ``(request, leg, from_)`` for each request received;
            None drops them.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[Request, Leg, Addr], object] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.timeout = timeout
        self._loop = dispatcher.eventloop
        self._clock = clock
        self._on_request = on_request
        self._pending: dict[str, ClientTransaction] = {}
        # tid -> (ACK, leg, destination) of recent 2xx responses to INVITE
        self._acks: OrderedDict[str, tuple[Request, Leg | None, Destination]] = OrderedDict()
        dispatcher.set_receiver(self.receive)

    @property
    def pending(self) -> int:
        """How many transactions wait for their final response."""
        return len(self._pending)

    def send(
        self,
        request: Request,
        on_done: Callable[[ClientTransaction], None],
        on_response: Callable[[ClientTransaction, Response], None] | None = None,
        *,
        leg: Leg | None = None,
        dst_addr: Destination = None,
    ) -> ClientTransaction:
        """Send ``request`` as a new client transaction.

        Args:
            request: the request; its ``tid()`` must not be pending already.
            on_done: called once with the finished transaction: a final
                response, or an error (also when the error is reported while
                this method runs).
            on_response: called with each response, provisional and final,
                before ``on_done``.
            leg: the outgoing leg (None: the dispatcher picks one).
            dst_addr: the destination (None: by Route or Request-URI).

        Returns:
            The transaction record, filled in as responses arrive.

        Raises:
            ValueError: a transaction with the same tid is pending, or
                ``Dispatcher.deliver`` refused ``dst_addr``.
            NetSIPError: the dispatcher is closed.
        """
        tid = request.tid()
        if tid in self._pending:
            raise ValueError(f"a transaction with tid {tid!r} is pending already")
        txn = ClientTransaction(request, tid, self._clock(), on_done, on_response, leg, dst_addr)
        self._pending[tid] = txn
        txn.timer = self._loop.add_timer(self.timeout, partial(self._timed_out, txn))
        try:
            self.dispatcher.deliver(
                request, leg=leg, dst_addr=dst_addr, callback=partial(self._delivered, txn)
            )
        except BaseException:
            self._forget(txn)
            raise
        return txn

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        """The dispatcher's receiver: match a response to its transaction."""
        if not isinstance(packet, Response):
            if self._on_request is not None:
                self._on_request(cast(Request, packet), leg, from_)
            return
        tid = packet.tid()
        txn = self._pending.get(tid)
        if txn is None or packet.method() != txn.request.method():
            acked = self._acks.get(tid)
            if acked is not None and 200 <= packet.code() < 300 and packet.method() == "INVITE":
                # a retransmitted 2xx: our ACK got lost (RFC 3261 13.2.2.4)
                ack, ack_leg, ack_dst = acked
                self.dispatcher.deliver(ack, leg=ack_leg, dst_addr=ack_dst, do_retransmits=False)
            return
        txn.responses.append(packet)
        code = packet.code()
        if code < 200:
            if txn.on_response is not None:
                txn.on_response(txn, packet)
            return
        txn.response = packet
        txn.source = from_
        txn.rtt = self._clock() - txn.start
        # stop the request's retransmission before the ACK (same tid) is queued
        self._forget(txn)
        if txn.request.method() == "INVITE":
            self._ack(txn, packet)
        if txn.on_response is not None:
            txn.on_response(txn, packet)
        txn.on_done(txn)

    def close(self) -> None:
        """Abandon every pending transaction (no callbacks) and forget the ACKs."""
        for txn in list(self._pending.values()):
            self._forget(txn)
        self._acks.clear()

    # ------------------------------------------------------------ internals

    def _forget(self, txn: ClientTransaction) -> None:
        """Drop ``txn`` from the pending ones; cancel its timer and retransmissions."""
        if self._pending.get(txn.tid) is txn:
            del self._pending[txn.tid]
        if txn.timer is not None:
            txn.timer.cancel()
            txn.timer = None
        self.dispatcher.cancel_delivery(txn.tid)

    def _fail(self, txn: ClientTransaction, err: int) -> None:
        txn.error = err
        self._forget(txn)
        txn.on_done(txn)

    def _delivered(self, txn: ClientTransaction, err: int) -> None:
        if err and self._pending.get(txn.tid) is txn:
            self._fail(txn, err)

    def _timed_out(self, txn: ClientTransaction, _timer: object) -> None:
        txn.timer = None
        if self._pending.get(txn.tid) is txn:
            self._fail(txn, errno.ETIMEDOUT)

    def _ack(self, txn: ClientTransaction, response: Response) -> None:
        """ACK a final response to INVITE: 17.1.1.3 (300-699), 13.2.2.4 (2xx)."""
        ack = txn.request.create_ack(response)
        dst = txn.dst_addr
        if 200 <= response.code() < 300:
            # the ACK of a 2xx is a request of the dialog: along its route set
            # to the remote target (RFC 3261 12.2.1.1, 13.2.2.4)
            route = DialogRoute.of_response(txn.request, response)
            route.apply(ack)
            dst = route.next_hop(txn.leg)
            self._acks[txn.tid] = (ack, txn.leg, dst)
            if len(self._acks) > ACK_MEMORY:
                self._acks.popitem(last=False)
        self.dispatcher.deliver(ack, leg=txn.leg, dst_addr=dst, do_retransmits=False)
