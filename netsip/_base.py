"""The facts every layer of netsip shares: transports, default ports, the base error.

Part of Perl's ``Net::SIP::Util`` (public through :mod:`netsip.util`), kept
in its own small module so that the modules below util need not import all
of it.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Final, Literal

__all__ = ["DEFAULT_PORTS", "PROTOS", "NetSIPError", "Proto", "SockAddr", "errno_of"]

Proto = Literal["udp", "tcp", "tls", "ws", "wss"]

#: The transports netsip speaks, in the order of preference of RFC 3263 4.1
#: when nothing else decides (UDP, then TCP, then TLS), then WebSocket and
#: secure WebSocket (RFC 7118), which are only used when asked for.
PROTOS: Final[tuple[Proto, ...]] = ("udp", "tcp", "tls", "ws", "wss")

#: The default port of each transport (RFC 3261 19.1.2: 5060, 5061 for TLS).
#: RFC 7118 defines none for WebSocket: 80 and 443 are those of ``ws://`` and
#: ``wss://`` URIs (RFC 6455 3), which browsers use when a URI gives no port.
DEFAULT_PORTS: Final[Mapping[str, int]] = {
    "udp": 5060,
    "tcp": 5060,
    "tls": 5061,
    "ws": 80,
    "wss": 443,
}


def errno_of(exc: BaseException) -> int:
    """The errno a delivery callback gets for ``exc``: its own, else ``EINVAL``.

    A send can fail with an ``OSError`` (its errno, when it has one) or with a
    ``ValueError`` for an unusable destination; callbacks only take ints.
    """
    return exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL


#: A Python socket address: ``(ip, port)`` or ``(ip, port, flowinfo, scope_id)``.
SockAddr = tuple[str, int] | tuple[str, int, int, int]


class NetSIPError(Exception):
    """Base class of every error raised by netsip."""
