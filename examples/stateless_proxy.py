"""A stateless proxy forwarding between several legs (Net::SIP's bin/stateless_proxy.pl).

    python examples/stateless_proxy.py \\
        --leg 192.168.0.2:5060 --domain example.com -r -X 0=sip-gateway.example.com \\
        --leg 192.168.178.3:5060 --proxy 192.168.178.3

Listens on each ``--leg`` and forwards SIP packets between the legs. The options after
a ``--leg`` (and, as in Perl, those before the first one) belong to that leg:

- ``-D/--domain D`` (repeatable): requests for D (``*.D``, ``*`` work too) leave on
  this leg; requests for a domain no leg has go out on the legs without domains;
- ``-r/--registrar``: a registrar for the leg's domains (any without ``-D``) answers
  REGISTER arriving on this leg, and requests for its users go to them on this leg;
- ``-P/--proxy host[:port]``: requests leaving on this leg go through that proxy;
- ``-X/--prefix DD=domain``: a request coming in on this leg for ``DDxxxx@any``
  goes to ``xxxx@domain`` (the longest prefix wins).

In the example: calls for example.com stay on 192.168.0.2 (with a registrar for
example.com there), everything else goes through 192.168.178.3; a call to
``0123@example.com`` goes to ``123@sip-gateway.example.com``.

How: a receive chain ``[router, StatelessProxy]``. The router hands REGISTER to the
incoming leg's registrar, rewrites prefixes, and picks the outgoing leg by domain and
registration; it names that leg to the proxy with a ``Route`` to the leg (which the
proxy removes again, RFC 3261 16.4, and takes as the outgoing leg), followed by a
``Route`` to the leg's ``--proxy``, if any. Responses go back by their Via headers.
A request that changes legs gets two Record-Routes and its Contact rewritten (the
proxy's default), so the rest of the dialog comes through the proxy too.

Differences from the Perl example, and what is not ported:

- not ported: ``--nathelper`` (netsip has the NAT hook, ``StatelessProxy(nathelper=)``,
  but no media relay yet) and ``--rdump`` (the registrations are not saved);
- ``-d`` logs at DEBUG level (no levels); each leg is printed on stderr as
  ``listening on PROTO:IP:PORT`` (port 0 picks a free one; ``tcp:``/``tls:``
  prefixes make other transports); SIGINT/SIGTERM exit with status 0;
- prefixes are rewritten in requests that start a dialog only (no To tag): Perl
  also rewrites in-dialog requests, whose URI is a contact, not a number;
- a request for a domain no leg may take gets ``404 No Route`` (Perl drops it);
- Contacts are rewritten by the proxy's own tokens (Perl's script keeps a cache
  of random names instead);
- a request that is to leave on the leg it came in on is not pinned to that leg
  (the proxy takes a Route naming the incoming leg as its own and drops it): the
  dispatcher picks a leg that can reach the next hop, which for legs in distinct
  networks is that leg; on one host (loopback) it may be another.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the stack is imported after --help
    from netsip import Leg, Packet, Registrar
    from netsip.util import Addr

log = logging.getLogger("stateless_proxy")


@dataclass(slots=True)
class LegOptions:
    """What the command line says about one leg."""

    addr: str
    domains: list[str] = field(default_factory=list)
    registrar: bool = False
    proxy: str | None = None
    prefix: dict[str, str] = field(default_factory=dict)


def _apply(leg: LegOptions, pending: dict[str, Any]) -> None:
    """Give ``leg`` the options collected in ``pending``."""
    leg.domains += pending.get("domains", [])
    leg.prefix.update(pending.get("prefix", {}))
    leg.registrar = leg.registrar or pending.get("registrar", False)
    leg.proxy = pending.get("proxy", leg.proxy)


class _LegAction(argparse.Action):
    """``--leg``: the options since the previous ``--leg`` were that one's (Perl's loop).

    Options before the first ``--leg`` stay pending, so they go to the first leg too.
    """

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None
    ) -> None:
        if ns.legs:
            _apply(ns.legs[-1], ns.pending)
            ns.pending = {}
        ns.legs.append(LegOptions(str(value)))


class _PendingAction(argparse.Action):
    """A leg option: kept until the next ``--leg`` (or the end) gives it to its leg."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None
    ) -> None:
        pending: dict[str, Any] = ns.pending
        if self.dest == "domains":
            pending.setdefault("domains", []).append(str(value).lower())
        elif self.dest == "registrar":
            pending["registrar"] = True
        elif self.dest == "proxy":
            pending["proxy"] = str(value)
        else:
            m = re.fullmatch(r"(\d+)=(\w[\w\-.]+)", str(value))
            if m is None:
                parser.error(f"bad prefix {value!r} (expected DIGITS=domain)")
            pending.setdefault("prefix", {})[m.group(1)] = m.group(2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Leg options belong to the --leg they follow.",
    )
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    p.add_argument(
        "-L", "--leg", action=_LegAction, metavar="[PROTO:]IP[:PORT]", help="a leg (repeatable)"
    )
    p.add_argument(
        "-D", "--domain", dest="domains", action=_PendingAction, help="a domain on the leg's side"
    )
    p.add_argument(
        "-r", "--registrar", action=_PendingAction, nargs=0, help="a registrar on this leg"
    )
    p.add_argument("-P", "--proxy", action=_PendingAction, metavar="HOST[:PORT]", help="next hop")
    p.add_argument(
        "-X",
        "--prefix",
        action=_PendingAction,
        metavar="DD=DOMAIN",
        help="rewrite DDxxx@... to xxx@DOMAIN for requests coming in on this leg",
    )
    p.set_defaults(legs=[], pending={})
    args = p.parse_args(argv)
    if not args.legs:
        p.error("no --leg to listen on")
    _apply(args.legs[-1], args.pending)  # Perl's final check_leg call
    return args


