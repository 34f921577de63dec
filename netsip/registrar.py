"""Port of Perl's ``Net::SIP::Registrar``: a registrar (RFC 3261 10.3).

A :class:`Registrar` is a receiver for :meth:`Dispatcher.set_receiver` or a
link of a :class:`~netsip.chain.ReceiveChain`. It answers REGISTER requests
and keeps the bindings in a store (:class:`RegistrationStore`, the
in-memory :class:`MemoryStore` by default, see :mod:`netsip._regstore`).
Other requests whose Request-URI is a registered address of record get
their URI rewritten to the best contact (highest q) and are left to the
next link of the chain (a proxy), as Net::SIP does.

REGISTER processing follows RFC 3261 10.3, step by step:

1. the Request-URI must be a SIP/SIPS URI (else 416, 8.2.2.1); if it names
   a host (not an IP address) outside ``domains``, the domain is not ours;
2. ``Require`` with an option tag other than ``path``/``outbound``: 420
   with ``Unsupported`` (8.2.2.3);
3. (authentication is :class:`netsip.authorize.Authorize`'s, in front of
   the registrar in a chain);
5. the AOR is the To URI in canonical form (:func:`canonical_aor`: URI
   parameters dropped, escapes decoded, host lower-cased). A To that is no
   URI is 400; a URI that is not SIP/SIPS, or a domain outside ``domains``,
   is 404 (the AOR "is not valid for the domain", 10.3 step 5, and 21.4.5:
   "the domain ... does not match any of the domains handled"). 403 is
   kept for what it means in step 4: an authenticated user who may not
   register this AOR (Authorize's business);
6. ``Contact: *`` with ``Expires: 0`` (and nothing else) removes every
   binding, else 400. Each contact's expiry comes from its ``expires``
   parameter, else the ``Expires`` header, else ``default_expires``; a
   malformed value counts as 3600 (20.10, 20.19), a huge one is capped at
   ``max_expires``; ``0 < expiry < min_expires`` (and below an hour) is 423
   with ``Min-Expires``;
7. bindings are matched by URI (19.1.4, see :func:`binding_key`) or, for
   RFC 5626 registrations, by ``+sip.instance`` and ``reg-id``; a refresh
   with the Call-ID of the binding and a CSeq not higher than its own
   fails the whole request with 500 (out of order; "the request MUST fail
   with a 500", all or nothing);
8. 200 lists every current binding with its ``expires`` parameter, highest
   q first, with ``Date``; ``Supported: path, outbound``; the request's
   ``Path`` when the client supports it (RFC 3327 5.3); ``Require:
   outbound`` when RFC 5626 processing applied.

RFC 5626 6 (registrar): outbound processing applies when the registrar is
the first hop (one Via) or the first Path URI has ``;ob``. Then a contact
with both ``+sip.instance`` and ``reg-id`` is keyed by them (a new flow
replaces the old binding even with another URI), and more than one contact
with a non-zero expiry when any has a ``reg-id`` is 400. Otherwise a
``reg-id`` is ignored, or answered with 439 if the client requires
outbound (``Supported: outbound``). The registrar keeps ``+sip.instance``
and ``reg-id`` and returns them.

Flows (RFC 5626 6, 7; RFC 7118 5; :mod:`netsip.flows`): for each binding a
client one hop away (one Via) registered over TCP, TLS, WS or WSS (over
any transport for a Contact under ``.invalid`` or with ``;ob``, or with a
``reg-id``), the registrar remembers the leg and the client's address in
:attr:`Registrar.flows`, one flow per ``reg-id``, and asks the socket pool
to keep that connection open while the binding lives
(``SocketPool.keep_connection``). A proxy given the same table sends
requests for the contact over that connection. :meth:`Registrar.lookup`
leaves out a binding that needs a flow and has none here; one whose flow
this registrar knows and whose connection is gone is dropped from the
store (the flow failed: the proxy tries the next binding, 480 if none is
left). Flows live in the process: with a shared store each process
reaches the clients connected to it and skips the others' bindings.

Bad input is answered, logged and never stored: a Contact that is no URI
(Net::SIP stored garbage contacts, its leak bug #69) is 400; more than
``max_contacts`` Contact values in a request, or bindings for one AOR,
are 403 ``Too Many Contacts`` (policy, retrying does not help); a bad
``q`` is 400.

Differences from Net::SIP:

- ``max_expires`` defaults to 86400 (Net::SIP 300) and the default expiry
  is ``default_expires`` (3600, RFC 3261 10.2.1.1's example) instead of
  ``max_expires``; Net::SIP only has min/max;
- out of order refreshes, ``*``, q-values, Path, RFC 5626, ``Require``,
  the Date header and the limits above are new (Net::SIP stores what comes
  and answers 200 or 423);
- Net::SIP drops a REGISTER for a domain it does not serve; netsip answers
  404, or with ``pass_foreign=True`` returns None so that the next link of
  a chain (a proxy) forwards it (RFC 3261 10.3 step 1);
- expiry uses the store's heap and one timer (Net::SIP scans every binding
  on every REGISTER); :meth:`Registrar.expire` returns how many bindings
  it dropped;
- the store is a protocol (:class:`RegistrationStore`) instead of the
  ``_store`` hash hack;
- a rewritten request also gets the binding's Path as Route headers
  (RFC 3327 5.3);
- flows are new (Net::SIP has no RFC 5626 outbound): a client that
  accepts no connections (a browser, a phone behind NAT) cannot be called
  through Net::SIP's registrar.
"""

