"""Digest authorization in front of a server: port of Perl's ``Net::SIP::Authorize``.

:class:`Authorize` is the first object of a receive chain (or the
dispatcher's receiver in front of an endpoint, see
:meth:`netsip.simple.Simple.listen`): a request with valid credentials for
its realm passes on (its ``receive`` returns None, the chain goes on to the
next object); any other request is answered here (``receive`` returns the
code, the chain stops). Responses always pass.

How it works:

- Challenges and checks are :mod:`netsip.digest`'s stateless primitives
  (:func:`~netsip.digest.make_nonce`, :func:`~netsip.digest.make_challenge`,
  :func:`~netsip.digest.verify`): a nonce is ``<time>.<random>.<HMAC(secret,
  time.random:realm[:opaque])>`` with a random per-instance ``secret``, new
  for every challenge, good for ``max_age`` seconds. A request without
  (readable, right) credentials for the realm gets a 401 with
  ``WWW-Authenticate`` (a 407 with ``Proxy-Authenticate`` when
  ``i_am_proxy``): one challenge per offered algorithm, strongest first
  (RFC 8760 2.4: SHA-256 before MD5), each with ``qop="auth,auth-int"``.
  A client should answer the first challenge it supports (RFC 8760 2.4);
  one that takes the first whatever its algorithm (sipp 3.6, which knows
  MD5 only) needs ``algorithms=("MD5",)``.
- A correct answer with an expired nonce is challenged again with
  ``stale=true`` (RFC 7616 3.3), so the client retries without asking its
  user. The algorithm and qop of an answer must be ones offered (no
  downgrade to an algorithm or an RFC 2069 answer the server did not ask
  for).
- Replays within a nonce's age (RFC 7616 3.4, 5.10): the ``nc`` values used
  with each nonce are remembered (:class:`NonceTracker`); an ``nc`` used
  before by another request (or by the same request more than 64*T1 ago:
  a retransmission is let through again), or below the window of the last
  :data:`NC_WINDOW` counts, gets a ``stale=true`` challenge. An answer
  without qop has no ``nc``: its nonce is good for one request. Memory is
  bounded twice: a nonce is forgotten once it is older than ``max_age``
  (:func:`~netsip.digest.verify` calls it stale before the tracker is asked),
  and at most ``max_nonces`` nonces are tracked; when that table is full the
  oldest entry goes and every nonce issued up to its time that is not in the
  table counts as used (challenged with ``stale=true``), so forgetting never
  lets a replay through. So at most ``max_nonces`` x :data:`NC_WINDOW`
  counts are held (10,000 x 64 by default; usually one or two per nonce),
  and only requests with right credentials add any.
- After the credentials, the ``filter`` of the request's method (Perl's
  shape: ``{method: [alternative, ...]}``, an alternative a callback, a
  filter name, or a list of them that must all pass) decides; the filters
  :func:`from_is_realm`, :func:`from_is_auth_user` and :func:`to_is_from`
  are there by the Perl names ``FromIsRealm``, ``FromIsAuthUser`` and
  ``ToIsFrom``.
- ACK and CANCEL are never challenged (RFC 3261 22.1: they cannot be
  resubmitted): with right credentials (those of their INVITE, an expired
  nonce included) they pass, otherwise they are dropped, as in Perl.
- Credentials of the realm are removed from a request that passes (RFC 3261
  22.3: they were meant for this hop), the others stay.

Differences from Net::SIP:

- Net::SIP challenges with MD5 and no qop only, with a random nonce it never
  checks (a captured answer can be replayed forever), accepts MD5 only and
  hashes ``nc`` as ``1`` (so it would refuse a qop answer, which it does
  not ask for). Here: MD5, SHA-256, SHA-512-256 and their ``-sess`` variants (the
  ``algorithms`` offered; default SHA-256 and MD5), qop ``auth`` and
  ``auth-int``, stateless checked nonces, ``stale``, ``nc`` tracking.
- A request whose credentials pass but whose filter refuses it gets a 403
  (RFC 3261 21.4.4: "Authorization will not help"); Net::SIP challenges
  again.
- ``user2pass`` is asked before ``user2a1`` (a password serves every
  algorithm; an A1 only its own: a ``str`` from ``user2a1`` is an MD5 A1 as
  in Perl, an :class:`~netsip.digest.HA1` says its algorithm). Without
  ``user2pass`` only MD5 is offered by default.
- :func:`to_is_from` compares the URIs of To and From (RFC 3261 19.1.4);
  Net::SIP compares the whole values, display names included.
- ``user2pass`` may also come from a file of ``user:password`` lines
  (:func:`users_from_file`, :meth:`Authorize.from_file`).

Performance: a request costs one :func:`~netsip.digest.verify` (one parse
of its credentials, the nonce's HMAC, two or three hashes) and a dict
lookup in the tracker, some 40 us in CPython on a laptop-class CPU; a
challenge one nonce and a response. Nothing scans a table per request:
the tracker drops expired entries from its oldest end when it inserts.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Final, TypeAlias

from netsip._log import get_logger
from netsip.digest import (
    ALGORITHMS,
    HA1,
    Status,
    Verdict,
    credentials_realm,
    make_challenge,
    make_nonce,
    verify,
)
from netsip.dispatcher import Dispatcher
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.util import (
    Addr,
    NetSIPError,
    invoke_callback,
    sip_hdrval2parts,
    sip_uri2parts,
    sip_uri_eq,
)

__all__ = [
    "FILTERS",
    "NC_WINDOW",
    "Authorize",
    "NonceTracker",
    "from_is_auth_user",
    "from_is_realm",
    "to_is_from",
    "users_from_file",
]

log = get_logger(__name__)

#: the nc values remembered per nonce; a lower nc is refused as a replay
NC_WINDOW: Final = 64
#: RFC 3261 17.2: a request retransmitted within 64*T1 is the same request
RETRANSMIT_WINDOW: Final = 32.0
#: the algorithms offered by default, in RFC 8760 2.4's order of preference
DEFAULT_ALGORITHMS: Final = ("SHA-256", "MD5")

#: a filter: ``(packet, leg, from_, auth_user, auth_realm) -> bool``
Filter: TypeAlias = Callable[[Request, Leg, Addr, str, str], object]
#: the credentials of a user: a mapping user -> value, or a callable
UserLookup: TypeAlias = Mapping[str, Any] | Callable[..., Any]

_NC_RE: Final = re.compile(r"[0-9a-fA-F]{1,8}")
_STAMP_RE: Final = re.compile(r"([0-9a-f]{1,16})\.")


# --------------------------------------------------------------------------
# the filters (Net::SIP::Authorize::FromIsRealm, FromIsAuthUser, ToIsFrom)
# --------------------------------------------------------------------------


def _uri_parts(packet: Request, name: str) -> tuple[str, str | None] | None:
    value = packet.get_header(name)
    if not value:
        return None
    # the value without its parameters (the tag), then the URI (as Perl does)
    parts = sip_uri2parts(sip_hdrval2parts(name, value)[0])
    return (parts[0], parts[1]) if parts is not None else None


def from_is_realm(packet: Request, leg: Leg, from_: Addr, user: str, realm: str) -> bool:
    """The From's domain is the realm or a subdomain of it."""
    parts = _uri_parts(packet, "from")
    if parts is None:
        return False
    domain = parts[0]
    # the port goes (Perl: s{:\\w+$}{}); an IPv6 literal keeps its brackets
    domain = re.sub(r":\d+$", "", domain)
    realm = realm.lower()
    if domain == realm or domain.endswith("." + realm):
        return True
    log.info("From domain %r is not realm %r", domain, realm)
    return False


