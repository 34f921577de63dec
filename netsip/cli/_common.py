"""What every ``netsip`` subcommand shares: errors and exit codes, argument
types and parent parsers, logging, signal handling, TLS options, legs.

No Net::SIP counterpart: its sample programs each parse their own options.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, NoReturn, TypeAlias

from netsip.eventloop import EV_READ, EventLoop
from netsip.leg import Leg
from netsip.util import PROTOS, NetSIPError, Var

# EXIT_FAIL: the peer did not give us what we asked for; EXIT_USAGE: bad input.
EXIT_OK: Final = 0
EXIT_FAIL: Final = 1
EXIT_USAGE: Final = 2

#: The logger of the command (its modules log to children of it); ``-v``/``-q``
#: set its level apart from the library's.
CLI_LOGGER: Final = "netsip.cli"


class CliError(Exception):
    """A failure reported as one line on stderr with an exit status.

    Args:
        message: the text, without the program name.
        status: the exit status (2 bad input, 1 the peer failed us).
    """

    def __init__(self, message: str, status: int = EXIT_USAGE, prog: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.prog = prog


def strerror(err: int) -> str:
    """The text of an errno for the user ("timeout" for ETIMEDOUT)."""
    return "timeout" if err == errno.ETIMEDOUT else os.strerror(err)


# --------------------------------------------------------------- parsing


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``netsip listen: error: ...``), status 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, EXIT_USAGE, self.prog)


# argparse has no public name for what add_subparsers returns
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def _int_at_least(minimum: int, complaint: str) -> Callable[[str], int]:
    """An argparse type: an integer not below ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{complaint}: {text!r}")
        return value

    return convert


positive_int = _int_at_least(1, "must be at least 1")
count = _int_at_least(0, "must not be negative")


def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a valid time: {text!r}")
    return value


def status_code(text: str) -> int:
    """An argparse type: a final status code."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a status code: {text!r}") from None
    # only final responses: a provisional one would leave every transaction open
    if not 200 <= value <= 699:
        raise argparse.ArgumentTypeError(f"status code must be 200..699: {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class Parents:
    """The option groups the subcommands share, as argparse parent parsers.

    Attributes:
        common: ``-v``/``-q`` (also before the subcommand).
        tls: ``--tls-cert``, ``--tls-key``, ``--tls-ca``.
        client: transport, ``--bind``, ``--timeout`` of the commands that send.
    """

    common: Parser
    tls: Parser
    client: Parser

    @classmethod
    def create(cls) -> Parents:
        common = Parser(add_help=False)
        common.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="more log output on stderr (-vv: debug logs of the library)",
        )
        common.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log errors only",
        )

        tls = Parser(add_help=False)
        grp = tls.add_argument_group("TLS")
        grp.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM)")
        grp.add_argument(
            "--tls-key", metavar="FILE", help="private key (PEM), if not in --tls-cert"
        )
        grp.add_argument(
            "--tls-ca", metavar="FILE", help="CA certificates to verify the peer (PEM)"
        )

        client = Parser(add_help=False)
        client.add_argument(
            "-t",
            "--transport",
            choices=PROTOS,
            help="transport (default: the URI's, else udp)",
        )
        client.add_argument(
            "--bind", metavar="ADDR[:PORT]", help="local address (default: the route's source)"
        )
        client.add_argument(
            "--timeout",
            type=seconds,
            default=5.0,
            metavar="S",
            help="seconds to wait for a final response (default %(default)s)",
        )
        client.add_argument(
            "--tls-no-check-hostname",
            action="store_true",
            help="do not match the server certificate against the URI's host",
        )
        return cls(common, tls, client)


# --------------------------------------------------------------- logging


@contextlib.contextmanager
def logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Log to stderr at the level of ``-v``/``-q`` while the command runs."""
    verbose = int(getattr(args, "verbose", 0) or 0)
    quiet = bool(getattr(args, "quiet", False))
    root = logging.getLogger("netsip")
    log = logging.getLogger(CLI_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("netsip: %(levelname)s: %(message)s"))
    if quiet:
        own, lib = logging.ERROR, logging.ERROR
    elif verbose >= 2:
        own, lib = logging.DEBUG, logging.DEBUG
    elif verbose == 1:
        own, lib = logging.DEBUG, logging.INFO
    else:
        own, lib = logging.INFO, logging.WARNING
    saved = (root.level, root.propagate, log.level)
    root.setLevel(lib)
    log.setLevel(own)
    root.propagate = False
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
        log.setLevel(saved[2])


# --------------------------------------------------------------- signals


class SignalStop:
    """SIGINT/SIGTERM set ``stop`` and wake the event loop.

    A Python-level handler alone runs only once ``select`` returns for some
    other reason (PEP 475 retries the call), so the C-level handler also
    writes to a socketpair that the loop watches (``signal.set_wakeup_fd``).
    Previous handlers are restored by :meth:`close`.
    """

    SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, loop: EventLoop, stop: Var[int]) -> None:
        self._loop = loop
        self._stop = stop
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._saved = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)
        self._old_wakeup = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        loop.add_fd(self._rsock, EV_READ, self._drain, name="signal-wakeup")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.value = signum

    def _drain(self, _fd: object) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._rsock.recv(512):
                pass

    def close(self) -> None:
        """Restore the signal handlers and close the socketpair."""
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        if not self._loop.closed:
            self._loop.del_fd(self._rsock)
        self._rsock.close()
        self._wsock.close()

    def __enter__(self) -> SignalStop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------- TLS


def _check_file(path: str | None, option: str) -> None:
    if path is not None and not Path(path).is_file():
        raise CliError(f"{option}: no such file: {path}")


def tls_options(args: argparse.Namespace, *, server: bool) -> dict[str, Any]:
    """The ``tls`` dict for Leg/SocketPool from the command line, with the files checked.

    Raises:
        CliError: a missing file, or a certificate/key/CA that does not load (status 2).
    """
    cert: str | None = args.tls_cert
    key: str | None = args.tls_key
    ca: str | None = args.tls_ca
    _check_file(cert, "--tls-cert")
    _check_file(key, "--tls-key")
    _check_file(ca, "--tls-ca")
    if key and not cert:
        raise CliError("--tls-key needs --tls-cert")
    # load them once here, so that a bad file is a clear error and not a
    # failure deep inside the first handshake
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert:
            ctx.load_cert_chain(cert, key)
        if ca:
            ctx.load_verify_locations(ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        what = f"{cert}, {ca}" if cert and ca else cert or ca
        raise CliError(f"cannot load TLS certificate/key/CA ({what}): {exc}") from None
    opts: dict[str, Any] = {}
    if cert:
        opts["certfile"] = cert
    if key:
        opts["keyfile"] = key
    if ca:
        opts["cafile"] = ca
    if server:
        opts["verify_client"] = args.tls_verify_client
    elif args.tls_no_check_hostname:
        opts["check_hostname"] = False
    return opts


def make_leg(**kw: Any) -> Leg:
    """A Leg; TLS not being available (yet) is an error for the user, not a traceback."""
    try:
        return Leg(**kw)
    except NotImplementedError as exc:
        raise CliError(f"TLS is not available: {exc}") from None
    except (ssl.SSLError, ValueError, NetSIPError) as exc:
        raise CliError(f"cannot set up the leg: {exc}") from None