from __future__ import annotations

import email.utils
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from netsip._log import get_logger
from netsip._regstore import Binding, MemoryStore, RegistrationStore
from netsip.dispatcher import Dispatcher
from netsip.eventloop import TimerLike
from netsip.flows import Flow, FlowTable, needs_flow
from netsip.leg import Leg
from netsip.packet import Packet, PacketError, Request, Response
from netsip.util import Addr, NetSIPError, ip_is_v46

__all__ = [
    "Binding",
    "MemoryStore",
    "Registrar",
    "RegistrationStore",
    "binding_key",
    "canonical_aor",
]

log = get_logger(__name__)

#: RFC 3261 20.10 and 20.19: "Malformed values SHOULD be treated as equivalent to 3600."
MALFORMED_EXPIRES: Final = 3600
#: RFC 3261 10.3 step 6: 423 only for an interval "smaller than one hour"
_BRIEF_LIMIT: Final = 3600
#: the option tags this registrar supports (RFC 3327 path, RFC 5626 outbound)
SUPPORTED: Final = ("path", "outbound")

# ------------------------------------------------------------------ grammar
# RFC 3261 25.1: SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# (userinfo = user [":" password] "@"; hostport = host [":" port])
_SIP_URI_RE = re.compile(
    r"(?P<scheme>sips?):(?:(?P<user>[^@\s<>\"]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<params>(?:;[^;?\s<>\"]*)*)(?P<headers>\?[^\s<>\"]*)?",
    re.IGNORECASE | re.ASCII,
)
# RFC 3986 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ); any other absolute URI
_ABS_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"]+", re.ASCII)
# RFC 3261 25.1: name-addr = [ display-name ] LAQUOT addr-spec RAQUOT,
# display-name = *(token LWS) / quoted-string
_NAME_ADDR_RE = re.compile(
    r"(?:\"(?:[^\"\\]|\\.)*\"|[^<\"]*?)\s*<(?P<uri>[^<>\s]+)>\s*(?P<params>.*)", re.DOTALL
)
# addr-spec without <>: what follows the URI's first ";" are header parameters (20.10)
_ADDR_SPEC_RE = re.compile(r"(?P<uri>[^;<>\s\"]+)\s*(?P<params>.*)", re.DOTALL)
# contact-params = c-p-q / c-p-expires / contact-extension (generic-param)
_PARAM_RE = re.compile(
    r";\s*(?P<name>[A-Za-z0-9.!%*_+`'~-]+)"
    r"(?:\s*=\s*(?P<value>\"(?:[^\"\\]|\\.)*\"|[^;\"\s,]+))?\s*",
    re.ASCII,
)
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE_RE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?", re.ASCII)
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
# 19.1.4: these URI parameters must match when present in either URI
_SIGNIFICANT: Final = frozenset({"transport", "user", "ttl", "method", "maddr"})


