"""The sockets of ``netsip listen``: ``--listen`` specs and binding them, once
per ``--workers`` process.

Net::SIP's ``Leg`` binds its own socket; ``netsip listen`` binds them here
first so that UDP and TCP share one system-picked port (RFC 3261 18.1) and so
that every worker gets ``SO_REUSEPORT`` twins bound before the fork.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from netsip.cli._common import CliError, make_leg, tls_options
from netsip.leg import Leg
from netsip.util import (
    DEFAULT_PORTS,
    PROTOS,
    Addr,
    Proto,
    bind_socket,
    hostname2ip,
    ip_string2parts,
)

# How often binding a set of port-0 sockets is retried when another program
# takes the chosen port for the second transport between the two binds.
_BIND_ATTEMPTS: Final = 20


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to listen on: transport, IP, port (0: any free one) and family."""

    proto: Proto
    addr: str
    port: int
    family: int

    def __str__(self) -> str:
        return f"{self.proto}:{Addr(self.addr, self.port, self.family)}"


def parse_listen_spec(spec: str) -> list[ListenSpec]:
    """Parse ``[proto:]addr[:port]`` (IPv6 in brackets when a port follows).

    Without a protocol the spec stands for UDP and TCP on the same port. A
    host name is resolved to its first address.

    Raises:
        CliError: the spec is not understood (status 2).
    """
    head, sep, rest = spec.partition(":")
    protos: list[Proto]
    if sep and head.lower() in PROTOS:
        protos = [PROTOS[PROTOS.index(head.lower())]]
        hostport = rest
    else:
        protos = ["udp", "tcp"]
        hostport = spec
    try:
        host, port, family = ip_string2parts(hostport)
    except ValueError as exc:
        raise CliError(f"invalid --listen {spec!r}: {exc}") from None
    if family is None:
        ips = hostname2ip(host)
        if not ips:
            raise CliError(f"invalid --listen {spec!r}: cannot resolve {host!r}")
        host = ips[0]
        family = Addr.parse((host, 0)).family
    return [ListenSpec(p, host, DEFAULT_PORTS[p] if port is None else port, family) for p in protos]


def _bind(spec: ListenSpec, port: int, reuseport: bool) -> socket.socket:
    """A bound UDP or listening TCP socket for ``spec`` on ``port``; an IPv6
    one serves IPv6 only, so an IPv4 spec on the same port is separate."""
    return bind_socket(spec.proto, spec.addr, port, spec.family, reuseport=reuseport, v6only=True)


#: The sockets of one listener process, each with its spec (with the real port).
Bound: TypeAlias = list[tuple[ListenSpec, socket.socket]]


def open_listen_sockets(specs: Sequence[ListenSpec], workers: int = 1) -> list[Bound]:
    """Bind ``specs`` once per worker (with ``SO_REUSEPORT`` if more than one).

    Specs with port 0 on the same address share the port the system picks for
    the first of them where the socket types allow (SIP wants UDP and TCP on
    one port, RFC 3261 18.1); the whole set is retried if that port is taken
    for another transport meanwhile.

    Returns:
        One list of ``(spec with the real port, socket)`` per worker.

    Raises:
        CliError: a socket cannot be bound (port in use ...), status 2.
    """
    reuseport = workers > 1
    if reuseport and not hasattr(socket, "SO_REUSEPORT"):
        raise CliError("--workers needs SO_REUSEPORT, which this system lacks")
    may_retry = any(s.port == 0 for s in specs)
    for attempt in range(_BIND_ATTEMPTS):
        opened: list[socket.socket] = []
        current = specs[0]
        try:
            first: Bound = []
            shared: dict[str, int] = {}  # addr -> port picked for its port-0 specs
            taken: set[tuple[str, int, bool]] = set()  # (addr, port, stream)
            for spec in specs:
                current = spec
                stream = spec.proto != "udp"
                port = spec.port
                if (
                    port == 0
                    and spec.addr in shared
                    and (spec.addr, shared[spec.addr], stream) not in taken
                ):
                    port = shared[spec.addr]
                sock = _bind(spec, port, reuseport)
                opened.append(sock)
                real = sock.getsockname()[1]
                if spec.port == 0:
                    shared.setdefault(spec.addr, real)
                taken.add((spec.addr, real, stream))
                first.append((dataclasses.replace(spec, port=real), sock))
            sets = [first]
            for _ in range(workers - 1):
                more: Bound = []
                for spec, _sock in first:
                    current = spec
                    sock = _bind(spec, spec.port, True)
                    opened.append(sock)
                    more.append((spec, sock))
                sets.append(more)
            return sets
        except OSError as exc:
            for sock in opened:
                sock.close()
            if may_retry and exc.errno == errno.EADDRINUSE and attempt < _BIND_ATTEMPTS - 1:
                continue
            raise CliError(f"cannot listen on {current}: {exc.strerror or exc}") from None
    raise AssertionError("unreachable")


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of ``size`` bytes; return what the kernel granted.

    Linux caps ``SO_RCVBUF`` at ``net.core.rmem_max`` (and reports twice the
    value granted, its bookkeeping included: the half is returned); a
    privileged process may go beyond with ``SO_RCVBUFFORCE``, which is tried
    when the cap bites.
    """
    # Linux reports twice what it grants (its bookkeeping): compare the half
    halve = 2 if sys.platform.startswith("linux") else 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    got = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // halve
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if got < size and force is not None:
        with contextlib.suppress(OSError):  # EPERM: not privileged
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        got = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // halve
    return got


# ------------------------------------------------ the commands that listen


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """``-l/--listen`` and ``--tls-verify-client``, as the answering commands take them."""
    p.add_argument(
        "-l",
        "--listen",
        action="append",
        metavar="[PROTO:]ADDR[:PORT]",
        help="where to listen, repeatable, as for 'netsip listen' "
        "(default: udp+tcp 127.0.0.1:5060); port 0 picks a free one",
    )
    p.add_argument(
        "--tls-verify-client",
        type=int,
        choices=(-1, 0, 1),
        default=0,
        help="client certificates: 0 not asked, 1 required, -1 verified if sent",
    )


def server_specs(args: argparse.Namespace) -> tuple[list[ListenSpec], dict[str, Any] | None]:
    """The ``--listen`` specs (default udp+tcp 127.0.0.1:5060) and the TLS
    options of the server side, checked against each other."""
    specs: list[ListenSpec] = []
    for text in args.listen or ():
        specs.extend(parse_listen_spec(text))
    specs = specs or parse_listen_spec("127.0.0.1:5060")
    tls: dict[str, Any] | None = None
    if any(s.proto in ("tls", "wss") for s in specs):
        if not args.tls_cert:
            raise CliError("listening on tls or wss needs --tls-cert (and --tls-key)")
        tls = tls_options(args, server=True)
    elif args.tls_cert or args.tls_key or args.tls_ca:
        raise CliError("--tls-cert/--tls-key/--tls-ca given but nothing listens on tls or wss")
    return specs, tls


def make_legs(bound: Bound, tls: dict[str, Any] | None) -> list[Leg]:
    """A leg on each bound socket (TLS and WSS ones with ``tls``)."""
    return [
        make_leg(sock=sock, proto=spec.proto, tls=tls if spec.proto in ("tls", "wss") else None)
        for spec, sock in bound
    ]
