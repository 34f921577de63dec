"""Port of Perl's ``Net::SIP::Util``: callbacks, address helpers, SIP header/URI helpers.

Net::SIP passes callbacks around in several shapes (code refs, ``[\\&sub, @args]``
arrays, objects with a ``run`` method, regexes, scalar refs); :func:`invoke_callback`
implements that convention, with :class:`Var` standing in for a scalar reference.
:class:`Addr` is the typed endpoint record used by every layer above.

The ``ip_*`` helpers split, join and canonicalise ``host:port`` strings with IPv6
support exactly like their Perl namesakes; Perl's packed ``sockaddr`` strings are
replaced by Python's socket address tuples (``(ip, port)`` for IPv4,
``(ip, port, flowinfo, scope_id)`` for IPv6). Where Perl returns a list in list
context and a hash ref in scalar context, these functions return a tuple and
take ``as_hash=True`` for the dict form. The ``sip_*`` helpers split and build
header values (``data;param=value``) and SIP URIs.

Deliberate differences from Net::SIP 0.835, all where Perl contradicts its own
documentation or produces unusable output:

- ``ip_string2parts`` returns the canonical IP (Perl returns it only in the hash
  form), accepts ``[ipv4]:port`` and ``[host]:port`` (documented, but Perl dies),
  accepts upper-case host names (lower-cased; Perl dies), and requires a numeric
  port (Perl passes any ``\\w+`` through) - ports are ``int`` here.
- ``sip_hdrval2parts`` drops empty parameters (``"a;"``); Perl stores a ``''`` key.
- ``sip_parts2hdrval`` for the comma-delimited authentication headers writes
  ``Digest a=1,b=2`` (RFC 2617 section 3.2.2); Perl writes ``Digest,a=1,b=2``.
- ``sip_parts2uri`` keeps a user part ``"0"`` (Perl drops it as false).
"""

from __future__ import annotations

import errno
import functools
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypedDict, TypeVar, cast, overload

__all__ = [
    "DEFAULT_PORTS",
    "PROTOS",
    "Addr",
    "IPParts",
    "NetSIPError",
    "Proto",
    "Var",
    "as_callable",
    "bind_socket",
    "errno_of",
    "hostname2ip",
    "invoke_callback",
    "ip_canonical",
    "ip_is_v4",
    "ip_is_v6",
    "ip_is_v46",
    "ip_parts2sockaddr",
    "ip_parts2string",
    "ip_ptr",
    "ip_sockaddr2parts",
    "ip_sockaddr2string",
    "ip_string2parts",
    "laddr4dst",
    "sip_hdrval2parts",
    "sip_parts2hdrval",
    "sip_parts2uri",
    "sip_sockinfo2uri",
    "sip_uri2domain",
    "sip_uri2parts",
    "sip_uri2sockinfo",
    "sip_uri_eq",
]

Proto = Literal["udp", "tcp", "tls"]

#: The transports netsip speaks, in the order of preference of RFC 3263 4.1
#: when nothing else decides (UDP, then TCP, then TLS).
PROTOS: Final[tuple[Proto, ...]] = ("udp", "tcp", "tls")

#: The default port of each transport (RFC 3261 19.1.2: 5060, 5061 for TLS).
DEFAULT_PORTS: Final[Mapping[str, int]] = {"udp": 5060, "tcp": 5060, "tls": 5061}


def errno_of(exc: BaseException) -> int:
    """The errno a delivery callback gets for ``exc``: its own, else ``EINVAL``.

    A send can fail with an ``OSError`` (its errno, when it has one) or with a
    ``ValueError`` for an unusable destination; callbacks only take ints.
    """
    return exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL


#: A Python socket address: ``(ip, port)`` or ``(ip, port, flowinfo, scope_id)``.
SockAddr = tuple[str, int] | tuple[str, int, int, int]

T = TypeVar("T")

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

# Perl's \s (without unicode semantics).
_WS = " \t\n\r\f\v"


class NetSIPError(Exception):
    """Base class of every error raised by netsip."""


# --------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------