def _unescape(s: str) -> str:
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), s) if "%" in s else s


def _split_uri(uri: str) -> re.Match[str] | None:
    m = _SIP_URI_RE.fullmatch(uri.strip())
    if m is None or (m.group("port") is not None and int(m.group("port")) > 65535):
        return None
    return m


def canonical_aor(uri: str) -> str | None:
    """The canonical form of an address of record (RFC 3261 10.3 step 5).

    URI parameters and headers are removed, escaped characters in the user
    part decoded, scheme and host lower-cased; the port stays if given.

    Args:
        uri: a SIP or SIPS URI (bare or in ``<>``).

    Returns:
        ``scheme:user@host[:port]``, or None if ``uri`` is not a SIP/SIPS URI.
    """
    return _canonical_aor(uri) if len(uri) <= _CACHED_URI else _canonical_aor.__wrapped__(uri)


@functools.lru_cache(maxsize=4096)
def _canonical_aor(uri: str) -> str | None:
    uri = uri.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]
    m = _split_uri(uri)
    if m is None:
        return None
    user = m.group("user")
    host = m.group("host").lower()
    port = m.group("port")
    out = f"{m.group('scheme').lower()}:"
    if user:
        out += _unescape(user.split(":", 1)[0]) + "@"
    return out + host + (f":{port}" if port else "")


def binding_key(uri: str) -> str:
    """What identifies a binding's contact URI (RFC 3261 19.1.4, simplified).

    Scheme and host compare case-insensitively, the user part with escapes
    decoded, the port as written (a URI without port differs from one with
    the default port), and the parameters ``transport``, ``user``, ``ttl``,
    ``method`` and ``maddr``; other parameters and headers are ignored
    (19.1.4 compares them only when both URIs have them). A URI that is not
    SIP/SIPS compares as a string with its scheme lower-cased. (Pure: the
    last results are cached, as those of :func:`canonical_aor`: a registrar
    sees the same AORs and contacts again and again.)
    """
    return _binding_key(uri) if len(uri) <= _CACHED_URI else _binding_key.__wrapped__(uri)


#: URIs up to this length have their canonical forms cached (bounded memory)
_CACHED_URI = 256


@functools.lru_cache(maxsize=4096)
def _binding_key(uri: str) -> str:
    m = _split_uri(uri)
    if m is None:
        scheme, _, rest = uri.partition(":")
        return f"{scheme.lower()}:{rest}"
    user = m.group("user")
    key = f"{m.group('scheme').lower()}:{_unescape(user) + '@' if user else ''}"
    key += m.group("host").lower() + (f":{m.group('port')}" if m.group("port") else "")
    for p in sorted(m.group("params").lower().split(";")):
        if p.partition("=")[0] in _SIGNIFICANT:
            key += ";" + p
    return key


# ------------------------------------------------------------------ input


class _RejectError(Exception):
    """A REGISTER is answered with an error (raised inside the registrar only)."""

    def __init__(self, code: int, reason: str, why: str, headers: dict[str, str] | None = None):
        super().__init__(why)
        self.code = code
        self.reason = reason
        self.headers = headers


@dataclass(slots=True)
class _Contact:
    """One Contact header value of a REGISTER, checked."""

    uri: str
    expires: str | None
    q: float | None
    instance: str | None
    reg_id: int | None
    other: str  # the parameters to keep, as written


def _delta_seconds(value: str) -> int:
    """An ``expires`` value (delta-seconds); malformed ones count as 3600 (20.10, 20.19)."""
    v = value.strip().strip('"')
    if not v.isdigit() or not v.isascii():
        log.info("malformed expires %r taken as %d", value[:40], MALFORMED_EXPIRES)
        return MALFORMED_EXPIRES
    if len(v) > 10:  # beyond 2**32-1 (20.19): capped later; int() of 10**40 not needed
        return 2**32 - 1
    return min(int(v), 2**32 - 1)


