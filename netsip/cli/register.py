"""``netsip register``: one REGISTER (RFC 3261 10), with digest, and its outcome.

The registration runs in an :class:`~netsip.endpoint.Endpoint` on one leg
towards the registrar: the endpoint answers the registrar's 401/407 with the
credentials of ``--user``/``--password`` (RFC 3261 22.2, :mod:`netsip.digest`)
and reads the expiry the registrar granted from the 2xx (RFC 3261 10.2.4).
The command prints one line per response, the bindings the registrar
reports and the expiry granted, and exits 0; a final status other than
2xx, a wrong password (a second 401/407) or no answer within ``--timeout``
is one line on stderr and exit 1.

The address of record defaults to ``sip:USER@`` the registrar's host; the
Contact to the command's own leg (``sip:USER@ip:port``), which lives only as
long as the command: ``--contact`` binds another address (a ``netsip
answer`` that runs elsewhere, a phone). ``--unregister`` removes the
binding of ``--contact`` (``Expires: 0``, RFC 3261 10.2.2), or without
``--contact`` every binding of the address of record (``Contact: *``).

Net::SIP's counterpart is ``Net::SIP::Simple->register`` in a few lines of
Perl (``examples/bench/listen.pl -R``). Differences: the registration is not
refreshed (the command registers once and exits); Perl's ``register`` keeps
refreshing it while its loop runs.
"""

from __future__ import annotations

import argparse
import errno
import time
from typing import Final

from netsip.cli._client import ClientLeg, Target, leg_session, parse_target, peer
from netsip.cli._common import EXIT_FAIL, EXIT_OK, CliError, Parents, Subparsers, count, strerror
from netsip.endpoint import MAX_EXPIRES, Context, Endpoint
from netsip.leg import Leg
from netsip.packet import Packet, Response
from netsip.util import Addr, Var

__all__ = ["DEFAULT_EXPIRES", "add_parser", "cmd_register", "default_aor"]

#: The expiry asked for without ``--expires`` (RFC 3261 10.2.1.1 suggests 3600).
DEFAULT_EXPIRES: Final = 3600


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``register`` subcommand and its options."""
    p = subparsers.add_parser(
        "register",
        parents=[parents.common, parents.client, parents.tls],
        help="register at a registrar (digest)",
        description="Send a REGISTER (answering digest challenges) and print the expiry "
        "granted; exit 0 on a 2xx, 1 with the final status otherwise.",
    )
    p.add_argument("registrar", metavar="REGISTRAR", help="the registrar, e.g. sip:example.org")
    add_credentials(p, required=True)
    p.add_argument(
        "--from",
        dest="aor",
        metavar="AOR",
        help="the address of record (default: sip:USER@ the registrar's host)",
    )
    p.add_argument(
        "--contact",
        metavar="URI",
        help="the address to bind (default: this command's leg, sip:USER@ip:port)",
    )
    p.add_argument(
        "--expires",
        type=count,
        default=DEFAULT_EXPIRES,
        metavar="S",
        help="expiry asked for, in seconds (default %(default)s)",
    )
    p.add_argument(
        "--unregister",
        action="store_true",
        help="remove the binding of --contact, or without --contact all bindings (Contact: *)",
    )


def add_credentials(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--user`` and ``--password`` (digest credentials, RFC 3261 22)."""
    p.add_argument("-u", "--user", required=required, help="user name (digest and the AOR)")
    p.add_argument("-p", "--password", help="password for digest authentication")


