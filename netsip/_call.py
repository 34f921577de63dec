"""One call of the user agent: port of Perl's ``Net::SIP::Simple::Call``.

A :class:`Call` is created by :meth:`netsip.simple.Simple.invite` (we call)
or by :meth:`netsip.simple.Simple.listen` (we are called). It owns one
:class:`~netsip.endpoint.Context`, the RTP sockets of its media streams, and
the running media session (:mod:`netsip.rtp`). Its parameters are Perl's
connection parameters, a plain mapping (:meth:`Call.set_param`,
:meth:`Call.get_param`) that the callbacks receive and may extend:

``leg``, ``init_media``, ``rtp_param`` (``(pt, samples, interval[, name])``),
``sdp``, ``sdp_peer``, ``sdp_on_ack``, ``media_lsocks``, ``call_on_hold``,
``clear_sdp``, ``dtmf_methods``, ``sip_header``, ``ring_time``, and the
callbacks ``cb_final``, ``cb_preliminary``, ``cb_established``,
``cb_invite``, ``cb_dtmf``, ``cb_notify``, ``cb_message``, ``cb_noanswer``,
``cb_rtp_done``, ``recv_bye``, ``send_bye``, ``cb_cleanup``.

Parameters beyond Net::SIP (see :mod:`netsip._callext`):

``prack``
    reliable provisional responses (RFC 3262): ``"off"``, ``"supported"``
    (the default: ``Supported: 100rel``, reliable 18x when the caller
    supports it) or ``"required"`` (``Require: 100rel``; a caller without it
    gets 421).
``provisional``, ``answer_after``
    (called side) a 180 or 183 sent before the 2xx (a 183 carries our
    answer: early media), and the seconds until the 2xx (default 0; None
    waits for :meth:`Call.accept`). The 2xx waits for the PRACKs too.
``session_expires``, ``min_se``, ``session_refresh``, ``session_refresher``
    session timers (RFC 4028): the interval to ask for (None: none, but the
    peer's is honoured), the smallest accepted (default 90, 422 below it),
    ``"update"`` (default) or ``"invite"`` to refresh with, who should
    refresh (``"uac"``/``"uas"``).

:meth:`Call.update` sends an UPDATE (RFC 3311) with or without a new offer.

Offer and answer (RFC 3264, through :mod:`netsip.sdp`):

- an INVITE carries our offer (one audio stream, the codec of ``rtp_param``
  plus telephone-event); the 2xx carries the answer. With ``sdp_on_ack`` the
  INVITE has no body: the 2xx then carries the peer's offer and our answer
  goes in the ACK (RFC 3261 13.2.1);
- an incoming INVITE (or re-INVITE) with an offer gets the answer in the 2xx;
  one without a body gets our offer in the 2xx, and the ACK carries the
  answer;
- an UPDATE (RFC 3311) with an offer is answered in its 200 (491 while our
  own offer is pending);
- a 183 with SDP starts early media; the 2xx restarts it. With 100rel the
  answer (or, after an INVITE without one, the offer) is in the reliable
  18x, the PRACK carries the answer to such an offer, and the 2xx carries
  no SDP.

Differences from Net::SIP:

- Hold (``call_on_hold``) is ``a=sendonly`` (or ``a=inactive`` when the
  value is ``"inactive"``), as RFC 3264 8.4 asks, not ``c=0.0.0.0``; the
  peer's hold, either way, stops our sending.
- Bad SDP in an INVITE is answered: 488 when no stream can be accepted, 400
  when the SDP does not parse, 415 for a body that is not SDP (Perl drops the
  packet or answers with an empty SDP).
- A call that fails before it is established releases its RTP sockets at
  once (Perl keeps them until :meth:`Call.cleanup`).
- INFO, MESSAGE and UPDATE in a call are answered (200, or 415/488), with the
  callbacks ``cb_info`` and ``cb_message``; an unknown method gets 501.
- PRACK, UPDATE sending, session timers, Require/Supported checks (420,
  421) and :meth:`Call.accept` are new: Net::SIP has none of them.
- :meth:`Call.dtmf` refuses (``ValueError``) when no media runs, instead of
  blocking forever.
"""

from __future__ import annotations

