"""A transaction-stateful forking proxy (RFC 3261 16), beside the stateless one.

Net::SIP has only a stateless proxy (``Net::SIP::StatelessProxy``, ported in
:mod:`netsip.proxy`); this module is netsip's own. :class:`StatefulProxy` is
a :class:`~netsip.proxy.StatelessProxy` whose requests go through
transactions: it keeps the stateless proxy's checks and routing
(Max-Forwards, Route preprocessing, loop detection, Record-Route across legs
and transports, Contact rewriting, the NAT hook, the 1300-byte rule, flows:
a branch to a contact registered over a connection goes over it, RFC 5626
5.3, and ends as ``430`` if that connection is gone), and
adds a *response context* (16.7) per request.

How it works:

* A request gets a server transaction, keyed by the transaction part of the
  stateless branch (the received top branch, or the RFC 2543 fields) and
  the method. An INVITE is answered 100 Trying at once (16.2, hop by hop); a
  retransmitted request is answered from the dispatcher's response cache
  (the last response sent) or, before there is one, absorbed here.
* The targets (16.5): the top Route, or the contacts ``lookup`` has for an
  address of record of a served domain, or the Request-URI. With
  ``forking="parallel"`` every contact gets a branch at once; with
  ``"serial"`` the contacts are tried by q-value, highest first, those of
  equal q in parallel (RFC 3841 style), the next group when the previous
  one ended without a 2xx or 6xx.
* Each branch is a client transaction with a Via branch of its own
  (``<leg branch><loop key><transaction key><n>``): it is retransmitted over
  UDP (Timer A/E), times out after 64*T1 without an answer (Timer B/F: a
  408 for that branch), and for INVITE has Timer C (16.6 step 11, reset by
  each provisional response but 100, 16.7 step 2): when it fires the branch
  is CANCELled if it had a provisional response, else it ends as a 408
  (16.8). A branch that cannot be resolved or reached ends as a 503.
* Responses (16.7): a 100 is absorbed (hop by hop); other provisional
  responses are forwarded while no final one went upstream; every 2xx is
  forwarded (the first, and any later one: step 5), and the first CANCELs
  the pending branches and stops further ones; 300-699 are ACKed by the
  branch itself (17.1.1.3) and kept; a 6xx CANCELs the pending branches
  and stops further ones. When no branch is pending and no target is left,
  the best response goes upstream (step 6): a 6xx, else the lowest class,
  among 4xx preferring 401, 407, 415, 420, 484; a 503 becomes 500; with
  401/407 the challenges of every 401/407 are put together (step 7).
* A CANCEL that matches a server transaction is answered 200 and CANCELs
  every pending branch (16.10); a branch without a provisional response yet
  gets its CANCEL when one arrives (9.1), or ends by Timer B. Without a
  match the CANCEL is forwarded statelessly. The ACK of a non-2xx final
  response is absorbed (the branches ACKed theirs); any other ACK (of a
  2xx: a transaction of its own, 17.1.1.3) and responses that match no
  branch (retransmitted 2xx after the context ended) go the stateless way.
* Responses upstream go to the request's source on the leg it came in on,
  through the dispatcher: provisional and non-2xx final responses are
  cached to answer retransmitted requests, and a non-2xx final response to
  INVITE is retransmitted over UDP until its ACK (Timer G/H); a 2xx is
  sent as it is, once: its UAS retransmits it end to end.
* A context lives until its final response went upstream and no branch is
  pending, then 64*T1 more (to absorb the ACK and the retransmissions of
  final responses, Timer D/K), and then everything of it is forgotten.

Why not :class:`netsip.transaction.TransactionClient` and the dispatcher's
request retransmission: both key a transaction by ``Request.tid()`` (Call-ID
and CSeq number, as Net::SIP), which every branch of a forked request
shares, so a response on one branch would end the retransmissions of all
of them; and the client ACKs a 2xx itself, which a proxy must forward
instead. Each branch therefore times its retransmissions itself, with the
same :class:`~netsip.retransmit.RetransmitSchedule` the dispatcher uses.

Performance plan: per request one context, per branch one client record and
at most two timers (retransmission/timeout, Timer C); one dict lookup per
response and per ACK/CANCEL. Nothing scans the contexts.

Differences from Net::SIP: Net::SIP has no stateful proxy. Where this one
departs from RFC 3261 or takes one of its options:

- no recursion on 3xx (16.5 "MAY"): a 3xx is a final response like others;
- responses go upstream to the request's source address and port (as if
  the caller had asked for ``rport``, RFC 3581), over its connection for
  TCP/TLS;
- a retransmitted INVITE after a 2xx went upstream is answered from the
  response cache with the last provisional response (RFC 6026 would absorb
  it silently);
- a non-INVITE branch that got a provisional response goes on
  retransmitting on its doubling schedule (17.1.2.2 asks for T2 at once);
- when only our own 408s (no answer at all) follow an upstream CANCEL, the
  caller gets 487, the answer it expects to a CANCELled INVITE.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal, Protocol

from netsip._log import get_logger
from netsip._nat import NATHelper
from netsip._rewrite import CryptFn
from netsip.dispatcher import Dispatcher, Target
from netsip.eventloop import TimerLike
from netsip.flows import FLOW_FAILED, Flow, FlowTable, FlowTokens
from netsip.leg import Leg
from netsip.packet import Request, Response
from netsip.proxy import (
    _KEY_LEN,
    _SCHEME_RX,
    StatelessProxy,
    _branch,
    _Forward,
    _strip_angle,
)
from netsip.retransmit import T1, T2, Action, RetransmitSchedule
from netsip.util import Addr, NetSIPError

__all__ = ["DEFAULT_TIMER_C", "Forking", "Located", "StatefulProxy"]

log = get_logger(__name__)

#: RFC 3261 16.6 step 11: Timer C "MUST be set ... greater than 3 minutes".
DEFAULT_TIMER_C: Final = 181.0
#: 64*T1: Timer B/F of a branch, the guard after a CANCEL, the context's last breath.
_TXN_TIMEOUT: Final = 64 * T1
#: RFC 3261 16.7 step 6: the 4xx a proxy prefers, as they ask the caller for something
_PREFERRED_4XX: Final = frozenset((401, 407, 415, 420, 484))

Forking = Literal["parallel", "serial"]


class Located(Protocol):
    """A contact as a registrar's store has it (:class:`netsip.registrar.Binding`)."""

    @property
    def contact(self) -> str:
        """The contact URI."""
        ...

    @property
    def q(self) -> float | None:
        """Its q-value (RFC 3261 20.10), or None without one."""
        ...


