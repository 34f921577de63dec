"""``netsip proxy``: a registrar and a stateless proxy, with digest, for
one domain or several.

What Net::SIP's ``examples/test_registrar_and_proxy.pl`` and
``examples/bin/stateless_proxy.pl`` do, as one command: REGISTER is handled
by a :class:`~netsip.registrar.Registrar` (for ``--domain`` D, repeatable;
any domain without it), every other request is forwarded by a
:class:`~netsip.proxy.StatelessProxy` that finds registered users through the
registrar, across all the ``--listen`` legs (UDP, TCP, TLS, IPv4 and IPv6).
With ``--users FILE`` (lines ``user:password``, ``#`` comments) an
:class:`~netsip.authorize.Authorize` challenges REGISTER with 401, and with
407 each request that starts a dialog from one of our domains (From in D, no
To tag); requests from elsewhere to our users, and requests inside dialogs,
pass unchallenged. The chain::

    REGISTER:  [Authorize (401)] -> Registrar
    others:    [Authorize (407), initial requests from D] -> StatelessProxy

``-v`` prints one line per request received; SIGINT/SIGTERM stop it with a
summary (requests per method, responses forwarded, bindings held). Exit 0
then; 2 for bad arguments (a port in use, an unreadable users file, an
unknown store).

Differences from Net::SIP's scripts: one command for both, challenges with
407 from the proxy (Perl's ``create_stateless_proxy`` drops
``i_am_proxy``), and several transports on one port by default.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field

from netsip._log import get_logger
from netsip.authorize import Authorize, users_from_file
from netsip.chain import ReceiveChain
from netsip.cli._common import (
    EXIT_OK,
    CliError,
    Parents,
    SignalStop,
    Subparsers,
)
from netsip.cli._listen_sockets import (
    add_server_arguments,
    make_legs,
    open_listen_sockets,
    server_specs,
)
from netsip.digest import ALGORITHMS
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.proxy import StatelessProxy
from netsip.registrar import MemoryStore, Registrar
from netsip.util import Addr, Var, sip_hdrval2parts, sip_uri2domain

__all__ = ["add_parser", "cmd_proxy"]

log = get_logger(__name__)


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``proxy`` subcommand and its options."""
    p = subparsers.add_parser(
        "proxy",
        parents=[parents.common, parents.tls],
        help="registrar and stateless proxy, with digest (--users)",
        description="A registrar for --domain (any domain without it) and a stateless "
        "proxy that reaches the registered users; with --users, digest: 401 for "
        "REGISTER, 407 for calls from our domains. A summary on Ctrl-C/SIGTERM.",
    )
    add_server_arguments(p)
    p.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="D",
        help="a domain served (repeatable; default: any)",
    )
    p.add_argument(
        "--users",
        metavar="FILE",
        help="digest credentials, lines 'user:password' ('#' comments)",
    )
    p.add_argument("--realm", help="the digest realm (default: the first --domain, else netsip)")
    p.add_argument(
        "--algorithms",
        default="SHA-256,MD5",
        metavar="A,B",
        help="digest algorithms offered, preferred first (default %(default)s; "
        "clients that answer only the first challenge, such as sipp, need MD5)",
    )
    p.add_argument(
        "--store",
        default="memory:",
        metavar="URL",
        help="where registrations are kept (default %(default)s; only memory: so far)",
    )
    p.add_argument("--min-expires", type=int, default=30, metavar="S", help="default %(default)s")
    p.add_argument(
        "--max-expires", type=int, default=86400, metavar="S", help="default %(default)s"
    )


@dataclass(slots=True)
class Stats:
    """What the proxy saw, for ``-v`` lines and the summary."""

    requests: Counter[str] = field(default_factory=Counter)
    responses: int = 0

    def summary(self, elapsed: float, bindings: int) -> list[str]:
        total = sum(self.requests.values())
        methods = ", ".join(f"{m} {n}" for m, n in sorted(self.requests.items())) or "-"
        return [
            f"--- netsip proxy: {total} requests, {self.responses} responses "
            f"in {elapsed:.3f} s ---",
            f"requests: {methods}; registered users: {bindings}",
        ]


