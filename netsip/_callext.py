"""What a call does beyond Net::SIP: 100rel, UPDATE, session timers.

The base of :class:`netsip._call.Call` (on :class:`netsip._callmedia.CallMedia`)
that wires the extensions into a call; the protocol rules live in
:mod:`netsip._prack` (RFC 3262) and :mod:`netsip._session_timer` (RFC 4028).

Reliable provisional responses (``prack`` parameter: ``"off"``,
``"supported"`` (default), ``"required"``)
  UAC: our INVITE says ``Supported: 100rel`` (or ``Require``); each new
  reliable 18x (its ``RSeq`` one up) is PRACKed with ``RAck``, carrying our
  answer when the 18x carried an offer (RFC 3262 5); retransmitted and
  out-of-order ones are ignored. UAS: with ``provisional=180|183`` an INVITE
  first gets that response (a 183 carries our answer: early media), sent
  reliably when the caller supports 100rel; the 2xx waits until every
  reliable one is PRACKed (RFC 3262 3), and ``answer_after`` seconds (0 by
  default; None: until :meth:`CallExtensions.accept`). A reliable response
  unacknowledged for 64*T1 fails the call with 500. A caller that requires
  an extension we do not do gets 420, one without 100rel 421 when we
  require it.
UPDATE (RFC 3311)
  :meth:`CallExtensions.update` sends one in an early or confirmed dialog,
  with a new offer (hold, resume, other codecs) or without a body; a 491
  (both sides offered at once) retries after the random time of RFC 3261
  14.1, for a re-INVITE too. An incoming UPDATE or re-INVITE with an offer
  while ours is pending gets 491.
Session timers (``session_expires``, ``min_se``, ``session_refresh``,
``session_refresher``; see :mod:`netsip._session_timer`)
  ``Session-Expires``/``Min-SE`` in our INVITE, 422 answered by asking
  again with the peer's Min-SE, the refresher refreshes at half the
  interval (UPDATE or re-INVITE), and a session not refreshed in time ends
  with BYE.

Differences from Net::SIP: Net::SIP does none of this.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from netsip._callmedia import BodyRejectedError, CallMedia, MediaHost, sdp_of
from netsip._dialog import Context
from netsip._prack import (
    ReliableReceiver,
    ReliableSender,
    has_option,
    header_value,
    is_reliable,
    option_tags,
    parse_rack,
    prack_mode,
)
from netsip._session_timer import (
    Negotiated,
    Rejection,
    SessionTimer,
    TimerConfig,
    retry_after_422,
    uac_result,
    uas_headers,
    uas_negotiate,
)
from netsip.endpoint import Endpoint
from netsip.eventloop import TimerLike
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.sdp import SDPError
from netsip.util import Addr, invoke_callback

__all__ = ["ALLOW", "EXTENSIONS", "SUPPORTED", "CallExtensions", "EndpointCallback"]

log = logging.getLogger(__name__)

#: the endpoint's context callback: (endpoint, ctx, error, code, packet, leg, from_)
EndpointCallback = Callable[
    [Endpoint, Context, int, int, "Packet | None", "Leg | None", "Addr | None"], None
]
#: the methods a call answers in its dialog (Allow of its responses)
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, NOTIFY, UPDATE, PRACK"
#: the extensions a call supports (RFC 3262, RFC 4028)
SUPPORTED = "100rel, timer"
#: the option tags we understand in a Require (RFC 3261 8.2.2.3)
EXTENSIONS = frozenset({"100rel", "timer"})
#: how often an UPDATE answered 491 is tried again
MAX_GLARE_RETRIES = 3
#: how often a 422 is answered by asking again
MAX_422_RETRIES = 2


@dataclass(slots=True, eq=False)
class _Held:
    """Our final response to an INVITE, held back (RFC 3262 3, ``answer_after``)."""

    request: Request
    response: Response
    leg: Leg
    from_: Addr
    timer: Negotiated | None
    due: bool = False
    wait: TimerLike | None = None


class ExtensionHost(MediaHost, Protocol):
    """What the extensions of a call need of its user agent."""

    contact: str | None


class CallExtensions(CallMedia):
    """PRACK, UPDATE and session timers of a call (see the module docstring)."""

    ua: ExtensionHost
    endpoint: Endpoint
    ctx: Context | dict[str, Any] | None
    closed: bool
    established: bool
    _offer_pending: bool

    def _init_extensions(self) -> None:
        self._receiver = ReliableReceiver()
        self._sender: ReliableSender | None = None
        self._held: _Held | None = None
        #: offer and answer were exchanged in a reliable 18x and its PRACK
        self._early_done = False
        self._session = SessionTimer(
            self.ua.eventloop, self._refresh_session, self._session_expired
        )
        #: the Session-Expires we asked for in our last INVITE/UPDATE
        self._asked_se: int | None = None
        self._se_retries = 0
        self._retry: TimerLike | None = None
        #: the methods the peer allows (its Allow), None while unknown
        self._peer_methods: frozenset[str] | None = None

    # -------------------------------------------------------- shared parts

    @property
    def context(self) -> Context | None:
        """The endpoint's context of the call (None before the first INVITE)."""
        return self.ctx if isinstance(self.ctx, Context) else None

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
        """Requests of the peer (:class:`netsip._call.Call` defines it)."""
        raise NotImplementedError

    def bye(self, **args: Any) -> None:
        """End the call (:class:`netsip._call.Call` defines it)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """End the call locally (:class:`netsip._call.Call` defines it)."""
        raise NotImplementedError

    def _on_final(self, handler: Callable[[int, int, Packet | None], object]) -> EndpointCallback:
        """An endpoint callback for a request of ours: ``handler(err, code,
        packet)`` gets its final outcome (provisional responses are skipped),
        requests of the peer go to :meth:`receive` (the callback of a request
        becomes the context's)."""

        def callback(  # noqa: PLR0917  (the endpoint's callback arguments)
            endpoint: Endpoint,
            ctx: Context,
            err: int,
            code: int,
            packet: Packet | None,
            leg: Leg | None,
            from_: Addr | None,
        ) -> None:
            if isinstance(packet, Request) and not err:
                self.receive(endpoint, ctx, err, code, packet, leg, from_)
            elif not 100 <= code < 200:
                handler(err, code, packet)

        return callback

    def _respond(self, ctx: Context, response: Response, leg: Leg, from_: Addr) -> None:
        self.endpoint.new_response(ctx, response, leg, from_)

    def _timer_config(self) -> TimerConfig:
        return TimerConfig.from_param(self.param)

    def _supported(self) -> str:
        """Our Supported: 100rel only when the ``prack`` mode is not off."""
        return SUPPORTED if prack_mode(self.param.get("prack", "supported")) != "off" else "timer"

    def _close_extensions(self) -> None:
        """Stop every timer of the extensions (the call ends)."""
        if self._sender is not None:
            self._sender.close()
        held, self._held = self._held, None
        if held is not None and held.wait is not None:
            held.wait.cancel()
        self._session.stop()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    # ------------------------------------------------------- our requests

    def _extension_headers(self, initial: bool) -> dict[str, str]:
        """Supported/Require/Session-Expires/Min-SE of our INVITE.

        Raises:
            ValueError: a bad ``prack`` or session timer parameter.
        """
        mode = prack_mode(self.param.get("prack", "supported"))
        cfg = self._timer_config()
        headers = {"supported": self._supported(), "allow": ALLOW}
        if initial and mode == "required":
            headers["require"] = "100rel"
        interval = self._session.interval or self._asked_se or cfg.session_expires
        headers.update(cfg.request_headers(interval))
        if self._session.interval is not None:
            # a refresh of a running session timer (RFC 4028 7.4)
            headers["session-expires"] = self._refresh_value()
        self._asked_se = interval
        return headers

    def _refresh_value(self) -> str:
        """Session-Expires of a request that refreshes our session (the
        refresher stays who it was: ``uac`` is the sender of the request)."""
        interval = self._session.interval or 0
        return f"{interval};refresher={'uac' if self._session.refresher else 'uas'}"

    def _retry_422(self, response: Packet) -> dict[str, str] | None:
        """New Session-Expires/Min-SE after a 422 (RFC 4028 7.4), or None."""
        if self._se_retries >= MAX_422_RETRIES:
            return None
        interval = retry_after_422(self._timer_config(), self._asked_se, response)
        if interval is None:
            return None
        self._se_retries += 1
        self._asked_se = interval
        log.info("422: asking for a session interval of %d s", interval)
        return {"session-expires": str(interval), "min-se": str(interval)}

    def _apply_timer(self, result: Negotiated | None, we_sent: bool) -> None:
        """A 2xx to an INVITE/UPDATE set up (or turned off) the session timer;
        ``we_sent``: we are the UAC of that transaction."""
        self._se_retries = 0
        if result is None:
            self._session.stop()
            return
        self._session.start(result.interval, (result.refresher == "uac") == we_sent)

    # ---------------------------------------------------- UAC: reliable 18x

    def _provisional(self, ctx: Context, response: Response) -> bool:
        """A 18x to our INVITE; False if it is a reliable one seen already."""
        mode = prack_mode(self.param.get("prack", "supported"))
        if mode == "off" or not is_reliable(response):
            if response.body():
                self._early_media(response)
            return True
        if not self._receiver.accept(response):
            return False
        body: bytes | None = None
        try:
            peer = sdp_of(response)
        except BodyRejectedError as exc:
            log.info("unusable body in %s: %s", response, exc.reason)
            peer = None
        if peer is not None and not self._early_done:
            if self._offer_pending:
                # the answer, reliably: offer/answer is done (RFC 3262 5)
                self._offer_pending = False
                self._early_done = True
                if self._set_peer(peer):
                    self._start_media()
            elif self.param.get("sdp_peer") is None:
                # an offer (our INVITE had none): the answer goes in the PRACK
                try:
                    body = bytes(self._local_answer(peer))
                except SDPError as exc:
                    log.warning("no answer to the offer in %s: %s", response, exc)
                else:
                    if self._set_peer(peer):
                        self._early_done = True
                        self._start_media()
        headers = {"rack": self._receiver.rack(response)}
        if body is not None:
            headers["content-type"] = "application/sdp"
        try:
            self.endpoint.new_request(
                "PRACK", ctx, self._on_final(self._prack_done), body, headers=headers
            )
        except (ValueError, OverflowError) as exc:
            log.warning("PRACK not sent for %s: %s", ctx.callid, exc)
        return True

    def _prack_done(self, err: int, code: int, packet: Packet | None) -> None:
        if err or code >= 300:
            log.info("PRACK failed: errno %d, code %d", err, code)

    def _early_media(self, response: Packet) -> None:
        """A 18x with SDP: the answer, early (RFC 3261 13.2.1, RFC 3960)."""
        try:
            peer = sdp_of(response)
        except BodyRejectedError as exc:
            log.info("unusable body in %s: %s", response, exc.reason)
            return
        if peer is None or not self._offer_pending:
            return
        if self._set_peer(peer):
            self._start_media()

    # ------------------------------------------------- UAS: INVITE checks

    def _check_extensions(self, request: Request, initial: bool) -> Response | Negotiated | None:
        """The extensions an INVITE/UPDATE asks for: the response refusing it
        (420, 421, 400, 422), or the session timer of our 2xx (or None)."""
        try:
            mode = prack_mode(self.param.get("prack", "supported"))
            cfg = self._timer_config()
            self._answer_plan()
        except ValueError as exc:
            log.warning("bad call parameters: %s", exc)
            return request.create_response(500)
        known = EXTENSIONS if mode != "off" else EXTENSIONS - {"100rel"}
        unknown = [tag for tag in option_tags(request, "require") if tag not in known]
        if unknown:
            # RFC 3261 8.2.2.3
            return request.create_response(420, headers={"unsupported": ", ".join(unknown)})
        if (
            initial
            and mode == "required"
            and not has_option(request, "supported", "100rel")
            and not has_option(request, "require", "100rel")
        ):
            # RFC 3262 3 / RFC 3261 21.4.16
            return request.create_response(421, headers={"require": "100rel"})
        result = uas_negotiate(cfg, request)
        if isinstance(result, Rejection):
            log.info("%s %s: %d %s", request.method(), request.callid(), result.code, result.reason)
            return request.create_response(result.code, result.reason, result.headers)
        return result

    # ------------------------------------- UAS: provisional and final answer

    def _answer_invite(  # noqa: PLR0917  (the parts of one answer)
        self,
        ctx: Context,
        request: Request,
        leg: Leg,
        from_: Addr,
        response: Response,
        timer: Negotiated | None,
        offered: bool,
    ) -> None:
        """Send (or hold back) our answer to an INVITE, after the provisional
        response the ``provisional`` parameter asks for."""
        code = response.code()
        provisional, delay = self._answer_plan()
        if ctx.established:
            provisional = None  # (a re-INVITE is answered at once)
        if 200 <= code < 300 and provisional:
            self._send_provisional(ctx, request, leg, from_, provisional, offered)
        held = _Held(request, response, leg, from_, timer)
        if 200 <= code < 300 and provisional:
            self._held = held
            if delay is None:
                return  # (until accept())
            if delay > 0:
                held.wait = self.ua.eventloop.add_timer(delay, self._answer_due)
                return
            held.due = True
            self._send_held()
            return
        self._send_final(held)

    def _answer_plan(self) -> tuple[int | None, float | None]:
        """The ``provisional`` status and ``answer_after`` delay, checked.

        Raises:
            ValueError: not a 101-199 status, or not a delay >= 0 (or None).
        """
        raw, after = self.param.get("provisional"), self.param.get("answer_after", 0)
        try:
            provisional = int(raw) if raw else None
            delay = float(after) if after is not None else None
        except (TypeError, ValueError):
            raise ValueError(f"bad provisional {raw!r} or answer_after {after!r}") from None
        if provisional is not None and not 100 < provisional < 200:
            raise ValueError(f"provisional must be a 101-199 status, not {provisional}")
        if delay is not None and not 0 <= delay < float("inf"):
            raise ValueError(f"answer_after must be >= 0 seconds or None, not {delay}")
        return provisional, delay

    def accept(self) -> bool:
        """Send our 2xx to the INVITE, held back by ``answer_after=None``.

        Returns:
            False if no answer is held back.
        """
        held = self._held
        if held is None:
            return False
        if held.wait is not None:
            held.wait.cancel()
            held.wait = None
        held.due = True
        self._send_held()
        return True

    def _answer_due(self, _timer: object) -> None:
        if self._held is not None:
            self._held.wait = None
            self._held.due = True
            self._send_held()

    def _send_held(self) -> None:
        held = self._held
        if held is None or not held.due or (self._sender is not None and self._sender.busy):
            return  # (RFC 3262 3: not before the PRACKs)
        self._held = None
        self._send_final(held)

    def _send_final(self, held: _Held) -> None:
        ctx = self.context
        if ctx is None or ctx.closed:
            return
        response = held.response
        code = response.code()
        if 200 <= code < 300:
            if self._early_done and not ctx.established:
                # offer and answer went in a reliable 18x and its PRACK (RFC 3262 5)
                response.set_body(b"")
                response.del_header("content-type")
            self._early_done = False
            for name, value in (("supported", self._supported()), ("allow", ALLOW)):
                if not response.get_headers(name):
                    response.set_header(name, value)
            if held.timer is not None:
                for name, value in uas_headers(held.timer).items():
                    response.set_header(name, value)
        self._respond(ctx, response, held.leg, held.from_)
        if 200 <= code < 300:
            self._apply_timer(held.timer, we_sent=False)
        elif code >= 300 and not ctx.established:
            self.cleanup()

    def _send_provisional(  # noqa: PLR0917  (the parts of one answer)
        self, ctx: Context, request: Request, leg: Leg, from_: Addr, code: int, offered: bool
    ) -> None:
        """A 180/183 before the 2xx: reliable when the caller supports 100rel;
        a 183 carries our answer (early media), a reliable one our offer when
        the INVITE had none (RFC 3262 5)."""
        mode = prack_mode(self.param.get("prack", "supported"))
        reliable = mode != "off" and (
            has_option(request, "supported", "100rel") or has_option(request, "require", "100rel")
        )
        sdp = self._local_sdp
        with_sdp = sdp is not None and (
            (reliable and (code == 183 or offered)) or (code == 183 and not offered)
        )
        # 12.1.1: a response that makes a dialog (an early one here) has a Contact
        headers = {"contact": self.ua.contact or f"<{leg.contact}>"}
        if with_sdp:
            headers["content-type"] = "application/sdp"
        response = request.create_response(
            code, headers=headers, body=bytes(sdp) if with_sdp and sdp is not None else b""
        )
        if with_sdp and not offered:
            self._early_done = reliable
            self._start_media()  # (early media: the peer's SDP is known)
        if not reliable:
            self._respond(ctx, response, leg, from_)
            return

        def transmit(resp: Response) -> None:
            self._respond(ctx, resp, leg, from_)

        def timed_out(_resp: Response) -> None:
            # RFC 3262 3: "SHOULD reject the original request with a 5xx"
            held, self._held = self._held, None
            if held is not None and held.wait is not None:
                held.wait.cancel()
            failure = request.create_response(500, "Reliable Provisional Response Not Acknowledged")
            self._send_final(_Held(request, failure, leg, from_, None))

        self._sender = ReliableSender(self.ua.eventloop, transmit, timed_out)
        self._sender.send(response)

    def _prack(self, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        """A PRACK: match its RAck, take an answer, let the held 2xx go."""
        sender = self._sender
        if sender is not None:
            code = sender.prack(request)
        else:
            code = 400 if parse_rack(header_value(request, "rack")) is None else 481
        if code != 200:
            log.info("PRACK in %s: %d", ctx.callid, code)
            msg = "Bad RAck" if code == 400 else None
            self._respond(ctx, request.create_response(code, msg), leg, from_)
            return
        try:
            peer = sdp_of(request)
        except BodyRejectedError as exc:
            self._respond(ctx, request.create_response(exc.code, headers=exc.headers), leg, from_)
            return
        if peer is not None and self._offer_pending:
            # the answer to the offer in our reliable 18x (RFC 3262 5)
            self._offer_pending = False
            if self._set_peer(peer):
                self._early_done = True
                self._start_media()
        self._respond(ctx, request.create_response(200), leg, from_)
        self._send_held()

    # --------------------------------------------------------------- UPDATE

    def update(self, **args: Any) -> Request:
        """Send an UPDATE (RFC 3311) in the early or confirmed dialog.

        Args:
            **args: ``offer`` (default True: a new SDP offer, e.g. with
                ``call_on_hold`` or another ``rtp_param``; False: no body),
                ``cb_final`` (``('OK' | 'FAIL', call, {'code':, 'packet':})``
                once it is over, after the 491 retries); the rest is merged
                into the call's parameters.

        Returns:
            The UPDATE sent.

        Raises:
            ValueError: no dialog yet, or an offer may not be sent now (one
                is pending either way, or the early dialog's offer/answer is
                not done: RFC 3311 5.1).
        """
        return self._send_update(dict(args), 0)

    def _send_update(self, args: dict[str, Any], attempt: int) -> Request:
        """:meth:`update`, the ``attempt``-th time after a 491."""
        ctx = self.context
        if ctx is None or ctx.closed or ctx.remote_tag is None:
            raise ValueError("UPDATE needs an early or confirmed dialog")
        with_offer = bool(args.pop("offer", True))
        cb = args.pop("cb_final", None)
        if with_offer and (self._offer_pending or (not ctx.established and not self._early_done)):
            raise ValueError("an offer is pending: no UPDATE with an offer now (RFC 3311 5.1)")
        self.param.update(args)
        headers: dict[str, str] = {}
        body = None
        previous = self._local_sdp
        if with_offer:
            body = bytes(self._local_offer())
            headers["content-type"] = "application/sdp"
            self._offer_pending = True
        if self._session.interval is not None:
            headers["session-expires"] = self._refresh_value()
            headers["min-se"] = str(self._timer_config().min_se)
            headers["supported"] = "timer"

        def done(err: int, code: int, packet: Packet | None) -> None:
            ok = not err and 200 <= code < 300 and isinstance(packet, Response)
            if with_offer:
                self._offer_pending = False
                if not ok and previous is not None:
                    # a rejected offer changes nothing (RFC 3264 8: the old session goes on)
                    self._local_sdp = previous
                    self.param["sdp"] = previous
            if code == 491 and with_offer and attempt < MAX_GLARE_RETRIES and not self.closed:
                self._retry_later({**args, "offer": True, "cb_final": cb}, attempt + 1)
                return
            if ok and isinstance(packet, Response):
                self._updated(packet, with_offer, "session-expires" in headers)
            invoke_callback(cb, "OK" if ok else "FAIL", self, {"code": code, "packet": packet})

        try:
            return self.endpoint.new_request(
                "UPDATE", ctx, self._on_final(done), body, headers=headers
            )
        except (ValueError, OverflowError):
            if with_offer:
                self._offer_pending = False
                self._local_sdp = previous
            raise

    def _retry_later(self, args: dict[str, Any], attempt: int) -> None:
        """The UPDATE of ``args`` again after a 491."""

        def again() -> None:
            try:
                self._send_update(dict(args), attempt)
            except (ValueError, OverflowError) as exc:
                log.info("UPDATE not sent again: %s", exc)
                invoke_callback(args.get("cb_final"), "FAIL", self, {"code": 491, "packet": None})

        self._after_glare(again)

    def _after_glare(self, action: Callable[[], object]) -> None:
        """RFC 3261 14.1 (RFC 3311 5.1): after a 491, try again in 2.1-4 s
        (we own the Call-ID: we called) or 0-2 s, in steps of 10 ms."""
        ctx = self.context
        owner = ctx is not None and not ctx.incoming
        delay = (210 + secrets.randbelow(191)) / 100 if owner else secrets.randbelow(201) / 100
        log.info("491: our request again in %.2f s", delay)

        def fire(_timer: object) -> None:
            self._retry = None
            if not self.closed:
                action()

        if self._retry is not None:
            self._retry.cancel()
        self._retry = self.ua.eventloop.add_timer(delay, fire)

    def _updated(self, response: Response, with_offer: bool, refresh: bool) -> None:
        """The 2xx to our UPDATE: the answer, the session timer."""
        if with_offer:
            try:
                peer = sdp_of(response)
            except BodyRejectedError as exc:
                log.warning("unusable answer to our UPDATE: %s", exc.reason)
                peer = None
            if peer is not None and self._set_peer(peer):
                self._start_media()
        if refresh or header_value(response, "session-expires") is not None:
            self._apply_timer(uac_result(self._session.interval, response), we_sent=True)

    def _update_received(self, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        """UPDATE (RFC 3311): an offer answered in its 200, media restarted;
        491 while our own offer is pending (5.2); a session refresh."""
        checked = self._check_extensions(request, initial=False)
        if isinstance(checked, Response):
            self._respond(ctx, checked, leg, from_)
            return
        try:
            peer = sdp_of(request)
        except BodyRejectedError as exc:
            self._respond(ctx, request.create_response(exc.code, headers=exc.headers), leg, from_)
            return
        if peer is not None and self._offer_pending:
            log.info("UPDATE with an offer while ours is pending in %s: 491", ctx.callid)
            self._respond(ctx, request.create_response(491), leg, from_)
            return
        headers = uas_headers(checked) if checked is not None else {}
        if peer is None:
            self._respond(ctx, request.create_response(200, headers=headers), leg, from_)
        else:
            try:
                sdp = self._local_answer(peer)
            except SDPError as exc:
                log.info("UPDATE in %s: %s: 488", ctx.callid, exc)
                self._respond(ctx, request.create_response(488), leg, from_)
                return
            headers["content-type"] = "application/sdp"
            resp = request.create_response(200, headers=headers, body=bytes(sdp))
            self._respond(ctx, resp, leg, from_)
            if self._set_peer(peer):
                self._start_media()
        if ctx.established:
            self._apply_timer(checked, we_sent=False)

    # ------------------------------------------------------ session timer

    def _refresh_session(self) -> None:
        """Time to refresh (RFC 4028 10: we are the refresher)."""
        ctx = self.context
        if ctx is None or ctx.closed or self.closed:
            return
        cfg = self._timer_config()
        method = cfg.refresh
        if (
            method == "update"
            and self._peer_methods is not None
            and ("UPDATE" not in self._peer_methods)
        ):
            method = "invite"  # (the peer does not do UPDATE)
        try:
            if method == "update":
                self.update(offer=False, cb_final=self._refreshed)
            else:
                self._refresh_invite(ctx)
        except (ValueError, OverflowError) as exc:
            # (an INVITE or offer in progress: that transaction refreshes too)
            log.info("no session refresh for %s now: %s", ctx.callid, exc)

    def _refreshed(self, status: str, _call: object, info: dict[str, Any]) -> None:
        code = info.get("code") or 0
        packet = info.get("packet")
        if status == "OK":
            return
        if code == 422 and isinstance(packet, Response):
            retry = self._retry_422(packet)
            if retry is not None and self._session.interval is not None:
                self._session.interval = self._asked_se or self._session.interval
                self._refresh_session()
        elif code in (405, 501):
            self._peer_methods = frozenset({"INVITE"})
            ctx = self.context
            if ctx is not None and not ctx.closed:
                try:
                    self._refresh_invite(ctx)
                except (ValueError, OverflowError) as exc:
                    log.info("no session refresh: %s", exc)

    def _refresh_invite(self, ctx: Context) -> None:
        """A re-INVITE with our SDP unchanged (RFC 4028 10, RFC 3264 8)."""
        if self._offer_pending:
            raise ValueError("an offer is pending")
        sdp = self._local_sdp
        headers = self._extension_headers(initial=False)
        body = None
        if sdp is not None:
            body = bytes(sdp)
            headers["content-type"] = "application/sdp"
            self._offer_pending = True

        def done(err: int, code: int, packet: Packet | None) -> None:
            self._offer_pending = False
            if code == 422 and isinstance(packet, Response) and self._retry_422(packet):
                self._session.interval = self._asked_se or self._session.interval
                self._refresh_session()
                return
            if err or not isinstance(packet, Response) or not 200 <= code < 300:
                log.info("session refresh of %s failed: %d/%d", ctx.callid, err, code)
                return
            try:
                peer = sdp_of(packet)
            except BodyRejectedError:
                peer = None
            old = self.param.get("sdp_peer")
            changed = old is None or peer is None or old.get_media() != peer.get_media()
            if peer is not None and self._set_peer(peer) and changed:
                self._start_media()
            self._apply_timer(uac_result(self._asked_se, packet), we_sent=True)

        try:
            self.endpoint.new_request("INVITE", ctx, self._on_final(done), body, headers=headers)
        except (ValueError, OverflowError):
            self._offer_pending = False
            raise

    def _session_expired(self) -> None:
        """No refresh in time (RFC 4028 10): end the call with BYE."""
        if self.closed:
            return
        ctx = self.context
        log.info("session of %s expired: BYE", ctx.callid if ctx else "?")
        self.error = "session expired"
        self.bye()