def from_is_auth_user(packet: Request, leg: Leg, from_: Addr, user: str, realm: str) -> bool:
    """The From's user is the user of the credentials (any case)."""
    parts = _uri_parts(packet, "from")
    if parts is not None and parts[1] is not None and parts[1].lower() == user.lower():
        return True
    log.info("From user %r is not the authorized user %r", parts and parts[1], user)
    return False


def to_is_from(packet: Request, leg: Leg, from_: Addr, user: str, realm: str) -> bool:
    """To and From name the same URI (a user registering themself)."""
    frm, to = packet.get_header("from"), packet.get_header("to")
    # the name-addrs without their parameters (the tag): URI against URI
    if frm and to and sip_uri_eq(sip_hdrval2parts("from", frm)[0], sip_hdrval2parts("to", to)[0]):
        return True
    log.info("To %r is not From %r", to, frm)
    return False


#: the filters by their Net::SIP names
FILTERS: Final[Mapping[str, Filter]] = {
    "FromIsRealm": from_is_realm,
    "FromIsAuthUser": from_is_auth_user,
    "ToIsFrom": to_is_from,
}


def _filter_chains(spec: object) -> dict[str, list[list[object]]]:
    """Perl's filter shape to ``{METHOD: [[and, ...], ...]}`` (any alternative passes).

    Raises:
        TypeError: not a mapping.
        ValueError: an unknown filter name.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(f"filter must be a mapping method -> chain, not {type(spec).__name__}")
    chains: dict[str, list[list[object]]] = {}
    for method, chain in spec.items():
        alternatives = chain if isinstance(chain, list) else [chain]
        ors: list[list[object]] = []
        for alt in alternatives:
            ands: list[object] = []
            for item in alt if isinstance(alt, list) else [alt]:
                if isinstance(item, str) and item not in FILTERS:
                    raise ValueError(f"unknown filter {item!r} (known: {', '.join(FILTERS)})")
                ands.append(FILTERS[item] if isinstance(item, str) else item)
            ors.append(ands)
        chains[str(method).upper()] = ors
    return chains


# --------------------------------------------------------------------------
# credentials
# --------------------------------------------------------------------------


def users_from_file(path: str | PathLike[str]) -> dict[str, str]:
    """Read ``user:password`` lines (UTF-8) into a mapping for ``user2pass``.

    Blank lines and lines starting with ``#`` are skipped; the password is
    everything after the first ``:`` (it may hold more), up to the end of
    the line (no trailing whitespace is stripped but the line end).

    Raises:
        OSError: the file cannot be read.
        ValueError: a line without ``:`` or with an empty user; the message
            names the line.
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, password = line.partition(":")
            user = user.strip()
            if not sep or not user:
                raise ValueError(f"{path}:{number}: not a user:password line")
            users[user] = password
    return users