class Var(Generic[T]):
    """A mutable cell, standing in for a Perl scalar reference (``\\my $stop``).

    ``value`` is initially None; ``bool(var)`` is ``bool(var.value)``.
    Passed as a callback to :func:`invoke_callback` it records the first
    argument (or True), which makes it the usual stop flag for
    ``EventLoop.loop``.
    """

    __slots__ = ("value",)

    def __init__(self, value: T | None = None) -> None:
        self.value: T | None = value

    def __bool__(self) -> bool:
        return bool(self.value)

    def __repr__(self) -> str:
        return f"Var({self.value!r})"


def invoke_callback(cb: Any, *args: Any) -> Any:
    """Invoke a callback in any of the shapes Net::SIP accepts.

    Args:
        cb: one of

            - a callable: ``cb(*args)``;
            - a tuple or list ``(func, *bound)``: ``func(*bound, *args)``;
            - an object with a ``run`` method: ``cb.run(*args)``;
            - a compiled regex: True if any arg (as str) matches (``search``),
              False otherwise, also when there are no args;
            - a :class:`Var`: set to ``args[0]`` (True without args);
            - None: nothing happens.
        *args: arguments appended to the call.

    Returns:
        Whatever the callback returns; the new value for a Var; None for None.

    Raises:
        TypeError: if ``cb`` has none of these shapes.
    """
    if isinstance(cb, Var):
        cb.value = args[0] if args else True
        return cb.value
    if callable(cb):
        return cb(*args)
    if isinstance(cb, tuple | list):
        if not cb or not callable(cb[0]):
            raise TypeError("callback sequence must start with a callable")
        return cb[0](*cb[1:], *args)
    run = getattr(cb, "run", None)
    if callable(run):
        return run(*args)
    if isinstance(cb, re.Pattern):
        if isinstance(cb.pattern, bytes):
            bpat = cast("re.Pattern[bytes]", cb)
            return any(
                bpat.search(a if isinstance(a, bytes | bytearray) else str(a).encode())
                for a in args
            )
        spat = cast("re.Pattern[str]", cb)
        return any(spat.search(str(a)) for a in args)
    if cb is None:
        return None
    raise TypeError(f"unknown callback type {type(cb).__name__}: {cb!r}")


def _nothing(*_args: Any) -> None:
    """The plain callable of a None callback."""


def as_callable(cb: Any) -> Callable[..., Any]:
    """``cb`` as a plain callable doing what ``invoke_callback(cb, *args)`` does.

    For a callback called again and again (a socket's read handler, a pool's
    receive callback): a plain function comes back as it is and is then
    called without :func:`invoke_callback`'s checks; the other shapes are
    wrapped (None becomes a function that does nothing).
    """
    if cb is None:
        return _nothing
    if callable(cb) and not isinstance(cb, Var):
        return cast("Callable[..., Any]", cb)
    return functools.partial(invoke_callback, cb)


# --------------------------------------------------------------------------
# IP addresses
# --------------------------------------------------------------------------


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
    addr: str, opaque: bool = ..., *, as_hash: Literal[False] = ...
) -> tuple[str, int | None, int | None]: ...
@overload
def ip_string2parts(addr: str, opaque: bool = ..., *, as_hash: Literal[True]) -> IPParts: ...


