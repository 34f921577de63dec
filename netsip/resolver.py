"""RFC 3263 resolution of SIP hosts, the DNS half of Perl's ``Net::SIP::Dispatcher``.

Perl's Dispatcher resolves a URI's host with ``dns_domain2srv`` and
``dns_host2ip`` (SRV, then A/AAAA, through ``Net::DNS`` ``bgsend`` sockets
watched by the event loop, or through a user ``dnsresolv`` hook). This module
does the same for :class:`~netsip.dispatcher.Dispatcher`, adds NAPTR (RFC 3263
section 4.1) and never blocks: every query is a UDP datagram from a fresh
socket (a new random source port per try, RFC 5452 section 9.2) watched by the
netsip event loop, with a loop timer per try, retries over the nameservers,
and a retry over TCP when the answer is truncated (RFC 1035 section 4.2.2).
Messages are built and parsed with dnspython, an optional dependency (extra
``dns``) imported lazily.

One resolution runs in up to three rounds of parallel queries -- NAPTR, then
the SRV names, then AAAA/A of every target -- and ends in one call of the
user's callback with every candidate in failover order. Answers are cached
for their TTL (time from ``loop.looptime``), and a query already in flight
is shared instead of sent twice.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import socket
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from typing import TYPE_CHECKING, Final, TypeAlias, cast

from netsip._ip import is_invalid_host
from netsip._log import get_logger
from netsip.eventloop import EV_READ, EV_WRITE, EventLoopLike, TimerLike
from netsip.util import DEFAULT_PORTS, Addr, NetSIPError, Proto, invoke_callback

if TYPE_CHECKING:
    import dns.exception
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdtypes.IN.A
    import dns.rdtypes.IN.AAAA
    import dns.rdtypes.IN.NAPTR
    import dns.rdtypes.IN.SRV
    import dns.resolver
    import dns.rrset

__all__ = ["DEFAULT_PORTS", "NaptrRecord", "Record", "Resolver", "Result", "SrvRecord"]

log = get_logger(__name__)

#: Default port per transport (RFC 3261 section 19.1.2, RFC 3263 section 4.2).
# RFC 3263 section 4.1: the NAPTR services netsip can use, and their transport.
# RFC 7118 section 10.3: SIP+D2W and SIPS+D2W for WebSocket and secure WebSocket.
_NAPTR_SERVICES: Final[dict[str, Proto]] = {
    "SIP+D2U": "udp",
    "SIP+D2T": "tcp",
    "SIPS+D2T": "tls",
    "SIP+D2W": "ws",
    "SIPS+D2W": "wss",
}
# The SRV name of each transport when there is no NAPTR (RFC 3263 4.1). RFC 7118
# registers no SRV service for WebSocket; these follow the same scheme and
# otherwise just come back empty (then A/AAAA with the default port).
_SRV_PREFIX: Final[dict[str, str]] = {
    "udp": "_sip._udp.",
    "tcp": "_sip._tcp.",
    "tls": "_sips._tcp.",
    "ws": "_sip._ws.",
    "wss": "_sips._ws.",
}
# A negative answer is cached at most this long (RFC 2308 leaves the cap to us).
_MAX_NEGATIVE_TTL: Final = 300
_MAX_TTL: Final = 86400
# RFC 6891 / DNS flag day 2020: an EDNS buffer that avoids IP fragmentation.
_EDNS_PAYLOAD: Final = 1232


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    """A NAPTR answer (RFC 3403); names without the final dot."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV answer (RFC 2782); ``target`` without the final dot, "." for none."""

    priority: int
    weight: int
    port: int
    target: str


#: One answer record: NAPTR, SRV, or an IP address string (A/AAAA).
Record: TypeAlias = NaptrRecord | SrvRecord | str
#: What the callback of :meth:`Resolver.resolve` gets: ``(proto, Addr)`` in failover order
#: (proto is a :data:`~netsip.util.Proto` value, typed ``str`` so that callbacks
#: annotated either way are accepted; ``Addr.proto`` carries the same value).
Result: TypeAlias = list[tuple[str, Addr]]
_Key: TypeAlias = tuple[str, str]  # (lower-case name without final dot, "A"|"AAAA"|"SRV"|"NAPTR")
_Waiter: TypeAlias = Callable[[list[Record]], None]
_Target: TypeAlias = tuple[Proto, str, int]  # (proto, host name or IP, port)