#: what ``lookup`` returns per contact: a URI, ``(uri, q)``, or a binding
Contact = str | tuple[str, float | None] | Located


class _Cancel(enum.Enum):
    """Where a branch is with its CANCEL (RFC 3261 9.1)."""

    NO = 0
    #: to be sent once a provisional response arrives
    WANTED = 1
    SENT = 2


@dataclass(slots=True, eq=False)
class _Client:
    """A client transaction: one branch of a request, or the CANCEL of a branch (17.1)."""

    ctx: _Server
    method: str
    fwd: _Forward
    request: Request | None = None
    branch: str = ""
    leg: Leg | None = None
    addr: Addr | None = None
    rest: list[Target] = field(default_factory=list)
    schedule: RetransmitSchedule | None = None
    #: retransmission / Timer B, F
    timer: TimerLike | None = None
    #: Timer C (INVITE), then the guard after our CANCEL
    timer_c: TimerLike | None = None
    provisional: bool = False
    final: Response | None = None
    cancel: _Cancel = _Cancel.NO


@dataclass(slots=True, eq=False)
class _Server:
    """A server transaction and its response context (RFC 3261 16.7)."""

    key: tuple[str, str]
    request: Request
    leg: Leg
    from_: Addr
    vias: list[str]
    keys: str
    max_forwards: int
    out_leg: Leg | None
    #: targets still to try, by group: (Request-URI to set or None, next hop)
    groups: list[list[tuple[str | None, str]]]
    clients: list[_Client] = field(default_factory=list)
    pending: int = 0
    #: final responses of the branches; the leg a received one came in on, None if ours
    finals: list[tuple[Response, Leg | None]] = field(default_factory=list)
    #: the final response sent upstream (0: none yet)
    final_code: int = 0
    #: no new branches (a 2xx, a 6xx or a CANCEL came)
    stopped: bool = False
    cancelled: bool = False
    linger: TimerLike | None = None
    seq: int = 0
    #: the flow a flow token in our Route names (RFC 5626 5.3)
    flow: Flow | None = None
    #: the next hop is another element's Route
    routed: bool = False