import errno as errnos
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from netsip._callext import (
    ALLOW,
    MAX_GLARE_RETRIES,
    SUPPORTED,
    CallExtensions,
    EndpointCallback,
)
from netsip._callmedia import DEFAULT_RTP_PARAM, BodyRejectedError, sdp_of
from netsip._dialog import Context
from netsip._session_timer import uac_result
from netsip.aio import check_can_block
from netsip.endpoint import Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.rtp import DTMFRequest, MediaSession
from netsip.sdp import SDPError
from netsip.util import Addr, Var, invoke_callback

__all__ = ["ALLOW", "DEFAULT_RTP_PARAM", "SUPPORTED", "Call", "UserAgent"]

log = logging.getLogger(__name__)


class UserAgent(Protocol):
    """What a call needs of its user agent (:class:`netsip.simple.Simple`)."""

    endpoint: Endpoint
    eventloop: EventLoop
    from_: str | None
    contact: str | None
    auth: Any
    route: list[str] | None
    options: dict[str, str]

    def rtp(self, method: str, *args: Any) -> Any: ...
    def leg_for(self, target: str) -> Leg: ...
    def default_leg(self) -> Leg: ...
    def loop(self, timeout: float | None = None, *stopvars: Any) -> None: ...
    def forget_call(self, call: Call) -> None: ...