def _store(url: str) -> MemoryStore:
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        return MemoryStore()
    raise CliError(f"--store {url!r}: unknown store (only memory: so far)")


def cmd_proxy(args: argparse.Namespace) -> int:
    """``netsip proxy``."""
    specs, tls = server_specs(args)
    if not 0 < args.min_expires <= args.max_expires:
        raise CliError("need 0 < --min-expires <= --max-expires")
    users: dict[str, str] | None = None
    if args.users:
        try:
            users = users_from_file(args.users)
        except (OSError, ValueError) as exc:
            raise CliError(
                f"--users {args.users}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in algorithms if a.upper() not in ALGORITHMS]
    if unknown or not algorithms:
        known = ", ".join(a.name for a in ALGORITHMS.values())
        raise CliError(f"--algorithms {args.algorithms}: unknown {unknown} (known: {known})")
    store = _store(args.store)
    domains = [d.lower() for d in args.domain] or None

    (bound,) = open_listen_sockets(specs)
    loop = EventLoop()
    stop: Var[int] = Var()
    stats = Stats()
    started = time.monotonic()
    registrar: Registrar | None = None
    try:
        with SignalStop(loop, stop):
            legs = make_legs(bound, tls)
            disp = Dispatcher(legs, loop)
            registrar = Registrar(
                dispatcher=disp,
                min_expires=args.min_expires,
                max_expires=args.max_expires,
                domains=domains,
                store=store,
            )
            disp.set_receiver(_chain(args, disp, registrar, users, domains, stats))
            for leg in legs:
                log.info("listening on %s:%s", leg.proto, leg.src)
            loop.loop(None, stop)
            disp.close()
    finally:
        if registrar is not None:
            registrar.close()
        for _, sock in bound:
            sock.close()  # (no-op for those a leg closed)
        loop.close()
    bindings = len(list(store.aors()))
    for text in stats.summary(time.monotonic() - started, bindings):
        print(text)
    return EXIT_OK


def _chain(  # noqa: PLR0917  (the command's parts, put together once)
    args: argparse.Namespace,
    disp: Dispatcher,
    registrar: Registrar,
    users: dict[str, str] | None,
    domains: list[str] | None,
    stats: Stats,
) -> ReceiveChain:
    """The receive chain: counting, then REGISTER, then the proxy."""
    proxy = StatelessProxy(dispatcher=disp, lookup=registrar.query, domains=domains)
    verbose = bool(getattr(args, "verbose", 0))

    def count(packet: Packet, _leg: Leg, from_: Addr) -> None:
        if isinstance(packet, Request):
            method = packet.method()
            stats.requests[method] += 1
            if verbose:
                print(
                    f"{method} {packet.uri()} from {from_.proto}:{from_.addr}:{from_.port}",
                    flush=True,
                )
        else:
            stats.responses += 1

    if users is None:
        return ReceiveChain([count, ReceiveChain([registrar], methods=["REGISTER"]), proxy])
    realm = args.realm or (domains[0] if domains else "netsip")
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    as_registrar = Authorize(dispatcher=disp, realm=realm, user2pass=users, algorithms=algorithms)
    as_proxy = Authorize(
        dispatcher=disp, realm=realm, user2pass=users, algorithms=algorithms, i_am_proxy=True
    )

    def from_ours(packet: Packet, _leg: Leg, _from: Addr) -> bool:
        """An initial request (no To tag) from one of our domains: to be challenged."""
        if not isinstance(packet, Request) or packet.method() in ("ACK", "CANCEL"):
            return False
        if "tag=" in (packet.get_header("to") or ""):
            return False  # inside a dialog: its initial request was checked
        if domains is None:
            return True
        uri, _params = sip_hdrval2parts("from", packet.get_header("from") or "")
        domain = sip_uri2domain(uri)
        if domain is None:
            return False
        return domain in domains or domain.rpartition(":")[0] in domains

    return ReceiveChain(
        [
            count,
            ReceiveChain([as_registrar, registrar], methods=["REGISTER"]),
            ReceiveChain([as_proxy], filter=from_ours),
            proxy,
        ]
    )