def default_aor(user: str, target: Target) -> str:
    """``sip:USER@host`` of the registrar's URI (``sips:`` over TLS)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    scheme = "sips" if target.proto == "tls" else "sip"
    return f"{scheme}:{user}@{host}"


def sip_uri_arg(text: str, option: str) -> str:
    """A SIP URI from the command line (``sip:u@h``, ``<sip:u@h>``, ``"Name" <sip:u@h>``)
    as a name-addr.

    Raises:
        CliError: not a ``sip:``/``sips:`` URI (status 2).
    """
    value = text.strip()
    uri = value
    if value.endswith(">") and "<" in value:
        uri = value[value.rindex("<") + 1 : -1]
    scheme, sep, rest = uri.partition(":")
    if (
        not sep
        or scheme.lower() not in ("sip", "sips")
        or not rest
        or any(c.isspace() or c in "<>" for c in uri)
    ):
        raise CliError(f"invalid {option} {text!r}: use a SIP URI (sip:user@host)")
    return value if uri is not value else f"<{value}>"


def leg_contact(leg: Leg, user: str) -> str:
    """``USER`` at the leg's own URI (its scheme and transport kept)."""
    scheme, _, rest = leg.contact.partition(":")
    return f"<{scheme}:{user}@{rest}>"


def cmd_register(args: argparse.Namespace) -> int:
    """``netsip register``."""
    target = parse_target(args.registrar, args.transport)
    user: str = args.user
    if not user or any(c in user for c in "@:<>; \t"):
        raise CliError(f"invalid --user {user!r}")
    if args.expires > MAX_EXPIRES:
        raise CliError(f"--expires {args.expires}: at most {MAX_EXPIRES} (RFC 3261 20.19)")
    aor = sip_uri_arg(args.aor, "--from") if args.aor else f"<{default_aor(user, target)}>"
    contact = sip_uri_arg(args.contact, "--contact") if args.contact else None
    expires = 0 if args.unregister else args.expires
    if args.unregister and contact is None:
        contact = "*"  # every binding of the AOR: only with Expires 0 (RFC 3261 10.2.2)
    auth = (user, args.password) if args.password is not None else None

    outcome: list[tuple[int, int, Packet | None]] = []
    with leg_session(args, target, ClientLeg) as (client, stop):
        endpoint = Endpoint(client.dispatcher, timeout=args.timeout)
        try:
            contact = contact or leg_contact(client.leg, user)
            receive = endpoint.receive

            def trace(packet: Packet, leg: Leg, from_: Addr) -> None:
                if isinstance(packet, Response) and packet.method() == "REGISTER":
                    ms = (time.monotonic() - started) * 1000
                    print(f"<<< {packet.code()} {packet.msg()} ({ms:.3f} ms)".rstrip(), flush=True)
                receive(packet, leg, from_)

            client.dispatcher.set_receiver(trace)
            done: Var[bool] = Var()

            def finished(
                _ep: Endpoint,
                _ctx: Context,
                err: int,
                code: int,
                packet: Packet | None,
                _leg: Leg | None,
                _from: Addr | None,
            ) -> None:
                outcome.append((err, code, packet))
                done.value = True

            what = "unregister" if args.unregister else f"expires {expires}"
            print(
                f">>> REGISTER {target.uri} for {aor} contact {contact} ({what}) "
                f"to {peer(client.dst)} from {peer(client.leg.src)}",
                flush=True,
            )
            started = time.monotonic()
            ctx = endpoint.register(
                registrar=target.uri,
                from_=aor,
                contact=contact,
                expires=expires,
                auth=auth,
                callback=finished,
                refresh=False,
                leg=client.leg,
                dst_addr=client.dst,
            )
            client.loop.loop(None, done, stop)
        finally:
            endpoint.close()
    if not outcome:
        return EXIT_FAIL  # interrupted
    err, code, packet = outcome[0]
    if isinstance(packet, Response) and 200 <= code < 300 and not err:
        # the registrar lists every current binding of the AOR (RFC 3261 10.3 step 8)
        for binding in packet.get_headers("contact"):
            print(f"binding {binding}")
        if args.unregister:
            print("unregistered", flush=True)
        else:
            print(f"registered: expires {ctx.expires}", flush=True)
        return EXIT_OK
    if isinstance(packet, Response):
        status = f"{code} {packet.msg()}".rstrip()
        if err == errno.EPERM:
            status += " (credentials rejected)" if auth else " (no --password given)"
    else:
        status = strerror(err or errno.ETIMEDOUT)
    raise CliError(f"REGISTER {target.uri}: {status}", EXIT_FAIL)