def _ask(source: UserLookup, *args: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(args[0])
    return invoke_callback(source, *args)


# --------------------------------------------------------------------------
# nc tracking
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _NonceUses:
    """The counts used with one nonce."""

    stamp: int
    #: an nc at or below this is refused (it left the window)
    floor: int = -1
    #: nc -> (the request that used it, when)
    seen: dict[int, tuple[str, float]] = field(default_factory=dict)


class NonceTracker:
    """The ``nc`` values used with each nonce (RFC 7616 3.4), bounded.

    Args:
        max_age: seconds a nonce is good for: older entries are dropped.
        max_nonces: the most nonces tracked at once.
    """

    __slots__ = ("_floor", "_uses", "max_age", "max_nonces")

    def __init__(self, max_age: float, max_nonces: int) -> None:
        if max_nonces < 1:
            raise ValueError(f"max_nonces must be at least 1, not {max_nonces}")
        self.max_age = max_age
        self.max_nonces = max_nonces
        self._uses: dict[str, _NonceUses] = {}
        # nonces issued up to this time and not in _uses were (maybe) used
        self._floor = -1

    def __len__(self) -> int:
        return len(self._uses)

    def use(self, nonce: str, nc: int, request_id: str, now: float) -> str | None:
        """Count one use of ``nonce`` with ``nc`` by ``request_id``.

        Returns:
            None if the use is new (or a retransmission of the request that
            used it first, within 64*T1); else why it is a replay.
        """
        m = _STAMP_RE.match(nonce)
        if m is None:
            return "not a nonce of ours"
        uses = self._uses.get(nonce)
        if uses is None:
            stamp = int(m.group(1), 16)
            if stamp <= self._floor:
                return "nonce no longer tracked (table full)"
            self._expire(now)
            uses = self._uses[nonce] = _NonceUses(stamp)
            if len(self._uses) > self.max_nonces:
                # forget the oldest entry; what it covered counts as used
                oldest = next(iter(self._uses))
                self._floor = max(self._floor, self._uses.pop(oldest).stamp)
        if nc <= uses.floor:
            return f"nc {nc} below the window"
        got = uses.seen.get(nc)
        if got is not None:
            if got[0] == request_id and now - got[1] <= RETRANSMIT_WINDOW:
                return None
            return f"nc {nc} used before"
        uses.seen[nc] = (request_id, now)
        if len(uses.seen) > NC_WINDOW:
            lowest = min(uses.seen)
            del uses.seen[lowest]
            uses.floor = max(uses.floor, lowest)
        return None

    def _expire(self, now: float) -> None:
        """Drop the entries, in first-use order, of nonces past their age
        (:func:`netsip.digest.verify` answers stale for them first)."""
        uses = self._uses
        limit = now - self.max_age
        while uses:
            first = next(iter(uses))
            if uses[first].stamp >= limit:
                break
            del uses[first]


# --------------------------------------------------------------------------
# the authorizer
# --------------------------------------------------------------------------


class Authorize:
    """Require digest credentials before a request passes on.

    Args:
        dispatcher: sends the challenges; its loop's ``looptime`` is the clock.
        realm: the realm announced and checked (RFC 3261 22.1).
        opaque: a fixed ``opaque`` to announce; answers must echo it.
        user2a1: user -> A1 (``H(user:realm:password)``, hex; a ``str`` is
            MD5, an :class:`~netsip.digest.HA1` names its hash): a mapping
            or a callable ``(user, realm)``.
        user2pass: user -> password: a mapping or a callable ``(user)``.
        i_am_proxy: 407 with ``Proxy-Authenticate`` and check
            ``Proxy-Authorization`` (else 401, ``WWW-Authenticate``,
            ``Authorization``).
        filter: ``{method: chain}`` as in Net::SIP: a chain is one
            alternative or a list of them, an alternative a filter (a name
            of :data:`FILTERS`, or a callback ``(packet, leg, from_, user,
            realm) -> bool``) or a list of filters that must all pass.
        algorithms: the algorithms offered, preferred first (default
            SHA-256 and MD5; MD5 only without ``user2pass``).
        qop: the qop offered (empty: RFC 2069 answers).
        max_age: seconds a nonce is good for.
        max_nonces: the most nonces whose ``nc`` values are tracked.
        secret: the nonce key (default random: share it to let several
            processes check each other's nonces).

    Raises:
        ValueError: neither ``user2a1`` nor ``user2pass``; an unknown
            algorithm, qop or filter; ``-sess`` without qop.
        TypeError: ``filter`` is not a mapping.
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        realm: str = "netsip",
        opaque: str | None = None,
        user2a1: UserLookup | None = None,
        user2pass: UserLookup | None = None,
        i_am_proxy: bool = False,
        filter: Mapping[str, object] | None = None,
        algorithms: Sequence[str] | None = None,
        qop: Sequence[str] = ("auth", "auth-int"),
        max_age: float = 300.0,
        max_nonces: int = 10_000,
        secret: bytes | None = None,
    ) -> None:
        if user2a1 is None and user2pass is None:
            raise ValueError("no user2pass or user2a1 known")
        self.dispatcher = dispatcher
        self.realm = realm
        self.opaque = opaque
        self.user2a1 = user2a1
        self.user2pass = user2pass
        self.i_am_proxy = bool(i_am_proxy)
        if algorithms is None:
            algorithms = DEFAULT_ALGORITHMS if user2pass is not None else ("MD5",)
        unknown = [a for a in algorithms if a.upper() not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"unknown digest algorithms {unknown!r}")
        self.algorithms: tuple[str, ...] = tuple(ALGORITHMS[a.upper()].name for a in algorithms)
        self.qop: tuple[str, ...] = tuple(q.lower() for q in qop)
        self.max_age = max_age
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._filters = _filter_chains(filter) if filter is not None else {}
        self.nonces = NonceTracker(max_age, max_nonces)
        if self.i_am_proxy:
            self._code, self._request_hdr, self._challenge_hdr = (
                407,
                "proxy-authorization",
                "proxy-authenticate",
            )
        else:
            self._code, self._request_hdr, self._challenge_hdr = (
                401,
                "authorization",
                "www-authenticate",
            )
        self._templates: dict[bool, list[tuple[str, ...]]] = {}
        self._challenge_values(0.0, stale=False)  # checks algorithms and qop now

    @classmethod
    def from_file(
        cls, path: str | PathLike[str], *, dispatcher: Dispatcher, **args: Any
    ) -> Authorize:
        """An authorizer whose ``user2pass`` is the ``user:password`` file
        ``path`` (see :func:`users_from_file`); ``args`` as for the class."""
        return cls(dispatcher=dispatcher, user2pass=users_from_file(path), **args)

    # ------------------------------------------------------------ receiving

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> int | None:
        """Check a request; the receive-chain protocol.

        Returns:
            None if the packet passes on (a response, or a request with
            valid credentials); else the code of the answer sent (401, 407,
            403) or, for a dropped ACK or CANCEL, the challenge code.
        """
        if not isinstance(packet, Request):
            return None
        method = packet.method()
        now = self.dispatcher.eventloop.looptime
        verdict = verify(
            packet,
            realm=self.realm,
            secret=self._secret,
            lookup=self._lookup,
            now=now,
            max_age=self.max_age,
            proxy=self.i_am_proxy,
        )
        if method in ("ACK", "CANCEL"):
            # RFC 3261 22.1: never challenged; an expired nonce is fine here
            # (the ACK of a long-ringing INVITE carries the INVITE's nonce)
            if verdict.status in (Status.OK, Status.STALE) and self._offered(verdict) is None:
                self._consume(packet)
                return None
            log.info("%s from %s without valid credentials: dropped", method, from_)
            return self._code
        problem = self._problem(verdict, packet, now)
        if problem is not None:
            reason, detail, stale = problem
            # (the reason is a code literal: the log's rate limit keys on it)
            log.info(
                "%s from %s, user %r: " + reason + "%s: %d%s",
                method,
                from_,
                verdict.user,
                detail,
                self._code,
                " stale" if stale else "",
            )
            self._challenge(packet, leg, from_, now, stale=stale)
            return self._code
        assert verdict.user is not None
        if not self._filtered(method, packet, leg, from_, verdict.user):
            log.info("%s from %s: user %r refused by the filter: 403", method, from_, verdict.user)
            self._send(packet.create_response(403), leg, from_)
            return 403
        self._consume(packet)
        return None

    def _problem(
        self, verdict: Verdict, packet: Request, now: float
    ) -> tuple[str, str, bool] | None:
        """None if the request passes; else why not, as a fixed reason, a
        detail, and whether the credentials were right (so the challenge
        says ``stale=true``, RFC 7616 3.3)."""
        if verdict.status is Status.MISSING:
            if packet.get_headers(self._request_hdr):
                return "no readable credentials for the realm", "", False
            return "no credentials", "", False
        if verdict.status is Status.WRONG:
            return "credentials refused", "", False
        offered = self._offered(verdict)
        if offered is not None:
            return "not offered: ", offered, False
        if verdict.status is Status.STALE:
            return "nonce expired", "", True
        nc = verdict.nc
        if nc is not None and _NC_RE.fullmatch(nc) is None:
            return "nc is not 1 to 8 hex digits: ", repr(nc), False
        assert verdict.nonce is not None
        replay = self.nonces.use(
            verdict.nonce,
            int(nc, 16) if nc is not None else 0,
            f"{packet.tid()} {packet.method()}",
            now,
        )
        if replay is not None:
            return "replayed nonce: ", replay, True
        return None

    def _offered(self, verdict: Verdict) -> str | None:
        """Why the answer's algorithm or qop was not one offered (None: it was)."""
        if verdict.algorithm not in self.algorithms:
            return f"algorithm {verdict.algorithm}"
        if verdict.qop not in (self.qop or (None,)):
            return f"qop {verdict.qop}"
        return None

    def _lookup(self, user: str, realm: str) -> str | HA1 | None:
        """digest's lookup: the password first (it serves every algorithm)."""
        if self.user2pass is not None:
            password = _ask(self.user2pass, user)
            if password is not None:
                if not isinstance(password, str):
                    raise TypeError(f"user2pass gave {type(password).__name__}, not str")
                return password
        if self.user2a1 is not None:
            a1 = _ask(self.user2a1, user, realm)
            if isinstance(a1, str):
                return HA1(a1, "MD5")  # Net::SIP's A1 is MD5
            if a1 is not None and not isinstance(a1, HA1):
                raise TypeError(f"user2a1 gave {type(a1).__name__}, not str or HA1")
            return a1
        return None

    def _filtered(self, method: str, packet: Request, leg: Leg, from_: Addr, user: str) -> bool:
        chain = self._filters.get(method)
        if chain is None:
            return True
        return any(
            all(invoke_callback(cb, packet, leg, from_, user, self.realm) for cb in ands)
            for ands in chain
        )

    def _consume(self, packet: Request) -> None:
        """Remove the credentials of this realm (RFC 3261 22.3)."""
        values = packet.get_headers(self._request_hdr)
        if len(values) == 1:
            # the usual case: the credentials just verified, nothing else
            packet.del_header(self._request_hdr)
            return
        kept = [v for v in values if credentials_realm(v) != self.realm]
        if len(kept) == len(values):
            return
        if kept:
            packet.set_header(self._request_hdr, kept)
        else:
            packet.del_header(self._request_hdr)

    # ----------------------------------------------------------- answering

    def _challenge_values(self, now: float, *, stale: bool) -> list[str]:
        """One challenge per algorithm, preferred first (RFC 8760 2.4), all
        with one new nonce (a nonce per challenge: nc is counted per nonce).

        The challenges are made (and checked) by :func:`make_challenge` once;
        each response only puts its new nonce into them.
        """
        nonce = make_nonce(self.realm, secret=self._secret, opaque=self.opaque, now=now)
        templates = self._templates.get(stale)
        if templates is None:
            templates = self._templates[stale] = [
                tuple(
                    make_challenge(
                        self.realm,
                        secret=self._secret,
                        algorithm=alg,
                        qop=self.qop,
                        stale=stale,
                        opaque=self.opaque,
                        now=now,
                        nonce=nonce,
                    ).split(nonce, 1)
                )
                for alg in self.algorithms
            ]
        return [f"{before}{nonce}{after}" for before, after in templates]

    def _challenge(
        self, packet: Request, leg: Leg, from_: Addr, now: float, *, stale: bool
    ) -> None:
        values = self._challenge_values(now, stale=stale)
        response = packet.create_response(self._code, headers={self._challenge_hdr: values})
        self._send(response, leg, from_)

    def _send(self, response: Packet, leg: Leg, from_: Addr) -> None:
        try:
            self.dispatcher.deliver(response, leg=leg, dst_addr=from_)
        except (NetSIPError, OSError, ValueError) as exc:
            log.warning("cannot answer %s: %s", from_, exc)
