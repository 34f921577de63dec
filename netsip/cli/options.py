"""``netsip options``: a SIP ping.

OPTIONS (RFC 3261 11) at ``--interval``, one Call-ID and rising CSeq numbers;
one line per response with its round-trip time, and at the end the loss and
min/avg/max like ping(8). Exit 0 if any 2xx came back. Net::SIP has no such
tool; its examples send requests the same way, through a Dispatcher.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from netsip.cli._client import client_session, describe, parse_target, peer
from netsip.cli._common import EXIT_FAIL, EXIT_OK, Parents, Subparsers, count, seconds
from netsip.transaction import ClientTransaction
from netsip.util import Var

__all__ = ["add_parser", "cmd_options"]


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``options`` subcommand and its options."""
    p = subparsers.add_parser(
        "options",
        parents=[parents.common, parents.client, parents.tls],
        help="SIP ping with OPTIONS",
        description="Send OPTIONS like ping: round-trip time per response, loss and "
        "min/avg/max at the end; exit 0 if any 2xx came back.",
    )
    p.add_argument("uri", help="target, e.g. sip:127.0.0.1:5060 or sips:host")
    p.add_argument(
        "-n",
        "--count",
        type=count,
        default=4,
        help="requests to send, 0 until Ctrl-C (default %(default)s)",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=seconds,
        default=1.0,
        metavar="S",
        help="seconds between requests (default %(default)s)",
    )


def cmd_options(args: argparse.Namespace) -> int:
    """``netsip options``: a SIP ping."""
    target = parse_target(args.uri, args.transport)
    rtts: list[float] = []
    sent = received = ok = 0
    with client_session(args, target) as (client, stop):
        assert client.dst is not None
        print(f"OPTIONS {target.uri} to {peer(client.dst)} from {client.leg.src}", flush=True)
        callid = client.new_callid()
        started = time.monotonic()
        done: Var[bool] = Var()

        def finished(seq: int, txn: ClientTransaction) -> None:
            nonlocal received, ok
            if txn.response is not None:
                received += 1
                rtts.append(txn.rtt * 1000)
                ok += txn.ok
                print(
                    f"{describe(txn)} from {peer(txn.source)}: seq={seq} "
                    f"time={txn.rtt * 1000:.3f} ms",
                    flush=True,
                )
            else:
                print(f"seq={seq}: {describe(txn)}", flush=True)
            if args.count and sent >= args.count and client.pending == 0:
                done.value = True

        def send_next(_timer: object = None) -> None:
            nonlocal sent
            sent += 1
            seq = sent
            req = client.make_request("OPTIONS", callid=callid, cseq=seq)
            client.send(req, partial(finished, seq))
            if not args.count or sent < args.count:
                client.loop.add_timer(args.interval, send_next)

        send_next()
        client.loop.loop(None, done, stop)
        elapsed = time.monotonic() - started
    loss = 100.0 * (sent - received) / sent if sent else 0.0
    print(f"--- {target.uri} OPTIONS statistics ---")
    print(
        f"{sent} requests sent, {received} responses received, {ok} ok, "
        f"{loss:.0f}% loss, time {elapsed * 1000:.0f} ms"
    )
    if rtts:
        print(
            f"rtt min/avg/max = {min(rtts):.3f}/{sum(rtts) / len(rtts):.3f}/{max(rtts):.3f} ms",
            flush=True,
        )
    return EXIT_OK if ok else EXIT_FAIL