def _parse_contact(value: str) -> _Contact:
    m = _NAME_ADDR_RE.fullmatch(value.strip()) if "<" in value else None
    if m is None:
        m = _ADDR_SPEC_RE.fullmatch(value.strip())
    if m is None:
        raise _RejectError(400, "Bad Contact", f"contact is not a URI: {value[:80]!r}")
    uri, tail = m.group("uri"), m.group("params")
    scheme = uri.partition(":")[0].lower()
    if scheme in ("sip", "sips"):
        if _split_uri(uri) is None:
            raise _RejectError(400, "Bad Contact", f"contact is not a SIP URI: {uri[:80]!r}")
    elif _ABS_URI_RE.fullmatch(uri) is None:
        raise _RejectError(400, "Bad Contact", f"contact is not a URI: {uri[:80]!r}")
    expires = q_raw = instance = reg_raw = None
    other: list[str] = []
    pos = 0
    for p in _PARAM_RE.finditer(tail):
        if p.start() != pos:
            break
        pos = p.end()
        name, val = p.group("name").lower(), p.group("value")
        if name == "expires":
            expires = val or ""
        elif name == "q":
            q_raw = val or ""
        else:
            if name == "+sip.instance":
                instance = val
            elif name == "reg-id":
                reg_raw = val
            other.append(f";{p.group('name')}" + ("" if val is None else f"={val}"))
    if pos != len(tail):
        raise _RejectError(400, "Bad Contact", f"bad contact parameters: {tail[:80]!r}")
    q = None
    if q_raw is not None:
        if _QVALUE_RE.fullmatch(q_raw) is None:
            raise _RejectError(400, "Bad Contact", f"bad q value: {q_raw[:20]!r}")
        q = float(q_raw)
    reg_id = None
    if reg_raw is not None:
        # RFC 5626 4.2: reg-id = 1*DIGIT (no leading zero), 1 to 2**31-1
        if not (reg_raw.isdigit() and reg_raw.isascii() and len(reg_raw) <= 10):
            raise _RejectError(400, "Bad Contact", f"bad reg-id: {reg_raw[:20]!r}")
        reg_id = int(reg_raw)
    return _Contact(uri, expires, q, instance, reg_id, "".join(other))


def _is_sip(uri: str) -> bool:
    return uri.partition(":")[0].lower() in ("sip", "sips")


def _format_q(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".") if q != int(q) else str(int(q))


def _option_tags(packet: Packet, name: str) -> set[str]:
    tags: set[str] = set()
    for v in packet.get_headers(name):
        tags.update(t.strip().lower() for t in v.split(",") if t.strip())
    return tags


def _has_ob(path: str) -> bool:
    uri = path[path.find("<") + 1 : path.rfind(">")] if "<" in path else path
    return any(p.split("=")[0].strip().lower() == "ob" for p in uri.split(";")[1:])


# ------------------------------------------------------------------ the registrar


