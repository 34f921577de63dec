"""``netsip proxy``: a registrar and a proxy (stateless, or with
``--stateful`` transaction-stateful and forking), with digest, for one domain
or several.

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

Registrations are kept in the process (``--store memory:``, the default) or
in Redis (``--store redis://HOST:PORT/DB``, :class:`~netsip._redisstore.RedisStore`,
with ``pip install netsip[redis]``), where several ``netsip proxy``
processes share them. ``--workers N`` forks N processes that listen on the
same port(s) with ``SO_REUSEPORT`` (the kernel spreads UDP flows and TCP
connections over them) and prints one summary for all; it needs a shared
store: with ``memory:`` each worker would know only the registrations it
received itself, so ``--workers`` above 1 with it is a usage error (2); so
it is with ``--stateful`` (below): the kernel picks the worker by the
sender's address, so a callee's responses would often reach another worker
than the one that holds their transaction.
When Redis is down or slow, REGISTER is answered with 500, calls to users
find nobody (480), everything else is served; the store connects again by
itself.

With ``--stateful`` the proxy is a
:class:`~netsip.stateful_proxy.StatefulProxy` instead: 100 Trying, forking
to every registered contact (``--forking parallel``, or ``serial`` by
q-value), the best final response, Timer C.

Clients that cannot be called back (a browser over WebSocket, whose Contact
is ``...invalid;transport=ws``, a phone behind NAT over TCP/TLS) are reached
over the connection they registered on (:mod:`netsip.flows`, RFC 5626,
RFC 7118 5): the registrar remembers each binding's flow, the proxy sends
requests for it over that connection and record-routes with a flow token,
so in-dialog requests (a BYE from the UDP side) find it too; a flow whose
connection closed loses its binding (480), an in-dialog request for it
gets 430. Listening on several transports (``-l udp:...`` ``-l tcp:...``,
or ``-l 127.0.0.1:5060`` for both) makes the proxy a bridge between them:
a request that changes transports is record-routed twice (RFC 5658). With
``--workers`` a flow lives in the worker that holds its connection.

Differences from Net::SIP's scripts: one command for both, challenges with
407 from the proxy (Perl's ``create_stateless_proxy`` drops
``i_am_proxy``), and several transports on one port by default.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from netsip._dialog import header_tag
from netsip._log import get_logger
from netsip._redisstore import RedisStore
from netsip.authorize import Authorize, users_from_file
from netsip.chain import ReceiveChain
from netsip.cli._common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Parents,
    SignalStop,
    Subparsers,
    positive_int,
)
from netsip.cli._listen_sockets import (
    Bound,
    add_server_arguments,
    make_legs,
    open_listen_sockets,
    server_specs,
)
from netsip.cli._workers import run_workers
from netsip.digest import ALGORITHMS
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.proxy import StatelessProxy
from netsip.registrar import MemoryStore, Registrar, RegistrationStore
from netsip.stateful_proxy import StatefulProxy
from netsip.util import Addr, Var, sip_hdrval2parts, sip_uri2domain

__all__ = ["add_parser", "cmd_proxy"]

log = get_logger(__name__)


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``proxy`` subcommand and its options."""
    p = subparsers.add_parser(
        "proxy",
        parents=[parents.common, parents.tls],
        help="registrar and proxy (stateless or --stateful), with digest (--users)",
        description="A registrar for --domain (any domain without it) and a stateless "
        "(or --stateful forking) "
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
        help="where registrations are kept: memory: (this process, the default) or "
        "redis://HOST[:PORT][/DB] (shared by several processes; needs netsip[redis])",
    )
    p.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="N processes sharing the port(s) with SO_REUSEPORT (default %(default)s); "
        "more than 1 needs a shared --store",
    )
    p.add_argument(
        "--stateful",
        action="store_true",
        help="a transaction-stateful proxy that forks to every contact of a user "
        "(RFC 3261 16) instead of the stateless one",
    )
    p.add_argument(
        "--forking",
        choices=("parallel", "serial"),
        default="parallel",
        help="with --stateful: all contacts at once, or by q-value, highest first "
        "(default %(default)s)",
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

    def summary(self, elapsed: float, bindings: int | None) -> list[str]:
        total = sum(self.requests.values())
        methods = ", ".join(f"{m} {n}" for m, n in sorted(self.requests.items())) or "-"
        users = "unknown (the store failed)" if bindings is None else str(bindings)
        return [
            f"--- netsip proxy: {total} requests, {self.responses} responses "
            f"in {elapsed:.3f} s ---",
            f"requests: {methods}; registered users: {users}",
        ]

    def to_dict(self) -> dict[str, Any]:
        """As JSON for the parent of ``--workers``."""
        return {"requests": dict(self.requests), "responses": self.responses}

    def add(self, data: dict[str, Any]) -> None:
        """Add the :meth:`to_dict` of a worker."""
        self.requests.update({str(k): int(v) for k, v in data["requests"].items()})
        self.responses += int(data["responses"])


def _store(url: str) -> RegistrationStore:
    """The store named by ``--store``.

    Raises:
        CliError: an unknown scheme, a bad Redis URL, redis-py missing (2).
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss"):
        try:
            return RedisStore(url)
        except (ImportError, ValueError) as exc:
            raise CliError(f"--store {url!r}: {exc}") from None
    raise CliError(f"--store {url!r}: unknown store (memory: or redis://HOST:PORT/DB)")


def _close_store(store: RegistrationStore) -> None:
    if isinstance(store, RedisStore):
        store.close()


def _count_users(store: RegistrationStore) -> int | None:
    """The AORs in the store for the summary; None if the store failed (logged)."""
    try:
        return len(list(store.aors()))
    except OSError as exc:
        log.warning("cannot count the registered users: %s", exc)
        return None


@dataclass(frozen=True, slots=True)
class _Config:
    """What every proxy process needs besides its sockets."""

    args: argparse.Namespace
    tls: dict[str, Any] | None
    users: dict[str, str] | None
    domains: list[str] | None


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
    if args.workers > 1 and isinstance(store, MemoryStore):
        raise CliError(
            f"--workers {args.workers} needs a shared store (--store redis://HOST:PORT/DB): "
            "with memory: each worker would know only the registrations it received"
        )
    if args.workers > 1 and getattr(args, "stateful", False):
        # SO_REUSEPORT picks the worker by the sender's address: a callee's
        # responses would often reach another worker than their transaction's
        raise CliError(
            f"--workers {args.workers} with --stateful: the transactions live in one "
            "process, the responses could reach another; run several stateful "
            "processes on their own ports behind a load balancer instead"
        )
    if isinstance(store, RedisStore):
        try:
            store.ping()
        except OSError as exc:
            log.warning("%s; REGISTER is answered with 500 until Redis answers", exc)
    cfg = _Config(args, tls, users, [d.lower() for d in args.domain] or None)
    sets = open_listen_sockets(specs, args.workers)
    started = time.monotonic()
    if args.workers == 1:
        try:
            stats = _serve(sets[0], cfg, store)
        finally:
            users_left = _count_users(store)
            _close_store(store)
        for text in stats.summary(time.monotonic() - started, users_left):
            print(text)
        return EXIT_OK
    _close_store(store)  # (each worker connects on its own)

    def serve(bound: Bound, _number: int, stop: Var[int]) -> dict[str, Any]:
        worker_store = _store(args.store)
        try:
            return _serve(bound, cfg, worker_store, stop=stop, announce=False).to_dict()
        finally:
            _close_store(worker_store)

    def ready() -> None:
        for spec, _ in sets[0]:
            log.info("listening on %s", spec)

    results, failed = run_workers(sets, serve, ready, "netsip proxy")
    stats = Stats()
    for data in results.values():
        stats.add(data)
    store = _store(args.store)
    users_left = _count_users(store)
    _close_store(store)
    for text in stats.summary(time.monotonic() - started, users_left):
        print(text)
    per = ", ".join(f"#{n} {sum(results[n]['requests'].values())}" for n in sorted(results))
    print(f"workers: {len(results)} of {args.workers} ok; requests per worker: {per}")
    return EXIT_OK if not failed else EXIT_FAIL


def _serve(
    bound: Bound,
    cfg: _Config,
    store: RegistrationStore,
    *,
    stop: Var[int] | None = None,
    announce: bool = True,
) -> Stats:
    """Serve ``bound`` until SIGINT/SIGTERM (or ``stop`` set before); close the sockets."""
    args = cfg.args
    loop = EventLoop()
    stop = stop if stop is not None else Var()
    stats = Stats()
    registrar: Registrar | None = None
    try:
        with SignalStop(loop, stop):
            legs = make_legs(bound, cfg.tls)
            disp = Dispatcher(legs, loop)
            registrar = Registrar(
                dispatcher=disp,
                min_expires=args.min_expires,
                max_expires=args.max_expires,
                domains=cfg.domains,
                store=store,
            )
            disp.set_receiver(_chain(args, disp, registrar, cfg.users, cfg.domains, stats))
            if announce:
                for leg in legs:
                    log.info("listening on %s:%s", leg.proto, leg.src)
            _tune_gc()
            if not stop.value:
                loop.loop(None, stop)
            disp.close()
    finally:
        if registrar is not None:
            registrar.close()
        for _, sock in bound:
            sock.close()  # (no-op for those a leg closed)
        loop.close()
    return stats


def _chain(  # noqa: PLR0917  (the command's parts, put together once)
    args: argparse.Namespace,
    disp: Dispatcher,
    registrar: Registrar,
    users: dict[str, str] | None,
    domains: list[str] | None,
    stats: Stats,
) -> ReceiveChain:
    """The receive chain: counting, then REGISTER, then the proxy."""
    proxy: StatelessProxy
    if getattr(args, "stateful", False):
        proxy = StatefulProxy(
            dispatcher=disp,
            lookup=registrar.lookup,
            domains=domains,
            forking=getattr(args, "forking", "parallel"),
            flows=registrar.flows,
        )
    else:
        proxy = StatelessProxy(
            dispatcher=disp, lookup=registrar.query, domains=domains, flows=registrar.flows
        )
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
        if header_tag(packet.get_header("to")) is not None:
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


def _tune_gc() -> None:
    """A long-running server's collector: what start-up made is frozen out of
    the collections, and the young generation collected less often, so that
    the transactions a stateful proxy keeps for 32 s do not make full
    collections long and frequent (pauses of 0.5 s lost calls under load)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)