class Call(CallExtensions):
    """A call: its context, its media sockets and session, its callbacks.

    Args:
        ua: the user agent (:class:`netsip.simple.Simple`).
        ctx: the context (incoming calls), the peer's address, or a mapping
            of context keys (``to``, ``from_``, ``contact``, ``auth``,
            ``route``).
        param: the connection parameters (see the module docstring).
    """

    ua: UserAgent

    def __init__(
        self, ua: UserAgent, ctx: Context | str | Mapping[str, Any], param: Mapping[str, Any] | None
    ) -> None:
        self.ua = ua
        self.endpoint: Endpoint = ua.endpoint
        if isinstance(ctx, Context):
            self.ctx: Context | dict[str, Any] | None = ctx
        else:
            args: dict[str, Any] = {"to": ctx} if isinstance(ctx, str) else dict(ctx)
            args.setdefault("from_", args.pop("from", None) or ua.from_)
            for key in ("contact", "auth", "route"):
                if args.get(key) is None and getattr(ua, key) is not None:
                    args[key] = getattr(ua, key)
            self.ctx = {k: v for k, v in args.items() if v is not None}
        self.param: dict[str, Any] = dict(param or {})
        if "init_media" not in self.param:  # (not made for every call that has one)
            self.param["init_media"] = ua.rtp("media_recv_echo")
        self.param.setdefault("rtp_param", DEFAULT_RTP_PARAM)
        self.dtmf_events: deque[DTMFRequest] = deque()
        self.media: MediaSession | None = None
        self._cleanup: list[Callable[[Call], object]] = []
        cb = self.param.pop("cb_cleanup", None)
        if cb is not None:
            self._cleanup.append(lambda call: invoke_callback(cb, call))
        self._sockets = []
        self._local_sdp = None  # our last SDP
        # o= of our SDPs: unique, not secret (RFC 8866 5.2)
        self._session_id = random.getrandbits(62)
        self._offer_pending = False  # our offer is out (in a 2xx or an INVITE)
        self.closed = False
        self.established = False
        #: the cb_final of each bye() while our BYE is in flight (None: none sent)
        self._bye_waiting: list[object] | None = None
        self.error: str | None = None
        self._init_extensions()
        self._invite_sent: tuple[bytes | None, dict[str, str]] | None = None
        self._glare_retries = 0

    # ------------------------------------------------------------ parameters

    def set_param(self, **kw: Any) -> Call:
        """Change connection parameters (``init_media``, ``sdp_on_ack`` ...)."""
        self.param.update(kw)
        return self

    def get_param(self, *keys: str) -> Any:
        """The value of one parameter, or a list of values for several."""
        values = [self.param.get(k) for k in keys]
        return values[0] if len(values) == 1 else values

    def get_peer(self) -> str:
        """The peer of the call (its To, or From for an incoming call)."""
        ctx = self.context
        return ctx.peer() if ctx is not None else ""

    # --------------------------------------------------------------- INVITE

    def reinvite(self, **args: Any) -> Context | None:
        """Send an INVITE: the first one of the call, or a re-INVITE.

        ``args`` are merged into the parameters. Without ``cb_final`` this
        waits in the loop until the final response (and CANCELs the INVITE
        after ``ring_time`` seconds when given, calling ``cb_noanswer``).
        A 422 is answered by asking again with the peer's Min-SE (RFC 4028
        7.4), a 491 to a re-INVITE by offering again later (RFC 3261 14.1);
        ``cb_final`` gets the outcome of the last try.

        Returns:
            The context, or None if the INVITE could not be sent.
        """
        param = self.param
        if args.get("cb_final", param.get("cb_final")) is None:
            check_can_block(self.endpoint.dispatcher.eventloop)  # (before anything is sent)
        on_cleanup = args.pop("cb_cleanup", None)
        if on_cleanup is not None:
            # (Simple.invite passes the parameters here, not to __init__)
            self._cleanup.append(lambda call: invoke_callback(on_cleanup, call))
        clear = args.pop("clear_sdp", param.get("clear_sdp"))
        if clear:
            self._clear_sdp()
        param.update(args)
        ctx = self.context
        # (first: a bad prack or session timer parameter raises ValueError here)
        try:
            headers = self._extension_headers(initial=ctx is None or not ctx.established)
        except ValueError:
            if ctx is None:
                self.cleanup()  # (a call that never started is forgotten)
            raise
        if param.get("leg") is None:
            param["leg"] = self.ua.leg_for(self._target())
        body = None
        if not param.get("sdp_on_ack"):
            sdp = self._local_offer()
            body = bytes(sdp)
            self._offer_pending = True
        stop: Var[str] = Var()
        blocking = param.get("cb_final") is None
        if blocking:
            param["cb_final"] = stop
        headers.update(param.get("sip_header") or {})
        if body is not None:
            headers.setdefault("content-type", "application/sdp")
        try:
            ctx = self._send_invite(body, headers)
        except (ValueError, OverflowError) as exc:
            self.error = str(exc)
            self._offer_pending = False
            log.warning("INVITE not sent: %s", exc)
            if blocking:
                param["cb_final"] = None
            return None
        self.ctx = ctx
        if blocking:
            ring_time = param.get("ring_time")
            if ring_time:
                self.ua.loop(float(ring_time), stop)
                if not stop:
                    self.endpoint.cancel_invite(ctx, None, self._no_answer(stop))
            self.ua.loop(None, stop)
            param["cb_final"] = None
        return ctx

    def _send_invite(self, body: bytes | None, headers: dict[str, str]) -> Context:
        """Send an INVITE of this call (kept for a retry after 422)."""
        self._invite_sent = (body, headers)
        ctx = self.endpoint.invite(
            self.ctx or {}, self._invite_response, body, leg=self.param["leg"], headers=headers
        )
        self.ctx = ctx
        return ctx

    def _target(self) -> str:
        ctx = self.ctx
        if isinstance(ctx, Context):
            return ctx.remote_target or ctx.to
        return str((ctx or {}).get("to", ""))

    def _no_answer(self, stop: Var[str]) -> EndpointCallback:
        def cancelled(err: int, code: int, packet: Packet | None) -> None:
            stop.value = "NOANSWER"
            invoke_callback(
                self.param.get("cb_noanswer"),
                "NOANSWER",
                self,
                {"errno": err, "code": code, "packet": packet},
            )

        return self._on_final(cancelled)

    def _invite_response(  # noqa: PLR0917  (the endpoint's callback arguments)
        self,
        endpoint: Endpoint,
        ctx: Context,
        err: int,
        code: int,
        packet: Packet | None,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        """The context callback: responses to our INVITEs, requests of the peer."""
        if isinstance(packet, Request) and not err:
            self.receive(endpoint, ctx, err, code, packet, leg, from_)
            return
        param = self.param
        if code == 422 and isinstance(packet, Response) and self._invite_again(ctx, packet):
            return
        if code == 491 and ctx.established and self._reinvite_after_glare():
            return
        if err:
            if code != 487 and err != errnos.ECANCELED:
                self.error = f"Failed with error {err}" + (f" code={code}" if code else "")
            invoke_callback(
                param.get("cb_final"), "FAIL", self, {"errno": err, "code": code, "packet": packet}
            )
            self._failed(ctx)
            return
        if packet is None:
            return
        if code < 200:
            if code != 100 and isinstance(packet, Response) and not self._provisional(ctx, packet):
                return  # (a reliable 18x again: not processed further, RFC 3262 4)
            invoke_callback(param.get("cb_preliminary"), self, code, packet)
            return
        if code >= 300:
            self.error = f"Failed with code {code}"
            invoke_callback(param.get("cb_final"), "FAIL", self, {"code": code, "packet": packet})
            self._failed(ctx)
            return
        if not self._peer_sdp_from_2xx(ctx, packet):
            invoke_callback(param.get("cb_final"), "FAIL", self, {"code": code, "packet": packet})
            if not ctx.closed:
                self.bye()
            return
        self.established = True
        self._glare_retries = 0
        self._peer_allow(packet)
        if isinstance(packet, Response):
            self._apply_timer(uac_result(self._asked_se, packet), we_sent=True)
        # media first, so that cb_final can send DTMF at once (Perl: the other order)
        self._start_media()
        invoke_callback(param.get("cb_final"), "OK", self, {"packet": packet})

    def _invite_again(self, ctx: Context, response: Response) -> bool:
        """A 422 to our INVITE: send it again with the peer's Min-SE (RFC 4028 7.4)."""
        more = self._retry_422(response)
        if more is None or self._invite_sent is None:
            return False
        body, headers = self._invite_sent
        headers = {**headers, **more}
        try:
            self._send_invite(body, headers)
        except (ValueError, OverflowError) as exc:
            log.warning("INVITE not sent again after 422: %s", exc)
            return False
        return True

    def _reinvite_after_glare(self) -> bool:
        """A 491 to our re-INVITE (RFC 3261 14.1): the same offer again later."""
        sent = self._invite_sent
        if sent is None or self._glare_retries >= MAX_GLARE_RETRIES:
            return False
        self._glare_retries += 1
        self._offer_pending = False
        hold = self._offer_hold

        def again() -> None:
            # a new offer: the SDP may have changed meanwhile (the peer's
            # re-INVITE went first), and its version goes up (RFC 3264 8)
            body, headers = sent
            try:
                headers = {**headers, **self._extension_headers(initial=False)}
                if body is not None:
                    self.param["call_on_hold"] = hold
                    body = bytes(self._local_offer())
                    self._offer_pending = True
                self._send_invite(body, headers)
            except (ValueError, OverflowError) as exc:
                self._offer_pending = False
                log.info("re-INVITE not sent again: %s", exc)
                info = {"code": 491, "packet": None}
                invoke_callback(self.param.get("cb_final"), "FAIL", self, info)

        self._after_glare(again)
        return True

    def _peer_allow(self, packet: Packet) -> None:
        allow = packet.get_headers("allow")
        if allow:
            self._peer_methods = frozenset(m.strip().upper() for m in allow)

    def _failed(self, ctx: Context) -> None:
        # a call that never got established frees its media at once
        if not self.established:
            self.cleanup()

    def _peer_sdp_from_2xx(self, ctx: Context, response: Packet) -> bool:
        """The SDP of a 2xx: the answer to our offer, or (sdp_on_ack) an offer."""
        try:
            peer = sdp_of(response)
        except BodyRejectedError as exc:
            self.error = exc.reason
            log.warning("unusable body in the 2xx of %s: %s", ctx.callid, exc.reason)
            return False
        if self._early_done:
            # offer and answer were exchanged reliably before (RFC 3262 5):
            # a 2xx may repeat the SDP, and it is no new offer
            self._early_done = False
            return peer is None or self._set_peer(peer)
        if self._offer_pending:
            self._offer_pending = False
            if peer is None:
                if self.param.get("sdp_peer") is not None:
                    return True  # a re-INVITE answered without SDP: keep the session
                self.error = "no SDP in the 2xx"
                log.warning("2xx of %s without the answer to our offer", ctx.callid)
                return False
            return self._set_peer(peer)
        if peer is None:
            self.error = "no SDP offer in the 2xx (sdp_on_ack)"
            return False
        try:
            ours = self._local_answer(peer)
        except SDPError as exc:
            self.error = str(exc)
            return False
        if ctx.ack is not None:
            ctx.ack.set_body(bytes(ours))
            ctx.ack.set_header("content-type", "application/sdp")
        return self._set_peer(peer)

    # -------------------------------------------------------------- requests

    def cancel(self, **args: Any) -> bool:
        """CANCEL the pending INVITE; ``cb_final`` (or ``send_cancel``) gets the outcome.

        Returns:
            False if there is no INVITE to cancel.
        """
        ctx = self.context
        if ctx is None:
            return False
        cb = args.pop("cb_final", None) or self.param.get("send_cancel")
        merged = {**self.param, **args}

        def done(_err: int, _code: int, _packet: Packet | None) -> None:
            invoke_callback(cb, merged)

        return self.endpoint.cancel_invite(ctx, None, self._on_final(done))

    def bye(self, **args: Any) -> None:
        """End the call with BYE; ``cb_final`` (or ``send_bye``) gets the outcome.

        A call that is not established yet is cancelled instead (RFC 3261
        15: a caller must not send BYE before the INVITE has a final response).
        """
        ctx = self.context
        if ctx is None or ctx.closed:
            self.cleanup()
            return
        cb = args.pop("cb_final", None) or self.param.get("send_bye")
        merged = {**self.param, **args}
        if not ctx.established and not ctx.incoming:
            self.cancel(cb_final=cb, **args)
            return

        if self._bye_waiting is not None:
            # one BYE is enough (a second would get 481): wait for its outcome
            self._bye_waiting.append(cb)
            return
        waiting = self._bye_waiting = [cb]

        def done(_err: int, _code: int, _packet: Packet | None) -> None:
            for each in waiting:
                invoke_callback(each, merged)
            self.cleanup()

        self.rtp_cleanup()
        try:
            self.endpoint.new_request("BYE", ctx, self._on_final(done))
        except (ValueError, OverflowError) as exc:
            log.warning("BYE not sent for %s: %s", ctx.callid, exc)
            self.cleanup()

    def request(self, method: str, body: bytes | str | None = None, **args: Any) -> Request | None:
        """Send a request in the call (INFO, MESSAGE, NOTIFY, UPDATE ...).

        ``cb_final`` gets ``('OK' | 'FAIL', call, {'code':, 'packet':})``
        for the final response (or the timeout).
        """
        ctx = self.context
        if ctx is None or ctx.closed:
            raise ValueError("the call has no dialog")
        cb = args.pop("cb_final", None)

        def done(err: int, code: int, packet: Packet | None) -> None:
            status = "FAIL" if err or code >= 300 else "OK"
            invoke_callback(cb, status, self, {"code": code, "packet": packet})

        return self.endpoint.new_request(method, ctx, self._on_final(done), body, **args)

    def dtmf(self, events: str, **args: Any) -> None:
        """Send DTMF ``events`` (0-9, A-D, ``*``, ``#``; anything else is a pause).

        Args:
            events: the digits.
            **args: ``duration`` (ms per digit, default 100), ``methods``
                (``"rfc2833,audio"``: RFC 4733 when the peer offered
                telephone-event, else in-band tones), ``cb_final`` (called
                with ``'OK'`` when all are sent; without it this waits).

        Raises:
            ValueError: no media session runs, or ``methods`` names none
                this call can use.
        """
        if self.media is None:
            raise ValueError("no media session: DTMF needs an established call with media")
        methods = frozenset(
            m for m in str(args.get("methods") or "rfc2833,audio").replace(",", " ").split() if m
        )
        unknown = methods - {"rfc2833", "audio"}
        if unknown or not methods:
            raise ValueError(f"unknown DTMF methods {sorted(unknown)}")
        cb = args.get("cb_final")
        if cb is None:
            check_can_block(self.endpoint.dispatcher.eventloop)
        stop: Var[str] = Var()
        done = cb if cb is not None else stop
        self.dtmf_events.append(
            DTMFRequest(
                events=events,
                duration=int(args.get("duration") or 100),
                methods=methods,
                callback=lambda: invoke_callback(done, "OK"),
            )
        )
        if cb is None:
            self.ua.loop(None, stop, lambda: self.closed)

    # --------------------------------------------------------------- receive

    def receive(  # noqa: PLR0917  (the endpoint's callback arguments)
        self,
        endpoint: Endpoint,
        ctx: Context,
        err: int,
        code: int,
        packet: Packet | None,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        """The context callback of an incoming call: requests of the peer."""
        del code
        if packet is None:
            if err:
                self.error = f"error occurred: {err}"
                if err == errnos.ETIMEDOUT and not ctx.established:
                    self.cleanup()
            return
        if not isinstance(packet, Request):
            log.debug("response %s in the request callback of %s dropped", packet, ctx.callid)
            return
        assert leg is not None and from_ is not None
        method = packet.method()
        param = self.param
        if method in ("BYE", "CANCEL"):
            self.cleanup()
            invoke_callback(param.get("recv_bye"), param)
        elif method == "INVITE":
            self._incoming_invite(ctx, packet, leg, from_)
        elif method == "ACK":
            self._ack(ctx, packet)
        elif method == "UPDATE":
            self._update_received(ctx, packet, leg, from_)
        elif method == "PRACK":
            self._prack(ctx, packet, leg, from_)
        elif method == "OPTIONS":
            self._respond(ctx, packet.create_response(200, headers=self.ua.options), leg, from_)
        elif method in ("NOTIFY", "INFO", "MESSAGE"):
            self._respond(ctx, packet.create_response(200), leg, from_)
            name = {"NOTIFY": "cb_notify", "INFO": "cb_info", "MESSAGE": "cb_message"}[method]
            invoke_callback(param.get(name), self, packet)
        else:
            log.info("%s in call %s: 501", method, ctx.callid)
            resp = packet.create_response(501, headers={"allow": ALLOW})
            self._respond(ctx, resp, leg, from_)

    def _incoming_invite(self, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        """An INVITE or re-INVITE: answer its offer, or offer in the 2xx."""
        param = self.param
        if param.get("clear_sdp"):
            self._clear_sdp()
        if param.get("leg") is None:
            param["leg"] = leg
        self._peer_allow(request)
        if ctx.established and self._offer_pending:
            # RFC 3311 5.2 (and RFC 3261 14.2): our offer (an UPDATE) is pending
            self._respond(ctx, request.create_response(491), leg, from_)
            return
        checked = self._check_extensions(request, initial=not ctx.established)
        if isinstance(checked, Response):
            self._respond(ctx, checked, leg, from_)
            if not ctx.established:
                self.cleanup()
            return
        try:
            peer = sdp_of(request)
        except BodyRejectedError as exc:
            log.info("INVITE %s rejected: %s", ctx.callid, exc.reason)
            resp = request.create_response(exc.code, headers=exc.headers)
            self._respond(ctx, resp, leg, from_)
            if not ctx.established:
                self.cleanup()
            return
        try:
            offered = peer is None
            if peer is None:
                sdp = self._local_offer()
                self._offer_pending = True
            else:
                sdp = self._local_answer(peer)
                if not self._set_peer(peer):
                    raise SDPError(self.error or "unusable SDP")
        except SDPError as exc:
            log.info("INVITE %s: no acceptable media (%s): 488", ctx.callid, exc)
            self._respond(ctx, request.create_response(488), leg, from_)
            if not ctx.established:
                self.cleanup()
            return
        resp = invoke_callback(param.get("cb_invite"), self, request)
        if not isinstance(resp, Response):
            resp = request.create_response(
                200, headers={"content-type": "application/sdp"}, body=bytes(sdp)
            )
        self._answer_invite(ctx, request, leg, from_, resp, checked, offered)

    def _ack(self, ctx: Context, request: Request) -> None:
        """The ACK of our 2xx: the call (or its new session) is established."""
        if self._offer_pending:
            # our offer went in the 2xx: the answer is in the ACK (13.3.1.1)
            self._offer_pending = False
            try:
                peer = sdp_of(request)
            except (SDPError, BodyRejectedError) as exc:  # (answer or body)
                log.warning("unusable SDP answer in the ACK of %s: %s", ctx.callid, exc)
                peer = None
            if peer is None or not self._set_peer(peer):
                log.warning("no SDP answer in the ACK of %s: BYE", ctx.callid)
                self.bye()
                return
        self.established = True
        self._start_media()
        invoke_callback(self.param.get("cb_established"), "OK", self)

    def cleanup(self) -> None:
        """End the call locally: media, sockets, the context, ``cb_cleanup``."""
        if self.closed:
            return
        self.closed = True
        self._close_extensions()
        self.rtp_cleanup()
        self._close_sockets()
        while self._cleanup:
            self._cleanup.pop(0)(self)
        ctx = self.context
        if ctx is not None:
            self.endpoint.close_context(ctx)
        self.ua.forget_call(self)
        # (unsent DTMF is dropped; a blocking dtmf() stops on self.closed)
        self.dtmf_events.clear()

    def __repr__(self) -> str:
        ctx = self.context
        return f"<Call {ctx.callid if ctx else '(new)'} {self.get_peer()}>"
