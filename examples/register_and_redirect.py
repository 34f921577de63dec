"""A registrar redirecting calls to the registered contacts (Net::SIP's register_and_redirect.pl).

    python examples/register_and_redirect.py 127.0.0.1:5060 --user looser:secret

Anybody with a password may register (for any domain); a request for a registered
address of record is answered with ``302 Moved Temporarily`` and the contacts, one for
nobody with ``404 Not Found``. The receive chain is Perl's: ``[Authorize, Redirect,
Registrar]``, so every request but ACK and CANCEL needs the password (401).

Differences from the Perl example: the users come from ``--user USER:PASSWORD``
(repeatable; Perl's single ``looser:secret`` is the default) and the realm from
``--realm``; port 0 picks a free port; each leg is printed on stderr as ``listening on
PROTO:IP:PORT``, and SIGINT/SIGTERM stop the program with exit status 0.
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
        "addr", nargs="?", default="127.0.0.1:5060", help="[proto:]ip[:port] to listen on"
    )
    p.add_argument(
        "--user",
        action="append",
        metavar="USER:PASSWORD",
        help="a user who may register (repeatable; default looser:secret)",
    )
    p.add_argument("--realm", default="net-sip.example.com", help="default %(default)s")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    return p.parse_args(argv)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    users: dict[str, str] = {}
    for entry in args.user or ["looser:secret"]:
        user, sep, password = entry.partition(":")
        if not sep or not user:
            print(f"--user {entry!r}: expected USER:PASSWORD", file=sys.stderr)
            return 2
        users[user] = password

    from netsip import (  # noqa: PLC0415 (--help needs no stack)
        Authorize,
        Dispatcher,
        EventLoop,
        ReceiveChain,
        Redirect,
        Registrar,
        Simple,
    )

    loop = EventLoop()
    # Simple only makes the leg from "[proto:]ip[:port]" here
    with Simple(leg=args.addr, loop=loop) as server:
        disp: Dispatcher = server.dispatcher
        auth = Authorize(dispatcher=disp, realm=args.realm, user2pass=users)
        # accepts registrations for every domain
        registrar = Registrar(dispatcher=disp)
        # answers requests with the contacts the registrar knows
        redirect = Redirect(dispatcher=disp, registrar=registrar)
        disp.set_receiver(ReceiveChain([auth, redirect, registrar]))
        for leg in disp.get_legs():
            print(f"listening on {leg.proto}:{leg.src.addr}:{leg.src.port}", file=sys.stderr)
        signal.signal(signal.SIGTERM, _stop)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, SIGTERM
            loop.loop()
        registrar.close()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
