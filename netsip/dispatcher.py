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
  fails, or times out (the callback then gets ``ETIMEDOUT``). Each queued
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

Deliberate differences from Net::SIP 0.835:

- one timer per queued delivery instead of a once-a-second queue scan; the
  delivery times out exactly 64*T1 after it started, after every
  retransmission due before that (Perl gives up at its last retransmission
  time, noticed up to a second late);
- provisional responses are not retransmitted (Perl retransmits 101-199 to
  INVITE like final responses); a request answered from the response cache
  does not queue the cached response again;
- received responses and ACKs cancel retransmissions here (Perl leaves that
  to Net::SIP::Endpoint, which netsip does not port);
- a transport error moves on to the next resolved destination (Perl keeps
  the list but never fails over); a response without ``leg``/``dst_addr``
  goes where its top Via says;
- :meth:`Dispatcher.resolve_uri` takes ``(uri, callback, *, allowed_proto,
  allowed_legs)`` and calls back with ``[(Addr, Leg), ...]`` or an errno
  (Perl fills two array refs and calls back with nothing or an errno); host
  names are resolved with NAPTR too (RFC 3263), by :mod:`netsip.resolver`;
- a response sent at once (``leg`` and ``dst_addr`` given, nothing to
  retransmit) is cached as the bytes that were sent and parsed again to answer
  a retransmitted request; Perl keeps the object (memory and, in Python, the
  cyclic GC's work grow with every cached object);
- delivery callbacks get the errno only (Perl adds the queue entry);
  :meth:`Dispatcher.close` closes the legs.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeAlias

from netsip.eventloop import EventLoop, EventLoopLike, TimerLike
from netsip.leg import Leg
from netsip.packet import Packet, PacketError, Request, Response, canonical_header_name
from netsip.respcache import ResponseCache, cache_key
from netsip.retransmit import Action, RetransmitSchedule, retransmit_timers
from netsip.util import (
    DEFAULT_PORTS,
    PROTOS,
    Addr,
    NetSIPError,
    Proto,
    errno_of,
    invoke_callback,
    ip_canonical,
    ip_is_v46,
    ip_parts2string,
    ip_ptr,
    ip_string2parts,
    sip_hdrval2parts,
    sip_parts2uri,
    sip_uri2parts,
    sip_uri2sockinfo,
)

__all__ = ["SRV_PRIO_UNDEF", "Dispatcher", "QueueEntry", "Target"]

log = logging.getLogger(__name__)

#: Priority of destinations that did not come from an SRV record: after all SRV ones.
SRV_PRIO_UNDEF = 0x10000


#: One resolved destination and the leg to reach it through.
Target: TypeAlias = tuple[Addr, Leg]


class ResolverLike(Protocol):
    """What the dispatcher needs from :class:`netsip.resolver.Resolver`."""

    def resolve(
        self,
        host: str,
        protos: Sequence[str],
        # Any: the result is a list of (proto, Addr); list is invariant and resolvers
        # may type proto as str or Proto
        callback: Callable[[Any], object],
        *,
        port: int | None = None,
        sips: bool = False,
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Dest:
    """A destination before leg selection (Perl's hash of prio/proto/host/addr/port/family)."""

    proto: Proto | None
    host: str
    addr: str | None
    port: int | None
    family: int | None
    prio: int = SRV_PRIO_UNDEF


@dataclass(eq=False, slots=True)
class QueueEntry:
    """A delivery in the dispatcher's queue (Perl's ``Net::SIP::Dispatcher::Packet``).

    Attributes:
        packet: the packet to deliver.
        id: the id for :meth:`Dispatcher.cancel_delivery` (default ``packet.tid()``).
        callid: the Call-ID for cancelling a whole call.
        tid: the packet's transaction id.
        callback: the user's callback (invoked with one errno).
        targets: the destinations still to try; the first is the current one.
        legs: the legs allowed for this delivery (empty: any).
        proto: protocols allowed for resolution, in preference order.
        schedule: the retransmission schedule, None if not retransmitted.
        queued: the entry is in the dispatcher's queue.
        done: the delivery is over (cancelled, confirmed, failed or timed out).
    """

    packet: Packet
    id: str
    callid: str
    tid: str
    callback: object = None
    targets: list[Target] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    proto: list[Proto] | None = None
    schedule: RetransmitSchedule | None = None
    timer: TimerLike | None = None
    queued: bool = False
    done: bool = False
    #: bumped whenever a new target is tried: errors about older ones are ignored
    attempt: int = 0

    def trigger_callback(self, error: int) -> bool:
        """Invoke the callback with ``error``; False if there is none."""
        if self.callback is None:
            return False
        invoke_callback(self.callback, error)
        return True


#: RFC 3261 8.1.1: the header fields that make a message's transaction and
#: dialog (Via and Max-Forwards are mandatory too; a missing Via is the Leg's
#: concern: a response without one is dropped there, a request is answered
#: to its source address)
_MANDATORY: tuple[str, ...] = ("from", "to", "call-id", "cseq")


def _missing_header(packet: Packet) -> str | None:
    """The first of the mandatory headers that ``packet`` lacks, or None."""
    values = packet.header_values
    for name in _MANDATORY:
        if not values(name):
            return name
    return None


def _kind(packet: Packet) -> str:
    return f"{packet.method()} request" if packet.is_request() else "response"


def _check_proto(proto: object, what: object) -> Proto | None:
    if proto is None or proto == "":
        return None
    if proto not in DEFAULT_PORTS:
        raise ValueError(f"invalid protocol {proto!r} in {what!r}")
    return proto  # type: ignore[return-value]  # checked against the Proto values


def _normalize_proxy(spec: object) -> list[_Dest]:
    """A destination specification as a list of destinations (proto None: any).

    ``spec`` is ``"ip[:port]"``, ``"host[:port]"``, a SIP URI, an Addr, a dict
    with proto/host/addr/port/family/prio, or a list of these.
    """
    if isinstance(spec, str):
        info = sip_uri2sockinfo(spec)
        if info is None:
            raise ValueError(f"invalid destination {spec!r}")
        proto, host, port, family = info
        return [_Dest(_check_proto(proto, spec), host, host if family else None, port, family)]
    if isinstance(spec, Addr):
        return [_Dest(spec.proto, spec.host or spec.addr, spec.addr, spec.port, spec.family)]
    if isinstance(spec, tuple):
        a = Addr.parse(spec)
        return [_Dest(a.proto, a.addr, a.addr, a.port, a.family)]
    if isinstance(spec, Mapping):
        mhost: object = spec.get("host") or spec.get("addr")
        if not isinstance(mhost, str):
            raise ValueError(f"destination without host: {spec!r}")
        maddr: str | None = spec.get("addr")
        mfamily: int | None = spec.get("family")
        if maddr is None:
            h, _, fam = ip_string2parts(mhost)
            if fam is not None:
                mhost = maddr = h
                mfamily = fam
        elif mfamily is None:
            maddr, _, mfamily = ip_string2parts(maddr)
        prio = spec.get("prio")
        return [
            _Dest(
                _check_proto(spec.get("proto"), spec),
                mhost,
                maddr,
                spec.get("port") or None,
                mfamily,
                SRV_PRIO_UNDEF if prio is None else int(prio),
            )
        ]
    if isinstance(spec, Iterable):
        out: list[_Dest] = []
        for item in spec:
            out += _normalize_proxy(item)
        return out
    raise ValueError(f"invalid destination {spec!r}")


def _with_proto(addr: Addr, proto: Proto) -> Addr:
    return Addr(addr.addr, addr.port, addr.family, addr.host, proto)


def _expand(dests: Iterable[_Dest], protos: Sequence[Proto]) -> list[_Dest]:
    """One destination per protocol for those without a protocol."""
    out: list[_Dest] = []
    for d in dests:
        if d.proto is not None:
            out.append(d)
        else:
            out += [dataclasses.replace(d, proto=p) for p in protos]
    return out


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
        self._cache: ResponseCache[Response | bytes] = ResponseCache()
        self._cache_timer: TimerLike | None = None
        self._queue: dict[QueueEntry, None] = {}
        self._by_id: dict[str, list[QueueEntry]] = {}
        self._by_tid: dict[str, list[QueueEntry]] = {}
        self._dnsresolv = dnsresolv
        self._resolver: ResolverLike | None = None
        self._closed = False
        self.domain2proxy: dict[str, list[_Dest]] = {
            dom.lower(): _normalize_proxy(proxy) for dom, proxy in (domain2proxy or {}).items()
        }
        self._outgoing_proxy: str | None = None
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
        return self._outgoing_proxy

    @outgoing_proxy.setter
    def outgoing_proxy(self, proxy: str | None) -> None:
        if proxy is not None and not self._find_legs4addr(proxy):
            raise ValueError(f"cannot find leg for destination {proxy}")
        self._outgoing_proxy = proxy

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
            self.legs.append(leg)
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
                self._incomplete(packet, leg, from_, missing)
                return
            if packet.is_request():
                leg.add_received(packet, from_)
        except (NetSIPError, ValueError) as exc:
            # bad input from the network must not break the loop
            log.warning("dropping packet from %s on %s: %s", from_, leg.dump(), exc)
            return
        self.receive(packet, leg, from_)

    def _incomplete(self, packet: Packet, leg: Leg, from_: Addr, missing: str) -> None:
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
            if self._cache:
                # the cache lookup runs for every request: its key is the only
                # work on a miss (the usual case), _cached_response only on a hit
                key = cache_key(packet)
                cached = self._cache.get(key, self.eventloop.looptime)
                if cached is not None:
                    cached = self._cached_response(key, cached)
                if cached is not None:
                    # a retransmission: answer it, the receiver saw it already
                    log.debug("answering retransmitted request from cache")
                    leg.deliver(cached, from_)
                    return
            if self._by_tid and packet.method() == "ACK":
                self._cancel_by_tid(packet.tid(), requests=False)
        elif self._by_tid:
            self._cancel_by_tid(packet.tid(), requests=True)
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

    def _cancel_by_tid(self, tid: str, requests: bool) -> None:
        entries = self._by_tid.get(tid)
        if not entries:
            return
        for entry in list(entries):
            if entry.packet.is_request() == requests:
                self._cancel_entry(entry)

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
                    self._cache.put(cache_key(packet), packet.as_bytes(), now)
                    if self._cache_timer is None:  # (armed all the time under load)
                        self._arm_cache_timer()
                return
        if cache:
            self._cache.put(cache_key(packet), packet, now)  # type: ignore[arg-type]  # Response
            self._arm_cache_timer()

        tid = packet.tid()
        entry = QueueEntry(
            packet=packet,
            id=id if id is not None else tid,
            callid=callid if callid is not None else (packet.callid() or ""),
            tid=tid,
            callback=callback,
            legs=[leg] if leg is not None else [],
            proto=list(proto) if proto else None,
        )
        if timers is not None:
            entry.schedule = RetransmitSchedule(start=now, t1=timers[0], cap=timers[1])
        self._enqueue(entry)
        if direct is not None and leg is not None:
            target = direct if direct.proto else _with_proto(direct, leg.proto)
            self._resolved(entry, [(target, leg)])
            return
        if dst_addr is None:
            self._resolve_entry(entry)
            return
        try:
            dsts = self._normalize_dst(dst_addr)
        except BaseException:
            self._dequeue(entry)
            raise
        legs = entry.legs or self.legs
        if all(d.addr is not None for d in dsts):
            self._resolved(entry, self._pair_legs(dsts, legs) or errno.EHOSTUNREACH)
        else:
            protos = entry.proto or list(dict.fromkeys(x.proto for x in legs))
            self._dns_hosts(_expand(dsts, protos), legs, partial(self._resolved, entry))

    def queue_entries(self) -> list[QueueEntry]:
        """The deliveries in the queue, oldest first (monitoring, ``cancel_delivery('qentry')``)."""
        return list(self._queue)

    @staticmethod
    def _normalize_dst(dst: object) -> list[_Dest]:
        if isinstance(dst, str):
            try:
                a = Addr.parse(dst)  # the common "ip:port" first
            except ValueError:
                return _normalize_proxy(dst)
            return [_Dest(None, a.addr, a.addr, a.port, a.family)]
        return _normalize_proxy(dst)

    def _pair_legs(self, dsts: Iterable[_Dest], legs: Sequence[Leg]) -> list[Target]:
        """Pair each destination with an IP with the first leg that can reach it."""
        targets: list[Target] = []
        for d in dsts:
            if d.addr is None or d.family is None:
                continue
            for leg in legs:
                if leg.can_deliver_to(proto=d.proto, addr=d.addr, family=d.family):
                    proto = d.proto or leg.proto
                    port = d.port or DEFAULT_PORTS[proto]
                    targets.append((Addr(d.addr, port, d.family, d.host, proto), leg))
                    break
            else:
                log.debug("no leg with %s to %s", d.proto, d.addr)
        return targets

    def _enqueue(self, entry: QueueEntry) -> None:
        entry.queued = True
        self._queue[entry] = None
        self._by_id.setdefault(entry.id, []).append(entry)
        self._by_tid.setdefault(entry.tid, []).append(entry)

    def _dequeue(self, entry: QueueEntry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if not entry.queued:
            return
        entry.queued = False
        del self._queue[entry]
        for index, key in ((self._by_id, entry.id), (self._by_tid, entry.tid)):
            lst = index.get(key)
            if lst is not None:
                # (not contextlib.suppress: this runs for every queued delivery)
                if entry in lst:
                    lst.remove(entry)
                if not lst:
                    del index[key]

    def _resolve_entry(self, entry: QueueEntry) -> None:
        """Find targets for a request by its first Route or URI, for a response by its Via."""
        packet = entry.packet
        uri: str | None
        if isinstance(packet, Request):
            routes = packet.get_headers("route")
            uri = sip_hdrval2parts("route", routes[0])[0] if routes else packet.uri()
        else:
            uri = self._via_uri(packet)
        if uri is None:
            self._resolved(entry, errno.EHOSTUNREACH)
            return
        log.debug("no destination yet, resolving %r", uri)
        self.resolve_uri(
            uri,
            partial(self._resolved, entry),
            allowed_proto=entry.proto,
            allowed_legs=entry.legs or None,
        )

    @staticmethod
    def _via_uri(packet: Packet) -> str | None:
        """Where a response goes by its top Via (RFC 3261 18.2.2, RFC 3581), as a URI."""
        vias = packet.get_headers("via")
        if not vias:
            return None
        data, param = sip_hdrval2parts("via", vias[0])
        parts = data.split(None, 1)
        if len(parts) != 2 or "/" not in parts[0]:
            return None
        transport = parts[0].rsplit("/", 1)[1].lower()
        try:
            host, port, _ = ip_string2parts(parts[1].strip())
        except ValueError:
            return None
        host = param.get("maddr") or param.get("received") or host
        rport = param.get("rport")
        if rport and rport.isdigit():
            port = int(rport)
        return sip_parts2uri(
            ip_parts2string(host, port or None), None, "sip", {"transport": transport}
        )

    def _resolved(self, entry: QueueEntry, result: list[Target] | int) -> None:
        if entry.done or not entry.queued:
            return  # cancelled meanwhile
        if isinstance(result, int):
            self._fail(entry, result)
            return
        entry.targets = list(result)
        self._send(entry)

    def _callback_for(self, entry: QueueEntry) -> object:
        # a callback is needed for failover and for the user; skip it otherwise
        if entry.callback is None and len(entry.targets) < 2:
            return None
        return partial(self._sent, entry, entry.attempt)

    def _send(self, entry: QueueEntry) -> None:
        """Send an entry to its current target; arm its retransmission timer."""
        addr, leg = entry.targets[0]
        if entry.schedule is not None and not leg.do_retransmits():
            entry.schedule = None  # reliable transport (RFC 3261 17.1.1.2, 17.1.2.2)
        entry.attempt += 1
        cb = self._callback_for(entry)
        self._transmit(entry, addr, leg, cb)
        if entry.done or not entry.queued:
            return  # failed synchronously, or the callback cancelled it
        if entry.schedule is not None:
            self._arm(entry)
        elif leg.do_retransmits() or cb is None:
            # nothing more will happen to this entry (Perl: removed after sending);
            # a reliable one waits for its callback (confirmation or failover)
            self._dequeue(entry)

    def _transmit(self, entry: QueueEntry, addr: Addr, leg: Leg, cb: object) -> None:
        try:
            leg.deliver(entry.packet, addr, cb)
        except (OSError, ValueError) as exc:
            log.info("delivery through %s to %s failed: %s", leg.dump(), addr, exc)
            self._sent(entry, entry.attempt, errno_of(exc))

    def _sent(self, entry: QueueEntry, attempt: int, error: int) -> None:
        """Callback of a leg delivery: 0 = written (reliable transport), else an errno."""
        if entry.done or attempt != entry.attempt:
            return
        if not error:
            if entry.schedule is None:
                entry.done = True
                self._dequeue(entry)
            entry.trigger_callback(0)
            return
        if len(entry.targets) > 1:
            # RFC 3263 4.3: a transport failure moves on to the next destination
            failed = entry.targets.pop(0)
            log.info(
                "delivery to %s failed (%s), trying %s",
                failed[0],
                errno.errorcode.get(error, error),
                entry.targets[0][0],
            )
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            if not entry.queued:
                self._enqueue(entry)
            self._send(entry)
            return
        self._fail(entry, error)

    def _fail(self, entry: QueueEntry, error: int) -> None:
        entry.done = True
        self._dequeue(entry)
        entry.trigger_callback(error)

    def _arm(self, entry: QueueEntry) -> None:
        sched = entry.schedule
        assert sched is not None
        if entry.timer is not None:
            entry.timer.cancel()
        delay = max(sched.next_time - self.eventloop.looptime, 0.0)
        entry.timer = self.eventloop.add_timer(
            delay, partial(self._on_timer, entry), None, "retransmit"
        )

    def _on_timer(self, entry: QueueEntry, _timer: object = None) -> None:
        entry.timer = None
        if entry.done or not entry.queued or entry.schedule is None:
            return
        self._step(entry, self.eventloop.looptime)

    def _step(self, entry: QueueEntry, now: float) -> None:
        sched = entry.schedule
        assert sched is not None
        action = sched.due(now)
        if action is Action.TIMEOUT:
            log.debug("delivery of %s timed out", entry.id)
            self._fail(entry, errno.ETIMEDOUT)
            return
        if action is Action.RETRANSMIT:
            addr, leg = entry.targets[0]
            log.debug("retransmission #%d of %s to %s", sched.count, entry.id, addr)
            self._transmit(entry, addr, leg, self._callback_for(entry))
            if entry.done or not entry.queued:
                return
        self._arm(entry)

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
        if id is None:
            typ, id = ("qentry", typ) if isinstance(typ, QueueEntry) else ("id", typ)
        if typ == "qentry":
            if not isinstance(id, QueueEntry):
                raise TypeError("cancel_delivery('qentry', ...) needs a QueueEntry")
            victims = [id] if id.queued else []
        elif typ == "id":
            victims = list(self._by_id.get(str(id), ()))
        elif typ == "callid":
            victims = [e for e in self._queue if e.callid == id]
        else:
            raise ValueError(f"bad typ {typ!r}, should be id|callid|qentry")
        for entry in victims:
            self._cancel_entry(entry)
        return bool(victims)

    def _cancel_entry(self, entry: QueueEntry) -> None:
        log.debug("cancel delivery of %s", entry.id)
        entry.done = True
        self._dequeue(entry)

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
        nxt = self._cache.expire(now)
        for entry in list(self._queue):
            if entry.schedule is None or not entry.queued or not entry.targets:
                continue
            self._step(entry, now)
            if entry.queued and entry.schedule is not None:
                t = entry.schedule.next_time
                nxt = t if nxt is None else min(nxt, t)
        return nxt

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

    def _find_legs4addr(self, addr: str) -> list[Leg]:
        try:
            dests = self._normalize_dst(addr)
        except ValueError:
            return []
        return [
            leg
            for leg in self.legs
            if any(leg.can_deliver_to(proto=d.proto, addr=d.addr, family=d.family) for d in dests)
        ]

    def _get_resolver(self) -> ResolverLike:
        if self._resolver is None:
            hook = self._dnsresolv
            if hook is not None and callable(getattr(hook, "resolve", None)):
                self._resolver = hook  # type: ignore[assignment]  # a duck-typed Resolver
            else:
                try:
                    # imported on first use: it needs dnspython unless a hook is given
                    from netsip.resolver import Resolver  # noqa: PLC0415
                except ImportError as exc:
                    raise NetSIPError(f"DNS resolution is not available: {exc}") from exc
                self._resolver = Resolver(self.eventloop, dnsresolv=hook)
        assert self._resolver is not None
        return self._resolver

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
        parts = sip_uri2parts(uri)
        if parts is None or not parts[0]:
            log.debug("bad URI %r", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return
        domain, _user, scheme, param, _data = parts
        transport = (param.get("transport") or "").lower()
        protos: list[Proto]
        if scheme == "sips":
            protos = ["tls"]
        elif transport:
            p = _check_proto(transport, uri) if transport in DEFAULT_PORTS else None
            protos = [p] if p is not None else []
        else:
            protos = ["udp", "tcp"]
        if allowed_proto:
            protos = [p for p in PROTOS if p in allowed_proto and p in protos]
            protos.sort(key=list(allowed_proto).index)
        if not protos:
            log.debug("no protocols allowed for %s", uri)
            invoke_callback(callback, errno.ENOPROTOOPT)
            return

        legs = list(allowed_legs) if allowed_legs else list(self.legs)
        if not legs:
            log.debug("no legs allowed for %r", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return

        maddr = param.get("maddr")
        try:
            host, force_port, family = ip_string2parts(domain, bool(maddr))
        except ValueError:
            log.debug("bad URI %r", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return
        # an IP literal is looked up in domain2proxy by its PTR name, as in Perl
        lookup_domain = ip_ptr(host, family) if family is not None else host

        dests: list[_Dest] = []
        if self.domain2proxy:
            d2p = self.domain2proxy
            dom = lookup_domain
            found = d2p.get(dom)
            while found is None and "." in dom:
                dom = dom.split(".", 1)[1]
                found = d2p.get("*." + dom)
            if found is None:
                found = d2p.get("*")
            if found is not None:
                log.debug("destination from domain2proxy for %s", dom)
                dests = list(found)
                force_port = None
        if not dests and self._outgoing_proxy:
            log.debug("destination from outgoing_proxy %s", self._outgoing_proxy)
            dests = self._normalize_dst(self._outgoing_proxy)
            force_port = None
        if not dests and family is not None:
            dests = [_Dest(None, host, host, None, family)]
        if maddr:
            mfam = ip_is_v46(maddr)
            if mfam is not None:
                mip = ip_canonical(maddr, mfam)
                dests = [_Dest(None, mip, mip, None, mfam)]

        if not dests:
            # DNS (RFC 3263), only for protocols some leg offers
            protos = [p for p in protos if any(leg.proto == p for leg in legs)]
            if not protos:
                log.debug("no legs for the protocols of %s", uri)
                invoke_callback(callback, errno.ENOPROTOOPT)
                return
            try:
                self._get_resolver().resolve(
                    host,
                    protos,
                    partial(self._dns_done, legs, callback),
                    port=force_port,
                    sips=scheme == "sips",
                )
            except (NetSIPError, ValueError) as exc:
                log.warning("cannot resolve %s: %s", uri, exc)
                invoke_callback(callback, errno.EHOSTUNREACH)
            return

        dests = [
            d if d.port or not force_port else dataclasses.replace(d, port=force_port)
            for d in _expand(dests, protos)
        ]
        if transport:
            if transport == "udp":
                dests = [d for d in dests if d.proto == "udp"]
            elif transport == "tcp":
                dests = [d for d in dests if d.proto != "udp"]  # tcp and tls, as in Perl
            elif transport == "tls":
                dests = [d for d in dests if d.proto == "tls"]
            else:
                dests = []
            if not dests:
                invoke_callback(callback, errno.ENOPROTOOPT)
                return
        if all(d.addr is not None for d in dests):
            self._resolve_final(dests, legs, callback)
        else:
            self._dns_hosts(dests, legs, callback)

    def _dns_done(
        self, legs: list[Leg], callback: object, result: Sequence[tuple[str, Addr]]
    ) -> None:
        # keep the resolver's order (RFC 3263 failover order) through the stable sort
        dests = [
            _Dest(_check_proto(p, "resolver"), a.host or a.addr, a.addr, a.port, a.family, i)
            for i, (p, a) in enumerate(result)
        ]
        self._resolve_final(dests, legs, callback)

    def _dns_hosts(self, dests: list[_Dest], legs: list[Leg], callback: object) -> None:
        """Fill in the addresses of destinations given by host name (AAAA/A only)."""
        pending = {i for i, d in enumerate(dests) if d.addr is None}
        results: dict[int, list[_Dest]] = {}

        def one(i: int, res: Sequence[tuple[str, Addr]]) -> None:
            d = dests[i]
            results[i] = [
                dataclasses.replace(d, addr=a.addr, family=a.family, port=d.port or a.port)
                for p, a in res
                if p == d.proto
            ]
            pending.discard(i)
            if not pending:
                final: list[_Dest] = []
                for j, dj in enumerate(dests):
                    final += results.get(j, [dj])
                self._resolve_final(final, legs, callback)

        try:
            resolver = self._get_resolver()
            for i in sorted(pending):
                d = dests[i]
                proto = d.proto or "udp"
                resolver.resolve(
                    d.host, [proto], partial(one, i), port=d.port or DEFAULT_PORTS[proto]
                )
        except (NetSIPError, ValueError) as exc:
            log.warning("cannot resolve %s: %s", [dests[i].host for i in pending], exc)
            pending.clear()
            invoke_callback(callback, errno.EHOSTUNREACH)

    def _resolve_final(self, dests: list[_Dest], legs: list[Leg], callback: object) -> None:
        # stable sort by priority, without duplicates
        seen: set[tuple[object, ...]] = set()
        ordered: list[_Dest] = []
        for d in sorted(dests, key=lambda d: d.prio):
            key = (d.proto, d.addr, d.port, d.family)
            if key not in seen:
                seen.add(key)
                ordered.append(d)
        targets = self._pair_legs(ordered, legs)
        if not targets:
            invoke_callback(callback, errno.EHOSTUNREACH)
            return
        invoke_callback(callback, targets)

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
        for entry in list(self._queue):
            entry.done = True
            self._dequeue(entry)
        if self._cache_timer is not None:
            self._cache_timer.cancel()
            self._cache_timer = None
        self._cache.clear()
        for leg in self.legs:
            leg.socketpool().attach_eventloop(None)
            leg.close()
        self.legs = []
        if self._resolver is not None and self._resolver is not self._dnsresolv:
            self._resolver.close()
        self._resolver = None
        if self._own_loop and isinstance(self.eventloop, EventLoop):
            self.eventloop.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