def _require_dnspython() -> None:
    """Import dnspython (an optional dependency) into this module on first use.

    The imports bind the module global ``dns``, which the DNS code paths use;
    they only run once a Resolver without ``dnsresolv`` hook was created.
    """
    global dns
    try:
        import dns.exception  # noqa: PLC0415 -- lazy: optional dependency
        import dns.message  # noqa: PLC0415
        import dns.name  # noqa: PLC0415
        import dns.rcode  # noqa: PLC0415
        import dns.rdtypes.IN.A  # noqa: PLC0415
        import dns.rdtypes.IN.AAAA  # noqa: PLC0415
        import dns.rdtypes.IN.NAPTR  # noqa: PLC0415
        import dns.rdtypes.IN.SRV  # noqa: PLC0415
        import dns.resolver  # noqa: PLC0415
        import dns.rrset  # noqa: PLC0415
    except ImportError as exc:
        raise NetSIPError(
            "DNS resolution needs dnspython: pip install 'netsip[dns]' (or give a dnsresolv hook)"
        ) from exc


def _ip_literal(host: str) -> str | None:
    """The canonical IP if ``host`` is an IP literal (IPv6 maybe in brackets), else None."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _key(name: str, rdtype: str) -> _Key:
    return (name.lower().rstrip("."), rdtype)


def _nameserver(spec: str | tuple[str, int]) -> Addr:
    if isinstance(spec, tuple):
        return Addr.parse(spec)
    ip = _ip_literal(spec)
    return Addr(ip, 53, _family(ip)) if ip else Addr.parse(spec)


def _system_nameservers() -> list[str | tuple[str, int]]:
    """The nameservers of /etc/resolv.conf (via dnspython), else 127.0.0.1."""
    try:
        conf = dns.resolver.Resolver(configure=True)
    except (dns.exception.DNSException, OSError) as exc:
        log.warning("no resolver configuration (%s), using 127.0.0.1", exc)
        return ["127.0.0.1"]
    servers: list[str | tuple[str, int]] = [
        (ns, conf.port) for ns in conf.nameservers if isinstance(ns, str) and _ip_literal(ns)
    ]
    return servers or ["127.0.0.1"]


def _from_hook(rdtype: str, answers: object) -> list[Record]:
    """Records from a Perl-style ``dnsresolv`` answer list; malformed entries are skipped.

    Entries: ``("A"|"AAAA", ip, name)``, ``("SRV", prio, host, port[, weight])``,
    ``("NAPTR", order, pref, flags, service, regexp, replacement)``.
    """
    out: list[Record] = []
    for item in answers if isinstance(answers, list | tuple) else ():
        try:
            typ, *rest = item
            if typ != rdtype:
                continue  # e.g. Perl's supplemental A records in an SRV answer
            if typ in ("A", "AAAA"):
                ip = _ip_literal(str(rest[0]))
                if ip is not None and (typ == "AAAA") == (":" in ip):
                    out.append(ip)
            elif typ == "SRV":
                weight = int(rest[3]) if len(rest) > 3 else 0
                out.append(SrvRecord(int(rest[0]), weight, int(rest[2]), str(rest[1]).rstrip(".")))
            elif typ == "NAPTR":
                o, p, flags, service, regexp, repl = rest
                out.append(
                    NaptrRecord(
                        int(o), int(p), str(flags), str(service), str(regexp), str(repl).rstrip(".")
                    )
                )
        except (TypeError, ValueError) as exc:
            log.warning("dnsresolv hook: bad %s answer %r ignored (%s)", rdtype, item, exc)
    return out


@dataclass(slots=True, eq=False)
class _Query:
    """One DNS question in flight, shared by every resolution waiting for it."""

    key: _Key
    waiters: list[_Waiter]
    msg: dns.message.QueryMessage | None = None
    tries: int = 0
    server: Addr | None = None
    sock: socket.socket | None = None
    tcp_buf: bytearray | None = None  # not None while asking over TCP
    out: bytes = b""  # the TCP query until it is sent
    timer: TimerLike | None = None


@dataclass(slots=True, eq=False)
class _Resolution:
    host: str
    protos: list[Proto]
    callback: Callable[[Result], object]
    done: bool = False


class Resolver:
    """Non-blocking RFC 3263 resolver on a netsip event loop.

    Args:
        loop: the event loop that watches the query sockets and runs the timers.
        nameservers: IPs (port 53), ``"ip:port"``/``"[ipv6]:port"`` strings or
            ``(ip, port)`` tuples; None reads /etc/resolv.conf through dnspython
            (127.0.0.1 if that fails).
        timeout: seconds to wait for an answer per try.
        attempts: rounds over the nameserver list before a query fails.
        dnsresolv: a Perl-style hook used instead of DNS (dnspython is then not
            needed): invoked (via ``invoke_callback``) with ``(type, name,
            callback)``, ``type`` one of NAPTR, SRV, AAAA, A; it calls
            ``callback(answers)`` once, ``answers`` a list of ``("SRV", prio,
            host, port[, weight])``, ``("A", ip, name)``, ``("AAAA", ip, name)``
            or ``("NAPTR", order, pref, flags, service, regexp, replacement)``
            (``[]`` for a type it does not know). It must call back (or the
            resolution never ends). Its answers are not cached.
        addr_types: which address records to look up per target, in result
            order: ``("AAAA", "A")`` by default, ``("A",)`` for IPv4 only.
        rng: the random source of the RFC 2782 weighted SRV selection (pass a
            seeded ``random.Random`` for reproducible order).
        cache_size: maximum number of cached answers; 0 disables the cache.

    Raises:
        NetSIPError: dnspython is needed but not installed.
        ValueError: bad timeout, attempts, addr_types or nameserver.
    """

    def __init__(
        self,
        loop: EventLoopLike,
        nameservers: Sequence[str | tuple[str, int]] | None = None,
        timeout: float = 2.0,
        attempts: int = 2,
        *,
        dnsresolv: object = None,
        addr_types: Sequence[str] = ("AAAA", "A"),
        rng: random.Random | None = None,
        cache_size: int = 512,
    ) -> None:
        if not timeout > 0 or attempts < 1:
            raise ValueError("timeout must be > 0 and attempts >= 1")
        if not addr_types or any(t not in ("A", "AAAA") for t in addr_types):
            raise ValueError(f"addr_types must be a non-empty list of 'A'/'AAAA': {addr_types!r}")
        self._loop = loop
        self.timeout = timeout
        self.attempts = attempts
        self._hook = dnsresolv
        self._addr_types = list(dict.fromkeys(addr_types))
        self._rng = rng if rng is not None else random.Random()
        self._cache: dict[_Key, tuple[float, list[Record]]] = {}  # key -> (expiry, answer)
        self._cache_size = cache_size
        self._servers: list[Addr] = []
        if dnsresolv is None:
            _require_dnspython()
            specs = _system_nameservers() if nameservers is None else nameservers
            self._servers = [_nameserver(s) for s in specs]
            if not self._servers:
                raise ValueError("no nameservers given")
        self._inflight: dict[_Key, _Query] = {}
        self._deferred: set[TimerLike] = set()
        self._closed = False

    @property
    def nameservers(self) -> list[Addr]:
        """The nameservers queried, in order."""
        return list(self._servers)

    # ------------------------------------------------------------ public API

    def resolve(
        self,
        host: str,
        protos: Sequence[str],
        callback: Callable[[Result], object],
        *,
        port: int | None = None,
        sips: bool = False,
    ) -> None:
        """Resolve ``host`` per RFC 3263 section 4 and call ``callback(result)`` once.

        ``result`` lists ``(proto, Addr)`` candidates in the order to try them
        (``Addr.host`` is the target name, ``Addr.proto`` the proto); it is
        empty if nothing was found (NXDOMAIN, timeouts, ...). The callback
        always runs from a loop timer, never inside this call. Cached answers
        (their TTL counted from ``loop.looptime``) are used without a query.

        * IP literal: one candidate per proto, ``port`` or the default port.
        * ``port`` given: AAAA/A of ``host`` only, one candidate per proto and address.
        * ``invalid`` and names under it (RFC 6761 section 6.4): nothing,
          without a query.
        * else NAPTR (services SIP+D2U, SIP+D2T, SIPS+D2T, and for WebSocket
          SIP+D2W and SIPS+D2W (RFC 7118), among ``protos``, by
          order and preference; without usable NAPTR records the SRV names of
          ``protos`` in their order), then SRV (by priority, RFC 2782 weighted
          random within a priority), then AAAA/A of each target; every usable
          NAPTR and SRV record is included, so the list is the full failover
          order. Without SRV records: AAAA/A of ``host`` with the default ports.

        Args:
            host: a host name, or an IPv4/IPv6 literal (brackets allowed).
            protos: transports the caller can use ("udp", "tcp", "tls"), in
                preference order; empty means udp, tcp (tls for ``sips``).
            callback: gets the result list.
            port: an explicit port from the URI (skips NAPTR and SRV).
            sips: a sips: URI; only tls is used (RFC 3263 section 4.1).

        Raises:
            ValueError: empty host, unknown proto, bad port, or the resolver is closed.
        """
        if self._closed:
            raise ValueError("resolve() on a closed Resolver")
        if port is not None and not 0 < port <= 65535:
            raise ValueError(f"invalid port {port!r}")
        host = host.strip()
        if not host.strip("."):
            raise ValueError("empty host name")
        usable: list[Proto] = []
        for p in protos or (("tls",) if sips else ("udp", "tcp")):
            if p not in DEFAULT_PORTS:
                raise ValueError(f"unknown proto {p!r}")
            if (p in ("tls", "wss") or not sips) and p not in usable:
                usable.append(cast(Proto, p))
        res = _Resolution(host.rstrip("."), usable, callback)
        ip = _ip_literal(host)
        if not usable or (ip is None and is_invalid_host(host)):
            # RFC 6761 6.4: .invalid names never resolve (browsers use them, RFC 7118 5.2)
            if usable:
                log.info("not resolving %s: .invalid names do not exist (RFC 6761)", host)
            self._finish(res, [])
        elif ip is not None:
            fam = _family(ip)
            self._finish(res, [(p, Addr(ip, port or DEFAULT_PORTS[p], fam, ip, p)) for p in usable])
        elif port is not None:
            self._resolve_addrs(res, [(p, res.host, port) for p in usable])
        else:
            self._lookup(_key(res.host, "NAPTR"), partial(self._on_naptr, res))

    def close(self) -> None:
        """Close the query sockets and cancel the timers. Idempotent.

        A resolution still running when close() is called never calls its
        callback; resolve() on a closed resolver raises ValueError.
        """
        self._closed = True
        for q in self._inflight.values():
            self._drop_io(q)
        self._inflight.clear()
        for t in self._deferred:
            t.cancel()
        self._deferred.clear()
        self._cache.clear()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------- the RFC 3263 steps

    def _on_naptr(self, res: _Resolution, recs: list[Record]) -> None:
        naptrs = sorted(
            (r for r in recs if isinstance(r, NaptrRecord)), key=lambda r: (r.order, r.preference)
        )
        services: list[tuple[Proto, str]] = []
        for r in naptrs:
            proto = _NAPTR_SERVICES.get(r.service.upper())
            # RFC 3263 4.1: only "s" records lead to SRV; skip unsupported transports.
            if proto in res.protos and r.flags.lower() == "s" and r.replacement.strip("."):
                services.append((proto, r.replacement))
        if not services:
            # No (usable) NAPTR: SRV for each transport we support, in our order.
            # Lenient: also when NAPTR records exist but none is usable.
            services = [(p, _SRV_PREFIX[p] + res.host) for p in res.protos]
        self._gather([_key(n, "SRV") for _, n in services], partial(self._on_srv, res, services))

    def _on_srv(
        self, res: _Resolution, services: list[tuple[Proto, str]], answers: dict[_Key, list[Record]]
    ) -> None:
        targets: list[_Target] = []
        refused = False
        for proto, name in services:
            srvs = [r for r in answers[_key(name, "SRV")] if isinstance(r, SrvRecord)]
            # RFC 2782: target "." means the service is decidedly not available.
            refused = refused or any(r.target == "." for r in srvs)
            targets += [(proto, r.target, r.port) for r in self._srv_order(srvs) if r.target != "."]
        if not targets and not refused:
            # RFC 3263 4.2: no SRV records, use AAAA/A of the domain and default ports.
            protos = dict.fromkeys(p for p, _ in services)
            targets = [(p, res.host, DEFAULT_PORTS[p]) for p in protos]
        self._resolve_addrs(res, targets)

    def _srv_order(self, srvs: list[SrvRecord]) -> list[SrvRecord]:
        """RFC 2782 order: by priority; within one, weighted random selection."""
        out: list[SrvRecord] = []
        for prio in sorted({r.priority for r in srvs}):
            # zero weights first, as RFC 2782 requires for the running sum
            group = sorted((r for r in srvs if r.priority == prio), key=lambda r: r.weight != 0)
            while group:
                sums = list(accumulate(r.weight for r in group))
                pick = self._rng.randint(0, sums[-1])
                out.append(group.pop(bisect_left(sums, pick)))
        return out

    def _resolve_addrs(self, res: _Resolution, targets: list[_Target]) -> None:
        names = [t for _, t, _ in targets if _ip_literal(t) is None]
        keys = [_key(n, typ) for n in names for typ in self._addr_types]
        self._gather(keys, partial(self._on_addrs, res, targets))

    def _on_addrs(
        self, res: _Resolution, targets: list[_Target], answers: dict[_Key, list[Record]]
    ) -> None:
        result: Result = []
        seen: set[tuple[str, str, int]] = set()
        for proto, target, port in targets:
            lit = _ip_literal(target)
            ips = (
                [lit]
                if lit is not None
                else [
                    ip
                    for typ in self._addr_types
                    for ip in answers[_key(target, typ)]
                    if isinstance(ip, str)
                ]
            )
            for ip in ips:
                if (proto, ip, port) not in seen:
                    seen.add((proto, ip, port))
                    result.append((proto, Addr(ip, port, _family(ip), target, proto)))
        self._finish(res, result)

    def _finish(self, res: _Resolution, result: Result) -> None:
        if res.done or self._closed:
            return
        res.done = True
        log.debug("resolved %s: %s", res.host, [f"{p}:{a}" for p, a in result])
        # Each callback runs from its own timer: never inside resolve(), and
        # one that raises cannot keep others sharing the same queries waiting.
        timer = self._loop.add_timer(0, lambda t: self._fire(t, res, result), name="dns")
        self._deferred.add(timer)

    def _fire(self, timer: TimerLike, res: _Resolution, result: Result) -> None:
        self._deferred.discard(timer)
        if not self._closed:
            res.callback(result)

    # ------------------------------------------------------- cached lookups

    def _gather(self, keys: list[_Key], done: Callable[[dict[_Key, list[Record]]], None]) -> None:
        """Look up all ``keys`` in parallel, then call ``done(answers)``."""
        keys = list(dict.fromkeys(keys))
        answers: dict[_Key, list[Record]] = {}
        if not keys:
            done(answers)
            return

        def one(key: _Key, recs: list[Record]) -> None:
            answers[key] = recs
            if len(answers) == len(keys):
                done(answers)

        for key in keys:
            self._lookup(key, partial(one, key))

    def _lookup(self, key: _Key, waiter: _Waiter) -> None:
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._loop.looptime:
            waiter(hit[1])
            return
        q = self._inflight.get(key)
        if q is not None:
            q.waiters.append(waiter)
            return
        q = self._inflight[key] = _Query(key, [waiter])
        if self._hook is None:
            self._send(q)
            return
        invoke_callback(
            self._hook,
            key[1],
            key[0],
            lambda answers=None: self._complete(q, _from_hook(key[1], answers), 0),
        )

    def _complete(self, q: _Query, recs: list[Record], ttl: float) -> None:
        if self._inflight.get(q.key) is not q:
            return  # finished already, or closed (a late hook answer, say)
        del self._inflight[q.key]
        self._drop_io(q)
        if ttl > 0 and self._cache_size > 0:
            self._cache.pop(q.key, None)
            while len(self._cache) >= self._cache_size:  # full: drop the oldest entry
                del self._cache[next(iter(self._cache))]
            self._cache[q.key] = (self._loop.looptime + min(ttl, _MAX_TTL), recs)
        for waiter in q.waiters:
            waiter(recs)

    def _drop_io(self, q: _Query) -> None:
        if q.timer is not None:
            q.timer.cancel()
            q.timer = None
        if q.sock is not None:
            self._loop.del_fd(q.sock)
            q.sock.close()
            q.sock = None

    # ------------------------------------------------------------ DNS wire I/O

    def _send(self, q: _Query) -> None:
        """Send ``q`` over UDP to the next nameserver, or fail it after the last try."""
        self._drop_io(q)
        q.tcp_buf = None
        if q.tries >= self.attempts * len(self._servers):
            log.info("DNS %s %s: no answer after %d tries", q.key[1], q.key[0], q.tries)
            self._complete(q, [], 0)
            return
        server = q.server = self._servers[q.tries % len(self._servers)]
        q.tries += 1
        try:
            if q.msg is None:
                q.msg = dns.message.make_query(
                    q.key[0] + ".", q.key[1], use_edns=0, payload=_EDNS_PAYLOAD
                )
            wire = q.msg.to_wire()
        except dns.exception.DNSException as exc:
            log.info("DNS %s %s: bad name (%s)", q.key[1], q.key[0], exc)
            self._complete(q, [], 0)
            return
        sock = socket.socket(server.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # connect(): the kernel drops datagrams from other sources, and an
            # ICMP port unreachable fails this try at once (ECONNREFUSED).
            sock.connect(server.sockaddr())
            sock.send(wire)
        except OSError as exc:
            sock.close()
            log.info("DNS %s %s to %s: %s", q.key[1], q.key[0], server, exc)
            self._send(q)
            return
        q.sock = sock
        self._loop.add_fd(sock, EV_READ, partial(self._on_udp, q), "dns")
        q.timer = self._loop.add_timer(self.timeout, partial(self._on_timeout, q), name="dns")

    def _on_timeout(self, q: _Query, _timer: object) -> None:
        log.debug("DNS %s %s: timeout from %s", q.key[1], q.key[0], q.server)
        self._send(q)

    def _on_udp(self, q: _Query, _fd: object) -> None:
        sock, server = q.sock, q.server
        if sock is None or server is None:
            return
        try:
            data, src = sock.recvfrom(65535)
        except BlockingIOError:
            return
        except OSError as exc:
            log.info("DNS %s %s from %s: %s", q.key[1], q.key[0], server, exc)
            self._send(q)
            return
        # Anti-spoofing (RFC 5452): the answer must come from the server asked.
        if src[1] != server.port or _ip_literal(src[0]) != server.addr:
            log.warning("DNS answer from unexpected %s ignored (asked %s)", src, server)
            return
        self._on_reply(q, data)

    def _on_reply(self, q: _Query, data: bytes) -> bool:
        """Handle one answer; False if it is junk or not an answer to ``q``."""
        assert q.msg is not None
        try:
            resp = dns.message.from_wire(data, raise_on_truncation=True)
        except dns.message.Truncated as exc:
            partial_msg: dns.message.Message = exc.message()  # type: ignore[no-untyped-call]  # dnspython leaves it unannotated
            if q.tcp_buf is None and q.msg.is_response(partial_msg):
                self._start_tcp(q)  # RFC 1035 4.2.2 / RFC 7766: retry over TCP
                return True
            return False
        except (dns.exception.DNSException, ValueError) as exc:
            log.warning("DNS junk from %s ignored: %s", q.server, exc)
            return False
        if not isinstance(resp, dns.message.QueryMessage) or not q.msg.is_response(resp):
            log.warning("DNS answer from %s with wrong id/question ignored", q.server)
            return False
        rcode = resp.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            log.info("DNS %s %s: rcode %s from %s", q.key[1], q.key[0], rcode, q.server)
            self._send(q)
            return True
        try:
            chain = resp.resolve_chaining()  # follows CNAMEs, gives the TTL to cache for
        except dns.exception.DNSException as exc:
            log.warning("DNS answer from %s unusable: %s", q.server, exc)
            return False
        recs = self._records(chain.answer)
        ttl = chain.minimum_ttl if recs else min(chain.minimum_ttl, _MAX_NEGATIVE_TTL)
        self._complete(q, recs, ttl)
        return True

    @staticmethod
    def _records(rrset: dns.rrset.RRset | None) -> list[Record]:
        def text(name: dns.name.Name) -> str:
            return name.to_text(omit_final_dot=True) if name != dns.name.root else "."

        recs: list[Record] = []
        for rd in rrset if rrset is not None else ():
            if isinstance(rd, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
                recs.append(str(ipaddress.ip_address(rd.address)))
            elif isinstance(rd, dns.rdtypes.IN.SRV.SRV):
                recs.append(SrvRecord(rd.priority, rd.weight, rd.port, text(rd.target)))
            elif isinstance(rd, dns.rdtypes.IN.NAPTR.NAPTR):
                flags, service, regexp = (
                    b.decode("latin-1") for b in (rd.flags, rd.service, rd.regexp)
                )
                recs.append(
                    NaptrRecord(
                        rd.order, rd.preference, flags, service, regexp, text(rd.replacement)
                    )
                )
        return recs

    def _start_tcp(self, q: _Query) -> None:
        assert q.msg is not None and q.server is not None
        self._drop_io(q)
        wire = q.msg.to_wire()
        q.out = len(wire).to_bytes(2, "big") + wire  # RFC 1035 4.2.2 length prefix
        q.tcp_buf = bytearray()
        sock = socket.socket(q.server.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(q.server.sockaddr())
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            sock.close()
            log.info("DNS over TCP to %s: %s", q.server, exc)
            self._send(q)
            return
        q.sock = sock
        self._loop.add_fd(sock, EV_WRITE, partial(self._on_tcp, q), "dns-tcp")
        q.timer = self._loop.add_timer(self.timeout, partial(self._on_timeout, q), name="dns")

    def _on_tcp(self, q: _Query, _fd: object) -> None:
        sock, buf = q.sock, q.tcp_buf
        if sock is None or buf is None:
            return
        try:
            if q.out:
                # Writable: connected (or failed). The query fits the empty send
                # buffer of a fresh connection, so one send() does it.
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err or sock.send(q.out) != len(q.out):
                    raise OSError(err, os.strerror(err) if err else "short write")
                q.out = b""
                self._loop.del_fd(sock, EV_WRITE)
                self._loop.add_fd(sock, EV_READ, partial(self._on_tcp, q), "dns-tcp")
                return
            data = sock.recv(65537)
        except BlockingIOError:
            return
        except OSError as exc:
            log.info("DNS over TCP with %s: %s", q.server, exc)
            self._send(q)
            return
        buf += data
        size = int.from_bytes(buf[:2], "big") if len(buf) >= 2 else -1
        if size >= 0 and len(buf) >= 2 + size:
            if not self._on_reply(q, bytes(buf[2 : 2 + size])):
                self._send(q)
        elif not data:
            self._send(q)  # connection closed before a full answer