def rewrite_prefix(user: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    """``(user, domain)`` for a user that starts with one of ``prefixes`` (longest first)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if user.startswith(prefix) and len(user) > len(prefix):
            return user[len(prefix) :], prefixes[prefix]
    return None


class Router:
    """The first link of the chain: registrars per leg, prefixes, and the outgoing leg.

    Perl's script subclasses the proxy (``myProxy``, ``myRegistrar``); here the same
    decisions are made in front of an unchanged :class:`~netsip.proxy.StatelessProxy`.
    """

    def __init__(
        self,
        options: dict[Leg, LegOptions],
        registrars: dict[Leg, Registrar],
        answer: Any,
    ) -> None:
        self.options = options
        self.registrars = registrars
        self.answer = answer  # (request, leg, from_, code, reason) -> None
        self.domain2leg: dict[str, Leg] = {
            domain: leg for leg, opt in options.items() for domain in opt.domains
        }

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> object:
        """REGISTER to the leg's registrar; other requests routed. True if handled here."""
        from netsip import Request  # noqa: PLC0415

        if not isinstance(packet, Request):
            return None
        if packet.method() == "REGISTER":
            registrar = self.registrars.get(leg)
            return registrar.receive(packet, leg, from_) if registrar is not None else None
        return self._route(packet, leg, from_)

    def _leg_for(self, domain: str) -> list[Leg]:
        """The legs a request for ``domain`` may leave on (Perl's domain2leg search)."""
        if not self.domain2leg:
            return list(self.options)
        host = domain.rpartition(":")[0] if domain.count(":") == 1 else domain
        leg = self.domain2leg.get(host)
        dom = host
        while leg is None and "." in dom:
            dom = dom.split(".", 1)[1]
            leg = self.domain2leg.get("*." + dom)
        leg = leg or self.domain2leg.get("*")
        if leg is not None:
            return [leg]
        mapped = set(self.domain2leg.values())
        return [x for x in self.options if x not in mapped]

    def _route(self, req: Any, leg: Leg, from_: Addr) -> object:
        from netsip.util import sip_uri2parts  # noqa: PLC0415

        parts = sip_uri2parts(req.uri())
        if parts is None:
            return None  # the proxy answers a URI it cannot use
        domain, user, scheme, params, _data = parts
        prefixes = self.options[leg].prefix
        initial = "tag=" not in (req.get_header("to") or "")
        if prefixes and user and initial:
            rewritten = rewrite_prefix(user, prefixes)
            if rewritten is not None:
                user, domain = rewritten
                extra = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
                log.debug("prefix: %s -> %s:%s@%s%s", req.uri(), scheme, user, domain, extra)
                req.set_uri(f"{scheme}:{user}@{domain}{extra}")
        if req.get_headers("route"):
            return None  # routed already: the proxy's loose routing does it
        legs = self._leg_for(domain)
        if not legs:
            self.answer(req, leg, from_, 404, "No Route")
            return True
        for out in legs:
            registrar = self.registrars.get(out)
            contacts = registrar.query(f"{scheme}:{user}@{domain}") if registrar and user else []
            if contacts:
                req.set_uri(contacts[0])
                legs = [out]
                break
        if len(legs) == 1:
            out = legs[0]
            routes = [f"<{out.contact};lr>"]  # the proxy takes it as the outgoing leg
            proxy = self.options[out].proxy
            if proxy:
                routes.append(f"<sip:{proxy};lr>")
            req.set_header("route", routes)
        return None


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _answer(req: Any, leg: Leg, from_: Addr, code: int, reason: str) -> None:
    log.info("%s %s answered %d %s", req.method(), req.uri(), code, reason)
    if req.method() != "ACK":
        leg.deliver(req.create_response(code, reason), from_)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip import Registrar, Simple, StatelessProxy  # noqa: PLC0415

    legopts: list[LegOptions] = args.legs
    try:
        ua = Simple(legs=[opt.addr for opt in legopts])
    except (OSError, ValueError) as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 2
    with ua:
        disp = ua.dispatcher
        options = dict(zip(disp.get_legs(), legopts, strict=True))
        registrars = {
            leg: Registrar(dispatcher=disp, domains=opt.domains or None)
            for leg, opt in options.items()
            if opt.registrar
        }
        proxy = StatelessProxy(dispatcher=disp)
        ua.create_chain([Router(options, registrars, _answer), proxy])
        for leg, opt in options.items():
            print(f"listening on {leg.proto}:{leg.src.addr}:{leg.src.port}", file=sys.stderr)
            log.debug("leg %s: %s", leg.dump(), opt)
        signal.signal(signal.SIGTERM, _stop)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, SIGTERM
            ua.loop()
        for registrar in registrars.values():
            registrar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
