"""The ``netsip`` command: listen, options, send, bench, register, call, answer and proxy.

Net::SIP ships its tools as sample programs (``examples/bin/answer_machine.pl``,
``examples/bench/listen.pl`` and ``call.pl``), each a few dozen lines on
``Net::SIP::Leg``, ``Net::SIP::Dispatcher`` and the event loop. This package is
the same idea as one command with subcommands, written on netsip's public API
only (:class:`~netsip.leg.Leg`, :class:`~netsip.dispatcher.Dispatcher`,
:class:`~netsip.eventloop.EventLoop`, :class:`~netsip.packet.Request`,
:class:`~netsip.transaction.TransactionClient`, :class:`~netsip.endpoint.Endpoint`,
:class:`~netsip.simple.Simple`), one module per subcommand:

:mod:`~netsip.cli.listen`
    answers every request but ACK with one status and prints one line per
    transaction; ``--workers`` processes share the port(s).
:mod:`~netsip.cli.options`
    a SIP ping: OPTIONS at an interval, round-trip times, loss.
:mod:`~netsip.cli.send`
    one request (or a raw message from a file); prints the response(s).
:mod:`~netsip.cli.bench`
    a closed-loop load generator: transactions or whole calls per second,
    latency percentiles.
:mod:`~netsip.cli.register`
    one REGISTER with digest on an :class:`~netsip.endpoint.Endpoint`; the
    bindings and the expiry granted.
:mod:`~netsip.cli.call`
    one call on :class:`~netsip.simple.Simple`: audio from a file, DTMF,
    recording, BYE.
:mod:`~netsip.cli.answer`
    accepts calls on :class:`~netsip.simple.Simple`: echo or a file,
    recording, DTMF printed; optionally registered first.
:mod:`~netsip.cli.proxy`
    a :class:`~netsip.registrar.Registrar` and a
    :class:`~netsip.proxy.StatelessProxy`, with digest
    (:class:`~netsip.authorize.Authorize`) for ``--users``.

Shared pieces are private modules: ``_common`` (errors, exit codes, argument
types, logging, signals, TLS options), ``_client`` (the target and the UAC's
leg for options/send/bench/register/call), ``_listen_sockets`` (``--listen``
specs and binding) and ``_media`` (``--play``/``--record`` files). Each
subcommand module has ``add_parser(subparsers, parents)`` and its
``cmd_*(args) -> int``.

Exit status: 0 success; 1 the peer failed us (no 2xx, refused, unreachable,
timeout); 2 bad input (usage, unparsable URI, port in use, certificate
problems), always as one line on stderr. Logs go to stderr (``-v``/``-q``).
Signals (SIGINT, SIGTERM) reach the event loop through
``signal.set_wakeup_fd``, so the loop stops at once instead of after its next
timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from netsip import __version__
from netsip.cli import answer, bench, call, listen, options, proxy, register, send
from netsip.cli._common import EXIT_FAIL, EXIT_OK, CliError, Parents, Parser, logging_to_stderr
from netsip.cli._listen_sockets import ListenSpec, open_listen_sockets, parse_listen_spec
from netsip.cli.bench import percentile

__all__ = [
    "CliError",
    "ListenSpec",
    "build_parser",
    "main",
    "open_listen_sockets",
    "parse_listen_spec",
    "percentile",
]

# The subcommands by name, in the order of ``netsip --help``.
_COMMANDS: Final[Mapping[str, Callable[[argparse.Namespace], int]]] = {
    "listen": listen.cmd_listen,
    "options": options.cmd_options,
    "send": send.cmd_send,
    "bench": bench.cmd_bench,
    "register": register.cmd_register,
    "call": call.cmd_call,
    "answer": answer.cmd_answer,
    "proxy": proxy.cmd_proxy,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``netsip`` command (all subcommands)."""
    parents = Parents.create()
    ap = Parser(
        prog="netsip",
        description="SIP listener, ping, sender and load generator on netsip.",
        parents=[parents.common],
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    listen.add_parser(sub, parents)
    options.add_parser(sub, parents)
    send.add_parser(sub, parents)
    bench.add_parser(sub, parents)
    register.add_parser(sub, parents)
    call.add_parser(sub, parents)
    answer.add_parser(sub, parents)
    proxy.add_parser(sub, parents)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``netsip`` command; returns the exit status.

    Args:
        argv: the arguments without the program name (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    prog = "netsip"
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        prog = f"netsip {args.command}"
        with logging_to_stderr(args):
            return _COMMANDS[args.command](args)
    except CliError as exc:
        print(f"{exc.prog or prog}: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over the signal
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # stdout went away (`netsip ... | head`): no traceback, and none at exit
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_FAIL
