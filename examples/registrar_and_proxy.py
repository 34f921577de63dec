"""A registrar and a stateless proxy for testing (Net::SIP's test_registrar_and_proxy.pl).

    python examples/registrar_and_proxy.py 127.0.0.1:5060

Anybody can register with any address, without a password. A request for a
registered address of record is forwarded to the registered contact; any other
request is forwarded where its Request-URI (or Route) points, resolved with DNS.
Good for testing, not for production: it is an open relay.

Differences from the Perl example: the leg is an argument (Perl hard-codes
192.168.178.2:5060) and may be repeated (``udp:``, ``tcp:``, ``tls:`` prefixes; the
proxy forwards between them); ``--domain D`` (repeatable) makes it serve only D:
480 for a user of D nobody registered, 403 for relaying elsewhere; port 0 picks a
free port; each leg is printed on stderr as ``listening on PROTO:IP:PORT``, and
SIGINT/SIGTERM stop the program with exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from types import FrameType


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "legs",
        nargs="*",
        metavar="ADDR",
        default=["127.0.0.1:5060"],
        help="[proto:]ip[:port] to listen on (default 127.0.0.1:5060, UDP)",
    )
    p.add_argument("--domain", action="append", metavar="D", help="serve only D (repeatable)")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    return p.parse_args(argv)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip import Registrar, Simple  # noqa: PLC0415 (--help needs no stack)

    with Simple(legs=args.legs) as ua:
        registrar = ua.create_registrar(domains=args.domain)
        assert isinstance(registrar, Registrar)  # (no auth_* arguments: no chain)
        # with --domain, the proxy asks the registrar itself, to tell 480 from 403
        proxy = ua.create_stateless_proxy(
            lookup=registrar.query if args.domain else None, domains=args.domain
        )
        ua.create_chain([registrar, proxy])
        for leg in ua.dispatcher.get_legs():
            print(f"listening on {leg.proto}:{leg.src.addr}:{leg.src.port}", file=sys.stderr)
        signal.signal(signal.SIGTERM, _stop)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, SIGTERM
            ua.loop()
        registrar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
