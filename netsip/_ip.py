"""IP addresses and the :class:`Addr` endpoint record (part of ``Net::SIP::Util``).

The ``ip_*`` helpers split, join and canonicalise ``host:port`` strings with
IPv6 support exactly like their Perl namesakes; Perl's packed ``sockaddr``
strings are replaced by Python's socket address tuples (``(ip, port)`` for
IPv4, ``(ip, port, flowinfo, scope_id)`` for IPv6). Where Perl returns a list
in list context and a hash ref in scalar context, these functions return a
tuple and take ``as_hash=True`` for the dict form. :class:`Addr` is the typed
endpoint record every layer above uses. Public through :mod:`netsip.util`;
the differences from Net::SIP are listed there.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast, overload

from netsip._base import DEFAULT_PORTS, Proto, SockAddr

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


def _pton(family: int, ip: str) -> bytes | None:
    try:
        return socket.inet_pton(family, ip)
    except (OSError, ValueError):  # ValueError: embedded NUL, non-ASCII
        return None


def ip_is_v4(ip: str) -> bool:
    """True if ``ip`` is a valid IPv4 address (dotted quad)."""
    return _pton(AF_INET, ip) is not None


def ip_is_v6(ip: str) -> bool:
    """True if ``ip`` is a valid IPv6 address (without brackets)."""
    return _pton(AF_INET6, ip) is not None


def ip_is_v46(ip: str) -> int | None:
    """Return ``AF_INET`` or ``AF_INET6`` if ``ip`` is an IP address of that family, else None."""
    if _pton(AF_INET, ip) is not None:
        return AF_INET
    if _pton(AF_INET6, ip) is not None:
        return AF_INET6
    return None


def ip_canonical(ip: str, family: int | None = None) -> str:
    """Canonical form of an IP address, suitable for comparison (``::0001`` -> ``::1``).

    Args:
        ip: the address; family: AF_INET/AF_INET6, guessed from ``:`` if None.

    Raises:
        ValueError: ``ip`` is not an address of that family.
    """
    if not family:
        family = AF_INET6 if ":" in ip else AF_INET
    packed = _pton(family, ip)
    if packed is None:
        raise ValueError(f"invalid IP address {ip!r}")
    return socket.inet_ntop(family, packed)


def ip_ptr(ip: str, family: int | None = None) -> str:
    """The name for the reverse (PTR) lookup of ``ip``: ``*.in-addr.arpa`` / ``*.ip6.arpa``.

    Raises:
        ValueError: ``ip`` is not an IP address.
    """
    if not family:
        family = AF_INET6 if ":" in ip else AF_INET
    packed = _pton(family, ip)
    if packed is None:
        raise ValueError(f"invalid IP address {ip!r}")
    if family == AF_INET:
        return ".".join(str(b) for b in reversed(packed)) + ".in-addr.arpa"
    return ".".join(reversed(packed.hex())) + ".ip6.arpa"


class IPParts(TypedDict):
    """The dict form of :func:`ip_string2parts` / :func:`ip_sockaddr2parts` (Perl's hash)."""

    host: str
    addr: str | None
    port: int | None
    family: int | None


# A host name as Net::SIP accepts it (RFC 1123 labels, plus "_", optional
# trailing dot); Perl matches lower case only, we ignore case.
_HOSTNAME_RX = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?", re.IGNORECASE)
_BRACKET_RX = re.compile(r"\[([^\]]+)\](?::(\w*))?")


def _port_or_none(port: str | None, whole: str) -> int | None:
    if port is None:
        return None
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise ValueError(f"invalid port {port!r} in {whole!r}")
    return int(port)


@overload
def ip_string2parts(
    addr: str, opaque: bool | int = ..., *, as_hash: Literal[False] = ...
) -> tuple[str, int | None, int | None]: ...
@overload
def ip_string2parts(addr: str, opaque: bool | int = ..., *, as_hash: Literal[True]) -> IPParts: ...


def ip_string2parts(
    addr: str, opaque: bool | int = False, *, as_hash: bool = False
) -> tuple[str, int | None, int | None] | IPParts:
    """Split ``host``, ``host:port``, ``[host]:port`` into host, port and family.

    ::

        1.2.3.4, [1.2.3.4]            -> ("1.2.3.4", None, AF_INET)
        1.2.3.4:5060, [1.2.3.4]:5060  -> ("1.2.3.4", 5060, AF_INET)
        ::1, [::1]                    -> ("::1", None, AF_INET6)
        [::1]:5060                    -> ("::1", 5060, AF_INET6)
        host, [host]                  -> ("host", None, None)
        host:5060, [host]:5060        -> ("host", 5060, None)

    Args:
        addr: the string.
        opaque: the host part is an opaque identifier: no host name syntax
            check, no canonicalisation, no lower-casing (Perl's OPAQUE; its
            1 and 0 are taken too).
        as_hash: return Perl's hash form, a dict with ``host``, ``addr`` (the
            IP, None for a host name), ``port`` and ``family``.

    Returns:
        ``(host, port, family)``: the canonical IP or lower-cased host name,
        the port (None if absent) and AF_INET/AF_INET6 (None for a name).

    Raises:
        ValueError: invalid host name (unless ``opaque``) or invalid port.
    """
    port_s: str | None = None
    if addr.startswith("["):
        m = _BRACKET_RX.fullmatch(addr)
        if m is None:
            raise ValueError(f"invalid address {addr!r}")
        host, port_s = m.group(1), m.group(2)
        fam = AF_INET6 if ":" in host else AF_INET
    else:
        colons = addr.count(":")
        if colons == 0:
            host, fam = addr, AF_INET
        elif colons == 1:
            # (ipv4|host):port
            host, port_s = addr.split(":")
            fam = AF_INET
        else:
            # bare IPv6 literal, cannot carry a port
            host, fam = addr, AF_INET6
    port = _port_or_none(port_s, addr)

    family: int | None = fam
    ip: str | None
    packed = _pton(fam, host)
    if packed is not None:
        ip = host if opaque else socket.inet_ntop(fam, packed)
        if not opaque:
            host = ip
    elif opaque or _HOSTNAME_RX.fullmatch(host):
        ip = family = None
        if not opaque:
            host = host.lower()
    else:
        raise ValueError(f"invalid hostname {host!r} in {addr!r}")
    if as_hash:
        return {"host": host, "addr": ip, "port": port, "family": family}
    return host, port, family


def ip_parts2string(
    ip: str | Mapping[str, Any] | Addr,
    port: int | None = None,
    family: int | None = None,
    ipv6_brackets: bool | int = False,
) -> str:
    """Join host and port, the reverse of :func:`ip_string2parts`.

    ::

        ("h")                  -> "h"
        ("1.2.3.4", 5060)      -> "1.2.3.4:5060"
        ("::1", 5060)          -> "[::1]:5060"
        ("::1", None, None, True) -> "[::1]"

    A port of 0 counts as no port (as in Perl). The family is guessed from a
    ``:`` in the host if not given; any family but AF_INET gets brackets.

    Args:
        ip: the IP or host name; or a mapping (Perl's hash) with ``addr`` or
            ``host``, ``port``, ``family`` and optionally ``use_host`` (prefer
            ``host`` over ``addr``) and ``default_port`` (omit that port);
            or an :class:`Addr`. With a mapping or Addr, ``port`` and
            ``family`` must not be given.
        port: optional port.
        family: optional AF_INET/AF_INET6.
        ipv6_brackets: put an IPv6 address in brackets even without a port
            (Perl's 1 and 0 are taken too).

    Raises:
        TypeError: ``port``/``family`` given together with a mapping or Addr.
    """
    if not isinstance(ip, str):
        if port is not None or family is not None:
            raise TypeError(
                "ip_parts2string(mapping) takes no port/family; pass ipv6_brackets= by keyword"
            )
        if isinstance(ip, Addr):
            host, port, family = ip.addr, ip.port, ip.family
        else:
            port = ip.get("port")
            family = ip.get("family")
            host = ip.get("addr") or ip.get("host") or ""
            h = ip.get("host")
            if ip.get("use_host") and h and family and h != ip.get("addr"):
                # a host name must not end up in brackets
                host, family = h, None
            if "default_port" in ip and port == ip["default_port"]:
                port = 0
    else:
        host = ip
    host = host.lower()
    if not port and not ipv6_brackets:
        return host
    if not family and ":" in host:
        family = AF_INET6
    if family and family != AF_INET:
        host = f"[{host}]"
    if not port:
        return host
    return f"{host}:{port}"


def ip_parts2sockaddr(
    ip: str | Mapping[str, Any] | Addr, port: int | None = None, family: int | None = None
) -> SockAddr:
    """The socket address tuple for IP and port (Perl returns a packed sockaddr).

    Args:
        ip: the IP address, or a mapping with ``addr``, ``port``, ``family``,
            or an :class:`Addr`.
        port: the port (required unless ``ip`` is a mapping/Addr).
        family: AF_INET/AF_INET6, guessed from the IP if None.

    Returns:
        ``(ip, port)`` for IPv4, ``(ip, port, 0, 0)`` for IPv6, IP canonical.

    Raises:
        ValueError: not an IP address of that family, or no valid port.
    """
    if isinstance(ip, Addr):
        return ip.sockaddr()
    if not isinstance(ip, str):
        d = ip
        ip = d.get("addr") or ""
        port = d.get("port")
        family = d.get("family")
    if not family:
        family = AF_INET6 if ":" in ip else AF_INET
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port {port!r}")
    canon = ip_canonical(ip, family)
    if family == AF_INET:
        return (canon, port)
    return (canon, port, 0, 0)


def _sockaddr_ip(sockaddr: Sequence[Any], family: int | None) -> tuple[str, int, int]:
    ip = sockaddr[0]
    if not family:
        family = AF_INET6 if len(sockaddr) >= 4 or ":" in ip else AF_INET
    if "%" in ip:
        # Python appends the scope ("fe80::1%eth0"); a packed sockaddr keeps
        # it in a separate field, which Perl's inet_ntop drops too.
        ip = ip.partition("%")[0]
    return ip_canonical(ip, family), sockaddr[1], family


@overload
def ip_sockaddr2parts(
    sockaddr: Sequence[Any], family: int | None = ..., *, as_hash: Literal[False] = ...
) -> tuple[str, int, int]: ...
@overload
def ip_sockaddr2parts(
    sockaddr: Sequence[Any], family: int | None = ..., *, as_hash: Literal[True]
) -> IPParts: ...


def ip_sockaddr2parts(
    sockaddr: Sequence[Any], family: int | None = None, *, as_hash: bool = False
) -> tuple[str, int, int] | IPParts:
    """Split a socket address tuple (as from ``getsockname``/``recvfrom``).

    Args:
        sockaddr: ``(ip, port)`` or ``(ip, port, flowinfo, scope_id)``.
        family: AF_INET/AF_INET6, guessed from the tuple's length if None.
        as_hash: return a dict with ``host``, ``addr``, ``port``, ``family``.

    Returns:
        ``(ip, port, family)`` with the IP canonical and without a scope.

    Raises:
        ValueError: the address is not an IP of that family.
    """
    ip, port, family = _sockaddr_ip(sockaddr, family)
    if as_hash:
        return {"host": ip, "addr": ip, "port": port, "family": family}
    return ip, port, family


def ip_sockaddr2string(sockaddr: Sequence[Any], family: int | None = None) -> str:
    """``"ip:port"`` or ``"[ipv6]:port"`` for a socket address tuple."""
    ip, port, family = _sockaddr_ip(sockaddr, family)
    if family == AF_INET:
        return f"{ip}:{port}"
    return f"[{ip}]:{port}"


def hostname2ip(name: str, family: int | None = None) -> list[str]:
    """Resolve a host name to its IP addresses with ``getaddrinfo``.

    IP literals are returned (canonical) without a lookup. Perl returns the
    first address in scalar context: use ``hostname2ip(name)[0]``.

    Args:
        name: host name or IP address.
        family: restrict to AF_INET or AF_INET6.

    Returns:
        The addresses in resolver order without duplicates; empty if the
        name does not resolve (or an IP literal is of the other family).
    """
    fam = ip_is_v46(name)
    if fam is not None:
        return [ip_canonical(name, fam)] if not family or family == fam else []
    try:
        # SOCK_DGRAM: one entry per address instead of one per socket type
        infos = socket.getaddrinfo(name, None, family or 0, socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError):
        return []
    seen: dict[str, None] = {}
    for fam_i, _, _, _, sa in infos:
        if fam_i in (AF_INET, AF_INET6):
            seen.setdefault(_sockaddr_ip(sa, fam_i)[0], None)
    return list(seen)


def laddr4dst(dst: str | Addr, *src: str) -> str | None:
    """The local IP the kernel would use to reach ``dst``.

    Connects a UDP socket (no packet is sent) and reads its local address.

    Args:
        dst: the target IP, ``ip:port``, ``[ipv6]:port`` or an :class:`Addr`
            (port 5060 if none).
        *src: candidate local IPs to bind to, tried in order; any if none.

    Returns:
        The canonical local IP, or None if ``dst`` is not an IP or there is
        no route (from any of ``src``). The family is ``ip_is_v46(result)``.
    """
    if isinstance(dst, Addr):
        ip, port, fam = dst.addr, dst.port, dst.family
    else:
        try:
            ip, port_o, fam_o = ip_string2parts(dst)
        except ValueError:
            return None
        if fam_o is None:
            return None  # a host name, not an IP destination
        port, fam = port_o or 5060, fam_o
    for s in src or (None,):
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as sock:
                if s is not None:
                    sock.bind((s, 0))
                sock.connect((ip, port))
                return _sockaddr_ip(sock.getsockname(), fam)[0]
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------
# Addr
# --------------------------------------------------------------------------


def _canon_ip(ip: str) -> tuple[str, int]:
    """Canonical form and family of an IP literal; ValueError if not an IP."""
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if "%" in ip:
        ip = ip.partition("%")[0]  # see _sockaddr_ip
    fam = AF_INET6 if ":" in ip else AF_INET
    packed = _pton(fam, ip)
    if packed is None:
        raise ValueError(f"not an IP address: {ip!r} (host names are not resolved here)")
    return socket.inet_ntop(fam, packed), fam


def _check_port(port: object) -> int:
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port {port!r} (must be an integer 0..65535)")
    return port


# "ip:port" or "[ip]:port"
_ADDR_RX = re.compile(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)")


@dataclass(frozen=True, slots=True)
class Addr:
    """An endpoint: canonical IP, port, address family, optional host name and protocol.

    ``str(addr)`` is ``"ip:port"`` or ``"[ipv6]:port"``; :meth:`sockaddr`
    gives the tuple for socket calls.
    """

    addr: str
    port: int
    family: int
    host: str | None = None
    proto: Proto | None = None

    @classmethod
    def parse(cls, x: object) -> Addr:
        """Build an Addr from the forms used across netsip.

        Args:
            x: an Addr (returned unchanged); ``"ip:port"`` or ``"[ipv6]:port"``;
                a tuple ``(ip, port)`` or ``(ip, port, family)`` (an IPv6
                sockaddr ``(ip, port, flowinfo, scope_id)`` also works); or a
                mapping with ``addr`` (or ``host`` holding an IP), ``port`` and
                optionally ``family``, ``host``, ``proto``.

        Returns:
            The Addr, IP canonical, family inferred from the IP.

        Raises:
            ValueError: not an IP literal (host names are not resolved), bad
                or missing port, family not matching the IP, bad ``proto``.
            TypeError: an unsupported input type.
        """
        if isinstance(x, Addr):
            return x
        if isinstance(x, str):
            return _parse_str(x)
        if isinstance(x, tuple):
            n = len(x)
            if n == 2:
                return _parse_parts(x[0], x[1], None)
            if n == 3:
                return _parse_parts(x[0], x[1], x[2])
            if n == 4:
                return _parse_parts(x[0], x[1], AF_INET6)
            raise ValueError(f"address tuple needs 2 or 3 elements, got {n}: {x!r}")
        if isinstance(x, Mapping):
            d = cast("Mapping[str, Any]", x)
            host = d.get("host")
            ip = d.get("addr") or host
            proto = d.get("proto")
            if proto is not None and proto not in DEFAULT_PORTS:
                raise ValueError(f"invalid proto {proto!r} (udp, tcp, tls, ws or wss)")
            if host is not None and not isinstance(host, str):
                raise ValueError(f"host must be a str, got {host!r}")
            a = _parse_parts(ip, d.get("port"), d.get("family"))
            if host is None and proto is None:
                return a
            return cls(a.addr, a.port, a.family, host, proto)
        raise TypeError(f"cannot make an Addr from {type(x).__name__}: {x!r}")

    def sockaddr(self) -> SockAddr:
        """The address tuple for socket calls: ``(ip, port)`` or ``(ip, port, 0, 0)``."""
        if self.family == AF_INET6:
            return (self.addr, self.port, 0, 0)
        return (self.addr, self.port)

    def __str__(self) -> str:
        if self.family == AF_INET6:
            return f"[{self.addr}]:{self.port}"
        return f"{self.addr}:{self.port}"


def is_invalid_host(host: str) -> bool:
    """True for ``invalid`` and names under it: RFC 6761 section 6.4 says they never resolve.

    Browsers put such names (``df7jal23ls0d.invalid``) in the Via and
    Contact of their requests (RFC 7118 section 5.2): looking them up only
    costs a DNS round trip that cannot succeed.
    """
    name = host.rstrip(".").lower()
    return name == "invalid" or name.endswith(".invalid")


def bind_socket(
    proto: Proto,
    addr: str,
    port: int,
    family: int | None = None,
    *,
    reuse_dgram: bool = False,
    reuseport: bool = False,
    v6only: bool = False,
    peer: Addr | None = None,
) -> socket.socket:
    """A non-blocking socket bound to ``addr``:``port`` (a SocketPool's master).

    UDP is bound (and connected to ``peer`` if given: it then only exchanges
    data with that peer); TCP and TLS listen, with a backlog of
    ``SOMAXCONN`` so that bursts of connects (a connection per call) do not
    overflow it (Net::SIP listens with 100).

    Args:
        proto: the transport.
        addr: the local IP address; ``family`` defaults to its family.
        port: the local port, 0 for one the system picks.
        reuse_dgram: ``SO_REUSEADDR`` on UDP too (stream sockets always get
            it, so a restart need not wait for TIME_WAIT connections; Net::SIP's
            Leg sets it on every socket).
        reuseport: ``SO_REUSEPORT``, for several processes on one port.
        v6only: ``IPV6_V6ONLY`` on an IPv6 socket (``[::]`` then serves IPv6
            only, and an IPv4 socket may bind the same port).
        peer: UDP only: the peer to connect to.

    Raises:
        OSError: the socket cannot be made, bound or connected (it is closed).
    """
    local = Addr(addr, port, family) if family is not None else Addr.parse((addr, port))
    stream = proto != "udp"
    sock = socket.socket(local.family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
    try:
        if v6only and local.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if stream or reuse_dgram:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(local.sockaddr())
        if stream:
            sock.listen(socket.SOMAXCONN)
        elif peer is not None:
            sock.connect(peer.sockaddr())
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _parse_parts(ip: object, port: object, family: object) -> Addr:
    try:
        return _parse_parts_cached(ip, port, family)
    except TypeError:  # unhashable input: still report it as a ValueError
        return _make_addr(ip, port, family)


def _make_addr(ip: object, port: object, family: object) -> Addr:
    if not isinstance(ip, str):
        raise ValueError(f"IP address must be a str, got {ip!r}")
    canon, fam = _canon_ip(ip)
    if port is None:
        raise ValueError(f"no port given for {ip!r}")
    pnum = _check_port(port)
    if family is not None and family != fam:
        raise ValueError(f"family {family!r} does not match address {ip!r}")
    return Addr(canon, pnum, fam)


# Addr.parse sits on the send and receive paths and the same few peers recur,
# so remember recent results; typed=True keeps True and 1 apart.
_parse_parts_cached = functools.lru_cache(maxsize=1024, typed=True)(_make_addr)


@functools.lru_cache(maxsize=1024)
def _parse_str(x: str) -> Addr:
    m = _ADDR_RX.fullmatch(x)
    if m is None:
        if x.count(":") > 1 and not x.startswith("["):
            raise ValueError(f"IPv6 address needs [brackets] and a port: {x!r}")
        if not x.rpartition("]")[2].count(":"):
            raise ValueError(f"no port in address {x!r}, expected ip:port or [ipv6]:port")
        raise ValueError(f"cannot parse address {x!r}, expected ip:port or [ipv6]:port")
    if m.group(1) is not None:
        return _parse_parts(m.group(1), m.group(2), None)
    return _parse_parts(m.group(3), m.group(4), None)