class Registrar:
    """A registrar: answers REGISTER, keeps bindings, rewrites requests to registered AORs.

    Args:
        dispatcher: the dispatcher that sends the responses and runs the
            expiry timer (its event loop's ``looptime`` is the clock).
        min_expires: the shortest expiry granted; shorter requests get 423.
        max_expires: the longest expiry granted (longer requests are capped).
        domains: the domains served (a name or names; ``"*"`` is any, a
            domain covers its subdomains); None serves every domain.
        store: where bindings live; a new :class:`MemoryStore` if None.
        default_expires: the expiry for a contact that asks for none.
        max_contacts: the most Contact values in a REGISTER, and the most
            bindings of one AOR (403 beyond).
        pass_foreign: for a REGISTER to a domain not served, return None
            (leave it to the next link of a chain) instead of answering 404.
        domain: one domain, as ``domains`` (Net::SIP takes either name).
        flows: where the flows of the bindings are kept (see
            :mod:`netsip.flows`); a new :class:`~netsip.flows.FlowTable` if
            None. Give the same table to the proxy.

    Raises:
        ValueError: inconsistent limits.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        min_expires: int = 30,
        max_expires: int = 86400,
        domains: str | Iterable[str] | None = None,
        store: RegistrationStore | None = None,
        *,
        default_expires: int = 3600,
        max_contacts: int = 20,
        pass_foreign: bool = False,
        domain: str | None = None,
        flows: FlowTable | None = None,
    ) -> None:
        if not 0 <= min_expires <= max_expires:
            raise ValueError(
                f"need 0 <= min_expires <= max_expires, not {min_expires}, {max_expires}"
            )
        if max_contacts < 1:
            raise ValueError(f"max_contacts must be >= 1, not {max_contacts}")
        self.dispatcher = dispatcher
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = min(max(default_expires, min_expires), max_expires)
        self.max_contacts = max_contacts
        self.pass_foreign = pass_foreign
        if domains is None and domain is not None:
            domains = domain
        if isinstance(domains, str):
            domains = [domains]
        self.domains: tuple[str, ...] | None = (
            tuple(d.lower().lstrip(".") for d in domains) if domains is not None else None
        )
        self.store: RegistrationStore = store if store is not None else MemoryStore()
        #: the flows of the bindings registered over a connection (RFC 5626, RFC 7118 5)
        self.flows: FlowTable = flows if flows is not None else FlowTable()
        self._timer: TimerLike | None = None
        self._timer_when: float | None = None

    # ---------------------------------------------------------------- queries

    def lookup(self, aor: str) -> list[Binding]:
        """The current bindings of ``aor``, highest q first (no q counts as 1).

        Args:
            aor: an address of record (any form :func:`canonical_aor` takes).

        Returns:
            The bindings; none if the store failed (logged).
        """
        key = canonical_aor(aor)
        if key is None:
            return []
        now = self.dispatcher.eventloop.looptime
        try:
            bindings = self._reachable(key, self.store.get(key, now), now)
        except OSError as exc:
            log.warning("lookup of %s failed: %s", key, exc)
            return []
        # highest q first; for equal q the freshest (latest expiry) first: a
        # stale binding of a phone that went away must not win the call
        bindings.sort(key=lambda b: (-(1.0 if b.q is None else b.q), -b.expires))
        return bindings

    def _reachable(self, aor: str, bindings: list[Binding], now: float) -> list[Binding]:
        """``bindings`` without those only a flow reaches when that flow is not here.

        A Contact that needs a flow (:func:`~netsip.flows.needs_flow`: an
        ``.invalid`` host, ``;ob``) is reachable only over a live flow of
        this process. If its flow is known but its connection is gone, the
        binding is dropped from the store (RFC 5626 5.3: the flow failed; the
        proxy tries the next binding, 480 if none is left); one this process
        has no flow for is skipped but kept (another process sharing the
        store may hold its connection). Other bindings stay: a plain contact
        whose connection closed is reached the RFC 3261 way.

        Raises:
            OSError: the store failed to drop a dead binding.
        """
        flows = self.flows
        if not bindings or (not len(flows) and not any(needs_flow(b.contact) for b in bindings)):
            return bindings
        kept: list[Binding] = []
        dead: list[Binding] = []
        for b in bindings:
            inst, rid = b.instance, b.reg_id
            if not needs_flow(b.contact) or flows.find(b.contact, now, instance=inst, reg_id=rid):
                kept.append(b)
            elif flows.known(b.contact, now, instance=inst, reg_id=rid):
                dead.append(b)
            else:
                log.debug("%s: no flow to %s in this process", aor, b.contact)
        if dead:
            for b in dead:
                log.info("%s: flow to %s failed, binding dropped", aor, b.contact)
                flows.forget(b.contact, instance=b.instance, reg_id=b.reg_id)
            gone = {id(b) for b in dead}
            self.store.put(aor, [b for b in bindings if id(b) not in gone], now)
        return kept

    def query(self, aor: str) -> list[str]:
        """The SIP/SIPS contact URIs registered for ``aor``, highest q first (as
        Net::SIP), the latest to expire first among equal q."""
        return [b.contact for b in self.lookup(aor) if _is_sip(b.contact)]

    def expire(self) -> int:
        """Drop the bindings that expired (only those: the store's heap) and re-arm the timer.

        Returns:
            How many bindings were dropped.
        """
        now = self.dispatcher.eventloop.looptime
        dropped = self.store.expire(now)
        self.flows.expire(now)
        if dropped:
            log.debug("%d binding(s) expired", dropped)
        self._arm(now)
        return dropped

    def _arm(self, now: float) -> None:
        nxt = self.store.next_expiry()
        if nxt is None:
            return
        if self._timer is not None and self._timer_when is not None:
            if self._timer_when <= nxt and self._timer_when > now:
                return  # the armed timer comes first (it re-arms when it fires)
            self._timer.cancel()
        self._timer_when = nxt
        self._timer = self.dispatcher.add_timer(
            max(nxt - now, 0.0), self._on_timer, name="registrar expire"
        )

    def _on_timer(self, _timer: object = None) -> None:
        self._timer = self._timer_when = None
        self.expire()

    def close(self) -> None:
        """Cancel the expiry timer (the bindings stay in the store)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_when = None

    # ---------------------------------------------------------------- receiving

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> int | None:
        """Handle a packet (the ``Dispatcher.set_receiver`` interface).

        Returns:
            The response code sent to a REGISTER; None for a packet left to
            the next link of a chain (responses, other methods, with
            ``pass_foreign`` a REGISTER for a foreign domain).
        """
        if not isinstance(packet, Request):
            return None
        if packet.method() != "REGISTER":
            self._rewrite(packet)
            return None
        try:
            response = self._register(packet, leg, from_)
        except _RejectError as r:
            log.info("REGISTER from %s: %d %s: %s", from_, r.code, r.reason, r)
            response = packet.create_response(r.code, r.reason, headers=r.headers)
        except PacketError as exc:
            log.info("REGISTER from %s: 400: %s", from_, exc)
            response = packet.create_response(400, "Bad Request")
        if response is None:
            return None
        try:
            self.dispatcher.deliver(response, leg=leg, dst_addr=from_)
        except (NetSIPError, OSError, ValueError) as exc:
            log.info("cannot answer REGISTER from %s: %s", from_, exc)
        return response.code()

    def _rewrite(self, request: Request) -> None:
        """Net::SIP: a request to a registered AOR goes to its best contact.

        The binding's Path becomes the request's first Route headers
        (RFC 3327 5.3), so the proxy sends it along the path.
        """
        aor = canonical_aor(request.uri())
        if aor is None:
            return
        for b in self.lookup(aor):
            if _is_sip(b.contact):
                log.debug("rewrite %s %s to %s", request.method(), aor, b.contact)
                request.set_uri(b.contact)
                if b.path:
                    request.insert_header("route", list(b.path))
                return

    def _serves(self, host: str) -> bool:
        if self.domains is None:
            return True
        host = host.lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return any(d in ("*", host) or host.endswith("." + d) for d in self.domains)

    def _register(self, request: Request, leg: Leg, from_: Addr) -> Response | None:
        """RFC 3261 10.3: the response to a REGISTER (None: not ours, pass it on)."""
        # step 1: the Request-URI
        ruri = _split_uri(request.uri())
        if ruri is None:
            raise _RejectError(416, "Unsupported URI Scheme", f"Request-URI {request.uri()[:80]!r}")
        rhost = ruri.group("host")
        if ip_is_v46(rhost.strip("[]")) is None and not self._serves(rhost):
            self._foreign(f"Request-URI domain {rhost} is not served")
            return None
        # step 2: Require (8.2.2.3)
        unknown = _option_tags(request, "require") - set(SUPPORTED)
        if unknown:
            tags = ", ".join(sorted(unknown))
            raise _RejectError(420, "Bad Extension", f"requires {tags}", {"unsupported": tags})
        # step 5: the address of record
        to = request.get_header("to")
        if to is None:
            raise _RejectError(400, "Missing To", "no To header")
        to_uri = _NAME_ADDR_RE.fullmatch(to.strip()) or _ADDR_SPEC_RE.fullmatch(to.strip())
        if to_uri is None or _ABS_URI_RE.fullmatch(to_uri.group("uri")) is None:
            raise _RejectError(400, "Invalid To", f"To is not a URI: {to[:80]!r}")
        aor = canonical_aor(to_uri.group("uri"))
        if aor is None:
            raise _RejectError(404, "Not Found", f"To is not a SIP URI: {to[:80]!r}")
        if not self._serves(aor.partition(":")[2].rpartition("@")[2]):
            self._foreign(f"AOR {aor} is not in a served domain")
            return None
        # step 6: the contacts
        values = request.get_headers("contact")
        if len(values) > self.max_contacts:
            raise _RejectError(
                403, "Too Many Contacts", f"{len(values)} contacts (max {self.max_contacts})"
            )
        callid = request.callid() or ""
        cseq = request.cseq_number() or 0
        now = self.dispatcher.eventloop.looptime
        self.store.expire(now)  # (pops only what is due)
        try:
            current = self.store.get(aor, now)
        except OSError as exc:
            raise _RejectError(500, "Server Internal Error", f"store failed: {exc}") from exc
        flows = False
        if "*" in (v.strip() for v in values):
            new = self._unregister_all(request, values, current, callid, cseq)
        else:
            new, flows = self._update(
                request, aor=aor, values=values, current=current, callid=callid, cseq=cseq, now=now
            )
        if new is not None:
            try:
                self.store.put(aor, new, now)
            except OSError as exc:
                raise _RejectError(500, "Server Internal Error", f"store failed: {exc}") from exc
            self._track_flows(request, Flow(leg, from_), current, new)
            self._arm(now)
            current = new
        return self._ok(request, current, now, flows)

    def _track_flows(
        self, request: Request, flow: Flow, old: list[Binding], new: list[Binding]
    ) -> None:
        """Remember the flow of each binding this REGISTER made, forget those it removed.

        RFC 5626 6 and 7, RFC 7118 5: a binding registered by a client one hop
        away (one Via) over a connection (TCP, TLS, WS) is reached over that
        connection; so is, over any transport, one whose Contact needs a flow
        or that has a reg-id. Through another proxy (more Vias) the way back
        is that proxy's business (Path, or its own flow tokens).
        """
        flows = self.flows
        callid, cseq = request.callid() or "", request.cseq_number() or 0
        first_hop = len(request.header_values("via")) <= 1
        stream = flow.leg.proto != "udp"
        for b in new:
            if b.callid != callid or b.cseq != cseq:
                continue  # (not touched by this request)
            if first_hop and (stream or b.reg_id is not None or needs_flow(b.contact)):
                flows.remember(b.contact, flow, b.expires, instance=b.instance, reg_id=b.reg_id)
                if stream:
                    # the connection must outlive its idle timeout while the binding lives
                    flow.leg.socketpool().keep_connection(flow.peer, b.expires)
        kept = {(b.contact, b.instance, b.reg_id) for b in new}
        for b in old:
            if (b.contact, b.instance, b.reg_id) not in kept:
                flows.forget(b.contact, instance=b.instance, reg_id=b.reg_id)

    def _foreign(self, why: str) -> None:
        """A REGISTER for a domain not served: 404, or (``pass_foreign``) passed on."""
        if self.pass_foreign:
            log.debug("REGISTER passed on: %s", why)
            return
        raise _RejectError(404, "Not Found", why)

    def _expires_header(self, request: Request) -> int | None:
        value = request.get_header("expires")
        return None if value is None else _delta_seconds(value)

    @staticmethod
    def _check_order(old: Binding, callid: str, cseq: int) -> None:
        # 10.3 step 7: same Call-ID and a CSeq not higher: the update fails
        if old.callid == callid and cseq <= old.cseq:
            raise _RejectError(
                500,
                "Server Internal Error",
                f"out of order REGISTER for {old.contact} (CSeq {cseq} <= {old.cseq})",
                {"retry-after": "5"},
            )

    def _unregister_all(
        self, request: Request, values: list[str], current: list[Binding], callid: str, cseq: int
    ) -> list[Binding] | None:
        # 10.3 step 6: "*" only alone and with Expires: 0
        if len(values) != 1 or self._expires_header(request) != 0:
            raise _RejectError(
                400, "Bad Request", "Contact: * needs Expires: 0 and no other contact"
            )
        for b in current:
            self._check_order(b, callid, cseq)
        return []

    def _update(
        self,
        request: Request,
        *,
        aor: str,
        values: list[str],
        current: list[Binding],
        callid: str,
        cseq: int,
        now: float,
    ) -> tuple[list[Binding] | None, bool]:
        """The new bindings of ``aor`` (10.3 steps 6, 7), or None if nothing changes,
        and whether RFC 5626 outbound processing applied to a contact."""
        if not values:
            return None, False  # a query: 200 with the current bindings
        contacts = [_parse_contact(v) for v in values]
        header = self._expires_header(request)
        path = tuple(request.get_headers("path"))
        # RFC 5626 6: outbound processing if first hop or the first Path URI has "ob"
        outbound = len(request.get_headers("via")) <= 1 or (bool(path) and _has_ob(path[0]))
        flows = [c for c in contacts if c.reg_id is not None and c.instance is not None]
        if flows and not outbound:
            if "outbound" in _option_tags(request, "supported"):
                raise _RejectError(439, "First Hop Lacks Outbound Support", "reg-id without ob hop")
            flows = []
        requested: list[int] = []
        for c in contacts:
            r = header if c.expires is None else _delta_seconds(c.expires)
            requested.append(self.default_expires if r is None else r)
        # RFC 5626 6: a reg-id among several contacts to register (non-zero expiry)
        live = [c for c, r in zip(contacts, requested, strict=True) if r]
        if flows and len(live) > 1 and any(c in flows for c in live):
            raise _RejectError(400, "Bad Request", "reg-id with more than one contact to register")
        for r in requested:
            # step 6: 423 only if 0 < interval < min and below an hour
            if 0 < r < self.min_expires and r < _BRIEF_LIMIT:
                raise _RejectError(
                    423,
                    "Interval Too Brief",
                    f"expires {r} < {self.min_expires}",
                    {"min-expires": str(self.min_expires)},
                )
        table: dict[object, Binding] = {}
        for b in current:
            table[
                ("flow", b.instance, b.reg_id) if b.reg_id is not None else binding_key(b.contact)
            ] = b
        stored = dict(table)
        for c, r in zip(contacts, requested, strict=True):
            is_flow = c.reg_id is not None and c.instance is not None and flows
            key: object = ("flow", c.instance, c.reg_id) if is_flow else binding_key(c.uri)
            old = stored.get(key)
            if old is not None:
                self._check_order(old, callid, cseq)
            if r == 0:
                table.pop(key, None)
                continue
            table[key] = Binding(
                contact=c.uri,
                expires=now + min(r, self.max_expires),
                callid=callid,
                cseq=cseq,
                q=c.q,
                params=c.other,
                path=path,
                instance=c.instance,
                reg_id=c.reg_id if is_flow else None,
            )
        if len(table) > self.max_contacts:
            raise _RejectError(
                403,
                "Too Many Contacts",
                f"{aor} would have {len(table)} bindings (max {self.max_contacts})",
            )
        return list(table.values()), bool(flows)

    def _ok(self, request: Request, bindings: list[Binding], now: float, flows: bool) -> Response:
        """10.3 step 8: 200 with every current binding and its expiry."""
        bindings = sorted(bindings, key=lambda b: (-(1.0 if b.q is None else b.q), -b.expires))
        contacts = []
        for b in bindings:
            value = f"<{b.contact}>;expires={max(math.ceil(b.expires - now), 0)}"
            if b.q is not None:
                value += f";q={_format_q(b.q)}"
            contacts.append(value + b.params)
        headers: dict[str, str | list[str]] = {
            "supported": ", ".join(SUPPORTED),
            "date": _http_date(now),
        }
        if contacts:
            headers["contact"] = contacts
        path = request.get_headers("path")
        if path and "path" in _option_tags(request, "supported"):
            headers["path"] = path  # RFC 3327 5.3
        if flows:
            headers["require"] = "outbound"  # RFC 5626 6
        return request.create_response(200, "OK", headers=headers)


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _http_date(now: float) -> str:
    """The Date header value (RFC 3261 20.17) for ``now``, formatted once a second."""
    return _date_of_second(int(now))
