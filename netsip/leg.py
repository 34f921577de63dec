"""Port of Perl's ``Net::SIP::Leg``: one local SIP transport endpoint.

A leg owns a :class:`~netsip.socketpool.SocketPool` (a bound UDP socket, or a
listening TCP/TLS socket plus its connections) and knows the transport-level
SIP header work for it:

* outgoing requests are cloned and get the leg's ``Via`` with a branch that
  starts with the RFC 3261 magic cookie ``z9hG4bK`` (section 8.1.1.7) and is
  derived, as in Perl, from the leg (address, port, protocol) and from the
  request (transaction id, From, URI, Route, the previous hop's branch, ...),
  so a retransmission, the ACK of a non-2xx response and a CANCEL all carry
  the branch of the request they belong to;
* requests and their 2xx responses get the Contact/Allow/Supported headers
  Perl adds (:meth:`Leg.deliver`);
* for proxies, :meth:`Leg.forward_incoming` and :meth:`Leg.forward_outgoing`
  handle Max-Forwards, strict/loose routing, Record-Route and loop detection,
  and :meth:`Leg.add_received` writes ``received``/``rport`` into the top Via
  of a received request (RFC 3261 18.2.1, RFC 3581).

Sending goes through ``socketpool().sendto``; receiving is driven by the
:class:`~netsip.dispatcher.Dispatcher`, which attaches the pool to its event
loop and passes each packet through :meth:`Leg.receive`.

Differences from Net::SIP 0.835: ``port=0`` lets the system pick a free port
(Perl first tries 5060, 5062-5100); ``received``/``rport`` handling, done
inline by Perl's dispatcher, is the method :meth:`Leg.add_received`; a Contact
for a From/To without user part is the leg's contact (Perl builds an invalid
one); :meth:`Leg.close` closes the sockets (Perl relies on garbage collection).
The leg's URI (its Record-Route, and the Contact it adds) says how to reach
it: ``sips:`` for TLS and ``;transport=tcp`` for TCP, with the scheme taken
from the leg, never from the From/To (RFC 3261 8.1.1.8, 19.1.4). Perl builds
``sip:user@host:port`` with the scheme of the To URI for every transport, so
a TCP- or TLS-only Net::SIP behind a record-routing proxy gets its BYE over
UDP, or not at all.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import re
import socket
from collections.abc import Mapping
from typing import Any, Final

from netsip._log import get_logger
from netsip._native import mypyc_attr
from netsip.packet import Packet, Request, Response
from netsip.socketpool import SocketPool
from netsip.util import (
    DEFAULT_PORTS,
    Addr,
    Proto,
    bind_socket,
    invoke_callback,
    ip_is_v46,
    ip_parts2string,
    ip_sockaddr2parts,
    ip_string2parts,
    laddr4dst,
    sip_hdrval2parts,
    sip_parts2hdrval,
    sip_uri2sockinfo,
    sip_uri_eq,
)

__all__ = ["MAGIC_COOKIE", "ForwardError", "Leg"]

log: Final = get_logger(__name__)

#: RFC 3261 8.1.1.7: every branch created by an RFC 3261 element starts with this.
MAGIC_COOKIE: Final = "z9hG4bK"

_VIA_SENTBY_RX: Final = re.compile(r"SIP/2\S+\s+(\S+)\Z", re.IGNORECASE)
_FAST_SENTBY_RX: Final = re.compile(r"SIP/2\.0/[A-Za-z]+[ \t]+([^;\s]+)[ \t]*(?:;|\Z)")
_RPORT_RX: Final = re.compile(r";[ \t]*rport", re.IGNORECASE)
_ANGLE_RX: Final = re.compile(r"<(.*)>")
_CONTACT_RX: Final = re.compile(r"(\w+):(?:.*@)?(.*)\Z")
_USER_RX: Final = re.compile(r"([^<>@\s]+)@")
_SCHEME_RX: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

#: Allow header Perl puts into requests and responses that need one.
DEFAULT_ALLOW: Final = "INVITE, ACK, OPTIONS, CANCEL, BYE"

#: ``(code, text)`` returned by the forward_* methods when a packet must not
#: be forwarded; ``code`` is None if the packet should just be dropped.
ForwardError = tuple[int | None, str]


def _sent_by_is(via: str, from_: Addr) -> bool:
    """Whether the sent-by host of ``via`` is written exactly as the IP of
    ``from_`` (add_received's fast rule; False: the general way decides)."""
    m = _FAST_SENTBY_RX.match(via)
    if m is None:
        return False
    sent_by = m.group(1)
    if from_.family == socket.AF_INET:
        host_s = sent_by.partition(":")[0]
    else:
        host_s = sent_by[1 : sent_by.find("]")] if sent_by[:1] == "[" else sent_by
    return host_s == from_.addr


#: add_received's fast rule by (Via up to its first ';', source IP, family),
#: emptied when full (the same peers send again and again)
_SENTBY_SAME: Final[dict[tuple[str, str, int], bool]] = {}
_SENTBY_SAME_MAX: Final = 1024


def _leg_uri(proto: Proto, hostport: str) -> str:
    """The SIP URI of a leg: where a peer reaches it, transport included.

    RFC 3261 19.1.1/19.1.4: a ``sip:`` URI without ``transport`` means UDP for
    a numeric host, so a TCP leg must say ``;transport=tcp``. A TLS leg is a
    ``sips:`` URI, which means TLS (RFC 3261 26.2.2); RFC 5630 3.1.3
    deprecates ``transport=tls``, so that one gets no parameter.
    """
    if proto == "tls":
        return f"sips:{hostport}"
    if proto == "udp":
        return f"sip:{hostport}"
    # RFC 7118 section 5.1: transport=ws / transport=wss (a sip: URI: sips
    # would ask for TLS on every hop, and browsers reach WSS with sip: URIs)
    return f"sip:{hostport};transport={proto}"


def _md5_hex(*parts: str | int) -> str:
    # Perl's md5_hex(@list) hashes the concatenation of the list
    return hashlib.md5("".join(map(str, parts)).encode(), usedforsecurity=False).hexdigest()


def _strip_angle(v: str) -> str:
    m = _ANGLE_RX.match(v)
    return m.group(1) if m is not None else v


@functools.lru_cache(maxsize=64)
def _contact_parts(contact: str) -> tuple[str, str] | None:
    """Scheme and host part of a leg's contact (the contact is usually constant)."""
    m = _CONTACT_RX.match(contact)
    return (m.group(1), m.group(2)) if m is not None else None


def _addr_data(value: str) -> str:
    """``sip_hdrval2parts("from", value)[0]``: a From/To value without its parameters.

    Every INVITE and 2xx to INVITE needs it for the Contact, and the general
    parser scans the value character class by character class. The usual
    ``<uri>`` or ``<uri>;params`` takes a shortcut that gives the same result:
    without quotes, backslashes and line breaks the first ``>`` closes the
    ``<`` the value starts with, and a ``;`` right after it ends the data.
    """
    if value[:1] == "<" and '"' not in value and "\\" not in value and "\n" not in value:
        end = value.find(">") + 1
        if end and value[end : end + 1] in ("", ";"):
            return value[:end]
    return sip_hdrval2parts("from", value)[0]


def _replace_header_value(packet: Packet, name: str, index: int, value: str | None) -> None:
    """Set (or with None remove) the ``index``-th value of header ``name``, keeping the rest."""
    values = packet.get_headers(name)
    if value is None:
        del values[index]
    else:
        values[index] = value
    packet.set_header(name, values)


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it, as in Net::SIP
class Leg:
    """A local SIP endpoint: socket(s) plus Via/Record-Route handling.

    Exactly one way to get a socket: ``addr`` (a new socket is created and bound;
    for ``tcp``/``tls`` it listens), ``sock`` (a ready socket) or ``socketpool``
    (a ready :class:`SocketPool`; its ``master()`` socket is used). Without any
    of them but with ``dst``, the local address that routes to ``dst`` is used.

    Args:
        addr: local IP to bind, may carry a port (``"1.2.3.4:5070"``,
            ``"[::1]:5070"``).
        port: local port; None means the protocol's default (5060, 5061 for
            TLS), 0 lets the system pick a free port (then :attr:`src` holds
            the real one).
        proto: ``"udp"`` (default), ``"tcp"``, ``"tls"`` (default if ``tls``
            is given), ``"ws"`` or ``"wss"`` (WebSocket, RFC 7118; ``wss`` takes
            the ``tls`` options); taken from ``sock`` if that is given (a
            stream socket is ``tcp`` then).
        family: AF_INET/AF_INET6; derived from ``addr`` if None.
        sock: a ready (bound, and for TCP listening) socket.
        socketpool: a ready SocketPool; not together with ``sock``.
        dst: a fixed peer (anything ``Addr.parse`` takes). A new UDP socket is
            then connected to it; the pool only talks to that peer.
        tls: TLS options passed to the SocketPool (``certfile``, ``keyfile``,
            ``cafile``, ``verify_client``, ``check_hostname``, or ready
            ``server_context``/``client_context``).
        ws: WebSocket options passed to the SocketPool (``path``, ``host``,
            ``ping_interval``; see :class:`netsip._ws.WSOptions`), only with
            ``ws``/``wss``.
        contact: the leg's SIP URI for Record-Route and Contact; default
            ``sip:host:port`` (``sips:`` for TLS, port omitted if default).
        host: host name for ``addr`` (Via, Contact, TLS peer validation);
            default the IP.
        branch: base of the Via branch (after the magic cookie); default an
            MD5 of address, port and protocol.

    Raises:
        ValueError: contradicting or missing arguments.
        OSError: the socket could not be created or bound.
    """

    def __init__(
        self,
        *,
        addr: str | None = None,
        port: int | None = None,
        proto: Proto | None = None,
        family: int | None = None,
        sock: socket.socket | None = None,
        socketpool: SocketPool | None = None,
        dst: object = None,
        tls: Mapping[str, Any] | None = None,
        ws: Mapping[str, Any] | None = None,
        contact: str | None = None,
        host: str | None = None,
        branch: str | None = None,
    ) -> None:
        if proto is None and tls:
            proto = "tls"
        if proto is not None and proto not in DEFAULT_PORTS:
            raise ValueError(f"invalid proto {proto!r} (udp, tcp, tls, ws or wss)")
        if sock is not None and socketpool is not None:
            raise ValueError("only one of sock and socketpool may be given")

        src_host: str | None = host
        src_addr: str | None = None
        src_port: int | None = None
        src_family: int | None = None
        if addr is not None:
            ip, port_a, fam = ip_string2parts(addr)
            if family is not None and fam is not None and family != fam:
                raise ValueError(f"family {family} does not match address {addr!r}")
            if fam is None:
                raise ValueError(f"addr must be an IP address, got {addr!r}")
            if port is not None and port_a is not None and port != port_a:
                raise ValueError("port given both as argument and contained in address")
            src_addr, src_family = ip, fam
            src_port = port_a if port_a is not None else port

        dst_addr: Addr | None = Addr.parse(dst) if dst is not None else None

        if sock is None and socketpool is not None:
            sock = socketpool.master()

        peer: Addr | None = None
        created: socket.socket | None = None
        if sock is None:
            proto = proto or "udp"
            if src_addr is None:
                if dst_addr is None:
                    raise ValueError("neither addr, sock, socketpool nor dst given")
                local = laddr4dst(dst_addr)
                if local is None:
                    raise ValueError(f"cannot find local IP to reach {dst_addr}")
                src_addr, src_family, src_port = local, dst_addr.family, 0
            assert src_family is not None
            if src_port is None:
                src_port = DEFAULT_PORTS[proto]
            if dst_addr is not None and proto == "udp" and dst_addr.port == 0:
                dst_addr = Addr(dst_addr.addr, DEFAULT_PORTS[proto], dst_addr.family)
            created = bind_socket(
                proto,
                src_addr,
                src_port,
                src_family,
                reuse_dgram=True,  # as Perl's Leg
                peer=dst_addr if proto == "udp" else None,
            )
            sock = created
            if proto == "udp" and dst_addr is not None:
                peer = dst_addr
            src_port = sock.getsockname()[1]
        else:
            stype = sock.type
            if proto is None:
                proto = "udp" if stype == socket.SOCK_DGRAM else "tcp"
            if src_addr is None:
                src_addr, src_port, src_family = ip_sockaddr2parts(sock.getsockname())
            try:
                peer = Addr.parse(sock.getpeername())
            except OSError:
                peer = None  # not connected
            if peer is not None and dst_addr is None:
                dst_addr = peer

        assert src_addr is not None and src_port is not None and src_family is not None
        self.proto: Proto = proto
        #: where the leg receives and sends from; ``host`` is the name for Via/Contact
        self.src: Addr = Addr(src_addr, src_port, src_family, src_host or src_addr, proto)
        #: the fixed peer, if any
        self.dst: Addr | None = dst_addr

        try:
            if socketpool is None:
                socketpool = SocketPool(
                    proto,
                    sock,
                    dst_addr,
                    peer is not None,
                    dict(tls) if tls else None,
                    ws=dict(ws) if ws else None,
                )
        except BaseException:
            if created is not None:
                created.close()
            raise
        self._pool: SocketPool = socketpool

        default_port = DEFAULT_PORTS[proto]
        leg_addr = self._hostport(use_host=True, default_port=default_port, brackets=True)
        #: the leg's SIP URI: Record-Route, and the host part of the Contacts it adds
        self.contact: str = contact or _leg_uri(proto, leg_addr)
        #: base of every Via branch of this leg (magic cookie + leg specific part)
        self.branch: str = MAGIC_COOKIE + (branch or _md5_hex(src_addr, src_port, proto))
        self._via_prefix = f"SIP/2.0/{proto.upper()} {leg_addr};branch="

    # ------------------------------------------------------------ creation

    def _hostport(self, *, use_host: bool, default_port: int | None, brackets: bool) -> str:
        src = self.src
        d: dict[str, Any] = {
            "addr": src.addr,
            "host": src.host,
            "port": src.port,
            "family": src.family,
            "use_host": use_host,
        }
        if default_port is not None:
            d["default_port"] = default_port
        return ip_parts2string(d, ipv6_brackets=brackets)

    # ----------------------------------------------------------- accessors

    def socketpool(self) -> SocketPool:
        """The :class:`SocketPool` of this leg."""
        return self._pool

    def do_retransmits(self) -> bool:
        """True if packets sent through this leg need retransmissions (UDP only)."""
        return self.proto == "udp"

    def laddr(self, level: int = 0) -> str:
        """The local address of the leg.

        Args:
            level: 0 the IP only; 1 ``ip[:port]``; 2 ``host[:port]`` (the port
                is left out if it is the protocol's default).

        Raises:
            ValueError: another level.
        """
        if not level:
            return self.src.addr
        if level not in (1, 2):
            raise ValueError(f"invalid laddr level {level!r}")
        return self._hostport(
            use_host=level == 2, default_port=DEFAULT_PORTS[self.proto], brackets=False
        )

    def key(self) -> str:
        """A string identifying the leg (class, proto, address and port)."""
        return f"{type(self).__name__} {self.proto}:{self.src.addr}:{self.src.port}"

    def dump(self) -> str:
        """A short description for logs."""
        return f"{type(self).__name__} {self.proto}:{self.src}"

    def __repr__(self) -> str:
        return f"<{self.dump()}>"

    def close(self) -> None:
        """Close the leg's socket pool (every socket of the leg)."""
        self._pool.close()

    def __enter__(self) -> Leg:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- Via

    def via_branch(self, packet: Packet, level: int) -> str:
        """The branch tag this leg uses for ``packet``.

        Args:
            packet: the request (or a response to it, for ``level`` 2).
            level: 1 the leg only; 2 leg and transaction (Call-ID, CSeq
                number); 3 leg, transaction and path (Proxy-Authorization,
                the previous hop's branch, Proxy-Require, Route, From, URI).

        Returns:
            The branch, starting with ``z9hG4bK``.
        """
        val = self.branch
        if level > 1:
            val += _md5_hex(packet.tid())[:15]
        if level > 2:
            parts: list[str] = []
            # RT#120816: only the constant parts of Proxy-Authorization
            for pa in sorted(packet.get_headers("proxy-authorization")):
                typ, param = sip_hdrval2parts("proxy-authorization", pa)
                parts.append(typ)
                for k in ("realm", "username", "domain", "qop", "algorithm"):
                    if k in param:
                        parts.append(f"{k}={param[k] or ''}")
            vias = packet.get_headers("via")
            if vias:
                # RT#120816: only the branch of the previous hop, if it has one
                _, vparam = sip_hdrval2parts("via", vias[0])
                parts.append(vparam.get("branch") or vias[0])
            parts += sorted(packet.get_headers("proxy-require"))
            parts += packet.get_headers("route")
            parts += packet.get_headers("from")
            if isinstance(packet, Request):
                parts.append(packet.uri())
            val += _md5_hex(*parts)[:15]
        return val

    def add_via(self, packet: Packet) -> None:
        """Insert this leg's Via (with the level-3 branch) on top of ``packet``."""
        packet.insert_header("via", self._via_prefix + self.via_branch(packet, 3))

    def check_via(self, packet: Packet) -> bool:
        """True if the top Via of ``packet`` (usually a response) carries this leg's branch."""
        vias = packet.get_headers("via")
        if not vias:
            return False
        _, param = sip_hdrval2parts("via", vias[0])
        branch = param.get("branch")
        return branch is not None and branch.startswith(self.via_branch(packet, 2))

    def add_received(self, packet: Packet, from_: Addr) -> None:
        """Write ``received``/``rport`` into the top Via of a received request.

        RFC 3261 18.2.1: ``received`` is added if the sent-by host differs from
        the packet's source address; RFC 3581: an empty ``rport`` gets the
        source port, and then ``received`` is always added. Responses and
        packets without Via are left alone. Perl does this in the dispatcher's
        receive path; the dispatcher calls this method for every request.

        Args:
            packet: the received packet, modified in place.
            from_: where it came from.
        """
        if not packet.is_request():
            return
        vias = packet.header_values("via")  # read only: no list copy
        if not vias:
            return
        via = vias[0]
        if _RPORT_RX.search(via) is None:
            # fast path for the common case: sent-by is exactly the source IP;
            # what decides it (the Via up to its first ';', the source) is
            # remembered: the same peers send again and again
            i = via.find(";")
            key = (via[: i + 1] if i >= 0 else via, from_.addr, from_.family)
            same = _SENTBY_SAME.get(key)
            if same is None:
                same = _sent_by_is(via, from_)
                if len(_SENTBY_SAME) >= _SENTBY_SAME_MAX:
                    _SENTBY_SAME.clear()
                _SENTBY_SAME[key] = same
            if same:
                return
        data, param = sip_hdrval2parts("via", via)
        m = _VIA_SENTBY_RX.match(data)
        host: str | None = None
        if m is not None:
            try:
                host = ip_string2parts(m.group(1))[0]
            except ValueError:
                host = None
        new: dict[str, str | int | None] = {}
        if "rport" in param and param["rport"] is None:
            new["rport"] = from_.port
        if host != from_.addr or new:
            # either the sent-by host is a name for from_.addr or the sender is
            # not where its Via says; with rport, received is required anyway
            new["received"] = from_.addr
        if new:
            merged: dict[str, str | int | None] = dict(param)
            merged.update(new)
            _replace_header_value(packet, "via", 0, sip_parts2hdrval("via", data, merged))

    # ------------------------------------------------------- forwarding

    def forward_incoming(self, packet: Packet, from_: Addr | None = None) -> ForwardError | None:
        """Prepare a packet received on this leg for forwarding (proxy use).

        Responses lose their top Via. Requests get Max-Forwards decremented
        (capped at 70; dropped at 0), the leg removed from Route (loose
        routing), or, if the previous hop was a strict router that put this
        leg into the request URI, the URI restored from the last Route
        (RFC 3261 16.4); then a Record-Route to this leg is inserted (not for
        REGISTER, RFC 3261 10.2). With ``from_``, :meth:`add_received` is
        applied too (the dispatcher has normally done that already).

        Args:
            packet: the packet, modified in place.
            from_: optional source of the packet.

        Returns:
            None, or ``(code, text)`` if the packet must not be forwarded.
        """
        if not packet.is_request():
            vias = packet.get_headers("via")
            if vias:
                _replace_header_value(packet, "via", 0, None)
            return None
        assert isinstance(packet, Request)
        if from_ is not None:
            self.add_received(packet, from_)

        maxf_s = packet.get_header("max-forwards")
        try:
            maxf = int(maxf_s) if maxf_s is not None else 0
        except ValueError:
            maxf = 0
        # don't let a huge Max-Forwards craft a long loop: cap at the default
        if maxf <= 0 or maxf > 70:
            maxf = 70
        maxf -= 1
        if maxf <= 0:
            log.debug("reached max-forwards, dropping")
            return (None, "max-forwards reached 0, dropping")
        packet.set_header("max-forwards", str(maxf))

        routes = packet.get_headers("route")
        remove_route: int | None = None
        uri = sip_hdrval2parts("route", _strip_angle(packet.uri()))[0]
        if routes and sip_uri_eq(uri, self.contact):
            # the last hop was a strict router and put me into the URI:
            # the original URI is the last Route (RFC 3261 16.4)
            remove_route = len(routes) - 1
            packet.set_uri(_strip_angle(routes[-1]))
        elif routes:
            top = sip_hdrval2parts("route", _strip_angle(routes[0]))[0]
            if sip_uri_eq(top, self.contact):
                remove_route = 0  # loose router: the top Route is me
        if remove_route is not None:
            _replace_header_value(packet, "route", remove_route, None)

        if packet.method() != "REGISTER":
            packet.insert_header("record-route", f"<{self.contact};lr>")
        return None

    def forward_outgoing(
        self, packet: Packet, incoming_leg: Leg | None = None
    ) -> ForwardError | None:
        """Prepare a packet to be forwarded out through this leg (proxy use).

        Requests whose Via path already contains this leg are refused (loop,
        RFC 3261 16.3); otherwise a Record-Route to this leg is inserted unless
        the top one is already this leg or the request is a REGISTER, and this
        leg is removed from the top of Route.

        Args:
            packet: the packet, modified in place.
            incoming_leg: the leg the packet came in on (unused, as in Perl).

        Returns:
            None, or ``(code, text)`` if the packet must not be forwarded.
        """
        if not packet.is_request():
            return None
        vias = packet.get_headers("via")
        if vias:
            branch = self.via_branch(packet, 3)
            for via in vias:
                b = sip_hdrval2parts("via", via)[1].get("branch")
                # Via without branch does not conform to RFC 3261 8.1.1.7: ignore it
                if b is not None and b.startswith(branch):
                    log.debug("loop detected because outgoing leg is in Via, dropping")
                    return (None, "loop detected on outgoing leg, dropping")

        if packet.method() != "REGISTER":
            rrs = packet.get_headers("record-route")
            if not (rrs and sip_uri_eq(rrs[0], self.contact)):
                packet.insert_header("record-route", f"<{self.contact};lr>")

        routes = packet.get_headers("route")
        if routes:
            top = sip_hdrval2parts("route", _strip_angle(routes[0]))[0]
            if sip_uri_eq(top, self.contact):
                _replace_header_value(packet, "route", 0, None)
        return None

    # --------------------------------------------------------- sending

    def deliver(self, packet: Packet, dst: object, callback: object = None) -> None:
        """Send ``packet`` through this leg to ``dst``.

        A request is cloned (the original may be retransmitted later) and gets
        this leg's Via. INVITE requests and 2xx responses to INVITE get Contact,
        Allow and Supported if missing; 2xx responses to OPTIONS and 405
        responses get Allow and Supported (RFC 3261 11.2, 13.2.1, 13.3.1).

        Args:
            packet: the request or response.
            dst: the destination (anything ``Addr.parse`` takes); a port of 0
                means the protocol's default port.
            callback: invoked with an errno on failure, and with 0 once a
                TCP/TLS packet was written completely (see SocketPool.sendto).

        Raises:
            ValueError: ``dst`` names a protocol other than the leg's.
        """
        is_request = packet.is_request()
        if is_request:
            packet = packet.clone()
            self.add_via(packet)

        method = packet.method()
        need_contact = need_allow = need_supported = False
        if is_request:
            if method == "INVITE":
                need_contact = need_allow = need_supported = True
        else:
            assert isinstance(packet, Response)
            code = packet.code()
            if method == "INVITE" and 200 <= code < 300:
                need_contact = need_allow = need_supported = True
            elif code == 405 or (method == "OPTIONS" and 200 <= code < 300):
                need_allow = need_supported = True
        # (header_values: only asking whether the header is there, no list copy)
        if need_contact and not packet.header_values("contact"):
            packet.insert_header("contact", self._make_contact(packet, is_request))
        if need_allow and not packet.header_values("allow"):
            packet.insert_header("allow", DEFAULT_ALLOW)
        if need_supported and not packet.header_values("supported"):
            packet.insert_header("supported", "")

        addr = dst if isinstance(dst, Addr) else Addr.parse(dst)
        if addr.proto is not None and addr.proto != self.proto:
            raise ValueError(f"target protocol {addr.proto} does not match leg {self.proto}")
        if addr.port == 0:
            addr = Addr(addr.addr, DEFAULT_PORTS[self.proto], addr.family, addr.host, addr.proto)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("delivery with %s from %s to %s", self.proto, self.src, addr)
        self.sendto(packet, addr, callback)

    def sendto(self, packet: Packet, dst: Addr, callback: object = None) -> None:
        """Hand ``packet`` to the socket pool unchanged (no Via is added)."""
        try:
            self._pool.sendto(packet, dst, callback)
        except OSError as exc:
            log.debug("sendto %s failed: %s", dst, exc)
            invoke_callback(callback, exc.errno or errno.EIO)

    def _make_contact(self, packet: Packet, is_request: bool) -> str:
        # user part of From (requests) or To (responses) at this leg's address
        hdr = packet.get_header("from" if is_request else "to")
        parts = _contact_parts(self.contact)
        if hdr is None or parts is None:
            return self.contact
        sproto, addr = parts
        um = _USER_RX.search(_addr_data(hdr))
        if um is None:
            return self.contact
        # the user of the From/To, but the scheme (and transport) of this leg:
        # the peer must reach the Contact over this transport (RFC 3261 8.1.1.8)
        user = um.group(1)
        sm = _SCHEME_RX.match(user)
        if sm is not None:
            user = user[sm.end() :]
        contact = f"{sproto}:{user}@{addr}"
        if ";" in contact:
            contact = f"<{contact}>"
        return contact

    # -------------------------------------------------------- receiving

    def receive(self, packet: Packet, from_: Addr) -> tuple[Packet, Addr] | None:
        """Called by the dispatcher for every packet received on this leg.

        Subclasses may rewrite or block packets here.

        Returns:
            ``(packet, from_)`` to process the packet, or None to drop it.
        """
        if log.isEnabledFor(logging.DEBUG):
            log.debug("received packet on %s:%s from %s", self.proto, self.src, from_)
        return packet, from_

    # ------------------------------------------------------------ matching

    def can_deliver_to(
        self,
        uri: str | None = None,
        /,
        *,
        proto: str | None = None,
        host: str | None = None,
        addr: str | None = None,
        port: int | None = None,
        family: int | None = None,
    ) -> bool:
        """True if this leg could deliver to the given destination.

        Only protocol and address family are checked (the routing table is not
        consulted, as in Perl).

        Args:
            uri: a full or partial SIP URI (``sip:host``, ``host:port``,
                ``sips:[::1]:5061``); or instead the parts as keywords:
            proto: ``udp``, ``tcp``, ``tls`` or None (any).
            host: host name or IP (not checked).
            addr: IP address (its family is checked).
            port: port (not checked).
            family: AF_INET/AF_INET6 or None.
        """
        if uri is not None:
            try:
                info = sip_uri2sockinfo(uri)
            except ValueError:
                return False
            if info is None:
                return False
            proto, _host, _port, family = info
        elif family is None and addr:
            family = ip_is_v46(addr)
        if proto and proto != self.proto:
            return False
        return not (family and family != self.src.family)

    def match(
        self,
        addr: str | None = None,
        port: int | None = None,
        proto: str | None = None,
        sub: object = None,
    ) -> bool:
        """True if the leg fits every given criterion (used by ``Dispatcher.get_legs``).

        Args:
            addr: the leg's IP or host name.
            port: the leg's port.
            proto: the leg's protocol.
            sub: a callback (``invoke_callback`` shape) called with the leg,
                must return true.
        """
        if addr and addr not in (self.src.addr, self.src.host):
            return False
        if port and port != self.src.port:
            return False
        if proto and proto != self.proto:
            return False
        return not (sub is not None and not invoke_callback(sub, self))
