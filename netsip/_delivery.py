"""The Dispatcher's delivery queue: queued deliveries, retransmission, failover.

Ports ``__deliver``, the queue half of ``queue_expire`` and ``cancel_delivery``
of Perl's ``Net::SIP::Dispatcher``, and ``Net::SIP::Dispatcher::Packet`` (as
:class:`QueueEntry`). :class:`~netsip.dispatcher.Dispatcher` owns one
:class:`DeliveryQueue`; ``Dispatcher.deliver`` sends a response whose leg and
destination are known straight away and hands everything else to
:meth:`DeliveryQueue.deliver`.

How it works: a delivery becomes a :class:`QueueEntry`, indexed by its id
(for ``cancel_delivery``) and its transaction id (a received response or ACK
cancels by that). Its destinations come from ``dst_addr``, else from
``Dispatcher.resolve_uri`` of the request's first Route or URI, or of a
response's top Via (RFC 3261 18.2.2, RFC 3581). The entry is sent to its first
destination; over UDP it is retransmitted per RFC 3261 17.1 by a
:class:`~netsip.retransmit.RetransmitSchedule`, each entry with one event-loop
timer of its own for its next retransmission or timeout, until it is
cancelled, fails, or times out (the callback then gets ``ETIMEDOUT``). Over a
reliable transport it waits for the socket pool's confirmation (the callback
gets 0). If a destination fails (TCP connect refused, ICMP error) the next one
is tried (RFC 3263 4.3); errors about an earlier attempt are ignored.

Differences from Net::SIP 0.835:

- one timer per queued delivery instead of a once-a-second queue scan; the
  delivery times out exactly 64*T1 after it started, after every
  retransmission due before that (Perl gives up at its last retransmission
  time, noticed up to a second late);
- a transport error moves on to the next resolved destination (Perl keeps
  the list but never fails over); a response without ``leg``/``dst_addr``
  goes where its top Via says;
- delivery callbacks get the errno only (Perl adds the queue entry);
- a request larger than :data:`MTU_LIMIT` whose destinations include a
  congestion-controlled transport goes over it first, UDP staying behind as
  the fallback (RFC 3261 18.1.1; Perl sends it over UDP).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol

from netsip._log import get_logger
from netsip._uriresolve import (
    Target,
    UriResolver,
    expand,
    normalize_dst,
    pair_legs,
    with_proto,
)
from netsip.eventloop import EventLoopLike, TimerLike
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.retransmit import Action, RetransmitSchedule
from netsip.util import (
    Addr,
    Proto,
    errno_of,
    invoke_callback,
    ip_parts2string,
    ip_string2parts,
    sip_hdrval2parts,
    sip_parts2uri,
)

__all__ = ["MTU_LIMIT", "DeliveryQueue", "DispatcherLike", "QueueEntry", "by_size"]

# the public module's logger: what users configure for the Dispatcher
log: Final = get_logger("netsip.dispatcher")

#: RFC 3261 18.1.1: a request larger than this (the path MTU being unknown)
#: goes over a congestion-controlled transport.
MTU_LIMIT: Final = 1300
#: the most a leg adds to a request on its way out (its Via), counted in its size
_VIA_ALLOWANCE: Final = 120


def by_size(packet: Packet, targets: list[Target]) -> list[Target]:
    """``targets`` in the order to try for ``packet`` (RFC 3261 18.1.1).

    A request larger than :data:`MTU_LIMIT` with its Via, whose first
    destination is UDP, goes to the destinations over TCP/TLS (or another
    stream transport) first, if there are any: "If a request is within 200
    bytes of the path MTU, or if it is larger than 1300 bytes and the path
    MTU is unknown, the request MUST be sent using an RFC 2914 congestion
    controlled transport protocol, such as TCP." The UDP destinations stay
    behind them: 18.1.1 goes on "if the attempt to establish the connection
    generates either an ICMP Protocol Not Supported, or results in a TCP
    reset, the element SHOULD retry the request, using UDP" (the queue's
    failover to the next destination does that, for any connection error).
    Responses and small requests keep the resolver's order.
    """
    if len(targets) < 2 or targets[0][1].proto != "udp" or not isinstance(packet, Request):
        return targets
    streams = [t for t in targets if t[1].proto != "udp"]
    if not streams or len(packet.as_bytes()) + _VIA_ALLOWANCE <= MTU_LIMIT:
        return targets
    log.debug("request of %d bytes goes over %s", len(packet.as_bytes()), streams[0][0])
    return streams + [t for t in targets if t[1].proto == "udp"]


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
    callback: Any = None
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


def _unindex(index: dict[str, list[QueueEntry]], key: str, entry: QueueEntry) -> None:
    """Take ``entry`` out of ``index[key]`` (and the key out once empty)."""
    lst = index.get(key)
    if lst is None:
        return
    if len(lst) == 1:
        if lst[0] is entry:  # (the usual case: one delivery per id and tid)
            del index[key]
        return
    # (not contextlib.suppress: this runs for every queued delivery)
    if entry in lst:
        lst.remove(entry)
    if not lst:
        del index[key]


def via_uri(packet: Packet) -> str | None:
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
    return sip_parts2uri(ip_parts2string(host, port or None), None, "sip", {"transport": transport})


class DispatcherLike(Protocol):
    """What the queue reads from its Dispatcher, at each use (so overrides apply)."""

    legs: list[Leg]

    def resolve_uri(
        self,
        uri: str,
        callback: object,
        *,
        allowed_proto: Sequence[str] | None = None,
        allowed_legs: Sequence[Leg] | None = None,
    ) -> None: ...


class DeliveryQueue:
    """The queued deliveries of one Dispatcher.

    Args:
        dispatcher: the owner: its current ``legs``, its ``resolve_uri`` (for
            deliveries without a destination; a subclass may override it).
        eventloop: the loop for the retransmission timers and ``looptime``.
        uri: the dispatcher's URI resolver (destinations given by host name).
    """

    def __init__(
        self, dispatcher: DispatcherLike, eventloop: EventLoopLike, uri: UriResolver
    ) -> None:
        self._dispatcher = dispatcher
        self.eventloop = eventloop
        self._uri = uri
        #: the queued entries, oldest first (a dict: ordered, O(1) removal)
        self.queue: dict[QueueEntry, None] = {}
        self.by_id: dict[str, list[QueueEntry]] = {}
        self.by_tid: dict[str, list[QueueEntry]] = {}

    # ------------------------------------------------------------ queueing

    def deliver(
        self,
        packet: Packet,
        *,
        leg: Leg | None,
        dst_addr: object,
        direct: Addr | None,
        schedule: RetransmitSchedule | None,
        callback: object,
        id: str | None,
        callid: str | None,
        proto: Sequence[Proto] | None,
    ) -> None:
        """Queue a delivery and start it (the rest of ``Dispatcher.deliver``).

        ``direct`` is ``dst_addr`` when it is an Addr that ``leg`` can reach
        (no resolution needed).

        Raises:
            ValueError: ``dst_addr`` cannot be understood (nothing is queued).
        """
        tid = packet.tid()
        entry = QueueEntry(
            packet=packet,
            id=id if id is not None else tid,
            callid=callid if callid is not None else (packet.callid() or ""),
            tid=tid,
            callback=callback,
            legs=[leg] if leg is not None else [],
            proto=list(proto) if proto else None,
            schedule=schedule,
        )
        self.enqueue(entry)
        if direct is not None and leg is not None:
            target = direct if direct.proto else with_proto(direct, leg.proto)
            self._resolved(entry, [(target, leg)])
            return
        if dst_addr is None:
            self._resolve_entry(entry)
            return
        try:
            dsts = normalize_dst(dst_addr)
        except BaseException:
            self.dequeue(entry)
            raise
        legs = entry.legs or self._dispatcher.legs
        if all(d.addr is not None for d in dsts):
            self._resolved(entry, pair_legs(dsts, legs) or errno.EHOSTUNREACH)
        else:
            protos = entry.proto or list(dict.fromkeys(x.proto for x in legs))
            self._uri.dns_hosts(expand(dsts, protos), legs, partial(self._resolved, entry))

    def deliver_direct(  # noqa: PLR0917  (positional: it runs for every call's 2xx)
        self,
        packet: Packet,
        leg: Leg,
        direct: Addr,
        schedule: RetransmitSchedule,
        callback: object,
        id: str | None,
        callid: str | None,
        proto: Sequence[Proto] | None,
    ) -> None:
        """:meth:`deliver` of a packet to retransmit to an Addr ``leg``
        reaches (a final response to INVITE over UDP, usually): the one
        target is known, nothing to resolve."""
        tid = packet.tid()
        target = direct if direct.proto else with_proto(direct, leg.proto)
        entry = QueueEntry(
            packet,
            id if id is not None else tid,
            callid if callid is not None else (packet.callid() or ""),
            tid,
            callback,
            [(target, leg)],
            [leg],
            list(proto) if proto else None,
            schedule,
        )
        self.enqueue(entry)
        self._send(entry)

    def enqueue(self, entry: QueueEntry) -> None:
        entry.queued = True
        self.queue[entry] = None
        self.by_id.setdefault(entry.id, []).append(entry)
        self.by_tid.setdefault(entry.tid, []).append(entry)

    def dequeue(self, entry: QueueEntry) -> None:
        """Take ``entry`` out of the queue and stop its timer."""
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if not entry.queued:
            return
        entry.queued = False
        del self.queue[entry]
        _unindex(self.by_id, entry.id, entry)
        _unindex(self.by_tid, entry.tid, entry)

    # ----------------------------------------------------------- resolving

    def _resolve_entry(self, entry: QueueEntry) -> None:
        """Find targets for a request by its first Route or URI, for a response by its Via."""
        packet = entry.packet
        uri: str | None
        if isinstance(packet, Request):
            routes = packet.get_headers("route")
            uri = sip_hdrval2parts("route", routes[0])[0] if routes else packet.uri()
        else:
            uri = via_uri(packet)
        if uri is None:
            self._resolved(entry, errno.EHOSTUNREACH)
            return
        log.debug("no destination yet, resolving %r", uri)
        self._dispatcher.resolve_uri(
            uri,
            partial(self._resolved, entry),
            allowed_proto=entry.proto,
            allowed_legs=entry.legs or None,
        )

    def _resolved(self, entry: QueueEntry, result: list[Target] | int) -> None:
        if entry.done or not entry.queued:
            return  # cancelled meanwhile
        if isinstance(result, int):
            self._fail(entry, result)
            return
        entry.targets = by_size(entry.packet, list(result))
        self._send(entry)

    # ------------------------------------------------------------- sending

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
            self.dequeue(entry)

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
                self.dequeue(entry)
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
                self.enqueue(entry)
            self._send(entry)
            return
        self._fail(entry, error)

    def _fail(self, entry: QueueEntry, error: int) -> None:
        entry.done = True
        self.dequeue(entry)
        entry.trigger_callback(error)

    # -------------------------------------------------------- retransmitting

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

    def expire(self, now: float, nxt: float | None) -> float | None:
        """Process whatever is due at ``now`` (the queue half of ``queue_expire``).

        Returns:
            The earlier of ``nxt`` and the next retransmission or timeout.
        """
        for entry in list(self.queue):
            if entry.schedule is None or not entry.queued or not entry.targets:
                continue
            self._step(entry, now)
            if entry.queued and entry.schedule is not None:
                t = entry.schedule.next_time
                nxt = t if nxt is None else min(nxt, t)
        return nxt

    # ---------------------------------------------------------- cancelling

    def cancel(self, typ: object, id: object = None) -> bool:
        """The body of ``Dispatcher.cancel_delivery`` (same arguments, result, errors)."""
        if id is None:
            typ, id = ("qentry", typ) if isinstance(typ, QueueEntry) else ("id", typ)
        if typ == "qentry":
            if not isinstance(id, QueueEntry):
                raise TypeError("cancel_delivery('qentry', ...) needs a QueueEntry")
            victims = [id] if id.queued else []
        elif typ == "id":
            victims = list(self.by_id.get(str(id), ()))
        elif typ == "callid":
            victims = [e for e in self.queue if e.callid == id]
        else:
            raise ValueError(f"bad typ {typ!r}, should be id|callid|qentry")
        for entry in victims:
            self._cancel_entry(entry)
        return bool(victims)

    def cancel_by_tid(self, tid: str, requests: bool) -> None:
        """Cancel the requests (or the responses) queued with transaction id ``tid``."""
        entries = self.by_tid.get(tid)
        if not entries:
            return
        for entry in list(entries):
            if entry.packet.is_request() == requests:
                self._cancel_entry(entry)

    def _cancel_entry(self, entry: QueueEntry) -> None:
        log.debug("cancel delivery of %s", entry.id)
        entry.done = True
        self.dequeue(entry)

    def close(self) -> None:
        """Drop every entry without calling back."""
        for entry in list(self.queue):
            entry.done = True
            self.dequeue(entry)
