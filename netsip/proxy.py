"""Port of Perl's ``Net::SIP::StatelessProxy``: a stateless SIP proxy (RFC 3261 16.11).

:class:`StatelessProxy` is a receiver for a :class:`~netsip.dispatcher.Dispatcher`
(``dispatcher.set_receiver(proxy)``, or the last object of a receive chain
behind a registrar). It keeps no transaction state: everything it needs to
route a response back is in the Via headers it adds.

Requests (RFC 3261 16.3-16.6, 16.11):

* checks: Max-Forwards (0 gets 483; a value above 70 is lowered to 70),
  Route and Record-Route values that are not SIP URIs (400), Proxy-Require
  (420), a Request-URI scheme other than sip/sips without a Route (416), a
  loop (482, see below);
* route preprocessing (16.4): if a strict router put this proxy into the
  Request-URI, the URI is restored from the last Route; Route values naming
  one of the proxy's legs are removed from the top; the last of them picks
  the outgoing leg (a double Record-Route, RFC 5658);
* a Request-URI that is a Contact the proxy rewrote (see ``rewrite_contact``)
  is rewritten back, which also picks the outgoing leg;
* the target: the top Route (loose routing; a strict next hop gets the
  Request-URI pushed to the end of Route, 16.6 step 6), else the
  Request-URI, after asking ``lookup`` (a registrar's ``query``) for the
  domains the proxy serves (480 if nobody is registered);
* a target registered over a connection (a flow in ``flows``: RFC 5626,
  a browser's ``.invalid`` Contact, RFC 7118 5), or named by a flow token
  in one of our Routes, is reached over that connection, never resolved;
  a target that needs a flow that is gone gets ``430 Flow Failed``
  (RFC 5626 5.3); a flow token naming the connection the request came on
  is ignored (it comes from that client);
* else the target is resolved by the dispatcher (RFC 3263); a request bigger
  than 1300 bytes goes over TCP/TLS if the next hop offers it (RFC 3261
  18.1.1), and falls back to the next destination if sending fails (RFC 3263
  4.3);
* the forwarded request gets Max-Forwards decremented, a Record-Route (two
  when it leaves on another leg than it came in on: RFC 5658; on the side
  of a client reached only over its connection, a TCP/TLS/WS one with its
  flow token, RFC 5626 5.3, :class:`~netsip.flows.FlowTokens`), Contacts
  rewritten when it changes legs (or always with ``force_rewrite``), the
  NAT helper's say on the SDP (:meth:`StatelessProxy.do_nat`), and a Via of
  the incoming leg (if it changes legs, as in Perl) and one of the outgoing
  leg.

The Via branch is ``<leg branch><loop key><transaction key>``: the loop key
hashes what routes the request (Request-URI and Route after preprocessing,
RFC 3261 16.6 step 8), the transaction key hashes the received top branch
(or, for an RFC 2543 peer, top Via, tags, Call-ID, CSeq number and URI:
16.11). Retransmissions, the CANCEL and the ACK for a non-2xx response thus
get the branch of their INVITE. A request that carries a Via of one of the
proxy's legs with the loop key it would compute now has looped (16.3 step
4): 482; another key is a spiral, forwarded normally.

Responses: the top Via must be the proxy's (else dropped); it is removed,
and so is the next one if it is the incoming leg's Via; the response goes
out on the leg of the last Via removed, to the next Via's ``received`` /
``rport`` / sent-by (RFC 3261 18.2.2, RFC 3581 4), over the connection the
request came in on for TCP/TLS (the socket pool remembers it).

Keep-alives: the socket pool answers an RFC 5626 4.4.1 "ping" (CRLF CRLF)
on a TCP/TLS connection with a "pong" (CRLF) itself, for every leg; they
are hop by hop, so the proxy does not forward them.

Differences from Net::SIP 0.835:

- the branch is computed as above (Perl hashes the previous hop's branch,
  Proxy-Authorization, Route, From and URI, and its loop check compares a
  branch that a loop never reproduces, so only Max-Forwards stops a loop);
  a loop gets 482 instead of being dropped silently;
- Max-Forwards 0 gets 483 (Perl's Leg resets it to 70); garbage in
  Max-Forwards, Route and Record-Route gets 400 (the packet parser already
  refuses most of it: such a datagram is logged and dropped by the pool);
- errors Perl only logs are answered: 416, 420, 480, 503 (the next hop
  cannot be resolved or reached), 403 for a request neither for nor from a
  served domain (``domains``);
- ``lookup`` and ``domains`` are this port's (Perl's
  ``bin/stateless_proxy.pl`` subclasses the proxy for that);
- the forwarded packet is handed to the outgoing leg's socket pool as it is
  (``Leg.sendto``): the proxy adds its Vias itself and no Contact, Allow or
  Supported (Perl's ``Leg::deliver`` adds those to INVITEs);
- a rewritten Contact is the outgoing leg's URI (with its ``transport``)
  with the token as user part, so a TCP/TLS leg is reached over TCP/TLS;
- the NAT helper gets a :class:`NatBasic` record instead of an array
  (:mod:`netsip._nat`); the Contact token is :mod:`netsip._rewrite`'s;
- flows (``flows``, flow tokens in Record-Route, 430) are new: Net::SIP
  has no RFC 5626 outbound support and resolves every Contact.

Known limit: the 1300-byte rule looks at each request alone, so the CANCEL
(or the ACK of a failure) of an INVITE that went over TCP because of its
size goes over UDP; a stateless proxy has nothing to remember the INVITE's
transport by. Downstream elements match them by branch, which is the same.
"""

