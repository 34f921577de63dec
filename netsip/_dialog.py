"""The state of one call or dialog: port of Perl's ``Net::SIP::Endpoint::Context``.

A :class:`Context` is what the :class:`~netsip.endpoint.Endpoint` keeps per
Call-ID: the From/To/Contact of the local side, the dialog state of RFC 3261
12 (local and remote tag, remote target, route set, local and remote CSeq),
the credentials for digest challenges, the client transactions still waiting
for their final response, and the INVITE server transaction still waiting
for the application's final answer. The context builds the requests of the
call (:meth:`Context.new_request`); sending them, matching responses and
every timer are the endpoint's business.

How the dialog state is kept (RFC 3261 12.1):

* UAC: the first 2xx to the INVITE fixes the remote tag (its To tag), the
  remote target (its Contact) and the route set (its Record-Route, reversed).
  A 2xx with another To tag (a forking proxy, 13.2.2.4) makes a new Context
  for that dialog, kept in :attr:`Context.forks` of the first.
* UAS: the INVITE fixes them: the remote tag is its From tag, the remote
  target its Contact, the route set its Record-Route in order; the local tag
  is added to the request's To, so that every response built from it with
  :meth:`Request.create_response` carries it.
* A target refresh (re-INVITE, UPDATE, RFC 3311 5.1) replaces the remote
  target: at the UAS when the request arrives, at the UAC with its 2xx.

Differences from Net::SIP:

- The dialog is identified by Call-ID and both tags: a request with a wrong
  tag gets 481 (Perl matches on the Call-ID alone), and forked 2xx responses
  each get a dialog of their own (Perl keeps one context per Call-ID).
- Requests in a dialog follow RFC 3261 12.2.1.1 with strict routers too
  (the first route as Request-URI, the remote target as the last Route);
  Perl only handles loose routing.
- The route set and the remote target of a UAC dialog come from the 2xx
  even when the context was created with a Contact (Perl keeps its route
  set then).
- Typed attributes instead of a hash, ``from_`` for ``from``, and the remote
  target as :attr:`Context.remote_target` (Perl: ``remote_contact``).
"""

from __future__ import annotations

import errno
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from netsip._abnf import TAG_VALUE_RE
from netsip._log import get_logger
from netsip.digest import Auth, NonceCounter
from netsip.eventloop import TimerLike
from netsip.leg import Leg
from netsip.packet import Request, Response
from netsip.transaction import DialogRoute, contact_uri
from netsip.util import Addr, sip_hdrval2parts

__all__ = ["MAX_CSEQ", "Auth", "Context", "ContextArgs", "header_tag", "name_addr_uri"]

log: Final = get_logger(__name__)

#: RFC 3261 8.1.1.5: the CSeq number "MUST be expressible as a 32-bit
#: unsigned integer" (the initial one "less than 2**31": ours start at 1).
MAX_CSEQ: Final = 2**32 - 1


#: The keys a mapping given instead of a Context may hold (Perl's hash keys).
ContextArgs = Mapping[str, Any]


def header_tag(value: str | None) -> str | None:
    """The ``tag`` parameter of a From/To header value, or None."""
    if not value:
        return None
    params = value.rpartition(">")[2] if "<" in value else value
    if ";" not in params:
        return None  # (no parameter, so no tag: the To of a new request)
    m = TAG_VALUE_RE.search(params)
    return m.group(1) if m else None


def name_addr_uri(value: str) -> str:
    """The URI of a From/To/Contact value (``"Bob" <sip:b@h>;tag=1`` -> ``sip:b@h``)."""
    data, _ = sip_hdrval2parts("to", value)
    data = data.strip()
    if "<" in data:
        start = data.index("<") + 1
        end = data.find(">", start)
        return data[start:end] if end > 0 else data[start:]
    return data


