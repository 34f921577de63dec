"""Dialogs and INVITE transactions: port of Perl's ``Net::SIP::Endpoint``.

The endpoint sits on a :class:`~netsip.dispatcher.Dispatcher` (it is its
receiver) and below the application (a user agent such as ``Simple``). It
keeps a :class:`Context` per Call-ID (see :mod:`netsip._dialog`), sends the
requests of each context as client transactions, matches their responses,
answers what RFC 3261 makes the UA core answer by itself, and passes the
rest up:

* the application (:meth:`Endpoint.set_application`) gets each request that
  starts a new context as ``(endpoint, ctx, request, leg, from_)`` and
  answers with :meth:`Endpoint.new_response`;
* a context's callback (:meth:`Context.set_callback`, or the ``callback`` of
  :meth:`Endpoint.invite` / :meth:`Endpoint.new_request`) gets the responses
  to its requests and the requests the peer sends in it, as ``(endpoint,
  ctx, error, code, packet, leg, from_)``. ``error`` is 0, or the errno of a
  failure: ``ETIMEDOUT`` (Timer B/F, no ACK), ``EPERM`` (401/407 without
  usable credentials), ``EFAULT`` (300/301), ``EINVAL`` (another final
  response of 300 or more), ``ECANCELED`` (a 2xx to an INVITE the
  application cancelled; the endpoint ACKs it and sends BYE), or a delivery
  error (``ECONNREFUSED`` ...).

What the endpoint does by itself (the RFC rules, with the tests that pin
them, are listed in docs/dialogs.md):

UAC
  ACK of a 300-699 response inside the transaction (17.1.1.3: same branch,
  Request-URI and Route as the INVITE, the response's To); ACK of each 2xx
  along the dialog's route set, again for each retransmitted 2xx, for every
  fork (13.2.2.4: the INVITE stays around for 64*T1 after its first 2xx);
  CANCEL held back until a provisional response arrived (9.1); digest
  answers to 401/407 (22.2, :mod:`netsip.digest`), once per challenge;
  Timer B/F of its own over every transport; 302 followed (at most
  :data:`MAX_REDIRECTS` times); a 481 or 408 to a request in a dialog ends
  the dialog (12.2.1.2); REGISTER refreshed before it expires.
UAS
  100 Trying when the application has not answered an INVITE within
  :attr:`Endpoint.trying_delay` (17.2.1); the 2xx retransmitted by the
  dispatcher (T1 doubling to T2) until the ACK, and the call ended with BYE
  when no ACK came within 64*T1 (13.3.1.4); CANCEL answered 200 and its
  INVITE 487 (9.2); BYE answered 200 (15.1.2, and a pending INVITE 487);
  491 for an INVITE while our own INVITE is pending in the dialog, 500 with
  Retry-After for one while the peer's previous INVITE is unanswered
  (14.2); 500 for a CSeq lower than the last (12.2.2); 481 for a request in
  an unknown dialog (12.2.2), for a CANCEL without its INVITE (9.2) and for a
  BYE outside a call.

Performance plan: a call costs a handful of dict operations and timers.
Contexts are found by Call-ID in one dict, transactions in the context's
short list (usually one entry); the 100 Trying timer is armed only when the
application did not answer within its callback, and the ACK timer of a 2xx is
the only timer an established call holds until the ACK. An established
dialog keeps no message (requests and responses are dropped once their
transaction ends), which keeps 10,000 held calls within a few KiB each.

Differences from Net::SIP:

- 100 Trying is sent only if the application has not answered within 200 ms
  (Perl sends it at once for every INVITE).
- The ACK of a 2xx is sent again for each retransmitted 2xx, and every fork
  of a forked INVITE gets its own context and ACK (Perl ACKs the first 2xx
  only and drops the rest as responses to an unknown transaction).
- A CANCEL waits for a provisional response (Perl sends it at once).
- No ACK within 64*T1 ends the call with BYE; an INVITE during an INVITE
  gets 491/500; a lower CSeq gets 500 and an unknown dialog 481 (Perl drops
  such requests silently, or answers 481 only to BYE and CANCEL).
- Digest supports SHA-256, SHA-512-256, -sess and auth-int, counts ``nc``,
  retries a ``stale`` challenge, and reports a rejected answer once. A 401
  to a re-INVITE is answered in the dialog (Perl's issue of a re-INVITE
  retried outside its dialog, answered 481, with the phone ringing on).
- Over TCP/TLS a request times out after 64*T1 too (Perl relies on the
  dispatcher, which only times out retransmitted UDP requests).
- A 481/408 to an in-dialog request, or a request timing out in a dialog,
  ends the dialog (RFC 3261 12.2.1.2; Perl keeps it).
- The callback of a 2xx to INVITE does not get the ACK as an extra
  argument: it is :attr:`Context.ack` while the callback runs.
- REGISTER refreshes itself (``refresh=True``) and :meth:`Endpoint.unregister`
  removes the binding; Perl leaves both to the caller.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

from netsip._callbacks import as_callable, invoke_callback
from netsip._dialog import (
    Acked,
    Auth,
    ClientTxn,
    Context,
    ContextArgs,
    ServerInvite,
    header_tag,
    name_addr_uri,
)
from netsip._log import get_logger
from netsip._native import mypyc_attr
from netsip.digest import NonceCounter
from netsip.dispatcher import Dispatcher
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.retransmit import T1
from netsip.transaction import contact_uri
from netsip.util import Addr, NetSIPError, sip_hdrval2parts, sip_uri_eq

__all__ = ["MAX_REDIRECTS", "TRYING_DELAY", "Auth", "Context", "Endpoint"]

log: Final = get_logger(__name__)

#: RFC 3261 17.2.1: send 100 Trying if the TU has not answered within 200 ms.
TRYING_DELAY: Final = 0.2
#: RFC 3261 20.19: expiry values are 32-bit; more is read as this.
MAX_EXPIRES: Final = 2**32 - 1
#: How many 302 redirects an outgoing request follows.
MAX_REDIRECTS: Final = 5
#: RFC 3261 14.2: Retry-After of the 500 to an INVITE during an INVITE
#: ("a randomly chosen value of between 0 and 10 seconds").
RETRY_AFTER: Final = 5

# the headers an ACK for a 2xx copies from its INVITE (13.2.2.4: "the same
# credentials")
_ACK_COPY: Final = ("authorization", "proxy-authorization")
# requests whose 2xx replaces the remote target (12.2.1.2, RFC 3311 5.1)
_TARGET_REFRESH: Final = frozenset({"INVITE", "UPDATE"})


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it, as in Net::SIP
class Endpoint:
    """The UA core: contexts (calls, dialogs) over a Dispatcher.

    The endpoint makes itself the dispatcher's receiver.

    Args:
        dispatcher: the dispatcher to send and receive through.
        trying_delay: seconds before an unanswered INVITE gets 100 Trying.
        timeout: seconds a request waits for its final response (Timer B/F,
            64*T1); also how long a 2xx waits for its ACK.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        trying_delay: float = TRYING_DELAY,
        timeout: float = 64 * T1,
    ) -> None:
        self.dispatcher = dispatcher
        self.trying_delay = trying_delay
        self.timeout = timeout
        self._loop = dispatcher.eventloop
        self._ctx: dict[str, Context] = {}
        self._application: Callable[..., object] = as_callable(None)
        # (one bound method, so that _callback can recognise it by identity)
        self._app_wrapper = self._application_callback
        dispatcher.set_receiver(self.receive)

    # ---------------------------------------------------------------- API

    def __len__(self) -> int:
        """The number of live contexts."""
        return len(self._ctx)

    def contexts(self) -> list[Context]:
        """The live contexts (the first of each call; forks are in ``ctx.forks``)."""
        return list(self._ctx.values())

    def get_context(self, callid: str) -> Context | None:
        """The context of ``callid``, or None."""
        return self._ctx.get(callid)

    def set_application(self, app: object) -> None:
        """Set the receiver of requests that start a new context.

        ``app`` is a callback (see :func:`netsip.util.invoke_callback`) or an
        object with a ``receive`` method; it is invoked as ``(endpoint, ctx,
        request, leg, from_)``.
        """
        receive = getattr(app, "receive", None)
        self._application = as_callable(receive if callable(receive) else app)

    def invite(
        self,
        ctx: Context | ContextArgs,
        callback: object = None,
        body: bytes | str | None = None,
        **args: Any,
    ) -> Context:
        """Send an INVITE: a new call, or a re-INVITE in the dialog of ``ctx``.

        Args:
            ctx: the context, or a mapping to create one (``from_``, ``to``,
                ``contact``, ``auth``, ``route``, ``callid``).
            callback: the context's callback (see the module docstring).
            body: the body (an SDP offer).
            **args: as for :meth:`new_request`.

        Returns:
            The context.
        """
        request = self.new_request("INVITE", ctx, callback, body, **args)
        if isinstance(ctx, Context):
            return ctx
        found = self._ctx.get(request.callid() or "")
        assert found is not None  # (new_request registered it)
        return found

    def register(
        self,
        *,
        registrar: str,
        from_: str,
        contact: str,
        expires: int = 900,
        auth: Auth | None = None,
        callid: str | None = None,
        callback: object = None,
        refresh: bool = True,
        **args: Any,
    ) -> Context:
        """Register ``contact`` for the address of record ``from_`` (RFC 3261 10.2).

        With ``refresh`` the binding is registered again before it expires
        (at half the granted time, at most 60 s before the end) until
        :meth:`unregister` or :meth:`close_context`. ``contact="*"`` with
        ``expires=0`` removes every binding of the address of record.

        Args:
            registrar: the registrar's URI (the Request-URI).
            from_: the address of record (From and To).
            contact: the Contact to bind, or ``"*"``.
            expires: the expiry asked for, in seconds.
            auth: credentials for 401/407.
            callid: the Call-ID (default: a new one; keep it for refreshes).
            callback: the context's callback; it gets each final response.
            refresh: register again before the binding expires.
            **args: as for :meth:`new_request` (``leg``, ``dst_addr``, headers).

        Returns:
            The context of the registration.
        """
        ctx = Context(
            from_=from_,
            to=from_,
            contact=contact,
            auth=auth,
            callid=callid or "",
            method="REGISTER",
        )
        ctx.refresh = refresh and expires > 0 and contact != "*"
        self.new_request("REGISTER", ctx, callback, None, uri=registrar, expires=expires, **args)
        return ctx

    def unregister(self, ctx: Context, callback: object = None) -> bool:
        """Remove the binding ``ctx`` registered (``Expires: 0``, RFC 3261 10.2.2).

        Returns:
            False if ``ctx`` is not a registration.
        """
        if ctx.method != "REGISTER" or ctx.register is None or ctx.closed:
            return False
        ctx.refresh = False
        self._cancel_timer(ctx, "refresh")
        uri = ctx.register.uri()
        self.new_request("REGISTER", ctx, callback, None, uri=uri, expires=0)
        return True

    def new_request(
        self,
        method: str | Request,
        ctx: Context | ContextArgs,
        callback: object = None,
        body: bytes | str | None = None,
        **args: Any,
    ) -> Request:
        """Send a request in ``ctx`` (a new context if given a mapping).

        Args:
            method: the method, or a ready request to send as it is.
            ctx: the context, or a mapping to create one.
            callback: becomes the context's callback (the request's too).
            body: the body.
            **args: ``leg`` and ``dst_addr`` (where to send), ``resp40x`` (a
                401/407 to answer right away with the context's credentials),
                ``uri``, ``cseq``, ``headers`` and other headers (see
                :meth:`Context.new_request`).

        Returns:
            The request as sent (before the leg added its Via).

        Raises:
            ValueError: ``call-id`` given, a bad context mapping, a closed
                context, or a re-INVITE while an INVITE is in progress
                (RFC 3261 14.1).
            OverflowError: the context's CSeq is exhausted.
        """
        if "call_id" in args or "call-id" in args:
            raise ValueError("the Call-ID comes from the context")
        leg: Leg | None = args.pop("leg", None)
        dst_addr: object = args.pop("dst_addr", None)
        resp40x: Response | None = args.pop("resp40x", None)
        if isinstance(ctx, Context) and ctx.closed:
            raise ValueError(f"context {ctx.callid} is closed")
        if not isinstance(ctx, Context):
            ctx = Context.from_args(ctx, method if isinstance(method, str) else method.method())
            self._ctx[ctx.callid] = ctx
        elif ctx.primary is None and ctx.callid not in self._ctx:
            self._ctx[ctx.callid] = ctx
        if callback is not None:
            ctx.callback = callback
        if (
            method == "INVITE"
            and ctx.established
            and (ctx.server is not None or any(t.method == "INVITE" for t in ctx.transactions))
        ):
            # 14.1: no re-INVITE while another INVITE is in progress either way
            raise ValueError(f"an INVITE is in progress in {ctx.callid}")
        request = method if isinstance(method, Request) else ctx.new_request(method, body, **args)
        if resp40x is not None and self._authorize(ctx, request, resp40x):
            # (authorize counts the CSeq past the challenged request's)
            ctx.cseq = max(ctx.cseq, request.cseq_number() or 0)
        if request.method() == "REGISTER":
            ctx.register = request
            if leg is not None or dst_addr is not None:
                ctx.register_via = (leg, dst_addr)
            else:
                leg, dst_addr = ctx.register_via
        if leg is None and dst_addr is None and (ctx.established or ctx.remote_tag is not None):
            # (an early dialog too: PRACK and UPDATE go along its route set)
            leg = ctx.leg
            dst_addr = ctx.dialog_route().next_hop(leg) if leg is not None else None
        self._send(ctx, request, ctx.callback, leg, dst_addr)
        return request

    def cancel_invite(
        self, ctx: Context, request: Request | None = None, callback: object = None
    ) -> bool:
        """Cancel an INVITE of ``ctx`` that has no final response yet (RFC 3261 9.1).

        The CANCEL is sent once a provisional response arrived (at once if
        one did). The INVITE then gets its 487, reported to the callback.

        Args:
            ctx: the context.
            request: the INVITE (default: the newest outstanding one).
            callback: gets the response to the CANCEL.

        Returns:
            False if there is no INVITE to cancel.
        """
        for txn in reversed(ctx.transactions):
            if txn.method == "INVITE" and (request is None or txn.request is request):
                break
        else:
            return False
        txn.cancel = True
        txn.cancel_callback = callback
        if txn.provisional:
            self._send_cancel(ctx, txn)
        return True

    def close_context(self, ctx: Context | str) -> Context | None:
        """Forget a context: cancel its timers and its requests' retransmissions.

        Args:
            ctx: the context or its Call-ID.

        Returns:
            The context closed, or None if it was not known.
        """
        if isinstance(ctx, str):
            found = self._ctx.get(ctx)
            if found is None:
                return None
            ctx = found
        if ctx.closed:
            return None
        ctx.closed = True
        cancel = self.dispatcher.cancel_delivery
        for txn in ctx.transactions:
            if txn.timer is not None:
                txn.timer.cancel()
            cancel(txn.tid if txn.method != "CANCEL" else txn.tid + " CANCEL")
        ctx.transactions.clear()
        if ctx.server is not None:
            if ctx.server.timer is not None:
                ctx.server.timer.cancel()
            ctx.server = None
        for timer in ctx.timers.values():
            timer.cancel()
        ctx.timers.clear()
        if ctx.awaiting_ack is not None:
            cancel(ctx.awaiting_ack)  # (our 2xx, retransmitted until the ACK)
            ctx.awaiting_ack = None
        primary = ctx.primary
        if primary is not None:
            if primary.forks is not None:
                primary.forks.pop(ctx.remote_tag or "", None)
            if primary.closed and not primary.forks and primary.completed is None:
                primary.forks = None
            return ctx
        if ctx.forks:
            # a fork lives on: it becomes the call's context
            tag, heir = next(iter(ctx.forks.items()))
            del ctx.forks[tag]
            heir.primary = None
            heir.forks = ctx.forks or None
            for other in ctx.forks.values():
                other.primary = heir
            ctx.forks = None
            self._ctx[ctx.callid] = heir
        elif self._ctx.get(ctx.callid) is ctx:
            del self._ctx[ctx.callid]
        ctx.completed = None
        return ctx

    def close(self) -> None:
        """Close every context (no callbacks)."""
        for ctx in list(self._ctx.values()):
            for fork in list((ctx.forks or {}).values()):
                self.close_context(fork)
            self.close_context(ctx)
        self._ctx.clear()

    def new_response(
        self, ctx: Context | None, response: Response, leg: Leg | None, addr: object
    ) -> None:
        """Send ``response`` (to a request received in ``ctx``) to ``addr`` through ``leg``.

        A final response to an INVITE ends its server transaction; a 2xx is
        retransmitted until the ACK (13.3.1.4) and establishes the dialog, a
        final response to a request outside a dialog closes its context.
        """
        method = response.method()
        code = response.code()
        callback = None
        if ctx is not None and not ctx.closed:
            if method == "INVITE":
                callback = self._answering_invite(ctx, response, code, leg)
            elif code >= 200 and ctx.incoming and not ctx.established and ctx.method != "INVITE":
                # a transaction outside a dialog (OPTIONS, MESSAGE ...) is over
                self.close_context(ctx)
        self.dispatcher.deliver(response, leg=leg, dst_addr=addr, callback=callback)

    # ----------------------------------------------------------- receiving

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        """The dispatcher's receiver: a response or a request from the network."""
        try:
            if isinstance(packet, Response):
                self._receive_response(packet, leg, from_)
            else:
                assert isinstance(packet, Request)
                self._receive_request(packet, leg, from_)
        except (NetSIPError, ValueError, OverflowError) as exc:
            # a malformed header value deep in a message: never out of the loop
            log.warning("dropped %r from %s: %s", packet, from_, exc)

    # ------------------------------------------------------------ UAC side

    def _send(
        self, ctx: Context, request: Request, callback: object, leg: Leg | None, dst: object
    ) -> None:
        method = request.method()
        if method == "ACK":
            self.dispatcher.deliver(request, leg=leg, dst_addr=dst, do_retransmits=False)
            return
        txn = ClientTxn(request, request.tid(), method, callback, leg, dst)
        ctx.transactions.append(txn)
        txn.timer = self._loop.add_timer(self.timeout, partial(self._timed_out, ctx, txn))
        try:
            self.dispatcher.deliver(
                request,
                leg=leg,
                dst_addr=dst,
                callback=partial(self._delivered, ctx, txn),
                id=txn.tid if method != "CANCEL" else txn.tid + " CANCEL",
            )
        except ValueError as exc:
            # a destination nobody can use (a garbage route or target)
            log.info("%s %s cannot be sent: %s", method, ctx.callid, exc)
            self._txn_failed(ctx, txn, errno.EINVAL)

    def _delivered(self, ctx: Context, txn: ClientTxn, err: int) -> None:
        if err and txn in ctx.transactions:
            self._txn_failed(ctx, txn, err)

    def _timed_out(self, ctx: Context, txn: ClientTxn, _timer: object) -> None:
        txn.timer = None
        if txn in ctx.transactions:
            log.info("%s %s timed out", txn.method, ctx.callid)
            self._txn_failed(ctx, txn, errno.ETIMEDOUT)

    def _txn_failed(self, ctx: Context, txn: ClientTxn, err: int) -> None:
        """A request ended without a final response (Timer B/F, delivery error)."""
        self._end_txn(ctx, txn)
        ctx.error = err
        self._callback(txn.callback, ctx, err, 0, None, None, None)
        if ctx.closed:
            return
        if txn.method == "CANCEL":
            self._cancel_done(ctx)
            return
        if not ctx.established and txn.method != ctx.method:
            return  # (a request in an early dialog: the INVITE decides)
        if ctx.established and txn.method == "INVITE":
            # 14.1: no response to a re-INVITE ends the dialog, with a BYE
            self._bye(ctx)
        else:
            # the call, the transaction outside a dialog, or (12.2.1.2: no
            # response to a request in a dialog) the dialog is over
            self.close_context(ctx)

    def _cancel_done(self, ctx: Context) -> None:
        """A CANCEL ended: close the call if its INVITE has ended too."""
        if ctx.closed or ctx.established:
            return
        if not any(t.method in ("INVITE", "CANCEL") for t in ctx.transactions):
            self.close_context(ctx)

    def _end_txn(self, ctx: Context, txn: ClientTxn) -> None:
        if txn in ctx.transactions:
            ctx.transactions.remove(txn)
        if txn.timer is not None:
            txn.timer.cancel()
            txn.timer = None
        self.dispatcher.cancel_delivery(txn.tid if txn.method != "CANCEL" else txn.tid + " CANCEL")

    def _find_txn(self, ctx: Context, tid: str, method: str | None) -> ClientTxn | None:
        for txn in ctx.transactions:
            if txn.tid == tid and txn.method == method:
                return txn
        return None

    def _receive_response(self, response: Response, leg: Leg, from_: Addr) -> None:
        callid = response.callid() or ""
        call = self._ctx.get(callid)
        if call is None:
            log.debug("response for an unknown call %s dropped", callid)
            return
        tid = response.tid()
        method = response.method()
        to_tag = header_tag(response.get_header("to"))
        ctx = call.dialog_for(to_tag) or call
        txn = self._find_txn(ctx, tid, method)
        if txn is None and ctx is not call:
            txn = self._find_txn(call, tid, method)
            ctx = call if txn is not None else ctx
        if txn is None:
            if method == "INVITE" and 200 <= response.code() < 300:
                self._late_2xx(call, response, leg, from_, to_tag)
            else:
                log.debug("response for an unknown transaction %s dropped", tid)
            return
        if not leg.check_via(response):
            log.info("response %s for %s came through the wrong leg, dropped", tid, leg.dump())
            return
        code = response.code()
        if code < 200:
            self._provisional(ctx, txn, response, leg, from_)
            return
        self._end_txn(ctx, txn)
        if method == "INVITE":
            if code >= 300:
                # 17.1.1.3: the ACK is part of the transaction: the INVITE's
                # branch, Request-URI and Route, the response's To
                ack = txn.request.create_ack(response)
                self.dispatcher.deliver(
                    ack, leg=leg, dst_addr=txn.dst_addr or from_, do_retransmits=False
                )
            else:
                self._invite_2xx(ctx, txn, response, leg, from_)
                return
        self._final(ctx, txn, response, leg, from_)

    def _provisional(
        self, ctx: Context, txn: ClientTxn, response: Response, leg: Leg, from_: Addr
    ) -> None:
        if txn.method != "INVITE":
            return  # (Perl passes on provisional responses to INVITE only)
        if not ctx.established and ctx.remote_tag is None:
            tag = header_tag(response.get_header("to"))
            if tag is not None:
                # 12.1.2: an early dialog, for requests before the 2xx (UPDATE, PRACK)
                ctx.remote_tag = tag
                ctx.to = response.get_header("to") or ctx.to
                ctx.remote_target = contact_uri(response) or txn.request.uri()
                ctx.route = list(reversed(response.get_headers("record-route")))
                ctx.leg = leg
        if not txn.provisional:
            txn.provisional = True
            # Timer B ends in the Proceeding state (17.1.1.2): the call may ring
            if txn.timer is not None:
                txn.timer.cancel()
                txn.timer = None
        if txn.cancel and not txn.cancel_sent:
            self._send_cancel(ctx, txn)
        self._callback(txn.callback, ctx, 0, response.code(), response, leg, from_)

    def _send_cancel(self, ctx: Context, txn: ClientTxn) -> None:
        """Send the CANCEL of ``txn`` where the INVITE went (RFC 3261 9.1)."""
        txn.cancel_sent = True
        if txn.timer is None:
            # 9.1: without a final response 64*T1 after the CANCEL, give up
            txn.timer = self._loop.add_timer(self.timeout, partial(self._timed_out, ctx, txn))
        cancel = txn.request.create_cancel()
        self._send(ctx, cancel, txn.cancel_callback, txn.leg, txn.dst_addr)

    def _invite_2xx(
        self, ctx: Context, txn: ClientTxn, response: Response, leg: Leg, from_: Addr
    ) -> None:
        """A 2xx to our INVITE: confirm the dialog, ACK, tell the application."""
        target = contact_uri(response)
        if target is None:
            # 12.1.2 says the 2xx MUST have a Contact; ACK the Request-URI
            log.info("2xx without Contact for %s: ACK to the Request-URI", ctx.callid)
        if not ctx.established:
            ctx.remote_tag = header_tag(response.get_header("to"))
            ctx.to = response.get_header("to") or ctx.to
            ctx.route = list(reversed(response.get_headers("record-route")))
            ctx.remote_target = target or txn.request.uri()
            ctx.established = True
            ctx.leg = leg
            ctx.completed = txn
            self._arm(ctx, "completed", self.timeout, self._forget_completed)
        elif target is not None:
            ctx.remote_target = target  # a re-INVITE refreshes the target (12.2.1.2)
        self._acknowledge(ctx, txn, response, leg, from_)

    def _acknowledge(
        self, ctx: Context, txn: ClientTxn, response: Response, leg: Leg, from_: Addr
    ) -> None:
        """ACK a 2xx along the dialog's route set (13.2.2.4), keep the ACK, tell
        the callback (before the ACK goes out: it may give it a body)."""
        cseq = response.cseq_number() or 0
        ack = ctx.new_request("ACK", cseq=cseq)
        for name in _ACK_COPY:
            for value in txn.request.get_headers(name):
                ack.add_header(name, value)
        acked = ctx.acked = Acked(cseq, ack, leg, ctx.dialog_route().next_hop(leg))
        cancelled = txn.cancel
        try:
            if cancelled:
                # the application cancelled, the callee answered anyway (9.1)
                err = errno.ECANCELED
            else:
                err = 0
                ctx.ack = ack
            self._callback(txn.callback, ctx, err, response.code(), response, leg, from_)
        finally:
            self.dispatcher.deliver(
                acked.ack, leg=acked.leg, dst_addr=acked.dst_addr, do_retransmits=False
            )
        if cancelled and not ctx.closed:
            self._bye(ctx)

    def _late_2xx(
        self, call: Context, response: Response, leg: Leg, from_: Addr, tag: str | None
    ) -> None:
        """A 2xx for an INVITE that already got one: a retransmission or a fork."""
        cseq = response.cseq_number()
        ctx = call.dialog_for(tag)
        if ctx is not None and ctx.acked is not None and ctx.acked.cseq == cseq:
            # our ACK got lost: send it again (13.2.2.4)
            acked = ctx.acked
            self.dispatcher.deliver(
                acked.ack, leg=acked.leg, dst_addr=acked.dst_addr, do_retransmits=False
            )
            return
        txn = call.completed
        if ctx is None and txn is not None and txn.request.cseq_number() == cseq and tag:
            # another UAS behind a forking proxy answered: a dialog of its own
            fork = call.fork(response, contact_uri(response) or txn.request.uri())
            fork.leg = leg
            if call.forks is None:
                call.forks = {}
            call.forks[tag] = fork
            self._acknowledge(fork, txn, response, leg, from_)
            return
        log.debug("2xx for an unknown INVITE transaction of %s dropped", call.callid)

    def _forget_completed(self, ctx: Context) -> None:
        ctx.completed = None

    def _final(
        self, ctx: Context, txn: ClientTxn, response: Response, leg: Leg, from_: Addr
    ) -> None:
        """A final response to a request of ``ctx`` (not a 2xx to INVITE)."""
        code = response.code()
        method = txn.method
        if code in (401, 407):
            if self._retry_authorized(ctx, txn, response):
                return
            self._fail(ctx, txn, errno.EPERM, response, leg=leg, from_=from_)
            return
        if method in ("CANCEL", "BYE"):
            self._callback(txn.callback, ctx, 0, code, response, leg, from_)
            if method == "BYE":
                self.close_context(ctx)
            else:
                self._cancel_done(ctx)
            return
        if 200 <= code < 300:
            if method in _TARGET_REFRESH and ctx.established:
                target = contact_uri(response)
                if target is not None:
                    ctx.remote_target = target
            if method == "REGISTER":
                self._registered(ctx, txn, response)
            self._callback(txn.callback, ctx, 0, code, response, leg, from_)
            if not ctx.established and not ctx.refresh and txn.method == ctx.method:
                self.close_context(ctx)
            return
        if code == 302 and not ctx.established and txn.redirects < MAX_REDIRECTS:
            target = contact_uri(response)
            if target is not None:
                self._redirect(ctx, txn, target)
                return
        err = errno.EFAULT if code in (300, 301) else errno.EINVAL
        self._fail(ctx, txn, err, response, leg=leg, from_=from_)

    def _fail(
        self,
        ctx: Context,
        txn: ClientTxn,
        err: int,
        response: Response,
        *,
        leg: Leg,
        from_: Addr,
    ) -> None:
        ctx.error = err
        code = response.code()
        self._callback(txn.callback, ctx, err, code, response, leg, from_)
        if ctx.closed:
            return
        if not ctx.established and txn.method == ctx.method:
            # the call or the transaction failed; a CANCEL still on its way
            # gets its own outcome first (_cancel_done closes then), and a
            # retry the callback sent (a 422 answered, RFC 4028 7.4) goes on
            if not any(t.method in ("CANCEL", ctx.method) for t in ctx.transactions):
                self.close_context(ctx)
        elif not ctx.established:
            pass  # (a request in an early dialog, PRACK or UPDATE: the INVITE decides)
        elif code == 481:
            self.close_context(ctx)  # the dialog is gone
        elif code == 408:
            # 12.2.1.2, 14.1: the dialog is over, end the session
            self._bye(ctx) if txn.method == "INVITE" else self.close_context(ctx)

    def _redirect(self, ctx: Context, txn: ClientTxn, target: str) -> None:
        """Follow a 302 (RFC 3261 8.1.3.4): the same request to the new target."""
        request = txn.request.clone()
        assert isinstance(request, Request)
        request.set_uri(target)
        request.set_cseq(ctx.next_cseq())
        self._send(ctx, request, txn.callback, None, None)
        ctx.transactions[-1].redirects = txn.redirects + 1

    def _authorize(self, ctx: Context, request: Request, response: Response) -> bool:
        if ctx.auth is None:
            return False
        if ctx.nonces is None:
            ctx.nonces = NonceCounter()
        return request.authorize(response, ctx.auth, nonces=ctx.nonces)

    def _retry_authorized(self, ctx: Context, txn: ClientTxn, response: Response) -> bool:
        """Send ``txn``'s request again with credentials for ``response`` (22.2).

        False if there are none, or the challenge repeats one already
        answered (the credentials are wrong: reported, never retried in a
        loop; :mod:`netsip.digest` decides).
        """
        request = txn.request.clone()
        assert isinstance(request, Request)
        if txn.preemptive:
            # the refresh answered an old challenge; a new one is no refusal
            request.del_header("authorization")
            request.del_header("proxy-authorization")
        if not self._authorize(ctx, request, response):
            return False
        ctx.challenge = response
        try:
            request.set_cseq(ctx.next_cseq())
        except OverflowError:
            return False
        if request.method() == "REGISTER":
            ctx.register = request
        # the retry stays in the dialog: same Call-ID, tags and route set
        self._send(ctx, request, txn.callback, txn.leg, txn.dst_addr)
        if txn.cancel:
            new = ctx.transactions[-1]
            new.cancel, new.cancel_callback = True, txn.cancel_callback
        return True

    # ------------------------------------------------------------ REGISTER

    def _registered(self, ctx: Context, txn: ClientTxn, response: Response) -> None:
        """Note the expiry the registrar granted and arm the refresh."""
        granted = _granted_expires(txn.request, response, ctx.contact)
        ctx.expires = granted
        if not ctx.refresh or not granted:
            ctx.refresh = False
            return
        # refresh at half the time, but at most 60 s before the end
        when = max(granted / 2, granted - 60)
        self._arm(ctx, "refresh", when, self._refresh_register)

    def _refresh_register(self, ctx: Context) -> None:
        template = ctx.register
        if template is None or ctx.closed:
            return
        request = template.clone()
        assert isinstance(request, Request)
        if ctx.challenge is not None:
            # answer the last challenge again, with the next nc (RFC 7616 3.4):
            # the registrar may accept it without a new round trip
            request.del_header("authorization")
            request.del_header("proxy-authorization")
            self._authorize(ctx, request, ctx.challenge)
        try:
            request.set_cseq(ctx.next_cseq())
        except OverflowError:
            log.warning("REGISTER %s: CSeq exhausted, not refreshed", ctx.callid)
            return
        ctx.register = request
        self._send(ctx, request, ctx.callback, *ctx.register_via)
        ctx.transactions[-1].preemptive = ctx.challenge is not None

    # ------------------------------------------------------------ UAS side

    def _receive_request(self, request: Request, leg: Leg, from_: Addr) -> None:
        method = request.method()
        callid = request.callid() or ""
        call = self._ctx.get(callid)
        to = request.get_header("to")
        if call is not None and call.local_tag in (to or ""):
            to_tag: str | None = call.local_tag  # (the usual case, without the regex)
        else:
            to_tag = header_tag(to)
        if method == "CANCEL":
            self._receive_cancel(call, request, leg, from_)
            return
        if to_tag is None:
            # outside a dialog: a new call or transaction, or a retransmission
            if call is None:
                self._new_incoming(request, leg, from_)
                return
            server = call.server
            if server is not None and method == "INVITE" and server.tid == request.tid():
                if _branch(server.request) == _branch(request):
                    if server.last is not None:  # a retransmission (17.2.1)
                        self.dispatcher.deliver(server.last, leg=leg, dst_addr=from_)
                else:
                    # 8.2.2.2: the same request on another path (a fork merged)
                    self._respond(request, 482, leg, from_, msg="Loop Detected")
                return
            if (
                call.incoming
                and method == call.method
                and request.cseq_number() == call.remote_cseq
                and not call.established
            ):
                # a retransmission the application has not answered yet
                # (once it has, the dispatcher's response cache answers)
                log.debug("%s %s retransmitted before the answer", method, callid)
                return
            if method != "ACK" and call.incoming and not call.established and server is None:
                # an earlier transaction outside a dialog with this Call-ID
                self.close_context(call)
                self._new_incoming(request, leg, from_)
                return
            log.info("%s without To tag for the existing call %s: 481", method, callid)
            if method != "ACK":
                self._respond(request, 481, leg, from_, msg="Call/Transaction Does Not Exist")
            return
        else:
            ctx = None
            if call is not None and call.local_tag == to_tag:
                frm = request.get_header("from") or ""
                remote = call.remote_tag
                if call.forks is None and remote is not None and remote in frm:
                    # (the usual case: a random tag found in the From is its tag)
                    ctx = call
                else:
                    ctx = call.dialog_for(header_tag(frm))
        if ctx is None:
            # 12.2.2: a request in a dialog we do not know
            if method != "ACK":
                log.info("%s for an unknown dialog %s: 481", method, callid)
                self._respond(request, 481, leg, from_, msg="Call/Transaction Does Not Exist")
            return
        self._in_context(ctx, request, leg, from_)

    def _new_incoming(self, request: Request, leg: Leg, from_: Addr) -> None:
        method = request.method()
        if method in ("ACK",):
            log.debug("ACK outside a call dropped")
            return
        if method == "BYE":
            self._respond(request, 481, leg, from_, msg="Call/Transaction Does Not Exist")
            return
        ctx = Context.incoming_from(request, leg)
        ctx.callback = self._app_wrapper
        self._ctx[ctx.callid] = ctx
        if method == "INVITE":
            ctx.server = ServerInvite(request, request.tid(), ctx.remote_cseq or 0, leg, from_)
        self._callback(ctx.callback, ctx, 0, 0, request, leg, from_)
        if ctx.closed:
            return
        if method == "INVITE":
            server = ctx.server
            if server is not None and server.last is None and server.timer is None:
                server.timer = self._loop.add_timer(
                    self.trying_delay, partial(self._send_trying, ctx, server)
                )
        elif ctx.incoming and not ctx.established and "answer" not in ctx.timers:
            # a transaction outside a dialog the application did not answer
            # at once: forget it after 64*T1 if it never does
            self._arm(ctx, "answer", self.timeout, self._unanswered)

    def _unanswered(self, ctx: Context) -> None:
        log.info("%s %s was never answered: context closed", ctx.method, ctx.callid)
        self.close_context(ctx)

    def _application_callback(
        self,
        endpoint: Endpoint,
        ctx: Context,
        _err: int,
        _code: int,
        packet: Packet | None,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        # Perl's wrapper: the application gets (endpoint, ctx, request, leg, from)
        self._application(endpoint, ctx, packet, leg, from_)

    def _send_trying(self, ctx: Context, server: ServerInvite, _timer: object) -> None:
        server.timer = None
        if ctx.answering(server) and server.last is None and not ctx.closed:
            trying = server.request.create_response(100)
            server.last = trying
            self.dispatcher.deliver(trying, leg=server.leg, dst_addr=server.from_)

    def _in_context(self, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        method = request.method()
        cseq = request.cseq_number()
        if cseq is None:
            self._respond(request, 400, leg, from_, msg="Bad CSeq")
            return
        server = ctx.server
        if method == "ACK":
            self._receive_ack(ctx, request, leg, from_)
            return
        if method == "INVITE" and server is not None and server.tid == request.tid():
            # a retransmitted re-INVITE before our final answer (17.2.1)
            if server.last is not None:
                self.dispatcher.deliver(server.last, leg=leg, dst_addr=from_)
            return
        last = ctx.remote_cseq
        if last is not None and cseq <= last and ctx.established:
            if cseq < last:
                # 12.2.2: "lower than the remote sequence number ... 500"
                self._respond(request, 500, leg, from_, msg="CSeq Out Of Order")
            # (equal: a retransmission; the response cache answers those)
            return
        ctx.remote_cseq = cseq
        if method == "INVITE":
            if server is not None:
                # 14.2: the previous INVITE is still unanswered
                self._respond(request, 500, leg, from_, headers={"retry-after": str(RETRY_AFTER)})
                return
            if any(t.method == "INVITE" for t in ctx.transactions):
                # 14.2: glare, our own INVITE is pending
                self._respond(request, 491, leg, from_)
                return
        if method in _TARGET_REFRESH:
            target = contact_uri(request)
            if target is not None:
                ctx.remote_target = target
        if method == "BYE":
            self._respond(request, 200, leg, from_)
            if server is not None:
                # 15.1.2: the INVITE still pending gets 487
                self._respond(server.request, 487, server.leg, server.from_)
                ctx.server = None
            self._callback(ctx.callback, ctx, 0, 0, request, leg, from_)
            self.close_context(ctx)
            return
        if method == "INVITE":
            ctx.server = server = ServerInvite(request, request.tid(), cseq, leg, from_)
            self._callback(ctx.callback, ctx, 0, 0, request, leg, from_)
            if ctx.answering(server) and server.last is None and not ctx.closed:
                server.timer = self._loop.add_timer(
                    self.trying_delay, partial(self._send_trying, ctx, server)
                )
            return
        self._callback(ctx.callback, ctx, 0, 0, request, leg, from_)

    def _receive_ack(self, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        if ctx.awaiting_ack is None or ctx.awaiting_ack != request.tid():
            # the ACK of a non-2xx (the dispatcher stopped the response's
            # retransmission), or of a 2xx ACKed already
            log.debug("ACK without a 2xx waiting for it in %s", ctx.callid)
            return
        ctx.awaiting_ack = None
        self._cancel_timer(ctx, "ack")
        self._callback(ctx.callback, ctx, 0, 0, request, leg, from_)

    def _receive_cancel(
        self, call: Context | None, request: Request, leg: Leg, from_: Addr
    ) -> None:
        """Match a CANCEL to its INVITE by Call-ID, CSeq and branch (9.2)."""
        server = call.server if call is not None else None
        if (
            call is None
            or server is None
            or server.cseq != request.cseq_number()
            or _branch(server.request) != _branch(request)
        ):
            log.info("CANCEL without its INVITE (%s): 481", request.callid())
            self._respond(request, 481, leg, from_, msg="Call/Transaction Does Not Exist")
            return
        # (its To tag is the INVITE's: both derive it from Call-ID and From, 9.2)
        self._respond(request, 200, leg, from_)
        if server.timer is not None:
            server.timer.cancel()
        call.server = None
        resp = server.request.create_response(487)
        self.dispatcher.deliver(resp, leg=server.leg, dst_addr=server.from_)
        self._callback(call.callback, call, 0, 0, request, leg, from_)
        if not call.established:
            self.close_context(call)

    def _answering_invite(
        self, ctx: Context, response: Response, code: int, leg: Leg | None
    ) -> Callable[[int], None] | None:
        """The application answers an INVITE of ``ctx``.

        Returns:
            For a 2xx whose retransmissions over ``leg`` time out when the
            ACK is overdue, the callback of its delivery (that timeout is
            the ACK's: no timer of its own), else None.
        """
        server = ctx.server
        if server is None or server.tid != response.tid():
            return None
        if server.timer is not None:
            server.timer.cancel()
            server.timer = None
        if code < 200:
            server.last = response
            return None
        ctx.server = None
        if code >= 300:
            if not ctx.established:
                # the call failed; the dispatcher retransmits the response
                # until the ACK (Timer G/H) without the context
                self.close_context(ctx)
            return None
        if not ctx.established:
            ctx.established = True
            ctx.remote_tag = header_tag(server.request.get_header("from"))
        # 13.3.1.4: no ACK within 64*T1: confirm, then end the session
        tid = ctx.awaiting_ack = response.tid()
        if (
            leg is not None
            and self.timeout == 64 * T1
            and self.dispatcher.do_retransmits
            and leg.do_retransmits()
        ):
            # the dispatcher retransmits the 2xx from T1 and gives up after
            # 64*T1, just when the ACK is overdue: its ETIMEDOUT is ours
            # (the ACK, or closing the context, cancels the delivery)
            self._cancel_timer(ctx, "ack")
            return partial(self._ack_wait_over, ctx, tid, self._loop.looptime)
        self._arm(ctx, "ack", self.timeout, self._no_ack)
        return None

    def _ack_wait_over(self, ctx: Context, tid: str, since: float, err: int) -> None:
        """The delivery of the 2xx ``tid`` of ``ctx`` ended without its ACK."""
        if ctx.closed or ctx.awaiting_ack != tid:
            return
        if err == errno.ETIMEDOUT:
            self._no_ack(ctx)
            return
        # the 2xx could not be sent (again): the ACK may still come until
        # 64*T1 after the answer, as if the retransmissions had gone out
        log.info("the 2xx of %s was not delivered (%s)", ctx.callid, errno.errorcode.get(err, err))
        left = since + self.timeout - self._loop.looptime
        self._arm(ctx, "ack", max(left, 0.0), self._no_ack)

    def _no_ack(self, ctx: Context) -> None:
        ctx.awaiting_ack = None
        log.info("no ACK for the 2xx of %s: BYE", ctx.callid)
        ctx.error = errno.ETIMEDOUT
        self._callback(ctx.callback, ctx, errno.ETIMEDOUT, 0, None, None, None)
        if not ctx.closed:
            self._bye(ctx)

    def _bye(self, ctx: Context) -> None:
        try:
            self.new_request("BYE", ctx)
        except (OverflowError, ValueError, NetSIPError) as exc:
            log.warning("cannot send BYE for %s: %s", ctx.callid, exc)
            self.close_context(ctx)

    # ------------------------------------------------------------- helpers

    def _respond(
        self,
        request: Request,
        code: int,
        leg: Leg,
        from_: Addr,
        *,
        msg: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.dispatcher.deliver(
            request.create_response(code, msg, headers), leg=leg, dst_addr=from_
        )

    def _callback(  # noqa: PLR0917  (Net::SIP's callback arguments, in its order)
        self,
        cb: object,
        ctx: Context,
        err: int,
        code: int,
        packet: Packet | None,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        if cb is None:
            return
        try:
            if cb is self._app_wrapper:
                # (every incoming call: no invoke_callback dispatch twice)
                self._application(self, ctx, packet, leg, from_)
            else:
                invoke_callback(cb, self, ctx, err, code, packet, leg, from_)
        finally:
            ctx.ack = None

    def _arm(self, ctx: Context, name: str, delay: float, action: Any) -> None:
        old = ctx.timers.pop(name, None)
        if old is not None:
            old.cancel()
        ctx.timers[name] = self._loop.add_timer(delay, partial(self._fire, ctx, name, action))

    @staticmethod
    def _fire(ctx: Context, name: str, action: Any, _timer: object) -> None:
        ctx.timers.pop(name, None)
        action(ctx)

    def _cancel_timer(self, ctx: Context, name: str) -> None:
        timer = ctx.timers.pop(name, None)
        if timer is not None:
            timer.cancel()


def _branch(request: Request) -> str | None:
    vias = request.get_headers("via")
    if not vias:
        return None
    _, params = sip_hdrval2parts("via", vias[0])
    return params.get("branch")


def _granted_expires(request: Request, response: Response, contact: str | None) -> int:
    """The expiry a registrar granted for ``contact`` (RFC 3261 10.2.4)."""
    mine = name_addr_uri(contact) if contact and contact != "*" else None
    for value in response.get_headers("contact"):
        data, params = sip_hdrval2parts("contact", value)
        if mine is not None and not sip_uri_eq(name_addr_uri(data), mine):
            continue
        raw = params.get("expires")
        if raw is not None and raw.isdigit():
            return min(int(raw), MAX_EXPIRES)
    for source in (response, request):
        raw = source.get_header("expires")
        if raw is not None and raw.strip().isdigit():
            return min(int(raw), MAX_EXPIRES)
    return 0