def _contact(entry: Contact) -> tuple[str, float] | None:
    """A SIP contact URI of a ``lookup`` result and its q (none counts as 1)."""
    if isinstance(entry, str):
        uri, q = _strip_angle(entry), None
    elif isinstance(entry, tuple):
        uri, q = _strip_angle(entry[0]), entry[1]
    else:
        uri, q = entry.contact, entry.q
    if _SCHEME_RX.match(uri) is None:
        return None
    return uri, 1.0 if q is None else q


class StatefulProxy(StatelessProxy):
    """A transaction-stateful forking proxy (RFC 3261 16).

    Args:
        dispatcher: the dispatcher whose legs the proxy forwards between.
        lookup: ``(aor) -> contacts`` for requests to a served domain; a
            contact is a URI string (q 1), ``(uri, q)``, or an object with
            ``contact`` and ``q`` (``registrar.lookup`` gives those: pass it
            for q-ordered serial forking; ``registrar.query`` works too).
        domains: the domains served, as for :class:`StatelessProxy`.
        forking: ``"parallel"`` (every contact at once) or ``"serial"`` (by
            q, highest first, equal q in parallel).
        timer_c: seconds of Timer C (RFC 3261 16.6 step 11 wants more than
            180).
        rewrite_contact: as for :class:`StatelessProxy`.
        rewrite_crypt: as for :class:`StatelessProxy`.
        nathelper: as for :class:`StatelessProxy`.
        force_rewrite: as for :class:`StatelessProxy`.
        flows: as for :class:`StatelessProxy`.
        flow_tokens: as for :class:`StatelessProxy`.

    Raises:
        ValueError: an unknown ``forking`` or a ``timer_c`` not above 0.
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        lookup: Callable[[str], Sequence[Contact]] | None = None,
        domains: Iterable[str] | None = None,
        forking: Forking = "parallel",
        timer_c: float = DEFAULT_TIMER_C,
        rewrite_contact: object = None,
        rewrite_crypt: CryptFn | None = None,
        nathelper: NATHelper | None = None,
        force_rewrite: bool = False,
        flows: FlowTable | None = None,
        flow_tokens: FlowTokens | None = None,
    ) -> None:
        if forking not in ("parallel", "serial"):
            raise ValueError(f"forking must be 'parallel' or 'serial', not {forking!r}")
        if not timer_c > 0:
            raise ValueError(f"timer_c must be above 0, not {timer_c!r}")
        super().__init__(
            dispatcher=dispatcher,
            rewrite_contact=rewrite_contact,
            rewrite_crypt=rewrite_crypt,
            nathelper=nathelper,
            force_rewrite=force_rewrite,
            lookup=None if lookup is None else partial(self._uris_of, lookup),
            domains=domains,
            flows=flows,
            flow_tokens=flow_tokens,
        )
        self.locate = lookup
        self.forking: Forking = forking
        self.timer_c = timer_c
        self._loop = dispatcher.eventloop
        self._servers: dict[tuple[str, str], _Server] = {}
        self._clients: dict[tuple[str, str], _Client] = {}
        # the targets _route_to_aor found for the request being processed
        self._found: list[list[tuple[str | None, str]]] | None = None
        self._locating = False

    # ------------------------------------------------------------ state

    @property
    def server_transactions(self) -> int:
        """How many server transactions (response contexts) are kept."""
        return len(self._servers)

    @property
    def client_transactions(self) -> int:
        """How many client transactions (branches and their CANCELs) are kept."""
        return len(self._clients)

    def close(self) -> None:
        """Forget every transaction and cancel their timers (nothing is sent)."""
        for ctx in list(self._servers.values()):
            self._end(ctx)

    # ------------------------------------------------------------ lookup

    @staticmethod
    def _uris_of(lookup: Callable[[str], Sequence[Contact]], aor: str) -> list[str]:
        """``lookup`` for the stateless paths: the contact URIs, highest q first."""
        found = [c for c in map(_contact, lookup(aor)) if c is not None]
        found.sort(key=lambda c: -c[1])
        return [uri for uri, _q in found]

    def _route_to_aor(self, req: Request, aor: str) -> bool:
        """RFC 3261 16.5, 16.6: fork to every contact of ``aor`` (see ``forking``)."""
        if not self._locating or self.locate is None:
            return super()._route_to_aor(req, aor)
        found = [c for c in map(_contact, self.locate(aor)) if c is not None]
        if not found:
            return False
        if self.forking == "parallel":
            groups = [[uri for uri, _q in found]]
        else:
            # RFC 3841 style: highest q first, equal q in parallel
            by_q: dict[float, list[str]] = {}
            for uri, q in found:
                by_q.setdefault(q, []).append(uri)
            groups = [by_q[q] for q in sorted(by_q, reverse=True)]
        log.debug("location of %s: %s", aor, groups)
        self._found = [[(uri, uri) for uri in group] for group in groups]
        req.set_uri(groups[0][0])
        return True

    # ------------------------------------------------------------ requests

    def _receive_request(self, req: Request, leg: Leg, from_: Addr) -> None:
        method = req.method()
        txn = self._keys(req)[_KEY_LEN:]
        if method in ("ACK", "CANCEL"):
            ctx = self._servers.get((txn, "INVITE"))
            if ctx is None:
                # RFC 3261 16.10, 17.1.1.3: no context (a CANCEL we know
                # nothing of, the ACK of a 2xx): statelessly
                super()._receive_request(req, leg, from_)
            elif method == "CANCEL":
                self._incoming_cancel(ctx, req, leg, from_)
            elif ctx.final_code >= 300:
                log.debug("ACK of %d absorbed", ctx.final_code)
            else:
                super()._receive_request(req, leg, from_)
            return
        key = (txn, method)
        if key in self._servers:
            log.debug("retransmitted %s absorbed", method)
            return

        checked = self._check(req, leg, from_)
        if checked is None:
            return
        max_forwards, route_uris = checked
        popped: list[str] = []
        out_leg = self._preprocess_routes(req, leg, route_uris, popped)
        flow = self._route_flow(popped, leg, from_)
        rewritten, back_leg = self._rewrite_uri_back(req, leg)
        if back_leg is not None:
            out_leg = back_leg
        keys = self._keys(req)
        if self._looped(req, keys[:_KEY_LEN]):
            self._reply(req, leg, from_, 482)
            return
        self._found = None
        groups: list[list[tuple[str | None, str]]]
        if route_uris:
            groups = [[(None, self._route_next_hop(req, route_uris[0]))]]
        else:
            self._locating = True
            try:
                answered = not rewritten and self._find_target(req, leg, from_)
            finally:
                self._locating = False
            if answered:
                return
            groups = self._found or [[(None, req.uri())]]
            self._found = None

        ctx = _Server(
            key, req, leg, from_, req.get_headers("via"), keys, max_forwards, out_leg, groups
        )
        ctx.flow, ctx.routed = flow, bool(route_uris)
        self._servers[key] = ctx
        if method == "INVITE":
            # RFC 3261 16.2: a stateful proxy answers an INVITE 100 Trying itself
            self._upstream(ctx, req.create_response(100), None)
        self._next_group(ctx)

    def _incoming_cancel(self, ctx: _Server, req: Request, leg: Leg, from_: Addr) -> None:
        """RFC 3261 16.10: answer 200, CANCEL every pending branch, start no new one."""
        log.info("CANCEL of %s from %s: %d branch(es) pending", req.callid(), from_, ctx.pending)
        try:
            self.dispatcher.deliver(
                req.create_response(200), leg=leg, dst_addr=from_, do_retransmits=True
            )
        except (NetSIPError, OSError, ValueError) as exc:
            log.info("cannot answer CANCEL from %s: %s", from_, exc)
        if ctx.final_code:
            return
        ctx.cancelled = True
        self._stop_branching(ctx)

    # ------------------------------------------------------------ branches

    def _next_group(self, ctx: _Server) -> None:
        """Start a branch for each target of the next group (16.6)."""
        group = ctx.groups.pop(0)
        clients = []
        for uri, hop in group:
            req = ctx.request.clone()
            assert isinstance(req, Request)
            if uri is not None:
                req.set_uri(uri)
            ctx.seq += 1
            fwd = _Forward(
                req,
                ctx.leg,
                ctx.from_,
                ctx.out_leg,
                f"{ctx.keys}{ctx.seq}",
                ctx.max_forwards,
                ctx.flow,
                ctx.routed,
            )
            cl = _Client(ctx, req.method(), fwd)
            ctx.clients.append(cl)
            clients.append((cl, hop))
        ctx.pending += len(clients)
        for cl, hop in clients:
            # (over the callee's flow if it registered over a connection, RFC 5626 5.3)
            self._resolve_next(hop, cl.fwd, partial(self._branch_resolved, cl))

    def _branch_resolved(self, cl: _Client, result: list[Target] | int) -> None:
        if cl.final is not None:
            return
        if result == errno.ENOTCONN:
            log.info("branch %s of %s: its flow is gone", cl.fwd.request.uri(), cl.method)
            self._local_final(cl, FLOW_FAILED, "Flow Failed")
            return
        if isinstance(result, int) or not result:
            log.info("branch %s of %s: cannot resolve next hop", cl.fwd.request.uri(), cl.method)
            self._local_final(cl, 503, "Next Hop Unreachable")
            return
        if cl.ctx.stopped and cl.method == "INVITE":
            self._local_final(cl, 487)  # (cancelled before it was sent)
            return
        self._start(cl, list(result))

    def _start(self, cl: _Client, targets: list[Target]) -> None:
        """Send the branch to the first of ``targets`` and arm its timers (17.1.1.2, 17.1.2.2)."""
        try:
            chosen = self._choose(cl.fwd, targets)
        except (NetSIPError, ValueError) as exc:
            log.warning("cannot forward %s: %s", cl.method, exc)
            chosen = None
        if chosen is None:
            self._local_final(cl, 503)
            return
        targets, pkt = chosen
        addr, out = targets[0]
        if self._clients.get((cl.branch, cl.method)) is cl:
            del self._clients[(cl.branch, cl.method)]  # (a failover to another leg)
        cl.request, cl.leg, cl.addr, cl.rest = pkt, out, addr, targets[1:]
        cl.branch = out.branch + cl.fwd.keys
        self._clients[(cl.branch, cl.method)] = cl
        self._arm(cl)
        if cl.method == "INVITE" and cl.timer_c is None:
            cl.timer_c = self._loop.add_timer(self.timer_c, partial(self._on_timer_c, cl))
        out.sendto(pkt, addr, partial(self._send_failed, cl))

    def _arm(self, cl: _Client) -> None:
        """Timer A/E (UDP) and B/F: retransmissions and the transaction timeout."""
        assert cl.leg is not None
        if cl.leg.proto == "udp":
            cap = None if cl.method == "INVITE" else T2
            cl.schedule = RetransmitSchedule(start=self._loop.looptime, t1=T1, cap=cap)
            delay = cl.schedule.next_time - self._loop.looptime
        else:
            cl.schedule = None
            delay = _TXN_TIMEOUT
        cl.timer = self._loop.add_timer(delay, partial(self._on_timer, cl))

    def _on_timer(self, cl: _Client, _ev: object = None) -> None:
        cl.timer = None
        if cl.final is not None or cl.request is None or cl.leg is None or cl.addr is None:
            return
        sched = cl.schedule
        action = Action.TIMEOUT if sched is None else sched.due(self._loop.looptime)
        if action is Action.TIMEOUT:
            self._forget_client(cl)
            if cl.method == "CANCEL":
                log.info("CANCEL to %s unanswered", cl.addr)
                cl.final = cl.request.create_response(408)
                return
            log.info("%s to %s unanswered (Timer B/F): 408", cl.method, cl.addr)
            self._local_final(cl, 408)
            return
        if action is Action.RETRANSMIT:
            cl.leg.sendto(cl.request, cl.addr, partial(self._send_failed, cl))
        assert sched is not None
        cl.timer = self._loop.add_timer(
            max(sched.next_time - self._loop.looptime, 0.0), partial(self._on_timer, cl)
        )

    def _on_timer_c(self, cl: _Client, _ev: object = None) -> None:
        """RFC 3261 16.8: Timer C fired: CANCEL the branch, or 408 without a provisional."""
        cl.timer_c = None
        if cl.final is not None:
            return
        if cl.provisional:
            log.info("Timer C of the branch to %s: CANCEL", cl.addr)
            self._send_cancel(cl)
        else:
            log.info("Timer C of the branch to %s without provisional: 408", cl.addr)
            self._local_final(cl, 408)

    def _on_guard(self, cl: _Client, _ev: object = None) -> None:
        """64*T1 after our CANCEL the branch still has no final response: 408 (16.8)."""
        cl.timer_c = None
        if cl.final is None:
            log.info("branch to %s CANCELled but not ended: 408", cl.addr)
            self._local_final(cl, 408)

    def _send_failed(self, cl: _Client, err: int) -> None:
        """Transport error: the next destination (RFC 3263 4.3), else 503 for the branch."""
        if not err or cl.final is not None:
            return
        log.info("sending %s to %s failed: errno %s", cl.method, cl.addr, err)
        self._forget_client(cl)
        if cl.method == "CANCEL":
            cl.final = Response(503, "Service Unavailable")
            return
        if cl.rest:
            self._start(cl, cl.rest)
        else:
            self._local_final(cl, 503)

    def _forget_client(self, cl: _Client) -> None:
        """Stop the timers of ``cl`` (it stays in the index until its context ends)."""
        if cl.timer is not None:
            cl.timer.cancel()
            cl.timer = None
        if cl.timer_c is not None:
            cl.timer_c.cancel()
            cl.timer_c = None

    # ------------------------------------------------------------ CANCEL downstream

    def _stop_branching(self, ctx: _Server) -> None:
        """No new branches; CANCEL the pending ones (16.7 step 10, 16.10)."""
        ctx.stopped = True
        ctx.groups.clear()
        for cl in ctx.clients:
            if cl.method != "INVITE" or cl.final is not None or cl.cancel is not _Cancel.NO:
                continue
            if cl.provisional:
                self._send_cancel(cl)
            else:
                cl.cancel = _Cancel.WANTED  # RFC 3261 9.1: not before a provisional

    def _send_cancel(self, cl: _Client) -> None:
        assert cl.request is not None and cl.leg is not None and cl.addr is not None
        cl.cancel = _Cancel.SENT
        cancel = cl.request.create_cancel()
        cc = _Client(cl.ctx, "CANCEL", cl.fwd, cancel, cl.branch, cl.leg, cl.addr)
        cl.ctx.clients.append(cc)
        self._clients[(cl.branch, "CANCEL")] = cc
        self._arm(cc)
        cl.leg.sendto(cancel, cl.addr, partial(self._send_failed, cc))
        # the branch gets 64*T1 for its 487 (Timer C is no use any more)
        if cl.timer_c is not None:
            cl.timer_c.cancel()
        cl.timer_c = self._loop.add_timer(_TXN_TIMEOUT, partial(self._on_guard, cl))

    # ------------------------------------------------------------ responses

    def _receive_response(self, resp: Response, leg: Leg, from_: Addr) -> None:
        vias = resp.header_values("via")
        branch = _branch(vias[0]) if vias else None
        cl = self._clients.get((branch, resp.method() or "")) if branch else None
        if cl is None:
            # RFC 3261 16.7 step 3: no context (a 2xx retransmitted after it ended)
            super()._receive_response(resp, leg, from_)
            return
        code = resp.code()
        if cl.method == "CANCEL":
            if code >= 200 and cl.final is None:
                cl.final = resp
                self._forget_client(cl)
            return
        if code < 200:
            self._provisional(cl, resp, code)
            return
        if cl.final is not None:
            # a retransmission (Timer D/K), or one after our own 408
            if cl.method == "INVITE" and code < 300:
                self._upstream(cl.ctx, resp, leg)  # 16.7 step 5: every 2xx
            elif cl.method == "INVITE" and cl.request is not None:
                self._ack(cl, resp)
            return
        cl.final = resp
        self._forget_client(cl)
        if cl.method == "INVITE" and code >= 300:
            self._ack(cl, resp)
        self._branch_done(cl, resp, leg)

    def _provisional(self, cl: _Client, resp: Response, code: int) -> None:
        if cl.final is not None:
            return
        if not cl.provisional:
            cl.provisional = True
            if cl.method == "INVITE" and cl.timer is not None:
                # 17.1.1.2: Proceeding: no more retransmissions, no Timer B
                cl.timer.cancel()
                cl.timer = None
            if cl.cancel is _Cancel.WANTED:
                self._send_cancel(cl)
        if code == 100:
            return  # hop by hop (16.7 step 5)
        if cl.method == "INVITE" and cl.cancel is _Cancel.NO:
            # 16.7 step 2: a provisional response but 100 resets Timer C
            if cl.timer_c is not None:
                cl.timer_c.cancel()
            cl.timer_c = self._loop.add_timer(self.timer_c, partial(self._on_timer_c, cl))
        if not cl.ctx.final_code:
            self._upstream(cl.ctx, resp, cl.leg)

    def _ack(self, cl: _Client, resp: Response) -> None:
        """RFC 3261 17.1.1.3: the client transaction ACKs a 300-699 itself."""
        assert cl.request is not None and cl.leg is not None and cl.addr is not None
        cl.leg.sendto(cl.request.create_ack(resp), cl.addr)

    def _local_final(self, cl: _Client, code: int, reason: str | None = None) -> None:
        """End a branch with a response of our own (408, 487, 503) (16.8)."""
        if cl.final is not None:
            return
        self._forget_client(cl)
        resp = cl.ctx.request.create_response(code, reason)
        cl.final = resp
        self._branch_done(cl, resp, None)

    def _branch_done(self, cl: _Client, resp: Response, leg: Leg | None) -> None:
        ctx = cl.ctx
        ctx.pending -= 1
        code = resp.code()
        if code < 300:
            # 16.7 step 5: a 2xx goes upstream at once; the others are CANCELled
            self._upstream(ctx, resp, leg)
            if not ctx.final_code:
                ctx.final_code = code
            self._stop_branching(ctx)
        else:
            ctx.finals.append((resp, leg))
            if code >= 600:
                log.info("%d on a branch of %s: no more branches", code, ctx.request.callid())
                self._stop_branching(ctx)
        self._advance(ctx)

    def _advance(self, ctx: _Server) -> None:
        """Start the next group, or send the best response; end the context when done."""
        if ctx.pending:
            return
        if not ctx.final_code:
            if ctx.groups and not ctx.stopped:
                self._next_group(ctx)
                return
            resp, leg = self._best(ctx)
            ctx.final_code = resp.code()
            log.info("%s %s: %d upstream", ctx.request.method(), ctx.request.callid(), resp.code())
            self._upstream(ctx, resp, leg)
        if not ctx.pending and ctx.linger is None:
            ctx.linger = self._loop.add_timer(_TXN_TIMEOUT, partial(self._on_linger, ctx))

    def _best(self, ctx: _Server) -> tuple[Response, Leg | None]:
        """RFC 3261 16.7 steps 6 and 7: the response to send upstream."""
        finals = ctx.finals
        if not finals:
            return ctx.request.create_response(500), None
        if ctx.cancelled and all(leg is None for _r, leg in finals):
            return ctx.request.create_response(487), None
        chosen = next((f for f in finals if f[0].code() >= 600), None)
        if chosen is None:
            low = min(r.code() // 100 for r, _leg in finals)
            cands = [f for f in finals if f[0].code() // 100 == low]
            if low == 4:
                cands = [f for f in cands if f[0].code() in _PREFERRED_4XX] or cands
            chosen = cands[0]
        resp, leg = chosen
        code = resp.code()
        if code == 503:
            # 16.7 step 6: a 503 would tell the caller that this proxy is unavailable
            return ctx.request.create_response(500), None
        if code in (401, 407):
            # 16.7 step 7: every challenge of every 401/407
            copy = resp.clone()
            assert isinstance(copy, Response)
            resp = copy
            for other, _leg in finals:
                if other is chosen[0] or other.code() not in (401, 407):
                    continue
                for name in ("www-authenticate", "proxy-authenticate"):
                    have = resp.get_headers(name)
                    for value in other.get_headers(name):
                        if value not in have:
                            resp.add_header(name, value)
        return resp, leg

    def _upstream(self, ctx: _Server, resp: Response, from_leg: Leg | None) -> None:
        """Send ``resp`` to the caller (16.7 step 9: our Via gone, theirs as they came)."""
        resp.set_header("via", ctx.vias)
        if from_leg is not None:
            if from_leg is not ctx.leg or self.force_rewrite:
                self._rewrite_contacts(resp, from_leg, ctx.leg)
            err = self.do_nat(resp, from_leg, ctx.leg)
            if err is not None:
                log.info("not forwarding response %d: NAT: %s", resp.code(), err[1])
                return
        code = resp.code()
        try:
            if 200 <= code < 300:
                # its UAS retransmits a 2xx end to end: sent as it is, once
                ctx.leg.sendto(resp, ctx.from_)
            else:
                self.dispatcher.deliver(resp, leg=ctx.leg, dst_addr=ctx.from_, do_retransmits=True)
        except (NetSIPError, OSError, ValueError) as exc:
            log.info("cannot send %d to %s: %s", code, ctx.from_, exc)

    def _on_linger(self, ctx: _Server, _ev: object = None) -> None:
        ctx.linger = None
        self._end(ctx)

    def _end(self, ctx: _Server) -> None:
        """Forget a context and its client transactions."""
        if ctx.linger is not None:
            ctx.linger.cancel()
            ctx.linger = None
        if self._servers.get(ctx.key) is ctx:
            del self._servers[ctx.key]
        for cl in ctx.clients:
            self._forget_client(cl)
            key = (cl.branch, cl.method)
            if self._clients.get(key) is cl:
                del self._clients[key]
        ctx.clients.clear()
