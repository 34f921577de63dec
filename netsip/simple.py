"""The user agent: port of Perl's ``Net::SIP::Simple``.

:class:`Simple` puts the layers together for a program that registers,
calls and answers: an :class:`~netsip.eventloop.EventLoop`, a
:class:`~netsip.dispatcher.Dispatcher` with its legs, and an
:class:`~netsip.endpoint.Endpoint`. Each call is a :class:`Call` (see
:mod:`netsip._call`), with its SDP (:mod:`netsip.sdp`) and its RTP media
(:mod:`netsip.rtp`) on the same loop::

    ua = Simple(from_="sip:alice@example.org", leg="127.0.0.1:5070")
    ua.register(registrar="sip:127.0.0.1:5060")
    call = ua.invite("sip:bob@127.0.0.1:5080",
                     init_media=ua.rtp("send_recv", "hello.wav"))
    ua.loop(10)
    call.bye()

Blocking methods (``register`` without ``cb_final``, ``invite`` without
``cb_final``) run the event loop until their outcome, as in Perl; with a
``cb_final`` callback they return at once. On an
:class:`~netsip.aio.AsyncioEventLoop` inside a running asyncio loop they
raise ``RuntimeError`` before sending anything (see :mod:`netsip.aioua`).

Differences from Net::SIP:

- Without :meth:`Simple.listen`, an OPTIONS is answered 200 (with Allow,
  Accept and Supported) and any other request 405 with Allow; with it, a
  request other than INVITE, OPTIONS and MESSAGE (``cb_message``) gets 405
  (Perl drops them silently and the peer retransmits until its timeout).
- The Contact of a REGISTER says how to reach the leg (``;transport=tcp``,
  ``sips:``; RFC 3261 8.1.1.8), where Perl writes the From's scheme and the
  leg's address only.
- A registration refreshes itself before it expires (the endpoint's
  ``refresh``); :meth:`Simple.cleanup` does not unregister.
- ``Simple`` is a context manager (``with Simple(...) as ua``) that cleans up.
- ``auth_*`` arguments of :meth:`listen`, :meth:`create_registrar` and
  :meth:`create_stateless_proxy` put an :class:`~netsip.authorize.Authorize`
  in front, in a :class:`~netsip.chain.ReceiveChain`, as in Perl;
  ``auth_i_am_proxy`` is passed on (Perl drops it, so its proxy challenges
  with 401 where RFC 3261 22.3 asks for 407).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from netsip import rtp as rtp_module
from netsip._call import ALLOW, SUPPORTED, Call
from netsip._dialog import Context, name_addr_uri
from netsip.aio import check_can_block
from netsip.authorize import Authorize
from netsip.chain import ReceiveChain
from netsip.dispatcher import Dispatcher
from netsip.endpoint import Endpoint
from netsip.eventloop import EventLoop
from netsip.flows import FlowTable
from netsip.leg import Leg
from netsip.packet import Request
from netsip.proxy import StatelessProxy
from netsip.registrar import Registrar
from netsip.stateful_proxy import StatefulProxy
from netsip.util import (
    DEFAULT_PORTS,
    PROTOS,
    Addr,
    Proto,
    Var,
    hostname2ip,
    invoke_callback,
    ip_is_v46,
    sip_uri2domain,
    sip_uri2sockinfo,
)

__all__ = ["Call", "Simple"]

log = logging.getLogger(__name__)

#: the headers of a 200 to OPTIONS, unless ``options`` says otherwise (RFC 3261 11.2)
DEFAULT_OPTIONS: dict[str, str] = {
    "allow": ALLOW,
    "accept": "application/sdp",
    "accept-encoding": "",
    "accept-language": "en",
    "supported": SUPPORTED,
}

_S = TypeVar("_S")

LegSpec = Leg | str | socket.socket | Mapping[str, Any]


class Simple:
    """A SIP user agent on one event loop.

    Args:
        from_: our address (``"sip:alice@example.org"``, or ``"alice"`` with
            ``domain``).
        leg: one leg: a :class:`Leg`, ``"[proto:]ip[:port]"`` (proto ``udp``,
            ``tcp``, ``tls``, ``ws`` or ``wss``; the port defaults to the
            proto's), a socket, or a mapping of :class:`Leg` arguments.
            ``legs``: several.
        outgoing_proxy: ``"ip:port"`` or a SIP URI every request goes to.
        registrar: the default registrar of :meth:`register`.
        auth: credentials for 401/407: ``(user, password)``, a mapping realm
            -> pair, or a callable (see :meth:`netsip.packet.Request.authorize`).
        domain: the domain of a ``from_`` or ``to`` without one.
        contact: our Contact (default: the leg's address with the user of From).
        route: Route header values for new calls.
        loop: the event loop (default: the dispatcher's, or a new one).
        dispatcher: a dispatcher to share (default: a new one).
        tls: TLS settings for the legs this creates.
        options: headers of the 200 to OPTIONS (over :data:`DEFAULT_OPTIONS`).
        domain2proxy: ``{domain: proxy}`` for the dispatcher.

    Raises:
        ValueError: no leg and nothing to derive one from, or a bad leg.
    """

    def __init__(
        self,
        *,
        from_: str | None = None,
        leg: LegSpec | None = None,
        legs: Sequence[LegSpec] | None = None,
        outgoing_proxy: str | None = None,
        registrar: str | None = None,
        auth: Any = None,
        domain: str | None = None,
        contact: str | None = None,
        route: str | Sequence[str] | None = None,
        loop: EventLoop | None = None,
        dispatcher: Dispatcher | None = None,
        tls: Mapping[str, Any] | None = None,
        options: Mapping[str, str] | None = None,
        domain2proxy: Mapping[str, object] | None = None,
    ) -> None:
        self.options: dict[str, str] = {**DEFAULT_OPTIONS}
        #: the flows shared by the registrar and proxy this agent creates (RFC 5626)
        self.flows = FlowTable()
        self.options.update({k.lower(): v for k, v in (options or {}).items()})
        self._own_loop = dispatcher is None and loop is None
        if dispatcher is not None:
            self.dispatcher = dispatcher
        else:
            self.dispatcher = Dispatcher(
                (), loop if loop is not None else EventLoop(), domain2proxy=domain2proxy
            )
        self._own_dispatcher = dispatcher is None
        eventloop = self.dispatcher.eventloop
        assert isinstance(eventloop, EventLoop)
        self.eventloop: EventLoop = eventloop
        self._tls = tls
        specs: list[LegSpec] = list(legs or ())
        if leg is not None:
            specs.insert(0, leg)
        self._legs: list[Leg] = []
        try:
            for spec in specs:
                self._legs.append(self._make_leg(spec))
            for dst in (registrar, outgoing_proxy):
                if dst and not any(x.can_deliver_to(dst) for x in self._all_legs()):
                    self._legs.append(self._leg_to(dst))
        except BaseException:
            self._close_legs()
            raise
        if self._legs:
            self.dispatcher.add_leg(*self._legs)
        if not self.dispatcher.get_legs():
            self.cleanup()
            raise ValueError("a user agent needs a leg, an outgoing_proxy or a registrar")
        if outgoing_proxy:
            self.dispatcher.outgoing_proxy = outgoing_proxy
        self.endpoint = Endpoint(self.dispatcher)
        self.endpoint.set_application(self._default_application)
        if from_ and domain is None:
            uri = name_addr_uri(from_)
            domain = sip_uri2domain(uri) if "@" in uri else None
        if from_ and "@" not in from_ and " " not in from_:
            if domain is None:
                raise ValueError(f"from_ {from_!r} has no domain and no domain is given")
            scheme = "sips" if self.dispatcher.get_legs(proto="tls") else "sip"
            from_ = f"{from_} <{scheme}:{from_}@{domain}>"
        self.from_ = from_
        self.domain = domain
        self.contact = contact
        self.auth = auth
        self.route: list[str] | None = (
            [route] if isinstance(route, str) else list(route or []) or None
        )
        self.registrar = registrar
        self.calls: list[Call] = []
        self._error: str | None = None
        self._listen_args: dict[str, Any] | None = None

    # ------------------------------------------------------------------ legs

    def _make_leg(self, spec: LegSpec) -> Leg:
        if isinstance(spec, Leg):
            return spec
        if isinstance(spec, socket.socket):
            return Leg(sock=spec, tls=self._tls)
        if isinstance(spec, Mapping):
            args = dict(spec)
            if self._tls and "tls" not in args:
                args["tls"] = self._tls
            return Leg(**args)
        proto, rest = _split_proto(spec)
        info = sip_uri2sockinfo(f"sip:{rest}") if rest else None
        if info is None:
            raise ValueError(f"invalid leg specification: {spec!r}")
        _p, host, port, family = info
        addr = host
        if family is None:
            addr = _resolve(host)
            family = ip_is_v46(addr)
        return Leg(
            proto=cast(Proto, proto or "udp"),
            addr=addr,
            port=port if port is not None else DEFAULT_PORTS[proto or "udp"],
            family=family,
            host=host,
            tls=self._tls,
        )

    def _leg_to(self, dst: str) -> Leg:
        """A leg that can reach ``dst`` (a registrar or proxy without one)."""
        info = sip_uri2sockinfo(dst if ":" in dst and dst.startswith("sip") else f"sip:{dst}")
        if info is None:
            raise ValueError(f"invalid destination {dst!r}")
        proto, host, port, family = info
        addr = host if family is not None else _resolve(host)
        return Leg(
            proto=cast(Proto, proto or "udp"),
            dst={"host": host, "addr": addr, "port": port or 0, "family": ip_is_v46(addr)},
            tls=self._tls,
        )

    def _all_legs(self) -> list[Leg]:
        return [*self.dispatcher.get_legs(), *self._legs]

    def default_leg(self) -> Leg:
        """The first leg of the dispatcher."""
        return self.dispatcher.get_legs()[0]

    def leg_for(self, target: str) -> Leg:
        """A leg that can deliver to ``target`` (the outgoing proxy's, if any)."""
        dst = self.dispatcher.outgoing_proxy or target
        uri = name_addr_uri(dst)
        if not uri.startswith(("sip:", "sips:")):
            uri = f"sip:{uri}"
        for leg in self.dispatcher.get_legs():
            if leg.can_deliver_to(uri):
                return leg
        return self.default_leg()

    def _close_legs(self) -> None:
        for leg in self._legs:
            leg.close()
        self._legs = []

    # ------------------------------------------------------------------ loop

    def loop(self, timeout: float | None = None, *stopvars: Any) -> None:
        """Run the event loop (see :meth:`EventLoop.loop`).

        A stop variable is a :class:`Var`, a zero-argument callable, or a list
        (true once it is not empty: a callback can append to it).
        """
        self.eventloop.loop(timeout, *(_stop_of(v) for v in stopvars))

    def add_timer(self, when: float, cb: object, repeat: float | None = None) -> Any:
        """Add a timer to the loop (see :meth:`EventLoop.add_timer`)."""
        return self.dispatcher.add_timer(when, cb, repeat)

    def rtp(self, method: str, *args: Any) -> Any:
        """Call ``netsip.rtp.<method>`` (or ``media_<method>``) with ``args``.

        ``ua.rtp("recv_echo")`` is :func:`netsip.rtp.media_recv_echo`.

        Raises:
            ValueError: no such function.
        """
        fn = getattr(rtp_module, method, None) or getattr(rtp_module, f"media_{method}", None)
        if not callable(fn) or method.startswith("_"):
            raise ValueError(f"no such method {method!r} in netsip.rtp")
        return fn(*args)

    def error(self) -> str | None:
        """The last error (why the last blocking call failed)."""
        return self._error

    def cleanup(self) -> None:
        """Close every call, the endpoint and the legs (and loop) this created."""
        for call in list(self.calls):
            call.cleanup()
        self.calls.clear()
        endpoint = getattr(self, "endpoint", None)
        if endpoint is not None:
            endpoint.close()
        if self._legs:
            self.dispatcher.remove_leg(*self._legs)
        self._close_legs()
        if self._own_dispatcher:
            self.dispatcher.close()
        if self._own_loop:
            self.eventloop.close()

    def __enter__(self) -> Simple:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def forget_call(self, call: Call) -> None:
        """Drop a call from :attr:`calls` (its cleanup calls this)."""
        if call in self.calls:
            self.calls.remove(call)

    # -------------------------------------------------------------- register

    def register(self, **args: Any) -> int | None:
        """Register at the registrar (RFC 3261 10).

        Args:
            **args: ``registrar`` (default: the constructor's), ``leg``,
                ``from_``, ``contact``, ``expires`` (default 900), ``auth``,
                ``refresh`` (default True), ``cb_final``; the rest goes to
                :meth:`Endpoint.register`.

        Returns:
            Without ``cb_final``: the expires the registrar granted, or None
            on failure (:meth:`error` says why). With ``cb_final``: None at
            once; ``cb_final`` gets ``('OK', {'expires':, 'packet':})`` or
            ``('FAIL', {'code':, 'packet':})`` / ``('FAIL', {'errno':})`` for
            each final outcome (refreshes too): Perl's ``%INFO`` is a dict.

        Raises:
            ValueError: no registrar or no from.
        """
        registrar = args.pop("registrar", None) or self.registrar
        if not registrar:
            raise ValueError("no registrar")
        if not registrar.startswith(("sip:", "sips:")):
            registrar = f"sip:{registrar}"
        leg = args.pop("leg", None) or self.leg_for(registrar)
        from_ = args.pop("from_", None) or args.pop("from", None) or self.from_
        if not from_:
            raise ValueError("unknown from")
        contact = args.pop("contact", None) or self.contact or _contact_for(leg, from_)
        auth = args.pop("auth", None) or self.auth
        cb_final = args.pop("cb_final", None)
        if cb_final is None:
            check_can_block(self.eventloop)  # (before anything is sent)
        stop: Var[str] = Var()
        granted: Var[int] = Var()
        target = cb_final if cb_final is not None else stop

        def registered(
            _ep: Endpoint,
            ctx: Context,
            err: int,
            code: int,
            packet: Any,
            _leg: Any,
            _from: Any,
        ) -> None:
            if 200 <= code < 300:
                expires = ctx.expires or 0
                granted.value = expires
                invoke_callback(target, "OK", {"expires": expires, "packet": packet})
            elif code >= 300:
                self._error = f"Failed with code {code}"
                invoke_callback(target, "FAIL", {"code": code, "packet": packet})
            elif err:
                self._error = f"Failed with error {err}"
                invoke_callback(target, "FAIL", {"errno": err})

        self.endpoint.register(
            registrar=registrar,
            from_=from_,
            contact=contact,
            auth=auth,
            callback=registered,
            leg=leg,
            **args,
        )
        if cb_final is not None:
            return None
        self.loop(None, stop)
        return granted.value if stop.value == "OK" else None

    # ----------------------------------------------------------------- calls

    def invite(self, to: str | Mapping[str, Any], **args: Any) -> Call:
        """Call ``to`` (a SIP address, or a mapping of context keys with ``to``).

        ``args`` are the call's parameters (see :class:`Call`); without
        ``cb_final`` this waits for the final response.

        Returns:
            The call (keep it: it holds the callbacks).

        Raises:
            ValueError: no peer, or no domain for a bare user name.
        """
        ctx = dict(to) if isinstance(to, Mapping) else {"to": to}
        peer = str(ctx.get("to") or "")
        if not peer:
            raise ValueError("need peer of call")
        if " " not in peer and "@" not in peer and not peer.startswith(("sip:", "sips:")):
            if not self.domain:
                raise ValueError("no domain and no fully qualified to")
            scheme = "sips" if self.dispatcher.get_legs(proto="tls") else "sip"
            ctx["to"] = f"{peer} <{scheme}:{peer}@{self.domain}>"
        if not self.from_ and not ctx.get("from_"):
            raise ValueError("unknown from")
        if args.get("cb_final") is None:
            check_can_block(self.eventloop)  # (before anything is sent)
        call = Call(self, ctx, {})
        self.calls.append(call)
        call.reinvite(**args)
        return call

    def listen(self, **args: Any) -> Endpoint | ReceiveChain:
        """Accept incoming calls (and answer OPTIONS), with ``args`` as each
        call's parameters.

        Args:
            **args: the call parameters (see :class:`Call`), and ``filter``
                (``(from, request) -> bool``), ``cb_create`` (``(call,
                request, leg, from_)``, a false result rejects the call; a
                callable result becomes the call's context callback),
                ``cb_message`` (``(ua, request)`` for MESSAGE outside calls),
                and ``auth_*``: the arguments of
                :class:`~netsip.authorize.Authorize` without the prefix
                (``auth_user2pass``, ``auth_realm``, ...); with them an
                authorizer checks every request before the endpoint does.

        Returns:
            The endpoint (the last object of a receive chain), or with
            ``auth_*`` the receiver made of the authorizer and the endpoint.
        """
        auth = self._auth_from(args)
        self._listen_args = dict(args)
        if auth is None:
            return self.endpoint
        return self.create_chain([auth, self.endpoint])

    def _default_application(
        self, endpoint: Endpoint, ctx: Context, request: Any, leg: Leg, from_: Addr
    ) -> None:
        """The endpoint's application: new calls and requests outside calls."""
        if not isinstance(request, Request):
            return
        method = request.method()
        args = self._listen_args
        if method == "OPTIONS":
            endpoint.new_response(
                ctx, request.create_response(200, headers=self.options), leg, from_
            )
            return
        if method == "MESSAGE" and args is not None and args.get("cb_message") is not None:
            endpoint.new_response(ctx, request.create_response(200), leg, from_)
            invoke_callback(args["cb_message"], self, request)
            return
        if method != "INVITE" or args is None:
            if method != "INVITE":
                log.info("%s outside a call from %s: 405", method, from_)
                resp = request.create_response(405, headers={"allow": self.options["allow"]})
            else:
                log.info("INVITE from %s but not listening: 480", from_)
                resp = request.create_response(480)
            endpoint.new_response(ctx, resp, leg, from_)
            endpoint.close_context(ctx)
            return
        params = {k: v for k, v in args.items() if k not in ("filter", "cb_create", "cb_message")}
        filt = args.get("filter")
        if filt is not None and not invoke_callback(filt, ctx.from_, request):
            log.info("call from %r rejected by the filter", ctx.from_)
            endpoint.new_response(ctx, request.create_response(403), leg, from_)
            endpoint.close_context(ctx)
            return
        call = Call(self, ctx, params)
        callback: Callable[..., object] = call.receive
        cb_create = args.get("cb_create")
        if cb_create is not None:
            made = invoke_callback(cb_create, call, request, leg, from_)
            if not made:
                log.info("call from %r rejected in cb_create", ctx.from_)
                endpoint.new_response(ctx, request.create_response(603), leg, from_)
                call.cleanup()
                return
            if callable(made):
                callback = made
        self.calls.append(call)
        ctx.set_callback(callback)
        callback(endpoint, ctx, 0, 0, request, leg, from_)

    # ---------------------------------------------------------------- servers

    def create_auth(self, **args: Any) -> Authorize:
        """An authorizer on this agent's dispatcher (``Net::SIP::Authorize``);
        ``args`` as for :class:`~netsip.authorize.Authorize`."""
        return Authorize(dispatcher=self.dispatcher, **args)

    def create_registrar(self, **args: Any) -> Registrar | ReceiveChain:
        """A registrar on this agent's dispatcher, set as its receiver
        (``Net::SIP::Registrar``).

        ``args`` as for :class:`~netsip.registrar.Registrar`, and ``auth_*``
        (the :class:`~netsip.authorize.Authorize` arguments with the prefix):
        with them an authorizer checks each REGISTER first, and the result is
        the chain of the two.
        """
        auth = self._auth_from(args)
        args.setdefault("flows", self.flows)  # (the proxies created here read them)
        registrar = Registrar(dispatcher=self.dispatcher, **args)
        return self._behind(auth, registrar, methods=["REGISTER"])

    def create_stateless_proxy(self, **args: Any) -> StatelessProxy | ReceiveChain:
        """A stateless proxy on this agent's dispatcher, set as its receiver
        (``Net::SIP::StatelessProxy``).

        ``args`` as for :class:`~netsip.proxy.StatelessProxy`, and ``auth_*``
        as for :meth:`create_registrar` (challenging with 407).
        """
        args.setdefault("auth_i_am_proxy", True)
        args.setdefault("flows", self.flows)
        auth = self._auth_from(args)
        return self._behind(auth, StatelessProxy(dispatcher=self.dispatcher, **args))

    def create_stateful_proxy(self, **args: Any) -> StatefulProxy | ReceiveChain:
        """A transaction-stateful forking proxy on this agent's dispatcher, set
        as its receiver (not in Net::SIP): ``args`` as for
        :class:`~netsip.stateful_proxy.StatefulProxy`, and ``auth_*`` as for
        :meth:`create_stateless_proxy`."""
        args.setdefault("auth_i_am_proxy", True)
        args.setdefault("flows", self.flows)
        auth = self._auth_from(args)
        return self._behind(auth, StatefulProxy(dispatcher=self.dispatcher, **args))

    def create_chain(self, objects: Sequence[object], **args: Any) -> ReceiveChain:
        """A receive chain of ``objects``, set as the dispatcher's receiver
        (``Net::SIP::ReceiveChain``; ``args``: ``filter``, ``methods``)."""
        chain = ReceiveChain(objects, **args)
        self.dispatcher.set_receiver(chain)
        return chain

    def _behind(self, auth: Authorize | None, server: _S, **chain: Any) -> _S | ReceiveChain:
        """``server`` as the dispatcher's receiver, behind ``auth`` (a chain of
        the two, with ``chain`` as its arguments) if there is one."""
        if auth is not None:
            return self.create_chain([auth, server], **chain)
        self.dispatcher.set_receiver(server)
        return server

    def _auth_from(self, args: dict[str, Any]) -> Authorize | None:
        """An authorizer from the ``auth_*`` keys of ``args`` (all removed),
        or None when there are none but ``auth_i_am_proxy`` (as Perl)."""
        auth_args = {k[5:]: args.pop(k) for k in list(args) if k.startswith("auth_")}
        if not auth_args.keys() - {"i_am_proxy"}:
            return None
        return self.create_auth(**auth_args)


# ------------------------------------------------------------------ helpers


def _stop_of(var: Any) -> Any:
    if isinstance(var, list):
        return lambda: bool(var)
    return var


def _split_proto(spec: str) -> tuple[str | None, str]:
    head, sep, rest = spec.partition(":")
    if sep and head.lower() in PROTOS:
        return head.lower(), rest
    return None, spec


def _resolve(host: str) -> str:
    """The first address of ``host`` (at construction only: it may block)."""
    found = hostname2ip(host)
    if not found:
        raise ValueError(f"failed to resolve {host}")
    return found[0]


def _contact_for(leg: Leg, from_: str) -> str:
    """A Contact for ``from_`` at ``leg``: the From's user at the leg's URI."""
    uri = name_addr_uri(from_)
    user = uri.split(":", 1)[1].split("@", 1)[0] if "@" in uri else ""
    scheme, _, rest = leg.contact.partition(":")
    return f"<{scheme}:{user}@{rest}>" if user else f"<{leg.contact}>"
