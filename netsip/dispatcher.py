"""Port of Perl's ``Net::SIP::Dispatcher``: legs, delivery with retransmission, receiving.

The dispatcher sits between the legs (:class:`~netsip.leg.Leg`, one per local
transport endpoint) and the upper layer (the *receiver*, set with
:meth:`Dispatcher.set_receiver`):

* Receiving: every leg's socket pool is attached to the event loop; each packet
  goes through :meth:`Leg.receive`, gets ``received``/``rport`` on its top Via
  if it is a request (RFC 3261 18.2.1, RFC 3581), and reaches
  :meth:`Dispatcher.receive`. A retransmitted request whose response is still
  in the response cache (32 s, :mod:`netsip.respcache`) is answered from there
  without bothering the receiver (RFC 3261 17.2); a response cancels the
  retransmission of the request it answers, an ACK that of the final
  response to its INVITE. Everything else goes to the receiver as
  ``(packet, leg, from_)``.
* Delivering: :meth:`Dispatcher.deliver` picks the outgoing leg and the
  destination (given, or :meth:`resolve_uri` of the first Route / the request
  URI, or for a response its top Via), sends, and over UDP retransmits per
  RFC 3261 17.1 (:mod:`netsip.retransmit`) until the delivery is cancelled,
  fails, or times out (the callback then gets ``ETIMEDOUT``). A request
  larger than 1,300 bytes goes over TCP/TLS when the destination offers it,
  UDP being the fallback (RFC 3261 18.1.1, :func:`netsip._delivery.by_size`). Each queued
  delivery has one timer of its own in the event loop for its next
  retransmission or timeout; nothing scans the whole queue periodically (Perl
  runs a once-a-second scan). If a destination fails (TCP connect refused,
  ICMP error) the next one from resolution is tried (RFC 3263 4.3).
* Resolving (:meth:`resolve_uri`): IP literals, ``host:port;transport=...``,
  ``maddr``, ``domain2proxy`` and ``outgoing_proxy`` are handled here; host
  names go to :class:`netsip.resolver.Resolver` (RFC 3263 NAPTR/SRV/A/AAAA on
  the event loop) or to the user's ``dnsresolv`` hook. Results are restricted
  to the transports and address families the legs offer.

Delivery callbacks are invoked via :func:`~netsip.util.invoke_callback` with
one errno argument: 0 for a confirmed delivery over a reliable transport,
else the error (``ETIMEDOUT``, ``ECONNREFUSED``, ``EHOSTUNREACH`` ...).

The code is in three parts: this module (legs, receiving, the response
cache, and the fast path of :meth:`Dispatcher.deliver`), the delivery queue
(:mod:`netsip._delivery`: queued deliveries, retransmission, failover) and
URI resolution (:mod:`netsip._uriresolve`). Their docstrings list the
differences from Net::SIP that concern them.

Performance plan: :meth:`Dispatcher.receive` and :meth:`Dispatcher.deliver`
of a response whose leg and destination are known (the ``direct`` path) run
for every transaction. Both stay inline in this class, with no call into the
delivery queue: ``receive`` reads the queue's transaction index through an
alias (``_by_tid``, the same dict) and calls the queue only when that index is
not empty; ``deliver`` sends a one-shot response itself and keeps its wire
form in the response cache. Only what needs the queue (requests, responses
retransmitted over UDP, destinations still to resolve) goes through
:meth:`netsip._delivery.DeliveryQueue.deliver`.

Deliberate differences from Net::SIP 0.835 (see also :mod:`netsip._delivery`
and :mod:`netsip._uriresolve`):

- provisional responses are not retransmitted (Perl retransmits 101-199 to
  INVITE like final responses); a request answered from the response cache
  does not queue the cached response again;
- received responses and ACKs cancel retransmissions here (Perl leaves that
  to Net::SIP::Endpoint, which netsip does not port);
- a response sent at once (``leg`` and ``dst_addr`` given, nothing to
  retransmit) is cached as the bytes that were sent and parsed again to answer
  a retransmitted request; Perl keeps the object (memory and, in Python, the
  cyclic GC's work grow with every cached object);
- :meth:`Dispatcher.close` closes the legs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, cast

from netsip._delivery import MTU_LIMIT, DeliveryQueue, QueueEntry
from netsip._log import get_logger
from netsip._native import mypyc_attr
from netsip._settings import Settings, get_settings
from netsip._settings import track as track_settings
from netsip._settings import untrack as untrack_settings
from netsip._uriresolve import SRV_PRIO_UNDEF, Dest, Target, UriResolver
from netsip.eventloop import EventLoop, EventLoopLike, TimerLike
from netsip.leg import Leg
from netsip.packet import Packet, PacketError, Request, Response, canonical_header_name
from netsip.respcache import ResponseCache, key_of
from netsip.retransmit import RetransmitSchedule, retransmit_timers
from netsip.util import Addr, NetSIPError, Proto, errno_of, invoke_callback

__all__ = ["MTU_LIMIT", "SRV_PRIO_UNDEF", "Dispatcher", "QueueEntry", "Target"]

log = get_logger(__name__)


def _wire_size(response: Response | bytes) -> int:
    """What a cached response costs: its wire size (kept as bytes, or rebuilt)."""
    return len(response) if isinstance(response, bytes) else len(response.as_bytes())


def _follow_settings(cache: ResponseCache[Response | bytes], _: Settings) -> None:
    """``import_settings`` changed a setting: follow MAX_RESPONSE_CACHE."""
    cache.max_bytes = int(get_settings()["MAX_RESPONSE_CACHE"])
    cache.shrink()


#: RFC 3261 8.1.1: the header fields that make a message's transaction and
#: dialog (Via and Max-Forwards are mandatory too; a missing Via is the Leg's
#: concern: a response without one is dropped there, a request is answered
#: to its source address)
_MANDATORY: tuple[str, ...] = ("from", "to", "call-id", "cseq")
_MANDATORY_SET: frozenset[str] = frozenset(_MANDATORY)


def _cache_key(packet: Packet) -> str:
    """``cache_key(packet)``, kept by the packet until one of its headers in
    the key changes (a request's key serves its responses: see
    ``Request.create_response``)."""
    key = packet._ckey
    if key is None:
        # (cache_key's header_values, read from the packet's index at once)
        index = packet._index
        if index is None:
            index = packet._build_index()
        get = index.get
        key = packet._ckey = key_of(
            get("cseq", ()), get("call-id", ()), get("from", ()), get("to", ())
        )
    return key


def _missing_header(packet: Packet) -> str | None:
    """The first of the mandatory headers that ``packet`` lacks, or None."""
    if packet.has_headers(_MANDATORY_SET):  # (the usual case in one set operation)
        return None
    values = packet.header_values
    for name in _MANDATORY:
        if not values(name):
            return name
    return None


def _kind(packet: Packet) -> str:
    return f"{packet.method()} request" if packet.is_request() else "response"


def _answer_incomplete(packet: Packet, leg: Leg, from_: Addr, missing: str) -> None:
    """Answer (or drop) a message without one of the headers every message has.

    RFC 3261 8.1.1: a request has at least To, From, CSeq and Call-ID
    (and Via, Max-Forwards); 8.2.2 and 21.4.1: the answer is 400. Such a
    message has no transaction of its own: neither the response cache nor
    the queue may match it, so it never gets past this point. An ACK is
    never answered, and a response cannot be.
    """
    log.info("%s from %s on %s without %s", _kind(packet), from_, leg.dump(), missing)
    if not isinstance(packet, Request) or packet.method() == "ACK":
        return
    try:
        resp = packet.create_response(400, f"Missing {canonical_header_name(missing)}")
        leg.deliver(resp, from_)
    except (NetSIPError, OSError, ValueError) as exc:
        log.info("cannot answer %s from %s: %s", _kind(packet), from_, exc)


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it, as in Net::SIP
class Dispatcher:
    """Dispatches SIP packets between legs and the upper layer, with retransmissions.

    Args:
        legs: legs (:class:`Leg`), sockets, or dicts of :class:`Leg` arguments.
        eventloop: the event loop; a new :class:`EventLoop` if None.
        do_retransmits: retransmit over unreliable transports (default);
            False for a stateless proxy. Overridable per :meth:`deliver`.
        outgoing_proxy: ``"ip:port"`` (or a SIP URI) all requests are sent to;
            a leg that can reach it must exist.
        domain2proxy: ``{domain: proxy}``; ``"*.domain"`` also matches
            subdomains, ``"*"`` is the fallback. A proxy is ``"ip[:port]"``, a
            URI (``"sip:host;transport=tcp"``), an Addr, a dict with ``proto``,
            ``host``, ``addr``, ``port``, ``family``, ``prio``, or a list of these.
        dnsresolv: a DNS hook used instead of DNS queries: either Perl's
            shape, a callback invoked with ``(type, name, callback)`` (see
            :class:`netsip.resolver.Resolver`), or an object with
            ``resolve(host, protos, callback, port=, sips=)`` (a Resolver).

    Raises:
        ValueError: bad options or no leg for ``outgoing_proxy``.
    """

    def __init__(
        self,
        legs: Iterable[Leg | socket.socket | Mapping[str, Any]] = (),
        eventloop: EventLoopLike | None = None,
        *,
        do_retransmits: bool = True,
        outgoing_proxy: str | None = None,
        domain2proxy: Mapping[str, object] | None = None,
        dnsresolv: object = None,
    ) -> None:
        self._own_loop = eventloop is None
        self.eventloop: EventLoopLike = eventloop if eventloop is not None else EventLoop()
        self.do_retransmits = do_retransmits
        self.legs: list[Leg] = []
        self._receiver: object = None
        self._receive_fn: Callable[[Packet, Leg, Addr], object] | None = None
        # a response sent right away is kept as its wire form: bytes are small
        # and not tracked by the cyclic GC (tens of thousands of cached Response
        # objects made its full collections a tenth of a UAS's CPU time)
        # bounded in bytes (MAX_RESPONSE_CACHE, followed on import_settings)
        self._cache: ResponseCache[Response | bytes] = ResponseCache(
            max_bytes=int(get_settings()["MAX_RESPONSE_CACHE"]), size=_wire_size
        )
        # the cache's expiry times by key (never replaced): receive() asks
        # it whether a request's key is there, without a call
        self._cache_expires = self._cache.expires
        # MAX_RESPONSE_CACHE follows import_settings (no overrides of our own)
        self._settings_sub = track_settings({}, partial(_follow_settings, self._cache))
        self._cache_timer: TimerLike | None = None
        self._closed = False
        self._uri = UriResolver(self._get_legs_list, self.eventloop, domain2proxy, dnsresolv)
        self._delivery = DeliveryQueue(self, self.eventloop, self._uri)
        # the queue's dicts (never replaced): receive() reads _by_tid on every packet
        self._queue = self._delivery.queue
        self._by_tid = self._delivery.by_tid
        self.add_leg(*legs)
        if outgoing_proxy:
            self.outgoing_proxy = outgoing_proxy

    # ------------------------------------------------------------ settings

    @property
    def outgoing_proxy(self) -> str | None:
        """The outgoing proxy (``"ip:port"``) or None.

        Raises:
            ValueError: on assignment, if no leg can reach the proxy.
        """
        return self._uri.outgoing_proxy

    @outgoing_proxy.setter
    def outgoing_proxy(self, proxy: str | None) -> None:
        self._uri.outgoing_proxy = proxy

    @property
    def domain2proxy(self) -> dict[str, list[Dest]]:
        """The ``domain2proxy`` option, domains lower-cased, proxies as destinations."""
        return self._uri.domain2proxy

    @domain2proxy.setter
    def domain2proxy(self, value: dict[str, list[Dest]]) -> None:
        self._uri.domain2proxy = value

    def loop(self) -> EventLoopLike:
        """The event loop."""
        return self.eventloop

    def set_receiver(self, receiver: object) -> None:
        """Set the upper layer that gets incoming packets.

        Args:
            receiver: an object with a ``receive(packet, leg, from_)`` method,
                or a callback (``invoke_callback`` shape) called with
                ``(packet, leg, from_)``; None removes the receiver (packets
                are then dropped).
        """
        meth = getattr(receiver, "receive", None)
        if callable(meth):
            receiver = meth  # an object with a receive method, as in Perl
        self._receiver = receiver
        # a plain callable is called directly on the hot path; the other
        # invoke_callback shapes (tuple, Var, object with run ...) through it
        if receiver is None:
            self._receive_fn = None
        elif callable(receiver) and not callable(getattr(receiver, "run", None)):
            self._receive_fn = receiver
        else:
            self._receive_fn = partial(invoke_callback, receiver)

    # ---------------------------------------------------------------- legs

    def add_leg(self, *legs: Leg | socket.socket | Mapping[str, Any]) -> None:
        """Add legs and attach their socket pools to the event loop.

        Args:
            *legs: :class:`Leg` objects, sockets (wrapped in a new Leg), or
                dicts of keyword arguments for :class:`Leg`.

        Raises:
            TypeError: something else.
        """
        for arg in legs:
            if isinstance(arg, Leg):
                leg = arg
            elif isinstance(arg, socket.socket):
                leg = Leg(sock=arg)
            elif isinstance(arg, Mapping):
                leg = Leg(**arg)
            else:
                raise TypeError(f"invalid spec for leg: {arg!r}")
            self.legs = [*self.legs, leg]  # (a new list: the resolver keeps targets per list)
            leg.socketpool().attach_eventloop(self.eventloop, partial(self._on_packet, leg))

    def remove_leg(self, *legs: Leg) -> None:
        """Remove legs and detach their socket pools from the loop (they are not closed)."""
        for leg in legs:
            if leg in self.legs:
                self.legs = [x for x in self.legs if x is not leg]
                leg.socketpool().attach_eventloop(None)

    def get_legs(self, **spec: Any) -> list[Leg]:
        """The legs matching ``spec`` (keys of :meth:`Leg.match`: addr, port, proto, sub)."""
        if not spec:
            return list(self.legs)
        return [leg for leg in self.legs if leg.match(**spec)]

    def _get_legs_list(self) -> list[Leg]:
        # the current list: add_leg, remove_leg and close replace it
        return self.legs

    def legs2i(self, *legs: Leg) -> list[int]:
        """Index of each leg in the dispatcher's list (-1 if not there)."""
        return [next((i for i, x in enumerate(self.legs) if x is leg), -1) for leg in legs]

    def i2legs(self, *indices: int) -> list[Leg]:
        """The legs at the given indices (the reverse of :meth:`legs2i`)."""
        return [self.legs[i] for i in indices]

    def _on_packet(self, leg: Leg, packet: Packet, from_: Addr) -> None:
        """Receive callback of a leg's socket pool."""
        if self._closed:
            return
        try:
            got = leg.receive(packet, from_)
            if got is None:
                return
            packet, from_ = got
            missing = _missing_header(packet)
            if missing is not None:
                _answer_incomplete(packet, leg, from_, missing)
                return
            if packet.is_request():
                leg.add_received(packet, from_)
        except (NetSIPError, ValueError) as exc:
            # bad input from the network must not break the loop
            log.warning("dropping packet from %s on %s: %s", from_, leg.dump(), exc)
            return
        self.receive(packet, leg, from_)

    # -------------------------------------------------------------- timers

    def add_timer(
        self, when: float, callback: object, repeat: float | None = None, name: str | None = None
    ) -> TimerLike:
        """Add a timer to the event loop (see ``EventLoop.add_timer``)."""
        return self.eventloop.add_timer(when, callback, repeat, name)

    # ----------------------------------------------------------- receiving

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        """Handle a packet received on ``leg`` from ``from_``.

        A request whose response is cached is answered from the cache and not
        passed on. A response cancels the retransmission of the requests it
        answers (same transaction id); an ACK cancels the retransmission of
        the final responses to its INVITE. Then the receiver gets
        ``(packet, leg, from_)``.
        """
        if packet.is_request():
            if packet.method() == "ACK":
                # an ACK has no response (17.1.1.3), so none in the cache
                # either; it ends the retransmission of its INVITE's final
                # response
                if self._by_tid:
                    self._delivery.cancel_by_tid(packet.tid(), requests=False)
            elif self._cache_expires:
                # the cache lookup runs for every request: its key and a
                # dict lookup are the only work on a miss (the usual case),
                # the cache's get and _cached_response only on a hit
                key = _cache_key(packet)
                if key in self._cache_expires:
                    cached = self._cache.get(key, self.eventloop.looptime)
                    if cached is not None:
                        cached = self._cached_response(key, cached)
                    if cached is not None:
                        # a retransmission: answer it, the receiver saw it already
                        log.debug("answering retransmitted request from cache")
                        leg.deliver(cached, from_)
                        return
        elif self._by_tid and (packet.method() == "INVITE" or cast(Response, packet).code() >= 200):
            # a provisional response ends the retransmission of an INVITE
            # (17.1.1.2) but not of another request (17.1.2.2: on at T2)
            self._delivery.cancel_by_tid(packet.tid(), requests=True)
        fn = self._receive_fn
        if fn is not None:
            fn(packet, leg, from_)

    def _cached_response(self, key: str, cached: Response | bytes) -> Response | None:
        """The response ``cached`` under ``key`` (parsed again if kept as bytes), or None."""
        if not isinstance(cached, bytes):
            return cached
        try:
            resp = Packet.new_from_string(cached)
        except PacketError as exc:
            # a header set by hand that the parser refuses: answer like a UAS
            # without the cache would (the receiver sees the request again)
            log.warning("cached response cannot be parsed again, dropped: %s", exc)
            resp = None
        if not isinstance(resp, Response):
            self._cache.discard(key)
            return None
        return resp

    # ---------------------------------------------------------- delivering

    def deliver(
        self,
        packet: Packet,
        *,
        leg: Leg | None = None,
        dst_addr: object = None,
        callback: object = None,
        do_retransmits: bool | None = None,
        id: str | None = None,
        callid: str | None = None,
        proto: Sequence[Proto] | None = None,
    ) -> None:
        """Deliver ``packet``, retransmitting over unreliable transports.

        Args:
            packet: the request or response.
            leg: the outgoing leg (usually given for responses: the leg the
                request came in on).
            dst_addr: the destination: an Addr (its ``proto`` is respected),
                ``"ip:port"``, a SIP URI, a dict, or a list of these to try in
                order. Usually given for responses (the request's source).
                Without it, requests go by their first Route or their URI,
                responses by their top Via (RFC 3261 18.2.2).
            callback: invoked with one errno: 0 when a reliable transport
                confirmed the delivery, else the error (``ETIMEDOUT`` after
                64*T1 without the delivery being cancelled, ``EHOSTUNREACH``
                if the URI cannot be resolved, ``ECONNREFUSED`` ...).
            do_retransmits: override the dispatcher's default.
            id: id for :meth:`cancel_delivery`; default ``packet.tid()``.
            callid: Call-ID for :meth:`cancel_delivery`; default the packet's.
            proto: allowed protocols for resolution, in preference order.

        Raises:
            NetSIPError: the dispatcher is closed.
            ValueError: ``dst_addr`` cannot be understood.
        """
        if self._closed:
            raise NetSIPError("deliver on a closed Dispatcher")
        now = self.eventloop.looptime
        if do_retransmits is None:
            do_retransmits = self.do_retransmits
        is_request = packet.is_request()
        code = packet.code() if isinstance(packet, Response) else None
        # cache for 64*T1 to answer retransmitted requests (RFC 3261 17.2)
        cache = not is_request and do_retransmits
        timers = None
        if do_retransmits and (leg is None or leg.do_retransmits()):
            timers = retransmit_timers(is_request, packet.method() or "", code)

        # the known destination of a one-shot packet (most responses): nothing
        # to queue, resolve or retransmit, so hand it to the leg right away
        direct: Addr | None = None
        if (
            leg is not None
            and isinstance(dst_addr, Addr)
            and dst_addr.family == leg.src.family
            and (dst_addr.proto is None or dst_addr.proto == leg.proto)
        ):
            direct = dst_addr
            if timers is None:
                try:
                    leg.deliver(packet, direct, callback)
                except (OSError, ValueError) as exc:
                    log.info("delivery through %s to %s failed: %s", leg.dump(), direct, exc)
                    invoke_callback(callback, errno_of(exc))
                if cache:
                    # sent as it is now (the leg adds its headers): keep the wire form
                    data = packet.as_bytes()
                    self._cache.put(_cache_key(packet), data, now, len(data))
                    if self._cache_timer is None:  # (armed all the time under load)
                        self._arm_cache_timer()
                return
        if cache and direct is None:
            self._cache.put(_cache_key(packet), packet, now)  # type: ignore[arg-type]  # Response
            self._arm_cache_timer()

        schedule = None
        if timers is not None:
            schedule = RetransmitSchedule(start=now, t1=timers[0], cap=timers[1])
        try:
            if direct is not None and schedule is not None:
                # (a final response to INVITE over UDP: one known target)
                assert leg is not None
                self._delivery.deliver_direct(
                    packet, leg, direct, schedule, callback, id, callid, proto
                )
                return
            self._delivery.deliver(
                packet,
                leg=leg,
                dst_addr=dst_addr,
                direct=direct,
                schedule=schedule,
                callback=callback,
                id=id,
                callid=callid,
                proto=proto,
            )
        finally:
            if cache and direct is not None:
                # (a final response to INVITE): sent already, with the headers
                # the leg added, so its wire form is final: kept as for a
                # response sent once above (it was serialised once, and bytes
                # cost the cyclic GC nothing for the 32 s they are kept)
                data = packet.as_bytes()
                self._cache.put(_cache_key(packet), data, now, len(data))
                if self._cache_timer is None:
                    self._arm_cache_timer()

    def queue_entries(self) -> list[QueueEntry]:
        """The deliveries in the queue, oldest first (monitoring, ``cancel_delivery('qentry')``)."""
        return list(self._queue)

    def cancel_delivery(self, typ: object, id: object = None) -> bool:
        """Stop delivering (retransmitting) packets.

        ``cancel_delivery(id)`` cancels by id (a str) or, given a
        :class:`QueueEntry`, that entry; ``cancel_delivery(typ, id)`` with
        ``typ`` one of ``"id"``, ``"callid"``, ``"qentry"``.

        Returns:
            True if something was cancelled.

        Raises:
            ValueError: an unknown ``typ``.
            TypeError: ``"qentry"`` without a QueueEntry.
        """
        return self._delivery.cancel(typ, id)

    def queue_expire(self, now: float | None = None) -> float | None:
        """Process whatever is due in the queue and the response cache at ``now``.

        The per-entry timers do this by themselves; this is Perl's API for
        callers that drive expiry by hand.

        Args:
            now: the time to expire against; default ``eventloop.looptime``.

        Returns:
            When the next thing is due, or None if nothing is pending.
        """
        if now is None:
            now = self.eventloop.looptime
        return self._delivery.expire(now, self._cache.expire(now))

    def queue_size(self) -> int:
        """Number of deliveries in the queue (for tests and monitoring)."""
        return len(self._queue)

    def _arm_cache_timer(self) -> None:
        if self._cache_timer is not None:
            return
        nxt = self._cache.next_expire()
        if nxt is None:
            return
        # just after the entry expires: ResponseCache keeps it up to exactly `expire`
        delay = max(nxt - self.eventloop.looptime, 0.0) + 0.01
        self._cache_timer = self.eventloop.add_timer(
            delay, self._on_cache_timer, None, "response-cache"
        )

    def _on_cache_timer(self, _timer: object = None) -> None:
        self._cache_timer = None
        self._cache.expire(self.eventloop.looptime)
        self._arm_cache_timer()

    # ----------------------------------------------------------- resolving

    def resolve_uri(
        self,
        uri: str,
        callback: object,
        *,
        allowed_proto: Sequence[str] | None = None,
        allowed_legs: Sequence[Leg] | None = None,
    ) -> None:
        """Find the destinations and outgoing legs for ``uri``.

        In this order: ``domain2proxy`` (exact domain, ``*.parent`` domains,
        ``*``), ``outgoing_proxy``, an IP literal host (or ``maddr``), else
        RFC 3263 DNS resolution of the host name (NAPTR, SRV, AAAA/A; only
        AAAA/A if the URI has a port). ``sips:`` allows only TLS, a
        ``transport`` parameter only that transport; otherwise UDP then TCP.
        Destinations for which no leg offers the transport and address
        family are dropped.

        Args:
            uri: the SIP URI (a ``<...>`` name-addr works too).
            callback: invoked (``invoke_callback``) exactly once, possibly
                before this method returns, with a list of ``(Addr, Leg)``
                pairs in the order to try (each Addr has ``proto`` set), or
                with an errno: ``EHOSTUNREACH`` (bad URI, nothing found, no
                leg) or ``ENOPROTOOPT`` (no allowed transport).
            allowed_proto: only these protocols, tried in this order.
            allowed_legs: only these legs.
        """
        self._uri.resolve_uri(uri, callback, allowed_proto=allowed_proto, allowed_legs=allowed_legs)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Cancel all deliveries, detach and close every leg, close the resolver.

        The dispatcher owns the legs added to it; a leg removed with
        :meth:`remove_leg` before is not closed. An event loop the dispatcher
        created itself is closed too.
        """
        if self._closed:
            return
        self._closed = True
        untrack_settings(self._settings_sub)
        self._delivery.close()
        if self._cache_timer is not None:
            self._cache_timer.cancel()
            self._cache_timer = None
        self._cache.clear()
        for leg in self.legs:
            leg.socketpool().attach_eventloop(None)
            leg.close()
        self.legs = []
        self._uri.close()
        if self._own_loop and isinstance(self.eventloop, EventLoop):
            self.eventloop.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