def ip_string2parts(
    addr: str, opaque: bool = False, *, as_hash: bool = False
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
            check, no canonicalisation, no lower-casing (Perl's OPAQUE).
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
    ipv6_brackets: bool = False,
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
        ipv6_brackets: put an IPv6 address in brackets even without a port.

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
            if proto is not None and proto not in ("udp", "tcp", "tls"):
                raise ValueError(f"invalid proto {proto!r} (udp, tcp or tls)")
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


# --------------------------------------------------------------------------
# SIP header values
# --------------------------------------------------------------------------

# Headers whose parameters are separated by "," (RFC 3261 section 25.1, the
# auth-param lists); all others use ";".
_DELIMITER = {
    "www-authenticate": ",",
    "proxy-authenticate": ",",
    "authorization": ",",
    "proxy-authorization": ",",
}
_UNFOLD_RX = re.compile(r"\r?\n([ \t])")
# "." deliberately does not cross a newline, as in Perl.
_SCAN_RX = {d: re.compile(r"(.*?)([\\\"<>" + d + "])") for d in ",;"}
_WS_RX = re.compile(r"[ \t\n\r\f\v]+")
_AUTH_FIRST_RX = re.compile(r"([^ \t\n\r\f\v]+)[ \t\n\r\f\v]*(.*)")
_EQ_RX = re.compile(r"[ \t\n\r\f\v]*=[ \t\n\r\f\v]*")
_QUOTED_RX = re.compile(r'"(.*)"\Z')
_BACKSLASH_RX = re.compile(r"\\(.)", re.DOTALL)
# Perl only decodes escapes made of hex *letters*; kept, because decoding more
# would alter values such as a Digest uri="sip:a%40b" that are hashed verbatim.
_PERCENT_RX = re.compile(r"%([a-fA-F][a-fA-F])")
_NEEDS_ESCAPE_RX = re.compile(r'[%\r\n\t"]|[^\x20-\x7e]')
_NEEDS_QUOTE_RX = {d: re.compile(r"[ \t\n\r\f\v" + d + "]") for d in ",;"}


def _split_items(v: str, delim: str) -> list[str]:
    """Split on ``delim`` outside quotes and ``<...>``, honouring backslash escapes."""
    if '"' not in v and "<" not in v and "\\" not in v and "\n" not in v:
        # fast path, same result as the scanner below
        items = v.split(delim)
        if len(items) > 1:
            items = (
                [items[0].rstrip(_WS)]
                + [i.strip(_WS) for i in items[1:-1]]
                + [items[-1].lstrip(_WS)]
            )
        return items
    rx = _SCAN_RX[delim]
    items = []
    cur: list[str] = []
    quoted = bracket = False
    pos = 0
    n = len(v)
    while True:
        m = rx.match(v, pos)
        if m is None:
            cur.append(v[pos:])
            break
        pre, ch = m.group(1), m.group(2)
        pos = m.end()
        if ch == "\\":
            cur += (pre, ch, v[pos : pos + 1])
            pos = min(pos + 1, n)
        elif ch == '"':
            cur += (pre, ch)
            if not bracket:
                quoted = not quoted
        elif ch == "<":
            cur += (pre, ch)
            if not bracket and not quoted:
                bracket = True
        elif ch == ">":
            cur += (pre, ch)
            if bracket and not quoted:
                bracket = False
        elif quoted or bracket:
            cur += (pre, ch)
        else:
            cur.append(pre)
            items.append("".join(cur).rstrip(_WS))
            cur = []
            ws = _WS_RX.match(v, pos)
            if ws is not None:
                pos = ws.end()
    items.append("".join(cur))
    return items


def sip_hdrval2parts(key: str, value: str) -> tuple[str, dict[str, str | None]]:
    """Split a header value into its leading data and its parameters.

    ::

        to:   '"Silver; John" <sip:s@example.com>; tag=abc'
              -> ('"Silver; John" <sip:s@example.com>', {"tag": "abc"})
        www-authenticate: 'Digest realm="a,b", qop=auth'
              -> ("Digest", {"realm": "a,b", "qop": "auth"})

    Delimiters inside double quotes or ``<...>`` do not split. Parameter
    names are lower-cased; a parameter without ``=`` maps to None; values
    are unquoted, backslash-unescaped and ``%xx`` escapes of hex letters
    decoded, as in Perl.

    Args:
        key: the normalised header name (lower case, long form); it selects
            the delimiter: ``,`` for the four authentication headers, else ``;``.
        value: the header value, possibly folded.

    Returns:
        ``(data, params)``.
    """
    v = _UNFOLD_RX.sub(r"\1", value).strip(_WS)
    delim = _DELIMITER.get(key, ";")
    items = _split_items(v, delim)
    data = items[0]
    rest = items[1:]
    if delim == ",":
        # "Digest realm=..": the scheme and the first parameter share item 0
        m = _AUTH_FIRST_RX.match(data)
        if m is not None:
            rest.insert(0, m.group(2))
            data = m.group(1) + data[m.end() :]
    params: dict[str, str | None] = {}
    for item in rest:
        if not item:
            continue  # "a;" or "a; ;b": Perl would store a '' key
        kv = _EQ_RX.split(item, maxsplit=1)
        if len(kv) == 1:
            params[item.lower()] = None
            continue
        val = kv[1]
        q = _QUOTED_RX.match(val)
        if q is not None:
            val = q.group(1)
        if "\\" in val:
            val = _BACKSLASH_RX.sub(r"\1", val)
        if "%" in val:
            val = _PERCENT_RX.sub(lambda m: chr(int(m.group(1), 16)), val)
        params[kv[0].lower()] = val
    return data, params


def _escape_char(m: re.Match[str]) -> str:
    return f"%{ord(m.group(0)):02x}"


def sip_parts2hdrval(
    key: str, data: str, params: Mapping[str, str | int | None] | None = None
) -> str:
    """Build a header value from data and parameters, the reverse of :func:`sip_hdrval2parts`.

    Parameters are written sorted by name; a None value writes just the
    name. Values get ``%``, CR, LF, TAB, ``"`` and non-printable characters
    ``%xx``-escaped and are quoted if they contain white space or the
    delimiter. ``data`` is used verbatim.

    Args:
        key: the normalised header name (selects the delimiter).
        data: the leading data.
        params: the parameters.

    Returns:
        The header value.
    """
    if not params:
        return data
    delim = _DELIMITER.get(key, ";")
    quote_rx = _NEEDS_QUOTE_RX[delim]
    out = [data]
    for i, k in enumerate(sorted(params)):
        # RFC 2617 section 3.2.1: auth-scheme SP auth-param *("," auth-param)
        out.append(" " if i == 0 and delim == "," else delim)
        out.append(k)
        val = params[k]
        if val is not None:
            sval = _NEEDS_ESCAPE_RX.sub(_escape_char, str(val))
            if quote_rx.search(sval):
                sval = f'"{sval}"'
            out += ("=", sval)
    return "".join(out)


# --------------------------------------------------------------------------
# SIP URIs
# --------------------------------------------------------------------------

_URI_ANGLE_RX = re.compile(r"<([^>]+)>[ \t\n\r\f\v]*\Z")
_URI_RX = re.compile(
    r"""
    (?: (sips?) : )?
    (?: ([^\s@]*) @ )?
    (
        \[ [^\]\s]+ \] (?: : \w+)?          # [ipv46_or_host]:port
        | [^:\s]+ (?: : \w+)?               # ipv4_or_host:port
        | (?:[a-f\d]*:){2}[a-f\d.:]*        # ipv6
    )
    """,
    re.IGNORECASE | re.VERBOSE | re.ASCII,
)


def sip_uri2parts(uri: str) -> tuple[str, str | None, str, dict[str, str | None], str] | None:
    """Split a SIP URI (Perl's ``sip_uri2parts`` in list context).

    ``uri`` may be a bare URI, a URI with parameters, or a name-addr whose
    value ends with ``<uri>``. For the domain only, use :func:`sip_uri2domain`.

    Returns:
        ``(domain, user, proto, params, data)``: the lower-cased domain as in
        the URI (``host``, ``host:port``, ``[ipv6]:port``); the user part
        (None if absent); ``"sip"`` or ``"sips"``; the URI parameters; the
        part before the parameters. None if ``uri`` does not look like a URI.
    """
    m = _URI_ANGLE_RX.search(uri)
    if m is not None:
        uri = m.group(1)
    data, params = sip_hdrval2parts("uri", uri)
    u = _URI_RX.fullmatch(data)
    if u is None:
        return None
    proto, user, domain = u.groups()
    return domain.lower(), user, (proto or "sip").lower(), params, data


def sip_uri2domain(uri: str) -> str | None:
    """The lower-cased domain (``host[:port]``) of a SIP URI; Perl's scalar-context form."""
    parts = sip_uri2parts(uri)
    return parts[0] if parts is not None else None


def sip_parts2uri(
    domain: str | Sequence[Any] | Mapping[str, Any] | Addr,
    user: str | None = None,
    proto: str | None = "sip",
    params: Mapping[str, str | int | None] | None = None,
) -> str:
    """Build a SIP URI, the reverse of :func:`sip_uri2parts`.

    Args:
        domain: ``host[:port]``, or ``(host, port, family)`` / a mapping /
            an :class:`Addr` passed to :func:`ip_parts2string`.
        user: optional user part.
        proto: ``"sip"`` (default, also for None) or ``"sips"``.
        params: URI parameters; with any, the URI is wrapped in ``<...>`` so
            they are not taken for header parameters.

    Returns:
        The URI.
    """
    if isinstance(domain, str):
        dom = domain
    elif isinstance(domain, Addr | Mapping):
        dom = ip_parts2string(domain)
    else:
        dom = ip_parts2string(*domain)
    uri = sip_parts2hdrval("uri", f"{proto or 'sip'}:{user + '@' if user else ''}{dom}", params)
    return f"<{uri}>" if params else uri


def sip_uri2sockinfo(
    uri: str, opaque: bool = False
) -> tuple[str | None, str, int | None, int | None] | None:
    """What a URI says about the socket to use.

    Args:
        uri: the SIP URI, e.g. ``sips:host:port`` or ``sip:host;transport=TCP``.
        opaque: the host part need not look like a host name (see
            :func:`ip_string2parts`).

    Returns:
        ``(proto, host, port, family)``: ``"tls"`` for sips, else the
        lower-cased ``transport`` parameter, else None (not restricted);
        the IP or host name; the port or None; AF_INET/AF_INET6 or None for
        a host name. None if ``uri`` is not a URI.

    Raises:
        ValueError: the host part is neither IP nor host name (not opaque).
    """
    parts = sip_uri2parts(uri)
    if parts is None:
        return None
    domain, _, sproto, params, _ = parts
    transport = params.get("transport")
    proto = "tls" if sproto == "sips" else transport.lower() if transport else None
    host, port, family = ip_string2parts(domain, opaque)
    return proto, host, port, family


_SOCKINFO_PROTO: dict[str | None, tuple[str, dict[str, str | int | None]]] = {
    None: ("sip", {}),
    "udp": ("sip", {}),
    "tcp": ("sip", {"transport": "TCP"}),
    "tls": ("sips", {}),
}


def sip_sockinfo2uri(
    proto: str | Mapping[str, Any] | Addr | None,
    host: str | None = None,
    port: int | None = None,
    family: int | None = None,
) -> str:
    """Build a URI from socket information, the reverse of :func:`sip_uri2sockinfo`.

    ::

        ("tcp", "::1", 5060, AF_INET6) -> "<sip:[::1]:5060;transport=TCP>"
        ("tls", "1.2.3.4", 5061)       -> "sips:1.2.3.4:5061"

    Args:
        proto: ``"udp"``, ``"tcp"``, ``"tls"`` or None; or a mapping with the
            keys ``proto``, ``host``, ``port``, ``family`` (``addr`` if no
            ``host``); or an :class:`Addr` (its ``host`` if set, else ``addr``).
        host: IP or host name.
        port: optional port.
        family: optional family.

    Raises:
        ValueError: an invalid proto.
    """
    p: str | None
    if isinstance(proto, Addr):
        a = proto
        p, host, port, family = a.proto, a.host or a.addr, a.port, a.family
    elif isinstance(proto, Mapping):
        d = proto
        p, host = d.get("proto"), d.get("host") or d.get("addr")
        port, family = d.get("port"), d.get("family")
    else:
        p = proto
    try:
        sproto, params = _SOCKINFO_PROTO[p]
    except (KeyError, TypeError):
        raise ValueError(f"invalid proto: {p!r}") from None
    if host is None:
        raise ValueError("no host given")
    return sip_parts2uri(ip_parts2string(host, port, family), None, sproto, params)


_URI_PORT_RX = re.compile(r":(\d+)\Z|\[(\d+)\]\Z")


def sip_uri_eq(uri1: str, uri2: str) -> bool:
    """True if both URIs point to the same SIP address.

    Compares the user part case-sensitively, the domain case-insensitively
    (no DNS), the protocol, and the port (5060, or 5061 for sips, if absent).
    URI parameters are ignored. A string that is not a URI equals only itself.
    """
    if uri1 == uri2:
        return True
    p1 = sip_uri2parts(uri1)
    p2 = sip_uri2parts(uri2)
    if p1 is None or p2 is None:
        return False
    d1, u1, s1 = p1[0], p1[1], p1[2]
    d2, u2, s2 = p2[0], p2[1], p2[2]
    d1, port1 = _split_uri_port(d1, s1)
    d2, port2 = _split_uri_port(d2, s2)
    return d1 == d2 and port1 == port2 and u1 == u2 and s1 == s2


def _split_uri_port(domain: str, proto: str) -> tuple[str, int]:
    m = _URI_PORT_RX.search(domain)
    if m is None:
        return domain, 5061 if proto == "sips" else 5060
    return domain[: m.start()], int(m.group(1) or m.group(2))
