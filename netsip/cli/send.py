"""``netsip send``: one request, or a raw SIP message from a file.

The request is built from the arguments (method, ``--header``,
``--body-file``) with the headers RFC 3261 8.1.1 asks for, sent through a
:class:`~netsip.transaction.TransactionClient`; provisional responses and the
final one are printed as they come. ``--file`` sends a complete message as it
is: a request as a transaction, a response just once. An INVITE answered
with a 2xx is a call: its ACK goes out at once and, unless ``--no-bye``, a
BYE ends the call; both go along the dialog's route set to the remote target
(RFC 3261 12.2.1.1, 13.2.2.4, 15.1.1). With ``--no-bye`` the command stays
:data:`NO_BYE_LINGER` seconds to ACK retransmissions of the 2xx. Exit 0 on a
2xx final response (and a 2xx to the BYE), or a response written out.
Net::SIP's nearest tool is a few lines of ``Net::SIP::Simple``.
"""

from __future__ import annotations

import argparse
import errno
import time
from pathlib import Path

from netsip.cli._client import client_session, describe, message_text, parse_target, peer
from netsip.cli._common import EXIT_FAIL, EXIT_OK, CliError, Parents, Subparsers, strerror
from netsip.packet import Packet, PacketError, Request, Response
from netsip.transaction import ClientTransaction, DialogRoute
from netsip.util import Var

__all__ = ["NO_BYE_LINGER", "add_parser", "cmd_send"]

#: Seconds ``send -m INVITE --no-bye`` stays after the ACK: a UAS retransmits
#: its 2xx after T1 and 2*T1 if our ACK got lost (RFC 3261 13.3.1.4).
NO_BYE_LINGER = 1.6


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``send`` subcommand and its options."""
    p = subparsers.add_parser(
        "send",
        parents=[parents.common, parents.client, parents.tls],
        help="send one request or a raw message",
        description="Send one request (or the SIP message in --file) and print the "
        "response(s); exit 0 on a 2xx final response.",
    )
    p.add_argument(
        "target",
        nargs="?",
        metavar="URI|DEST",
        help="the request URI; with --file the destination (default the message's URI)",
    )
    p.add_argument("-m", "--method", default="OPTIONS", help="method (default %(default)s)")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra header, repeatable; replaces a default header of that name",
    )
    p.add_argument("--body-file", metavar="FILE", help="file with the body")
    p.add_argument(
        "--content-type",
        default="application/sdp",
        help="Content-Type of --body-file (default %(default)s)",
    )
    p.add_argument(
        "-f", "--file", metavar="FILE", help="a complete SIP message to send (request or response)"
    )
    p.add_argument(
        "--no-bye",
        action="store_true",
        help="after a 2xx to an INVITE, only ACK it and leave the call up (default: hang up)",
    )


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise CliError(f"invalid --header {text!r}: use 'Name: value'")
    return name, value.strip()


def _read_file(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None


def cmd_send(args: argparse.Namespace) -> int:
    """``netsip send``: one request, or the raw message of ``--file``."""
    packet: Packet | None = None
    if args.file:
        if args.body_file or args.header or args.method != "OPTIONS":
            raise CliError("--file sends the message as it is: no --method/--header/--body-file")
        try:
            packet = Packet.new_from_string(_read_file(args.file, "--file"))
        except PacketError as exc:
            raise CliError(f"--file {args.file}: not a SIP message: {exc}") from None
        dest = args.target
        if dest is None:
            if not isinstance(packet, Request):
                raise CliError("a response from --file needs a destination")
            dest = packet.uri()
        target = parse_target(dest, args.transport)
    else:
        if not args.target:
            raise CliError("the URI to send to is missing")
        target = parse_target(args.target, args.transport)
    method = args.method.upper()
    if not method.isalpha() or method == "ACK":
        raise CliError(f"invalid --method {args.method!r}" + (" (ACK)" if method == "ACK" else ""))
    extra = [_parse_header(h) for h in args.header]
    body = _read_file(args.body_file, "--body-file") if args.body_file else b""
    if body and not any(n.lower() in ("content-type", "c") for n, _ in extra):
        extra.append(("Content-Type", args.content_type))

    result: list[ClientTransaction] = []
    with client_session(args, target) as (client, stop):
        done: Var[bool] = Var()
        if packet is not None and isinstance(packet, Response):
            errs: list[int] = []

            def written(err: int) -> None:
                errs.append(err)
                done.value = True

            client.send_raw(packet, written)
            if target.proto == "udp" and not errs:
                done.value = True  # a datagram is out once sendto returned
            client.loop.loop(args.timeout, done, stop)
            if errs and errs[0]:
                raise CliError(f"{target.uri}: {strerror(errs[0])}", EXIT_FAIL)
            if not done.value:
                raise CliError(f"{target.uri}: {strerror(errno.ETIMEDOUT)}", EXIT_FAIL)
            print(f"sent {packet.code()} {packet.msg()} to {peer(client.dst)}", flush=True)
            return EXIT_OK
        if isinstance(packet, Request):
            request = packet
        else:
            request = client.make_request(
                method, callid=client.new_callid(), cseq=1, extra=extra, body=body
            )

        def provisional(txn: ClientTransaction, resp: Response) -> None:
            if resp.code() >= 200:
                return  # the final response is printed after the loop
            ms = (time.monotonic() - txn.start) * 1000
            print(f"<<< {resp.code()} {resp.msg()} ({ms:.3f} ms)".rstrip())
            print(message_text(resp) + "\n", flush=True)

        def finished(txn: ClientTransaction) -> None:
            result.append(txn)
            done.value = True

        print(f">>> {request.method()} {request.uri()} to {peer(client.dst)}", flush=True)
        client.send(request, finished, provisional)
        client.loop.loop(None, done, stop)
        if not result:
            return EXIT_FAIL  # interrupted
        txn = result[0]
        if txn.response is None:
            raise CliError(f"{target.uri}: {strerror(txn.error)}", EXIT_FAIL)
        _print_final(txn)
        if not (txn.ok and request.method() == "INVITE"):
            return EXIT_OK if txn.ok else EXIT_FAIL
        # a call: the client ACKed the 2xx; end it (or stay to ACK retransmissions)
        print(f">>> ACK {_ack_uri(txn)}", flush=True)
        if args.no_bye:
            client.loop.loop(NO_BYE_LINGER, stop)
            return EXIT_OK
        done.value = False
        byes: list[ClientTransaction] = []

        def bye_done(bye: ClientTransaction) -> None:
            byes.append(bye)
            done.value = True

        bye = client.send_in_dialog(txn, "BYE", (request.cseq_number() or 1) + 1, bye_done)
        print(f">>> BYE {bye.request.uri()}", flush=True)
        client.loop.loop(None, done, stop)
    if not byes:
        return EXIT_FAIL  # interrupted
    if byes[0].response is None:
        raise CliError(f"BYE {bye.request.uri()}: {strerror(byes[0].error)}", EXIT_FAIL)
    _print_final(byes[0])
    return EXIT_OK if byes[0].ok else EXIT_FAIL


def _print_final(txn: ClientTransaction) -> None:
    assert txn.response is not None
    print(f"<<< {describe(txn)} from {peer(txn.source)} ({txn.rtt * 1000:.3f} ms)")
    print(message_text(txn.response), flush=True)


def _ack_uri(txn: ClientTransaction) -> str:
    assert txn.response is not None
    return DialogRoute.of_response(txn.request, txn.response).target