def new_tag() -> str:
    """A fresh random tag (RFC 3261 19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(8)


@dataclass(slots=True, eq=False)
class ClientTxn:
    """A request of a context waiting for its final response."""

    request: Request
    tid: str
    method: str
    callback: Any
    leg: Leg | None
    dst_addr: Any
    #: Timer B (INVITE, until the first provisional) or F (non-INVITE)
    timer: TimerLike | None = None
    #: a provisional response arrived: a CANCEL may be sent (RFC 3261 9.1)
    provisional: bool = False
    #: the application asked to cancel (sent once ``provisional``)
    cancel: bool = False
    cancel_callback: Any = None
    cancel_sent: bool = False
    #: redirects (302) followed for this request
    redirects: int = 0
    #: it carries credentials answering an earlier challenge (a refresh)
    preemptive: bool = False


@dataclass(slots=True, eq=False)
class ServerInvite:
    """An INVITE received, not yet answered with a final response."""

    request: Request
    tid: str
    cseq: int
    leg: Leg
    from_: Addr
    #: the 100 Trying timer (RFC 3261 17.2.1), while nothing was sent
    timer: TimerLike | None = None
    #: the last provisional response sent (for a retransmitted INVITE)
    last: Response | None = None


@dataclass(slots=True, eq=False)
class Acked:
    """The ACK sent for a 2xx, kept to answer its retransmissions (13.2.2.4)."""

    cseq: int
    ack: Request
    leg: Leg | None
    dst_addr: Any


@dataclass(slots=True, eq=False)
class Context:
    """A call: its parties, its dialog, and its outstanding transactions.

    Attributes:
        from_: the From of the requests we send (with our tag), or of the
            request that created an incoming context (with the peer's tag).
        to: the To, likewise (the peer's tag once the dialog exists).
        contact: the local Contact, or None to let the leg add one.
        incoming: True when the peer started the call (we are the UAS).
        auth: credentials for 401/407 challenges (see :data:`Auth`).
        route: the route set (Route header values, in order of use).
        callid: the Call-ID.
        cseq: the local CSeq number (the last one used).
        method: the method that created the context.
        remote_target: the URI requests in the dialog go to (the peer's
            Contact), None before the dialog exists.
        local_tag, remote_tag: the dialog's tags (``remote_tag`` None
            while there is no dialog).
        remote_cseq: the highest CSeq number received from the peer.
        established: a 2xx to the INVITE was sent or received.
        closed: :meth:`Endpoint.close_context` was called.
        error: the errno of the last failure reported to the callback.
        expires: for REGISTER, the expiry the registrar granted.
        forks: the other dialogs of a forked INVITE, by remote tag.
        leg: the leg the dialog was set up on (in-dialog requests use it).
    """

    from_: str
    to: str
    contact: str | None = None
    incoming: bool = False
    auth: Auth | None = None
    route: list[str] = field(default_factory=list)
    callid: str = ""
    cseq: int = 0
    method: str = ""
    remote_target: str | None = None
    local_tag: str = ""
    remote_tag: str | None = None
    remote_cseq: int | None = None
    established: bool = False
    closed: bool = False
    error: int = 0
    expires: int | None = None
    forks: dict[str, Context] | None = None
    leg: Leg | None = None
    #: the ACK being sent for a 2xx to INVITE, while the callback runs (the
    #: callback may give it a body: an SDP answer to an offer in the 2xx)
    ack: Request | None = None
    nonces: NonceCounter | None = None
    # -- the endpoint's bookkeeping
    transactions: list[ClientTxn] = field(default_factory=list, repr=False)
    server: ServerInvite | None = field(default=None, repr=False)
    acked: Acked | None = field(default=None, repr=False)
    #: the first context of a forked INVITE (None: this is the first)
    primary: Context | None = field(default=None, repr=False)
    #: the INVITE whose 2xx created the dialog, while forks may still answer
    completed: ClientTxn | None = field(default=None, repr=False)
    timers: dict[str, TimerLike] = field(default_factory=dict, repr=False)
    #: the tid of our 2xx to an INVITE while it waits for the ACK
    awaiting_ack: str | None = field(default=None, repr=False)
    #: the last 401/407 answered (a REGISTER refresh answers it again)
    challenge: Response | None = field(default=None, repr=False)
    callback: Any = field(default=None, repr=False)
    #: REGISTER: the request to send again on refresh, and whether to
    register: Request | None = field(default=None, repr=False)
    #: REGISTER: the leg and destination given, for refreshes and unregister
    register_via: tuple[Leg | None, object] = field(default=(None, None), repr=False)
    refresh: bool = False

    # ------------------------------------------------------------ creation

    def __post_init__(self) -> None:
        if self.local_tag:
            return  # (incoming_from: all given)
        if not self.callid:
            self.callid = f"{secrets.token_hex(16)}"
        # our tag goes on our side: To when incoming, From otherwise
        side = self.to if self.incoming else self.from_
        tag = header_tag(side)
        if tag is None:
            tag = new_tag()
            if self.incoming:
                self.to = f"{self.to};tag={tag}"
            else:
                self.from_ = f"{self.from_};tag={tag}"
        self.local_tag = tag

    @classmethod
    def from_args(cls, args: ContextArgs, method: str) -> Context:
        """A new outgoing context from a mapping (Perl's hash of context keys).

        ``from_`` (or ``from``) and ``to`` are required; ``contact``, ``auth``,
        ``route`` (a value or a list), ``callid`` and ``cseq`` are optional.

        Raises:
            ValueError: a required key is missing or a key is unknown.
        """
        known = {"from_", "from", "to", "contact", "auth", "route", "callid", "cseq", "incoming"}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"unknown context keys: {', '.join(sorted(unknown))}")
        frm = args.get("from_", args.get("from"))
        to = args.get("to")
        if not frm or not to:
            raise ValueError("a context needs from_ and to")
        route = args.get("route") or []
        if isinstance(route, str):
            route = [route]
        return cls(
            from_=str(frm),
            to=str(to),
            contact=args.get("contact"),
            incoming=bool(args.get("incoming", False)),
            auth=args.get("auth"),
            route=list(route),
            callid=str(args.get("callid") or ""),
            cseq=int(args.get("cseq") or 0),
            method=method,
        )

    @classmethod
    def incoming_from(cls, request: Request, leg: Leg) -> Context:
        """The context of a request (without To tag) that starts a call or
        transaction here.

        Our tag is the one :meth:`Request.create_response` puts in the
        responses (:meth:`Request.response_tag`): the application's responses
        carry it without the request being changed.
        """
        to = request.get_header("to") or ""
        frm = request.get_header("from") or ""
        tag = request.response_tag()
        return cls(
            from_=frm,
            to=f"{to};tag={tag}",
            incoming=True,
            callid=request.callid() or "",
            method=request.method(),
            leg=leg,
            local_tag=tag,
            remote_tag=header_tag(frm),
            remote_target=contact_uri(request),
            route=request.get_headers("record-route"),
            remote_cseq=request.cseq_number(),
        )

    def fork(self, response: Response, remote_target: str | None) -> Context:
        """A new dialog of this (outgoing) call, set up by a 2xx with another tag."""
        return Context(
            from_=self.from_,
            to=response.get_header("to") or self.to,
            contact=self.contact,
            auth=self.auth,
            route=list(reversed(response.get_headers("record-route"))),
            callid=self.callid,
            cseq=self.cseq,
            method=self.method,
            remote_target=remote_target,
            remote_tag=header_tag(response.get_header("to")),
            established=True,
            leg=self.leg,
            primary=self,
            callback=self.callback,
        )

    # ------------------------------------------------------------- queries

    def answering(self, server: ServerInvite) -> bool:
        """``server`` is still the INVITE transaction this context answers.

        A method of its own: the caller has just set ``server``, and a callback
        since may have ended it (a type checker would narrow ``self.server``
        past the callback, and the compiled build would trust that).
        """
        return self.server is server

    def peer(self) -> str:
        """The other party (From when incoming, else To) without its parameters."""
        value = self.from_ if self.incoming else self.to
        data, _ = sip_hdrval2parts("from", value)
        return data

    def find_outstanding_requests(
        self, *, request: Request | None = None, method: str | None = None
    ) -> list[Request]:
        """The requests still waiting for a final response, newest first.

        Args:
            request: only this request (compared by identity).
            method: only requests of this method.
        """
        return [
            t.request
            for t in reversed(self.transactions)
            if (request is None or t.request is request) and (method is None or t.method == method)
        ]

    def set_callback(self, cb: object) -> None:
        """Set the callback for responses and for requests in this context.

        It is invoked as ``(endpoint, ctx, error, code, packet, leg, from_)``.
        """
        self.callback = cb

    def dialog_for(self, tag: str | None) -> Context | None:
        """The dialog of this call with the remote tag ``tag`` (self or a fork)."""
        if tag is None or tag == self.remote_tag or self.remote_tag is None:
            return self
        if self.forks is not None:
            return self.forks.get(tag)
        return None

    # ------------------------------------------------------------ requests

    def next_cseq(self) -> int:
        """Count the local CSeq up (RFC 3261 12.2.1.1).

        Raises:
            OverflowError: the number would leave the range of 8.1.1.5.
        """
        if self.cseq >= MAX_CSEQ:
            raise OverflowError(errno.EOVERFLOW, "CSeq number exhausted")
        self.cseq += 1
        return self.cseq

    def new_request(self, method: str, body: bytes | str | None = None, **args: Any) -> Request:
        """Build (not send) a request of this context.

        In a dialog its Request-URI and Route follow the route set (RFC 3261
        12.2.1.1, loose and strict routers); outside one the URI is ``uri``
        or the To's URI, with the context's ``route`` as Route.

        Args:
            method: the method (upper-cased).
            body: the body.
            **args: ``uri`` (the Request-URI), ``cseq`` (a number to use
                instead of the next one), ``headers`` (a mapping or pairs), and
                any other keyword as a header (``content_type=...`` becomes
                ``Content-Type``; a list gives several values).

        Raises:
            OverflowError: the local CSeq is exhausted.
        """
        method = method.upper()
        uri = args.pop("uri", None)
        cseq = args.pop("cseq", None)
        extra = args.pop("headers", None)
        if cseq is None:
            cseq = self.next_cseq()
        frm, to = (self.to, self.from_) if self.incoming else (self.from_, self.to)
        hdrs: list[tuple[str, Any]] = [
            ("from", frm),
            ("to", to),
            ("call-id", self.callid),
            ("cseq", f"{int(cseq)} {method}"),
            ("max-forwards", "70"),
        ]
        if self.contact and method not in ("CANCEL", "ACK"):
            hdrs.append(("contact", self.contact))
        if extra:
            items = extra.items() if isinstance(extra, Mapping) else extra
            hdrs.extend((str(k).lower(), v) for k, v in items)
        for key, value in args.items():
            if value is not None:
                hdrs.append((key.replace("_", "-").lower(), value))
        dialog = self.remote_tag is not None and self.remote_target is not None
        request = Request(method, uri or self._default_uri(dialog), hdrs, body or b"")
        if dialog and uri is None:
            self.dialog_route().apply(request)
        elif self.route:
            for value in self.route:
                request.add_header("route", value)
        return request

    def _default_uri(self, dialog: bool) -> str:
        if dialog and self.remote_target is not None:
            return self.remote_target
        return name_addr_uri(self.from_ if self.incoming else self.to)

    def dialog_route(self) -> DialogRoute:
        """The remote target and route set as a :class:`DialogRoute`."""
        return DialogRoute(self.remote_target or self._default_uri(False), tuple(self.route))
