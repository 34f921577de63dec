"""URI resolution for the Dispatcher: from a SIP URI to ``(Addr, Leg)`` pairs.

Ports ``resolve_uri``, ``__resolve_uri_final`` and ``_find_leg4addr`` of Perl's
``Net::SIP::Dispatcher``, and its handling of the ``outgoing_proxy`` and
``domain2proxy`` options. The DNS half (``dns_domain2srv``, ``dns_host2ip``,
the ``dnsresolv`` hook) is :mod:`netsip.resolver`; this module decides what to
ask it, or answers without DNS. :class:`~netsip.dispatcher.Dispatcher` owns
one :class:`UriResolver` and delegates :meth:`Dispatcher.resolve_uri` to it;
the delivery queue (:mod:`netsip._delivery`) uses the destination helpers.

How it works: a URI's transports come from its scheme and ``transport``
parameter (``sips:`` only TLS, else UDP then TCP), narrowed by the caller's
``allowed_proto``. The destinations come, in this order, from
``domain2proxy`` (exact domain, ``*.parent`` domains, ``*``), the
``outgoing_proxy``, an IP literal host, or ``maddr``; each is a
:class:`Dest` (Perl's hash of prio/proto/host/addr/port/family). Without one,
the host name goes to the resolver (RFC 3263 NAPTR/SRV/AAAA/A, or only
AAAA/A if the URI has a port). Destinations given by host name (a proxy
``"host:port"``) get their addresses from AAAA/A queries. In the end the
destinations are sorted by SRV priority (stable, so the resolver's failover
order stays), duplicates dropped, and each is paired with the first leg that
offers its transport and address family (:func:`pair_legs`); those no leg
can reach are dropped. The callback gets the pairs, or one errno.

The resolver is created on first use (it needs dnspython unless a
``dnsresolv`` hook is given); a hook with a ``resolve`` method stands in for
the whole resolver.

Differences from Net::SIP 0.835:

- ``resolve_uri`` takes ``(uri, callback, *, allowed_proto, allowed_legs)``
  and calls back with ``[(Addr, Leg), ...]`` or an errno (Perl fills two
  array refs and calls back with nothing or an errno);
- host names are resolved with NAPTR too (RFC 3263 4.1), by
  :mod:`netsip.resolver`.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeAlias

from netsip._ip import is_invalid_host
from netsip._log import get_logger
from netsip.eventloop import EventLoopLike
from netsip.leg import Leg
from netsip.util import (
    DEFAULT_PORTS,
    PROTOS,
    Addr,
    NetSIPError,
    Proto,
    invoke_callback,
    ip_canonical,
    ip_is_v46,
    ip_ptr,
    ip_string2parts,
    sip_uri2parts,
    sip_uri2sockinfo,
)

__all__ = [
    "SRV_PRIO_UNDEF",
    "Dest",
    "ResolverLike",
    "Target",
    "UriResolver",
    "check_proto",
    "expand",
    "normalize_dst",
    "normalize_proxy",
    "pair_legs",
    "with_proto",
]

# the public module's logger: what users configure for the Dispatcher
log = get_logger("netsip.dispatcher")

#: Priority of destinations that did not come from an SRV record: after all SRV ones.
SRV_PRIO_UNDEF = 0x10000

#: One resolved destination and the leg to reach it through.
Target: TypeAlias = tuple[Addr, Leg]


class ResolverLike(Protocol):
    """What the dispatcher needs from :class:`netsip.resolver.Resolver`."""

    def resolve(
        self,
        host: str,
        protos: Sequence[str],
        # Any: the result is a list of (proto, Addr); list is invariant and resolvers
        # may type proto as str or Proto
        callback: Callable[[Any], object],
        *,
        port: int | None = None,
        sips: bool = False,
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Dest:
    """A destination before leg selection (Perl's hash of prio/proto/host/addr/port/family)."""

    proto: Proto | None
    host: str
    addr: str | None
    port: int | None
    family: int | None
    prio: int = SRV_PRIO_UNDEF


def check_proto(proto: object, what: object) -> Proto | None:
    """``proto`` as a Proto, None if empty.

    Raises:
        ValueError: not a transport netsip knows (``what`` names the source).
    """
    if proto is None or proto == "":
        return None
    if proto not in DEFAULT_PORTS:
        raise ValueError(f"invalid protocol {proto!r} in {what!r}")
    return proto  # type: ignore[return-value]  # checked against the Proto values


def normalize_proxy(spec: object) -> list[Dest]:
    """A destination specification as a list of destinations (proto None: any).

    ``spec`` is ``"ip[:port]"``, ``"host[:port]"``, a SIP URI, an Addr, a dict
    with proto/host/addr/port/family/prio, or a list of these.

    Raises:
        ValueError: ``spec`` cannot be understood.
    """
    if isinstance(spec, str):
        info = sip_uri2sockinfo(spec)
        if info is None:
            raise ValueError(f"invalid destination {spec!r}")
        proto, host, port, family = info
        return [Dest(check_proto(proto, spec), host, host if family else None, port, family)]
    if isinstance(spec, Addr):
        return [Dest(spec.proto, spec.host or spec.addr, spec.addr, spec.port, spec.family)]
    if isinstance(spec, tuple):
        a = Addr.parse(spec)
        return [Dest(a.proto, a.addr, a.addr, a.port, a.family)]
    if isinstance(spec, Mapping):
        mhost: object = spec.get("host") or spec.get("addr")
        if not isinstance(mhost, str):
            raise ValueError(f"destination without host: {spec!r}")
        maddr: str | None = spec.get("addr")
        mfamily: int | None = spec.get("family")
        if maddr is None:
            h, _, fam = ip_string2parts(mhost)
            if fam is not None:
                mhost = maddr = h
                mfamily = fam
        elif mfamily is None:
            maddr, _, mfamily = ip_string2parts(maddr)
        prio = spec.get("prio")
        return [
            Dest(
                check_proto(spec.get("proto"), spec),
                mhost,
                maddr,
                spec.get("port") or None,
                mfamily,
                SRV_PRIO_UNDEF if prio is None else int(prio),
            )
        ]
    if isinstance(spec, Iterable):
        out: list[Dest] = []
        for item in spec:
            out += normalize_proxy(item)
        return out
    raise ValueError(f"invalid destination {spec!r}")


def normalize_dst(dst: object) -> list[Dest]:
    """A delivery's ``dst_addr`` as destinations: :func:`normalize_proxy`, ``"ip:port"`` first.

    Raises:
        ValueError: ``dst`` cannot be understood.
    """
    if isinstance(dst, str):
        try:
            a = Addr.parse(dst)  # the common "ip:port" first
        except ValueError:
            return normalize_proxy(dst)
        return [Dest(None, a.addr, a.addr, a.port, a.family)]
    return normalize_proxy(dst)


def with_proto(addr: Addr, proto: Proto) -> Addr:
    """``addr`` with its transport set to ``proto``."""
    return Addr(addr.addr, addr.port, addr.family, addr.host, proto)


def expand(dests: Iterable[Dest], protos: Sequence[Proto]) -> list[Dest]:
    """One destination per protocol for those without a protocol."""
    out: list[Dest] = []
    for d in dests:
        if d.proto is not None:
            out.append(d)
        else:
            out += [dataclasses.replace(d, proto=p) for p in protos]
    return out


def pair_legs(dsts: Iterable[Dest], legs: Sequence[Leg]) -> list[Target]:
    """Pair each destination with an IP with the first leg that can reach it."""
    targets: list[Target] = []
    for d in dsts:
        if d.addr is None or d.family is None:
            continue
        for leg in legs:
            if leg.can_deliver_to(proto=d.proto, addr=d.addr, family=d.family):
                proto = d.proto or leg.proto
                port = d.port or DEFAULT_PORTS[proto]
                targets.append((Addr(d.addr, port, d.family, d.host, proto), leg))
                break
        else:
            log.debug("no leg with %s to %s", d.proto, d.addr)
    return targets


#: IP-literal URIs whose targets are kept (then the table starts again)
_LITERAL_CACHE = 1024


class UriResolver:
    """Resolves URIs to ``(Addr, Leg)`` pairs for a Dispatcher.

    Args:
        legs: returns the dispatcher's current legs (its list is replaced,
            not changed in place, when a leg is removed).
        eventloop: the event loop the DNS resolver runs on.
        domain2proxy: ``{domain: proxy}`` as the Dispatcher takes it.
        dnsresolv: the Dispatcher's ``dnsresolv`` option.

    Raises:
        ValueError: a bad ``domain2proxy``.
    """

    def __init__(
        self,
        legs: Callable[[], list[Leg]],
        eventloop: EventLoopLike,
        domain2proxy: Mapping[str, object] | None = None,
        dnsresolv: object = None,
    ) -> None:
        self._legs = legs
        self.eventloop = eventloop
        self.domain2proxy: dict[str, list[Dest]] = {
            dom.lower(): normalize_proxy(proxy) for dom, proxy in (domain2proxy or {}).items()
        }
        self._outgoing_proxy: str | None = None
        self._dnsresolv = dnsresolv
        self._resolver: ResolverLike | None = None
        #: the targets of IP-literal URIs (no DNS, no proxy settings involved):
        #: (uri, protocols, legs asked for) -> (the leg list they came from, targets)
        self._literal: dict[tuple[object, ...], tuple[list[Leg], list[Target]]] = {}

    @property
    def outgoing_proxy(self) -> str | None:
        """The outgoing proxy (``"ip:port"``) or None.

        Raises:
            ValueError: on assignment, if no leg can reach the proxy.
        """
        return self._outgoing_proxy

    @outgoing_proxy.setter
    def outgoing_proxy(self, proxy: str | None) -> None:
        if proxy is not None and not self.find_legs4addr(proxy):
            raise ValueError(f"cannot find leg for destination {proxy}")
        self._outgoing_proxy = proxy
        self._literal.clear()

    def find_legs4addr(self, addr: str) -> list[Leg]:
        """The legs that can reach ``addr`` (empty if it cannot be understood)."""
        try:
            dests = normalize_dst(addr)
        except ValueError:
            return []
        return [
            leg
            for leg in self._legs()
            if any(leg.can_deliver_to(proto=d.proto, addr=d.addr, family=d.family) for d in dests)
        ]

    def get_resolver(self) -> ResolverLike:
        """The DNS resolver, created on first use.

        Raises:
            NetSIPError: no ``dnsresolv`` hook and dnspython is missing.
        """
        if self._resolver is None:
            hook = self._dnsresolv
            if hook is not None and callable(getattr(hook, "resolve", None)):
                self._resolver = hook  # type: ignore[assignment]  # a duck-typed Resolver
            else:
                try:
                    # imported on first use: it needs dnspython unless a hook is given
                    from netsip.resolver import Resolver  # noqa: PLC0415
                except ImportError as exc:
                    raise NetSIPError(f"DNS resolution is not available: {exc}") from exc
                self._resolver = Resolver(self.eventloop, dnsresolv=hook)
        assert self._resolver is not None
        return self._resolver

    def close(self) -> None:
        """Close the resolver unless it is the user's ``dnsresolv`` object."""
        if self._resolver is not None and self._resolver is not self._dnsresolv:
            self._resolver.close()
        self._resolver = None

    def resolve_uri(
        self,
        uri: str,
        callback: object,
        *,
        allowed_proto: Sequence[str] | None = None,
        allowed_legs: Sequence[Leg] | None = None,
    ) -> None:
        """Find the destinations and outgoing legs for ``uri``.

        See :meth:`netsip.dispatcher.Dispatcher.resolve_uri`. The targets of
        a URI with an IP address (what a proxy forwards to, again and again)
        are kept: they depend on nothing but the URI and the legs.
        """
        key = (
            uri,
            tuple(allowed_proto) if allowed_proto else None,
            tuple(allowed_legs) if allowed_legs else None,
        )
        hit = self._literal.get(key)
        if hit is not None and (allowed_legs or hit[0] is self._legs()):
            invoke_callback(callback, list(hit[1]))
            return
        parts = sip_uri2parts(uri)
        if parts is None or not parts[0]:
            log.debug("bad URI %r", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return
        domain, _user, scheme, param, _data = parts
        transport = (param.get("transport") or "").lower()
        protos: list[Proto]
        if scheme == "sips":
            protos = ["tls"]
        elif transport:
            p = check_proto(transport, uri) if transport in DEFAULT_PORTS else None
            protos = [p] if p is not None else []
        else:
            protos = ["udp", "tcp"]
        if allowed_proto:
            protos = [p for p in PROTOS if p in allowed_proto and p in protos]
            protos.sort(key=list(allowed_proto).index)
        if not protos:
            log.debug("no protocols allowed for %s", uri)
            invoke_callback(callback, errno.ENOPROTOOPT)
            return

        legs = list(allowed_legs) if allowed_legs else list(self._legs())
        if not legs:
            log.debug("no legs allowed for %r", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return

        maddr = param.get("maddr")
        try:
            host, force_port, family = ip_string2parts(domain, bool(maddr))
        except ValueError:
            log.debug("bad URI %r", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return
        # an IP literal is looked up in domain2proxy by its PTR name, as in Perl
        lookup_domain = ip_ptr(host, family) if family is not None else host

        dests: list[Dest] = []
        if self.domain2proxy:
            d2p = self.domain2proxy
            dom = lookup_domain
            found = d2p.get(dom)
            while found is None and "." in dom:
                dom = dom.split(".", 1)[1]
                found = d2p.get("*." + dom)
            if found is None:
                found = d2p.get("*")
            if found is not None:
                log.debug("destination from domain2proxy for %s", dom)
                dests = list(found)
                force_port = None
        if not dests and self._outgoing_proxy:
            log.debug("destination from outgoing_proxy %s", self._outgoing_proxy)
            dests = normalize_dst(self._outgoing_proxy)
            force_port = None
        if not dests and family is not None:
            dests = [Dest(None, host, host, None, family)]
        if maddr:
            mfam = ip_is_v46(maddr)
            if mfam is not None:
                mip = ip_canonical(maddr, mfam)
                dests = [Dest(None, mip, mip, None, mfam)]

        if not dests and is_invalid_host(host):
            # RFC 6761 6.4: never looked up. Browsers put such hosts in their
            # Via and Contact (RFC 7118 5.2): only their connection reaches them.
            log.info("not resolving %s: .invalid names do not exist (RFC 6761)", uri)
            invoke_callback(callback, errno.EHOSTUNREACH)
            return
        if not dests:
            # DNS (RFC 3263), only for protocols some leg offers
            protos = [p for p in protos if any(leg.proto == p for leg in legs)]
            if not protos:
                log.debug("no legs for the protocols of %s", uri)
                invoke_callback(callback, errno.ENOPROTOOPT)
                return
            try:
                self.get_resolver().resolve(
                    host,
                    protos,
                    partial(self._dns_done, legs, callback),
                    port=force_port,
                    sips=scheme == "sips",
                )
            except (NetSIPError, ValueError) as exc:
                log.warning("cannot resolve %s: %s", uri, exc)
                invoke_callback(callback, errno.EHOSTUNREACH)
            return

        dests = [
            d if d.port or not force_port else dataclasses.replace(d, port=force_port)
            for d in expand(dests, protos)
        ]
        if transport:
            if transport == "udp":
                dests = [d for d in dests if d.proto == "udp"]
            elif transport == "tcp":
                dests = [d for d in dests if d.proto != "udp"]  # tcp and tls, as in Perl
            elif transport in ("tls", "ws", "wss"):
                dests = [d for d in dests if d.proto == transport]
            else:
                dests = []
            if not dests:
                invoke_callback(callback, errno.ENOPROTOOPT)
                return
        if not all(d.addr is not None for d in dests):
            self.dns_hosts(dests, legs, callback)
            return
        targets = self._targets(dests, legs)
        literal = family is not None and not maddr
        if targets and literal and not self.domain2proxy and not self._outgoing_proxy:
            if len(self._literal) >= _LITERAL_CACHE:
                self._literal.clear()
            self._literal[key] = (legs if allowed_legs else self._legs(), targets)
        invoke_callback(callback, list(targets) if targets else errno.EHOSTUNREACH)

    def _dns_done(
        self, legs: list[Leg], callback: object, result: Sequence[tuple[str, Addr]]
    ) -> None:
        # keep the resolver's order (RFC 3263 failover order) through the stable sort
        dests = [
            Dest(check_proto(p, "resolver"), a.host or a.addr, a.addr, a.port, a.family, i)
            for i, (p, a) in enumerate(result)
        ]
        self.resolve_final(dests, legs, callback)

    def dns_hosts(self, dests: list[Dest], legs: list[Leg], callback: object) -> None:
        """Fill in the addresses of destinations given by host name (AAAA/A only).

        Then :meth:`resolve_final`: ``callback`` gets the pairs or an errno.
        """
        pending = {i for i, d in enumerate(dests) if d.addr is None}
        results: dict[int, list[Dest]] = {}

        def one(i: int, res: Sequence[tuple[str, Addr]]) -> None:
            d = dests[i]
            results[i] = [
                dataclasses.replace(d, addr=a.addr, family=a.family, port=d.port or a.port)
                for p, a in res
                if p == d.proto
            ]
            pending.discard(i)
            if not pending:
                final: list[Dest] = []
                for j, dj in enumerate(dests):
                    final += results.get(j, [dj])
                self.resolve_final(final, legs, callback)

        try:
            resolver = self.get_resolver()
            for i in sorted(pending):
                d = dests[i]
                proto = d.proto or "udp"
                resolver.resolve(
                    d.host, [proto], partial(one, i), port=d.port or DEFAULT_PORTS[proto]
                )
        except (NetSIPError, ValueError) as exc:
            log.warning("cannot resolve %s: %s", [dests[i].host for i in pending], exc)
            pending.clear()
            invoke_callback(callback, errno.EHOSTUNREACH)

    def resolve_final(self, dests: list[Dest], legs: list[Leg], callback: object) -> None:
        """Order ``dests`` by priority, pair them with ``legs``, call ``callback``.

        Perl's ``__resolve_uri_final``.
        """
        targets = self._targets(dests, legs)
        invoke_callback(callback, targets if targets else errno.EHOSTUNREACH)

    @staticmethod
    def _targets(dests: list[Dest], legs: list[Leg]) -> list[Target]:
        """``dests`` by priority, without duplicates, paired with ``legs``."""
        seen: set[tuple[object, ...]] = set()
        ordered: list[Dest] = []
        for d in sorted(dests, key=lambda d: d.prio):
            key = (d.proto, d.addr, d.port, d.family)
            if key not in seen:
                seen.add(key)
                ordered.append(d)
        return pair_legs(ordered, legs)