from __future__ import annotations

import errno
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from netsip._delivery import via_uri
from netsip._log import get_logger
from netsip._nat import NatBasic, NATHelper, ResponseCodes, nat_packet
from netsip._rewrite import ContactCrypt, CryptFn, DefaultRewriteContact
from netsip.dispatcher import MTU_LIMIT, Dispatcher, Target
from netsip.flows import FLOW_FAILED, Flow, FlowTable, FlowTokens, needs_flow
from netsip.leg import DEFAULT_ALLOW, ForwardError, Leg
from netsip.packet import Packet, Request, Response
from netsip.util import (
    DEFAULT_PORTS,
    Addr,
    NetSIPError,
    Var,
    invoke_callback,
    ip_is_v46,
    ip_parts2string,
    ip_string2parts,
    sip_hdrval2parts,
    sip_parts2hdrval,
    sip_uri2parts,
    sip_uri2sockinfo,
    sip_uri_eq,
)

__all__ = [
    "DEFAULT_MAX_FORWARDS",
    "MTU_LIMIT",
    "NATHelper",
    "NatBasic",
    "StatelessProxy",
]

log = get_logger(__name__)

#: RFC 3261 16.6 step 3: the Max-Forwards a request without one gets; also the cap.
DEFAULT_MAX_FORWARDS = 70
#: hex digits of each of the two keys in the branch
_KEY_LEN = 10

_SCHEME_RX = re.compile(r"sips?:", re.IGNORECASE)
_ANY_SCHEME_RX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_ANGLE_RX = re.compile(r"<([^>]*)>")
_CONTACT_RX = re.compile(r"(.*?<)(sips?:[^>\s]+)(>.*)\Z|(sips?:[^>\s]+)\Z", re.IGNORECASE | re.S)


def _md5(*parts: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:_KEY_LEN]


def _strip_angle(value: str) -> str:
    m = _ANGLE_RX.search(value)
    return m.group(1) if m is not None else value


def _route_uri(value: str) -> str | None:
    """The SIP URI of a Route/Record-Route value, or None if it has none (RFC 3261 20.30, 20.34)."""
    try:
        data = sip_hdrval2parts("route", value)[0]
    except ValueError:
        return None
    uri = _strip_angle(data).strip()
    if _SCHEME_RX.match(uri) is None or sip_uri2parts(uri) is None:
        return None
    return uri


def _branch(via: str) -> str | None:
    try:
        return sip_hdrval2parts("via", via)[1].get("branch")
    except ValueError:
        return None


def _tag(value: str | None) -> str:
    if value is None:
        return ""
    try:
        return sip_hdrval2parts("from", value)[1].get("tag") or ""
    except ValueError:
        return ""


def _sent_by(leg: Leg) -> str:
    """The sent-by of a Via of ``leg`` (host[:port], IPv6 in brackets)."""
    src = leg.src
    return ip_parts2string(
        {
            "addr": src.addr,
            "host": src.host,
            "port": src.port,
            "family": src.family,
            "use_host": True,
            "default_port": DEFAULT_PORTS[leg.proto],
        },
        ipv6_brackets=True,
    )


@dataclass(slots=True)
class _Forward:
    """One request on its way through the proxy (what the resolver's callback needs)."""

    request: Request
    in_leg: Leg
    from_: Addr
    out_leg: Leg | None
    #: the loop key and transaction key of the branch
    keys: str
    max_forwards: int
    #: the flow a flow token in our Route names (RFC 5626 5.3), if not the one it came on
    flow: Flow | None = None
    #: a Route of another element is the next hop (no flow of the Request-URI is used)
    routed: bool = False
    #: the request goes over a flow (set when its destination is found)
    over_flow: bool = False


class StatelessProxy:
    """A stateless proxy: forwards requests by Route/Request-URI and responses by Via.

    Args:
        dispatcher: the dispatcher whose legs the proxy forwards between.
        rewrite_contact: a callback (``invoke_callback`` shape) called as
            ``(contact, leg_in, leg_out, force)`` to hide a Contact behind a
            token (a word, usable as a URI user part), and as ``(token,
            leg_in, Var)`` to get the Contact back (None if it is not a
            token; the Var may be set to the leg to send the request out
            on). Default: an authenticated encryption of the Contact and
            its legs (:class:`netsip._rewrite.DefaultRewriteContact`).
        rewrite_crypt: ``(data, dir, add2mac) -> bytes | None`` for the
            default ``rewrite_contact``: encrypt (dir 1) or decrypt (dir -1,
            None if the MAC does not match). Default: a random per-process
            key (:class:`netsip._rewrite.ContactCrypt`).
        nathelper: a :class:`NATHelper` that rewrites the SDP of packets
            that change legs; None for none.
        force_rewrite: rewrite Contacts even when a packet leaves on the leg
            it came in on.
        lookup: ``(aor) -> list of contact URIs`` for requests to a domain
            the proxy serves, e.g. ``registrar.query``; the first contact
            becomes the Request-URI.
        domains: the domains the proxy serves (``"example.com"``,
            ``"*.example.com"``, ``"*"``; its own addresses always count).
            With ``domains`` a request for another domain gets 403 unless
            its From is in a served domain (put an ``Authorize`` in front to
            make that From true) or its URI is a contact ``lookup`` has for
            its To (a registrar in front rewrote it), and one for a served
            domain that
            ``lookup`` knows nobody for gets 480. None: everything is
            forwarded (as Net::SIP).
        flows: the registrar's :class:`~netsip.flows.FlowTable`: a
            Request-URI registered over a connection is sent over that
            connection (RFC 5626 5.3, RFC 7118 5), never resolved. Default:
            a table of the proxy's own, filled by the REGISTERs it forwards
            from clients on their flows (an edge proxy).
        flow_tokens: the flow tokens of the Record-Routes of TCP/TLS/WS legs
            (:class:`~netsip.flows.FlowTokens`, default: a random key).
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        rewrite_contact: object = None,
        rewrite_crypt: CryptFn | None = None,
        nathelper: NATHelper | None = None,
        force_rewrite: bool = False,
        lookup: Callable[[str], Sequence[str]] | None = None,
        domains: Iterable[str] | None = None,
        flows: FlowTable | None = None,
        flow_tokens: FlowTokens | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        #: the flows of contacts (a registrar's, or those of REGISTERs forwarded here)
        self.flows = flows if flows is not None else FlowTable()
        self.flow_tokens = (
            flow_tokens if flow_tokens is not None else FlowTokens(lambda: dispatcher.legs)
        )
        if rewrite_contact is None:
            crypt: CryptFn = rewrite_crypt if rewrite_crypt is not None else ContactCrypt()
            rewrite_contact = DefaultRewriteContact(crypt, dispatcher)
        self.rewrite_contact: object = rewrite_contact
        self.nathelper = nathelper
        self.force_rewrite = force_rewrite
        self.lookup = lookup
        self.domains: frozenset[str] | None = (
            frozenset(d.lower() for d in domains) if domains is not None else None
        )
        # response codes >= 400 to INVITE, for the NAT helper's ACK
        self._respcodes = ResponseCodes()
        # _my_leg's answers for the dispatcher's current leg list (short URIs only)
        self._my_legs: tuple[list[Leg], dict[str, Leg | None]] = (dispatcher.legs, {})

    # ------------------------------------------------------------ receiving

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> bool:
        """Forward ``packet`` received on ``leg`` from ``from_`` (fits ``Dispatcher.set_receiver``).

        Returns:
            True: the proxy took care of the packet (forwarded, answered or
            dropped it with a log line).
        """
        try:
            if isinstance(packet, Response):
                self._receive_response(packet, leg, from_)
            elif isinstance(packet, Request):
                self._receive_request(packet, leg, from_)
        except (NetSIPError, ValueError) as exc:
            # bad input from the network never breaks the loop
            log.warning("dropping packet from %s on %s: %s", from_, leg.dump(), exc)
        return True

    def _reply(
        self,
        request: Request,
        leg: Leg,
        from_: Addr,
        code: int,
        reason: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``request`` ourselves (an ACK is dropped instead), with a log line."""
        if request.method() == "ACK":
            log.info("ACK from %s on %s dropped: %d %s", from_, leg.dump(), code, reason or "")
            return
        log.info(
            "%s from %s on %s answered %d %s",
            request.method(),
            from_,
            leg.dump(),
            code,
            reason or "",
        )
        try:
            leg.deliver(request.create_response(code, reason, headers), from_)
        except (NetSIPError, OSError, ValueError) as exc:
            log.info("cannot answer %s from %s: %s", request.method(), from_, exc)

    # ------------------------------------------------------------ legs

    def _my_leg(self, uri: str) -> Leg | None:
        """The leg ``uri`` names (its contact, or its address and port), if any.

        A ``transport`` in ``uri`` must be the leg's: UDP and TCP legs on one
        port have equal contacts but for it. The answers are kept while the
        dispatcher's leg list stays the same (every request asks for its
        Routes and Request-URI), by the URI without its user part, which
        does not name a leg (and differs for each flow token).
        """
        if "@" in uri:
            scheme, _, rest = uri.partition(":")
            uri = f"{scheme}:{rest.partition('@')[2]}"
        legs_now, known = self._my_legs
        if legs_now is not self.dispatcher.legs:
            known = {}
            self._my_legs = (self.dispatcher.legs, known)
        if uri in known:
            return known[uri]
        leg = self._find_my_leg(uri)
        if len(uri) <= 256:
            if len(known) >= 1024:
                known.clear()
            known[uri] = leg
        return leg

    def _find_my_leg(self, uri: str) -> Leg | None:
        try:
            info = sip_uri2sockinfo(uri)
        except ValueError:
            return None
        if info is None:
            return None
        proto, host, port, _family = info
        legs = [leg for leg in self.dispatcher.legs if proto is None or proto == leg.proto]
        for leg in legs:
            if sip_uri_eq(uri, leg.contact):
                return leg
        for leg in legs:
            if host not in (leg.src.addr, leg.src.host):
                continue
            if (port or DEFAULT_PORTS[leg.proto]) == leg.src.port:
                return leg
        return None

    def _leg_of_branch(self, branch: str | None) -> Leg | None:
        if not branch:
            return None
        for leg in self.dispatcher.legs:
            if branch.startswith(leg.branch):
                return leg
        return None

    def _serves(self, domain: str) -> bool:
        domains = self.domains
        if domains is None:
            return True
        host = ip_string2parts(domain, True)[0].lower()
        if host in domains or "*" in domains:
            return True
        while "." in host:
            host = host.split(".", 1)[1]
            if "*." + host in domains:
                return True
        return False

    def _from_served(self, req: Request) -> bool:
        """Whether the From of ``req`` is in a served domain (one of ours calling out)."""
        value = req.get_header("from")
        parts = sip_uri2parts(sip_hdrval2parts("from", value)[0]) if value else None
        return parts is not None and self._serves(parts[0])

    def _registered_target(self, req: Request) -> bool:
        """Whether the Request-URI is a contact ``lookup`` has for the To of ``req``.

        A registrar in front of the proxy (a chain) has rewritten the URI of a
        request for a served address of record to the contact already.
        """
        value = req.get_header("to")
        if self.lookup is None or value is None:
            return False
        parts = sip_uri2parts(sip_hdrval2parts("to", value)[0])
        if parts is None or parts[1] is None or not self._serves(parts[0]):
            return False
        uri = req.uri()
        aor = f"{parts[2]}:{parts[1]}@{parts[0]}"
        return any(sip_uri_eq(_strip_angle(c), uri) for c in self.lookup(aor))

    # ------------------------------------------------------------ requests

    def _receive_request(self, req: Request, leg: Leg, from_: Addr) -> None:
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

        # RFC 3261 16.3 step 4: loop detection, with the key of 16.6 step 8
        keys = self._keys(req)
        if self._looped(req, keys[:_KEY_LEN]):
            self._reply(req, leg, from_, 482)
            return

        # RFC 3261 16.5/16.6: the target
        if route_uris:
            target = self._route_next_hop(req, route_uris[0])
        elif not rewritten and self._find_target(req, leg, from_):
            return  # answered
        else:
            target = req.uri()

        fwd = _Forward(req, leg, from_, out_leg, keys, max_forwards, flow, bool(route_uris))
        self._resolve_next(target, fwd, partial(self._resolved, fwd))

    # ------------------------------------------------------------ flows

    def _route_flow(self, popped: list[str], leg: Leg, from_: Addr) -> Flow | None:
        """The flow a flow token in one of our own Routes names (RFC 5626 5.3).

        A token naming the flow the request came in on is ignored: the
        request comes from that flow's client and goes by its Request-URI.
        """
        for uri in reversed(popped):
            parts = sip_uri2parts(uri)
            if parts is None or not parts[1]:
                continue
            flow = self.flow_tokens.decode(parts[1])
            if flow is None:
                continue
            if flow.leg is leg and (flow.peer.addr, flow.peer.port) == (from_.addr, from_.port):
                return None
            return flow
        return None

    def _flow_targets(self, hop: str, fwd: _Forward) -> list[Target] | int | None:
        """Where a request goes over a flow (RFC 5626 5.3, RFC 7118 5).

        Returns:
            ``[(peer, leg)]`` of a live flow: the one a flow token named, else
            the newest of the Request-URI (``hop``) in :attr:`flows`;
            ``ENOTCONN`` when ``hop`` can only be reached over a flow and
            none is left (430); None: resolve ``hop`` (RFC 3263).
        """
        if fwd.routed:
            return None  # the next hop is another element's Route
        flow = fwd.flow
        if flow is not None and flow.alive():
            return [(flow.peer, flow.leg)]
        found = self.flows.find(hop, self.dispatcher.eventloop.looptime)
        if found is not None:
            return [(found.peer, found.leg)]
        if needs_flow(hop):
            # (a flow token whose connection closed with a plain Request-URI: resolved)
            return errno.ENOTCONN
        return None

    def _resolve_next(
        self, hop: str, fwd: _Forward, callback: Callable[[list[Target] | int], None]
    ) -> None:
        """Find the destinations of ``hop``: over a flow, else by the dispatcher (RFC 3263)."""
        found = self._flow_targets(hop, fwd)
        fwd.over_flow = isinstance(found, list)
        if found is not None:
            log.debug("%s to %s over flow %s", fwd.request.method(), hop, found)
            callback(found)
            return
        out_leg = fwd.out_leg
        self.dispatcher.resolve_uri(
            hop, callback, allowed_legs=[out_leg] if out_leg is not None else None
        )

    def _from_flow(self, req: Request, leg: Leg, from_: Addr) -> bool:
        """Whether ``req`` comes from a client reached only over its connection.

        That is a client on a connection-oriented leg whose Contact needs a
        flow (``.invalid``, ``;ob``: RFC 7118 5, RFC 5626 5.3), or whose
        Contact is registered over this very connection. (A server that
        listens opens a connection of its own for its requests: its Record-Route
        needs no token.)
        """
        if leg.proto == "udp":
            return False
        value = req.get_header("contact")
        if not value:
            return False
        uri = _strip_angle(sip_hdrval2parts("contact", value)[0])
        if needs_flow(uri):
            return True
        flow = self.flows.find(uri, self.dispatcher.eventloop.looptime)
        return (
            flow is not None
            and flow.leg is leg
            and (flow.peer.addr, flow.peer.port) == (from_.addr, from_.port)
        )

    def _edge_register(self, pkt: Request, fwd: _Forward, out: Leg) -> None:
        """A REGISTER from a client on its flow, forwarded to a registrar elsewhere.

        RFC 5626 5.2 and RFC 3327 5.1: with ``path`` in its Supported, the
        REGISTER gets a Path with the flow token (the URI of the outgoing leg,
        which the registrar reaches; ``ob`` from the first hop of a client
        with a ``reg-id``), so the
        registrar routes requests for it through here and over the flow. The
        proxy also remembers the flow of each Contact in :attr:`flows` (for
        the requested expiry), so a request for the Contact (or for the
        Contact this proxy rewrote) finds the connection without Path.
        """
        req, leg, from_ = fwd.request, fwd.in_leg, fwd.from_
        first_hop = len(req.header_values("via")) <= 1
        if not (self._from_flow(req, leg, from_) or (first_hop and leg.proto != "udp")):
            return  # (a server, or a client over UDP with a Contact reachable as it is)
        contacts = []
        for value in req.get_headers("contact"):
            try:
                data, param = sip_hdrval2parts("contact", value)
            except ValueError:
                continue
            contacts.append((_strip_angle(data).strip(), param))
        if not contacts:
            return
        flow = Flow(leg, from_)
        now = self.dispatcher.eventloop.looptime
        header = req.get_header("expires")
        for uri, param in contacts:
            value = (param.get("expires") or header or "3600").strip()
            expires = int(value) if value.isdigit() and len(value) < 9 else 3600
            if expires:
                self.flows.remember(uri, flow, now + min(expires, 86400))
            else:
                self.flows.forget(uri)
        tags = {t.strip().lower() for v in req.get_headers("supported") for t in v.split(",")}
        if "path" not in tags:
            return
        token = self.flow_tokens.encode(flow)
        if token is None:
            return
        ob = ";ob" if first_hop and any("reg-id" in p for _u, p in contacts) else ""
        scheme, _, rest = out.contact.partition(":")
        pkt.insert_header("path", f"<{scheme}:{token}@{rest};lr{ob}>")

    def _rr_uri(self, leg: Leg, peer: Addr, flow: bool) -> str:
        """The Record-Route URI of ``leg`` for a peer at ``peer``.

        With ``flow`` (``peer`` is a client reached only over its connection)
        it carries the flow token of that connection (RFC 5626 5.3: requests
        back to that side go over it, RFC 7118 5).
        """
        if not flow or leg.proto == "udp":
            return leg.contact
        token = self.flow_tokens.encode(Flow(leg, peer))
        if token is None:
            return leg.contact
        scheme, _, rest = leg.contact.partition(":")
        return f"{scheme}:{token}@{rest}"

    def _check(self, req: Request, leg: Leg, from_: Addr) -> tuple[int, list[str]] | None:
        """RFC 3261 16.3 steps 1, 3, 5: the Max-Forwards to send and the Route URIs.

        None if the request was answered (or, an ACK, dropped).
        """
        # step 3: Max-Forwards
        mf = req.get_header("max-forwards")
        if mf is None:
            max_forwards = DEFAULT_MAX_FORWARDS
        else:
            try:
                value = int(mf.strip())
            except ValueError:
                value = -1
            if value < 0:
                self._reply(req, leg, from_, 400, "Bad Max-Forwards")
                return None
            if value == 0:
                self._reply(req, leg, from_, 483)
                return None
            # a huge value must not make a long loop: at most the default
            max_forwards = min(value, DEFAULT_MAX_FORWARDS) - 1

        # step 1: Route and Record-Route must be SIP URIs
        route_uris: list[str] = []
        for name, key in (("Route", "route"), ("Record-Route", "record-route")):
            for v in req.header_values(key):
                uri = _route_uri(v)
                if uri is None:
                    self._reply(req, leg, from_, 400, f"Bad {name} Header")
                    return None
                if key == "route":
                    route_uris.append(uri)

        # step 5: this proxy supports no extension
        if req.method() not in ("ACK", "CANCEL"):
            required = [x.strip() for v in req.get_headers("proxy-require") for x in v.split(",")]
            if any(required):
                self._reply(req, leg, from_, 420, headers={"unsupported": ", ".join(required)})
                return None
        return max_forwards, route_uris

    def _preprocess_routes(
        self, req: Request, leg: Leg, route_uris: list[str], popped: list[str] | None = None
    ) -> Leg | None:
        """RFC 3261 16.4: undo a strict router, drop this proxy's own Routes.

        ``route_uris`` (the URIs of the Route values) is updated in place;
        the URIs of our own Routes removed are appended to ``popped``.

        Returns:
            The outgoing leg named by the last own Route, if it is not
            ``leg`` (a double Record-Route, RFC 5658); else None.
        """
        routes = req.get_headers("route")
        changed = False
        out_leg: Leg | None = None
        parts = sip_uri2parts(req.uri())
        if route_uris and parts is not None and parts[1] is None and self._my_leg(req.uri()):
            # the previous hop was a strict router and put me into the
            # Request-URI: the original URI is the last Route
            req.set_uri(route_uris.pop())
            routes.pop()
            changed = True
        while route_uris:
            rleg = self._my_leg(route_uris[0])
            if rleg is None:
                break
            own = route_uris.pop(0)
            if popped is not None:
                popped.append(own)
            routes.pop(0)
            changed = True
            if rleg is not leg:
                out_leg = rleg
        if changed:
            if routes:
                req.set_header("route", routes)
            else:
                req.del_header("route")
        return out_leg

    def _rewrite_uri_back(self, req: Request, leg: Leg) -> tuple[bool, Leg | None]:
        """A Request-URI that is a Contact this proxy rewrote gets the original back.

        Returns:
            Whether it was rewritten, and the leg the token says to leave on.
        """
        parts = sip_uri2parts(req.uri())
        if parts is None or not parts[1]:
            return False, None
        var: Var[Leg] = Var()
        back = invoke_callback(self.rewrite_contact, parts[1], leg, var)
        if not isinstance(back, str) or not back:
            return False, None
        if _ANY_SCHEME_RX.match(back) is None:
            back = f"{parts[2]}:{back}"  # a Perl-style callback: user@host only
        log.debug("rewrote URI %s back to %s", req.uri(), back)
        req.set_uri(back)
        return True, var.value if isinstance(var.value, Leg) else None

    @staticmethod
    def _route_next_hop(req: Request, top: str) -> str:
        """The next hop by the top Route ``top``; RFC 3261 16.6 step 6 for a strict router."""
        rparts = sip_uri2parts(top)
        if rparts is not None and "lr" not in rparts[3]:
            # the next hop is a strict router: it gets the URI, ours goes last
            routes = req.get_headers("route")
            routes.pop(0)
            routes.append(f"<{req.uri()}>")
            req.set_uri(top)
            req.set_header("route", routes)
        return top

    def _keys(self, req: Request) -> str:
        """The loop key and transaction key of the branch (RFC 3261 16.6 step 8, 16.11)."""
        loop_key = _md5(req.uri(), *req.get_headers("route"))
        vias = req.get_headers("via")
        top = vias[0] if vias else ""
        branch = _branch(top) if top else None
        if branch and branch.startswith("z9hG4bK"):
            txn_key = _md5(branch)
        else:
            # an RFC 2543 peer: what identifies its transaction
            txn_key = _md5(
                top,
                _tag(req.get_header("to")),
                _tag(req.get_header("from")),
                req.callid() or "",
                str(req.cseq_number()),
                req.uri(),
            )
        return loop_key + txn_key

    def _looped(self, req: Request, loop_key: str) -> bool:
        legs = self.dispatcher.legs
        for via in req.header_values("via"):
            if not any(leg.branch in via for leg in legs):
                continue  # (the usual case: no Via of ours at all)
            branch = _branch(via)
            leg = self._leg_of_branch(branch)
            if leg is None or branch is None:
                continue
            n = len(leg.branch)
            if branch[n : n + _KEY_LEN] == loop_key:
                log.info("loop: %s carries my Via %s", req.method(), via)
                return True
        return False

    def _find_target(self, req: Request, leg: Leg, from_: Addr) -> bool:
        """RFC 3261 16.5: the target of a request without Route. True if answered instead."""
        uri = req.uri()
        if _SCHEME_RX.match(uri) is None:
            self._reply(req, leg, from_, 416)
            return True
        parts = sip_uri2parts(uri)
        if parts is None:
            self._reply(req, leg, from_, 400, "Bad Request-URI")
            return True
        domain, user, scheme, _param, _data = parts
        mine = self._my_leg(uri)
        if mine is not None and user is None:
            # addressed to the proxy itself
            if req.method() == "OPTIONS":
                self._reply(req, leg, from_, 200, headers={"allow": DEFAULT_ALLOW})
            else:
                self._reply(req, leg, from_, 404)
            return True
        served = mine is not None or (self.domains is not None and self._serves(domain))
        if (
            self.domains is not None
            and not served
            and not self._from_served(req)
            and not self._registered_target(req)
        ):
            # neither for nor from a served domain: no open relay
            self._reply(req, leg, from_, 403, "Relaying Forbidden")
            return True
        if req.method() == "REGISTER" or user is None:
            return False
        if self.lookup is not None and (served or self.domains is None):
            if self._route_to_aor(req, f"{scheme}:{user}@{domain}"):
                return False
            if served:
                self._reply(req, leg, from_, 480)
                return True
        elif mine is not None:
            self._reply(req, leg, from_, 404)
            return True
        return False

    def _route_to_aor(self, req: Request, aor: str) -> bool:
        """Point the Request-URI of ``req`` at a contact of ``aor`` (RFC 3261 16.5).

        The stateless proxy takes the first (highest q) contact ``lookup``
        has; a stateful proxy forks to all of them instead.

        Returns:
            False if nobody is registered for ``aor``.
        """
        assert self.lookup is not None
        contacts = list(self.lookup(aor))
        if not contacts:
            return False
        log.debug("location of %s: %s", aor, contacts[0])
        req.set_uri(_strip_angle(contacts[0]))
        return True

    def _resolved(self, fwd: _Forward, result: list[Target] | int) -> None:
        if result == errno.ENOTCONN:
            log.info("%s %s: its flow is gone", fwd.request.method(), fwd.request.uri())
            self._reply(fwd.request, fwd.in_leg, fwd.from_, FLOW_FAILED, "Flow Failed")
            return
        if isinstance(result, int):
            log.info(
                "cannot resolve next hop of %s %s: %s",
                fwd.request.method(),
                fwd.request.uri(),
                errno.errorcode.get(result, result),
            )
            self._reply(fwd.request, fwd.in_leg, fwd.from_, 503, "Next Hop Unreachable")
            return
        try:
            self._send_request(fwd, list(result))
        except (NetSIPError, ValueError) as exc:
            log.warning("cannot forward %s from %s: %s", fwd.request.method(), fwd.from_, exc)

    def _send_request(self, fwd: _Forward, targets: list[Target]) -> None:
        """Build the forwarded request for the first target and send it (RFC 3261 16.6)."""
        chosen = self._choose(fwd, targets)
        if chosen is None:
            return
        targets, pkt = chosen
        addr, out = targets[0]
        callback = partial(self._sent, fwd, targets[1:]) if len(targets) > 1 else None
        out.sendto(pkt, addr, callback)

    def _choose(self, fwd: _Forward, targets: list[Target]) -> tuple[list[Target], Request] | None:
        """The destinations in the order to try, and the request built for the first.

        None if the request must be dropped (the NAT helper refused it).
        """
        if fwd.in_leg.proto != "udp" and len(targets) > 1:
            # Perl: a request that came over a stream prefers a stream onwards
            targets.sort(key=lambda t: t[1].proto == "udp")
        pkt = self._outgoing(fwd, *targets[0])
        if pkt is None:
            return None
        if targets[0][1].proto == "udp" and len(pkt.as_bytes()) > MTU_LIMIT:
            # RFC 3261 18.1.1: too big for UDP without a known path MTU: over
            # a congestion-controlled transport if the next hop offers one;
            # UDP stays behind it as the fallback
            reliable = [t for t in targets if t[1].proto != "udp"]
            if reliable:
                log.debug("request of %d bytes goes over %s", len(pkt.as_bytes()), reliable[0][0])
                targets = reliable + [t for t in targets if t[1].proto == "udp"]
                pkt = self._outgoing(fwd, *targets[0])
                if pkt is None:
                    return None
        return targets, pkt

    def _sent(self, fwd: _Forward, rest: list[Target], error: int) -> None:
        """Delivery callback: on a transport error try the next destination (RFC 3263 4.3)."""
        if not error or not rest:
            return
        log.info("forwarding %s failed (%s), trying %s", fwd.request.method(), error, rest[0][0])
        self._send_request(fwd, rest)

    def _outgoing(self, fwd: _Forward, addr: Addr, out: Leg) -> Request | None:
        """A copy of the request ready to go out on ``out``; None if it must be dropped."""
        pkt = fwd.request.clone()
        assert isinstance(pkt, Request)
        in_leg = fwd.in_leg
        if out is not in_leg or self.force_rewrite:
            self._rewrite_contacts(pkt, in_leg, out)
        pkt.set_header("max-forwards", str(fwd.max_forwards))
        if pkt.method() == "REGISTER":
            self._edge_register(pkt, fwd, out)
        else:
            # RFC 3261 16.6 step 4; RFC 5658: one for each side when the
            # request changes legs (the other side reaches the other leg)
            # (with a flow token on a connection-oriented leg, RFC 5626 5.3)
            in_flow = self._from_flow(fwd.request, in_leg, fwd.from_)
            if out is in_leg and not in_flow and fwd.over_flow:
                # one Record-Route for both sides: the callee's flow (requests
                # arriving over it are told apart by their source, RFC 5626 5.3)
                rr = self._rr_uri(out, addr, True)
            else:
                rr = self._rr_uri(in_leg, fwd.from_, in_flow)
            pkt.insert_header("record-route", f"<{rr};lr>")
            if out is not in_leg:
                out_rr = self._rr_uri(out, addr, fwd.over_flow)
                pkt.insert_header("record-route", f"<{out_rr};lr>")
        # RFC 3261 16.6 step 8 (and Perl's extra Via of the incoming leg)
        if out is not in_leg:
            pkt.insert_header("via", self._via(in_leg, fwd.keys))
        pkt.insert_header("via", self._via(out, fwd.keys))
        err = self.do_nat(pkt, in_leg, out)
        if err is not None:
            log.info("not forwarding %s: NAT: %s", pkt.method(), err[1])
            return None
        return pkt

    @staticmethod
    def _via(leg: Leg, keys: str) -> str:
        return f"SIP/2.0/{leg.proto.upper()} {_sent_by(leg)};branch={leg.branch}{keys}"

    def _rewrite_contacts(self, pkt: Packet, in_leg: Leg, out: Leg) -> None:
        """Rewrite the SIP Contacts of ``pkt`` (back, if they are tokens) for leaving on ``out``."""
        contacts = pkt.get_headers("contact")
        if not contacts:
            return
        new: list[str] = []
        for c in contacts:
            try:
                data, param = sip_hdrval2parts("contact", c)
            except ValueError:
                new.append(c)
                continue
            m = _CONTACT_RX.match(data)
            if m is None:
                new.append(c)  # "*" or not a SIP URI
                continue
            pre, uri, post = (m[1], m[2], m[3]) if m[2] else ("<", m[4], ">")
            parts = sip_uri2parts(uri)
            user = parts[1] if parts is not None else None
            back = None
            if user and re.fullmatch(r"\w+", user):
                back = invoke_callback(self.rewrite_contact, user, in_leg, out)
            if isinstance(back, str) and back:
                if _ANY_SCHEME_RX.match(back) is None:
                    back = f"{uri.split(':', 1)[0]}:{back}"
                new_uri = back
            else:
                token = invoke_callback(self.rewrite_contact, uri, in_leg, out, True)
                if not isinstance(token, str) or not token:
                    new.append(c)
                    continue
                scheme, _, rest = out.contact.partition(":")
                new_uri = f"{scheme}:{token}@{rest}"
            new.append(sip_parts2hdrval("contact", f"{pre}{new_uri}{post}", param))
            log.debug("rewrote contact %s to %s", c, new[-1])
        pkt.set_header("contact", new)

    # ------------------------------------------------------------ responses

    def _receive_response(self, resp: Response, leg: Leg, from_: Addr) -> None:
        vias = resp.get_headers("via")
        top = self._leg_of_branch(_branch(vias[0])) if vias else None
        if top is None:
            log.info("response from %s on %s is not for me (top Via), dropped", from_, leg.dump())
            return
        out = top
        first = _branch(vias[0]) or ""
        del vias[0]
        if vias:
            second = _branch(vias[0])
            l2 = self._leg_of_branch(second)
            if l2 is not None and second is not None:
                suffix = first[len(top.branch) :]
                if second[len(l2.branch) :] == suffix:
                    # the Via of the leg the request came in on
                    out = l2
                    del vias[0]
        if not vias:
            log.info("response from %s has no Via left after mine, dropped", from_)
            return
        resp.set_header("via", vias)
        dst = self._via_dst(vias[0], out)
        if out is not leg or self.force_rewrite:
            self._rewrite_contacts(resp, leg, out)
        err = self.do_nat(resp, leg, out)
        if err is not None:
            log.info("not forwarding response %d: NAT: %s", resp.code(), err[1])
            return
        if dst is not None:
            out.sendto(resp, dst)
            return
        uri = via_uri(resp)
        if uri is None:
            log.info("response from %s: cannot use next Via %s, dropped", from_, vias[0])
            return
        self.dispatcher.resolve_uri(
            uri, partial(self._resp_resolved, resp, out), allowed_legs=[out]
        )

    @staticmethod
    def _via_dst(via: str, leg: Leg) -> Addr | None:
        """Where a response goes by ``via`` (RFC 3261 18.2.2, RFC 3581 4); None if a name."""
        data, param = sip_hdrval2parts("via", via)
        parts = data.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"invalid Via {via!r}")
        host, port, family = ip_string2parts(parts[1].strip())
        alt = param.get("maddr") or param.get("received")
        if alt:
            fam = ip_is_v46(alt)
            if fam is not None:
                host, family = alt, fam
        rport = param.get("rport")
        if rport and rport.isdigit():
            port = int(rport)
        if family is None:
            return None
        if family != leg.src.family:
            raise ValueError(f"next Via {via!r} is not reachable from {leg.dump()}")
        return Addr(host, port or DEFAULT_PORTS[leg.proto], family, None, leg.proto)

    def _resp_resolved(self, resp: Response, out: Leg, result: list[Target] | int) -> None:
        if isinstance(result, int) or not result:
            log.info("cannot resolve the next Via of response %d, dropped", resp.code())
            return
        addr, leg = result[0]
        leg.sendto(resp, addr)

    # ------------------------------------------------------------ NAT

    def do_nat(self, packet: Packet, incoming_leg: Leg, outgoing_leg: Leg) -> ForwardError | None:
        """Let the NAT helper rewrite the SDP of a packet that changes legs.

        As Perl's: sockets are allocated for an SDP body of an INVITE/ACK
        transaction; sessions are activated when possible (an ACK of an
        incomplete session is an error); CANCEL closes the session of its
        transaction, BYE every session of the call, a response of 400 or
        above to an INVITE that of its transaction. Nothing is done without
        a ``nathelper`` or when the packet stays on its leg.

        Returns:
            None, or ``(code, text)``: the packet must not be forwarded.
        """
        nh = self.nathelper
        if nh is None or incoming_leg is outgoing_leg:
            return None
        return nat_packet(nh, self._respcodes, packet, incoming_leg, outgoing_leg)
