"""The ``netsip`` command: listen, options, send and bench, built on Leg and Dispatcher.

Net::SIP ships its tools as sample programs (``examples/bin/answer_machine.pl``,
``examples/bench/listen.pl`` and ``call.pl``), each a few dozen lines on
``Net::SIP::Leg``, ``Net::SIP::Dispatcher`` and the event loop. This module is
the same idea as one command with subcommands, written on netsip's public API
only (:class:`~netsip.leg.Leg`, :class:`~netsip.dispatcher.Dispatcher`,
:class:`~netsip.eventloop.EventLoop`, :class:`~netsip.packet.Request`):

``listen``
    answers every request but ACK with one status (RFC 3261 17.1.1.3: an ACK
    is never answered), prints one line per transaction (time, transport,
    peer, method, Call-ID, status) to stdout and a summary on SIGINT/SIGTERM,
    then exits 0 after closing every socket. ``--workers N`` forks N processes,
    each with its own ``SO_REUSEPORT`` sockets on the same port(s), so the
    kernel spreads UDP flows and TCP connections over them; the parent
    forwards SIGTERM, waits, and prints the aggregated summary. ``--work-us N``
    burns N microseconds of CPU per answered request, a stand-in for an
    application's work, so that load tests can show what ``--workers`` gains
    once the responder, not the load generator, is the bottleneck.
``options``
    a SIP ping: OPTIONS at an interval, the round-trip time per response, loss
    and min/avg/max at the end; exit 0 if any 2xx came back.
``send``
    one request (or a raw message from a file); prints the response(s).
``bench``
    a closed-loop load generator: ``--concurrency`` transactions (or whole
    INVITE/ACK/BYE calls) in flight, ``--count`` or ``--duration``; prints
    transactions/s, failures and latency percentiles, or one JSON object.

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
import dataclasses
import errno
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final, NoReturn

from netsip import __version__
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EV_READ, EventLoop, TimerLike
from netsip.leg import Leg
from netsip.packet import REASON_PHRASES, Packet, PacketError, Request, Response
from netsip.util import (
    DEFAULT_PORTS,
    PROTOS,
    Addr,
    NetSIPError,
    Proto,
    Var,
    bind_socket,
    hostname2ip,
    ip_string2parts,
    laddr4dst,
    sip_uri2sockinfo,
)

__all__ = ["CliError", "ListenSpec", "build_parser", "main", "parse_listen_spec"]

log = logging.getLogger(__name__)

USER_AGENT: Final = f"netsip/{__version__}"

# EXIT_FAIL: the peer did not give us what we asked for; EXIT_USAGE: bad input.
EXIT_OK: Final = 0
EXIT_FAIL: Final = 1
EXIT_USAGE: Final = 2

# How often binding a set of port-0 sockets is retried when another program
# takes the chosen port for the second transport between the two binds.
_BIND_ATTEMPTS: Final = 20
# Lines to stdout are batched (when stdout is no terminal) and written this often.
_FLUSH_INTERVAL: Final = 0.2
# Writes of at most PIPE_BUF bytes to a pipe are atomic (POSIX), so lines of
# several --workers processes sharing stdout never interleave mid-line.
_ATOMIC_WRITE: Final = 4096
# 2xx responses to INVITE whose ACK we remember, to ACK their retransmissions
# (RFC 3261 13.2.2.4).
_ACK_MEMORY: Final = 4096
# Seconds `bench --method INVITE` keeps running after its last call.
_LINGER: Final = 0.3


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


def _strerror(err: int) -> str:
    return "timeout" if err == errno.ETIMEDOUT else os.strerror(err)


# --------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``netsip listen: error: ...``), status 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, EXIT_USAGE, self.prog)


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


_positive_int = _int_at_least(1, "must be at least 1")
_count = _int_at_least(0, "must not be negative")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a valid time: {text!r}")
    return value


def _status_code(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a status code: {text!r}") from None
    # only final responses: a provisional one would leave every transaction open
    if not 200 <= value <= 699:
        raise argparse.ArgumentTypeError(f"status code must be 200..699: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``netsip`` command (all subcommands)."""
    common = _Parser(add_help=False)
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

    tls = _Parser(add_help=False)
    grp = tls.add_argument_group("TLS")
    grp.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM)")
    grp.add_argument("--tls-key", metavar="FILE", help="private key (PEM), if not in --tls-cert")
    grp.add_argument("--tls-ca", metavar="FILE", help="CA certificates to verify the peer (PEM)")

    client = _Parser(add_help=False)
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
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for a final response (default %(default)s)",
    )
    client.add_argument(
        "--tls-no-check-hostname",
        action="store_true",
        help="do not match the server certificate against the URI's host",
    )

    ap = _Parser(
        prog="netsip",
        description="SIP listener, ping, sender and load generator on netsip.",
        parents=[common],
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "listen",
        parents=[common, tls],
        help="answer every request with a fixed status",
        description="Answer every SIP request but ACK with --code and print one line per "
        "transaction; a summary on Ctrl-C/SIGTERM.",
    )
    p.add_argument(
        "-l",
        "--listen",
        action="append",
        metavar="[PROTO:]ADDR[:PORT]",
        help="where to listen, repeatable: udp:127.0.0.1:5060, tcp:[::1]:5060, tls:0.0.0.0:5061;"
        " without PROTO udp and tcp on one port; port 0 picks a free one"
        " (default: udp+tcp 127.0.0.1:5060, and tls 127.0.0.1:5061 with --tls-cert)",
    )
    p.add_argument(
        "-c",
        "--code",
        type=_status_code,
        default=200,
        help="status of the responses (default %(default)s)",
    )
    p.add_argument("--reason", help="reason phrase (default: the standard one for --code)")
    p.add_argument(
        "-w",
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="N processes sharing the port(s) with SO_REUSEPORT (default %(default)s)",
    )
    p.add_argument(
        "--work-us",
        type=_count,
        default=0,
        metavar="N",
        help="spend N microseconds of CPU on each request before answering, to simulate "
        "application work in load tests, e.g. of --workers (default %(default)s: none)",
    )
    p.add_argument(
        "--tls-verify-client",
        type=int,
        choices=(-1, 0, 1),
        default=0,
        help="client certificates: 0 not asked, 1 required, -1 verified if sent",
    )
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="no line per transaction, only the summary",
    )

    p = sub.add_parser(
        "options",
        parents=[common, client, tls],
        help="SIP ping with OPTIONS",
        description="Send OPTIONS like ping: round-trip time per response, loss and "
        "min/avg/max at the end; exit 0 if any 2xx came back.",
    )
    p.add_argument("uri", help="target, e.g. sip:127.0.0.1:5060 or sips:host")
    p.add_argument(
        "-n",
        "--count",
        type=_count,
        default=4,
        help="requests to send, 0 until Ctrl-C (default %(default)s)",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds between requests (default %(default)s)",
    )

    p = sub.add_parser(
        "send",
        parents=[common, client, tls],
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

    p = sub.add_parser(
        "bench",
        parents=[common, client, tls],
        help="load generator",
        description="Closed-loop load: --concurrency transactions in flight until --count "
        "are done or --duration is over; prints tx/s, failures and latency percentiles.",
    )
    p.add_argument("uri", help="target, e.g. sip:127.0.0.1:5060")
    p.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        default=10,
        help="transactions in flight (default %(default)s)",
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "-n", "--count", type=_positive_int, help="transactions to complete (default 1000)"
    )
    amount.add_argument("-d", "--duration", type=_seconds, metavar="S", help="seconds to run")
    p.add_argument(
        "-m",
        "--method",
        default="OPTIONS",
        type=str.upper,
        choices=("OPTIONS", "INVITE", "MESSAGE", "INFO", "REGISTER"),
        help="OPTIONS (default), or INVITE for whole calls (INVITE, ACK, BYE)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return ap


# --------------------------------------------------------------- logging


@contextlib.contextmanager
def _logging(args: argparse.Namespace) -> Iterator[None]:
    """Log to stderr at the level of ``-v``/``-q`` while the command runs."""
    verbose = int(getattr(args, "verbose", 0) or 0)
    quiet = bool(getattr(args, "quiet", False))
    root = logging.getLogger("netsip")
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


class _SignalStop:
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

    def __enter__(self) -> _SignalStop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------- output


class _Output:
    """Lines for stdout: at once on a terminal, else batched and written per timer tick.

    Batches are written with one ``os.write`` per chunk of at most
    ``_ATOMIC_WRITE`` bytes, cut at line ends, so the lines of several worker
    processes sharing one stdout pipe or file never mix.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._fd: int | None
        try:
            self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture
            self._fd = None
        self.interactive = stream.isatty()

    def line(self, text: str) -> None:
        self._lines.append(text + "\n")
        if self.interactive:
            self.flush()

    def flush(self, _timer: object = None) -> None:
        lines = self._lines
        if not lines:
            return
        self._lines = []
        if self._fd is None:
            self._stream.write("".join(lines))
            self._stream.flush()
            return
        self._stream.flush()  # whatever went through print() first
        chunk: list[str] = []
        size = 0
        for text in lines:
            if chunk and size + len(text) > _ATOMIC_WRITE:
                self._write("".join(chunk))
                chunk, size = [], 0
            chunk.append(text)
            size += len(text)
        self._write("".join(chunk))

    def _write(self, text: str) -> None:
        assert self._fd is not None
        data = memoryview(text.encode("utf-8", "replace"))
        while data:
            try:
                n = os.write(self._fd, data)
            except BrokenPipeError:
                self._fd = os.open(os.devnull, os.O_WRONLY)  # reader gone: keep serving
                return
            data = data[n:]


class _Stamp:
    """Local time ``YYYY-MM-DDTHH:MM:SS.mmm``; strftime runs once per second only."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sec))
        return f"{self._prefix}.{int((now - sec) * 1000):03d}"


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


def _make_leg(**kw: Any) -> Leg:
    """A Leg; TLS not being available (yet) is an error for the user, not a traceback."""
    try:
        return Leg(**kw)
    except NotImplementedError as exc:
        raise CliError(f"TLS is not available: {exc}") from None
    except (ssl.SSLError, ValueError) as exc:
        raise CliError(f"cannot set up the leg: {exc}") from None


# ---------------------------------------------------------------- listen


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to listen on: transport, IP, port (0: any free one) and family."""

    proto: Proto
    addr: str
    port: int
    family: int

    def __str__(self) -> str:
        return f"{self.proto}:{Addr(self.addr, self.port, self.family)}"


def parse_listen_spec(spec: str) -> list[ListenSpec]:
    """Parse ``[proto:]addr[:port]`` (IPv6 in brackets when a port follows).

    Without a protocol the spec stands for UDP and TCP on the same port. A
    host name is resolved to its first address.

    Raises:
        CliError: the spec is not understood (status 2).
    """
    head, sep, rest = spec.partition(":")
    protos: list[Proto]
    if sep and head.lower() in PROTOS:
        protos = [PROTOS[PROTOS.index(head.lower())]]
        hostport = rest
    else:
        protos = ["udp", "tcp"]
        hostport = spec
    try:
        host, port, family = ip_string2parts(hostport)
    except ValueError as exc:
        raise CliError(f"invalid --listen {spec!r}: {exc}") from None
    if family is None:
        ips = hostname2ip(host)
        if not ips:
            raise CliError(f"invalid --listen {spec!r}: cannot resolve {host!r}")
        host = ips[0]
        family = Addr.parse((host, 0)).family
    return [ListenSpec(p, host, DEFAULT_PORTS[p] if port is None else port, family) for p in protos]


def _bind(spec: ListenSpec, port: int, reuseport: bool) -> socket.socket:
    """A bound UDP or listening TCP socket for ``spec`` on ``port``; an IPv6
    one serves IPv6 only, so an IPv4 spec on the same port is separate."""
    return bind_socket(spec.proto, spec.addr, port, spec.family, reuseport=reuseport, v6only=True)


Bound = list[tuple[ListenSpec, socket.socket]]


def open_listen_sockets(specs: Sequence[ListenSpec], workers: int = 1) -> list[Bound]:
    """Bind ``specs`` once per worker (with ``SO_REUSEPORT`` if more than one).

    Specs with port 0 on the same address share the port the system picks for
    the first of them where the socket types allow (SIP wants UDP and TCP on
    one port, RFC 3261 18.1); the whole set is retried if that port is taken
    for another transport meanwhile.

    Returns:
        One list of ``(spec with the real port, socket)`` per worker.

    Raises:
        CliError: a socket cannot be bound (port in use ...), status 2.
    """
    reuseport = workers > 1
    if reuseport and not hasattr(socket, "SO_REUSEPORT"):
        raise CliError("--workers needs SO_REUSEPORT, which this system lacks")
    may_retry = any(s.port == 0 for s in specs)
    for attempt in range(_BIND_ATTEMPTS):
        opened: list[socket.socket] = []
        current = specs[0]
        try:
            first: Bound = []
            shared: dict[str, int] = {}  # addr -> port picked for its port-0 specs
            taken: set[tuple[str, int, bool]] = set()  # (addr, port, stream)
            for spec in specs:
                current = spec
                stream = spec.proto != "udp"
                port = spec.port
                if (
                    port == 0
                    and spec.addr in shared
                    and (spec.addr, shared[spec.addr], stream) not in taken
                ):
                    port = shared[spec.addr]
                sock = _bind(spec, port, reuseport)
                opened.append(sock)
                real = sock.getsockname()[1]
                if spec.port == 0:
                    shared.setdefault(spec.addr, real)
                taken.add((spec.addr, real, stream))
                first.append((dataclasses.replace(spec, port=real), sock))
            sets = [first]
            for _ in range(workers - 1):
                more: Bound = []
                for spec, _sock in first:
                    current = spec
                    sock = _bind(spec, spec.port, True)
                    opened.append(sock)
                    more.append((spec, sock))
                sets.append(more)
            return sets
        except OSError as exc:
            for sock in opened:
                sock.close()
            if may_retry and exc.errno == errno.EADDRINUSE and attempt < _BIND_ATTEMPTS - 1:
                continue
            raise CliError(f"cannot listen on {current}: {exc.strerror or exc}") from None
    raise AssertionError("unreachable")


@dataclass(slots=True)
class ListenStats:
    """What a listener saw: requests per transport and method, responses sent."""

    by_proto: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    send_errors: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None

    @property
    def requests(self) -> int:
        return sum(self.by_proto.values())

    def to_dict(self) -> dict[str, Any]:
        end = self.stopped if self.stopped is not None else time.monotonic()
        return {
            "requests": self.requests,
            "by_proto": dict(self.by_proto),
            "by_method": dict(self.by_method),
            "answered": self.answered,
            "send_errors": self.send_errors,
            "uptime_s": round(end - self.started, 3),
        }

    @staticmethod
    def summary(data: Mapping[str, Any], code: int, reason: str) -> list[str]:
        """Summary lines from one :meth:`to_dict` (or a merge of several)."""
        protos = ", ".join(f"{p} {n}" for p, n in sorted(data["by_proto"].items()))
        methods = ", ".join(f"{m} {n}" for m, n in sorted(data["by_method"].items()))
        lines = [
            f"--- netsip listen: {data['requests']} requests in {data['uptime_s']:.1f} s"
            + (f" ({protos})" if protos else ""),
            f"answered {data['answered']} with {code} {reason}".rstrip()
            + f", {data['send_errors']} failed to send"
            + (f"; methods: {methods}" if methods else ""),
        ]
        return lines

    @staticmethod
    def merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Add up the :meth:`to_dict` of several workers."""
        by_proto: Counter[str] = Counter()
        by_method: Counter[str] = Counter()
        for d in parts:
            by_proto.update(d["by_proto"])
            by_method.update(d["by_method"])
        return {
            "requests": sum(d["requests"] for d in parts),
            "by_proto": dict(by_proto),
            "by_method": dict(by_method),
            "answered": sum(d["answered"] for d in parts),
            "send_errors": sum(d["send_errors"] for d in parts),
            "uptime_s": max((d["uptime_s"] for d in parts), default=0.0),
        }


class Listener:
    """The receiver of ``netsip listen``: answers, prints and counts.

    Args:
        dispatcher: the dispatcher the legs are on; responses go through its
            ``deliver`` (so UDP final responses to INVITE are retransmitted
            until the ACK, RFC 3261 17.2.1, and retransmitted requests are
            answered from its response cache without reaching us).
        code: status of every response; ``reason`` its phrase (None: default).
        out: where the transaction lines go; None prints none.
        work_us: microseconds of CPU to burn before each response (``--work-us``),
            standing in for an application's work per request in load tests.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        code: int,
        reason: str | None,
        out: _Output | None,
        work_us: int = 0,
    ) -> None:
        self.dispatcher = dispatcher
        self.code = code
        self.reason = reason
        self.out = out
        self.work_ns = work_us * 1000
        self.stats = ListenStats()
        self._stamp = _Stamp()

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        """Receiver callback of the dispatcher."""
        if not isinstance(packet, Request):
            return  # we send no requests: a response is stray
        method = packet.method()
        stats = self.stats
        stats.by_proto[from_.proto or leg.proto] += 1
        stats.by_method[method] += 1
        if method == "ACK":
            status = "-"  # never answered (RFC 3261 17.1.1.3)
        else:
            if self.work_ns:
                _burn_cpu(self.work_ns)
            try:
                response = packet.create_response(self.code, self.reason)
                self.dispatcher.deliver(response, leg=leg, dst_addr=from_, callback=self._sent)
            except (NetSIPError, ValueError) as exc:
                # whatever a peer sends must not stop the listener
                log.warning("cannot answer %s from %s: %s", method, from_, exc)
                stats.send_errors += 1
                status = "!"
            else:
                stats.answered += 1
                status = str(self.code)
        if self.out is not None:
            self.out.line(
                f"{self._stamp()} {from_.proto or leg.proto} {from_} {method} "
                f"{packet.callid() or '-'} {status}"
            )

    def _sent(self, err: int) -> None:
        if err:
            self.stats.send_errors += 1
            log.warning("sending a response failed: %s", _strerror(err))


def _burn_cpu(ns: int) -> None:
    """Keep the CPU busy for ``ns`` nanoseconds of this thread's CPU time.

    CPU time, not wall time: a worker that is preempted meanwhile still does
    the whole amount of "work", as a real application would.
    """
    clock = time.thread_time_ns
    end = clock() + ns
    while clock() < end:
        pass


def _open_sockets_left() -> int:
    """How many sockets this process still has open (Linux /proc; -1 if unknown)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return -1
    count = 0
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
    return count


@dataclass(frozen=True, slots=True)
class _ServeConfig:
    """What every listener process needs: the options, the TLS dict, stdout."""

    args: argparse.Namespace
    tls: dict[str, Any] | None
    out: _Output


def _serve(
    bound: Bound,
    cfg: _ServeConfig,
    *,
    stop: Var[int] | None = None,
    on_ready: Callable[[], None] | None = None,
    worker: int = 0,
) -> dict[str, Any]:
    """Serve the sockets in ``bound`` until SIGINT/SIGTERM; close them; return the stats.

    Args:
        stop: the stop variable, possibly set already by a signal that came
            before the loop ran (a worker installs its handlers first thing).
        on_ready: called once the legs exist and signals are handled.
    """
    args, tls, out = cfg.args, cfg.tls, cfg.out
    loop = EventLoop()
    stop = stop if stop is not None else Var()
    dispatcher: Dispatcher | None = None
    listener: Listener | None = None
    try:
        with _SignalStop(loop, stop):
            legs = [
                _make_leg(sock=sock, proto=spec.proto, tls=tls if spec.proto == "tls" else None)
                for spec, sock in bound
            ]
            dispatcher = Dispatcher(legs, loop)
            listener = Listener(
                dispatcher,
                args.code,
                args.reason,
                None if args.summary_only else out,
                args.work_us,
            )
            dispatcher.set_receiver(listener.receive)
            flusher = loop.add_timer(_FLUSH_INTERVAL, out.flush, _FLUSH_INTERVAL, "flush-stdout")
            if on_ready is not None:
                on_ready()
            if worker:
                log.debug("worker %d (pid %d) serving", worker, os.getpid())
            if not stop.value:
                loop.loop(None, stop)
            flusher.cancel()
            listener.stats.stopped = time.monotonic()
            log.debug("stopped by %s", signal.Signals(stop.value).name if stop.value else "?")
    finally:
        if dispatcher is not None:
            dispatcher.close()
        for _, sock in bound:
            sock.close()  # no-op when its leg closed it already
        loop.close()
        out.flush()
    log.debug("sockets open after closing: %d", _open_sockets_left())
    assert listener is not None
    return listener.stats.to_dict()


def cmd_listen(args: argparse.Namespace) -> int:
    """``netsip listen``."""
    specs: list[ListenSpec] = []
    for text in args.listen or ():
        specs.extend(parse_listen_spec(text))
    if not specs:
        specs = parse_listen_spec("127.0.0.1:5060")
        if args.tls_cert:
            specs += parse_listen_spec("tls:127.0.0.1:5061")
    tls: dict[str, Any] | None = None
    if any(s.proto == "tls" for s in specs):
        if not args.tls_cert:
            raise CliError("listening on tls needs --tls-cert (and --tls-key)")
        tls = tls_options(args, server=True)
    elif args.tls_cert or args.tls_key or args.tls_ca:
        raise CliError("--tls-cert/--tls-key/--tls-ca given but nothing listens on tls")
    phrase = args.reason if args.reason is not None else REASON_PHRASES.get(args.code, "")
    sets = open_listen_sockets(specs, args.workers)

    def ready() -> None:
        for spec, _ in sets[0]:
            log.info("listening on %s", spec)

    cfg = _ServeConfig(args, tls, _Output(sys.stdout))
    if args.workers == 1:
        stats = _serve(sets[0], cfg, on_ready=ready)
        for text in ListenStats.summary(stats, args.code, phrase):
            print(text, flush=True)
        return EXIT_OK
    return _run_workers(sets, cfg, phrase, ready)


def _run_workers(
    sets: list[Bound], cfg: _ServeConfig, phrase: str, ready: Callable[[], None]
) -> int:
    """Fork one worker per socket set, forward SIGINT/SIGTERM, wait, print the summary."""
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, tuple[int, int]] = {}  # pid -> (worker number, stats pipe)
    stopping: Var[int] = Var()

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.value = signum
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # installed before the first fork: a signal during startup stops every worker
    saved = {sig: signal.signal(sig, forward) for sig in _SignalStop.SIGNALS}
    try:
        try:
            for i, bound in enumerate(sets):
                rfd, wfd = os.pipe()
                pid = os.fork()
                if pid == 0:
                    _worker(i + 1, bound, cfg, sets=sets, fds=(rfd, wfd), siblings=children)
                os.close(wfd)
                children[pid] = (i + 1, rfd)
        finally:
            for bound in sets:
                for _, sock in bound:
                    sock.close()  # the workers have theirs; the parent keeps none
        ready()
        log.info("%d workers: %s", len(children), " ".join(map(str, children)))
        results, failed = _reap_workers(children, stopping, forward)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    merged = ListenStats.merge(list(results.values()))
    for text in ListenStats.summary(merged, cfg.args.code, phrase):
        print(text)
    per = ", ".join(f"#{n} {results[n]['requests']}" for n in sorted(results))
    print(f"workers: {len(results)} of {len(children)} ok; requests per worker: {per}", flush=True)
    return EXIT_OK if not failed else EXIT_FAIL


def _worker(
    number: int,
    bound: Bound,
    cfg: _ServeConfig,
    *,
    sets: list[Bound],
    fds: tuple[int, int],
    siblings: Mapping[int, tuple[int, int]],
) -> NoReturn:
    """The forked worker: serve ``bound``, send the stats to the parent, ``_exit``.

    Args:
        sets: every worker's sockets; the others' are closed here.
        fds: this worker's stats pipe (read end, closed here; write end).
        siblings: the workers forked before, whose pipe read ends are closed here.
    """
    rfd, wfd = fds
    stop: Var[int] = Var()

    def early(signum: int, frame: FrameType | None) -> None:
        stop.value = signum

    for sig in _SignalStop.SIGNALS:  # not the parent's forwarding handler
        signal.signal(sig, early)
    status = EXIT_FAIL
    try:
        os.close(rfd)
        for _, sibling_rfd in siblings.values():
            os.close(sibling_rfd)
        for other in sets:
            if other is not bound:
                for _, sock in other:
                    sock.close()
        stats = _serve(bound, cfg, stop=stop, worker=number)
        with os.fdopen(wfd, "w") as pipe:
            json.dump(stats, pipe)
        status = EXIT_OK
    except CliError as exc:
        print(f"netsip listen: error: worker {number}: {exc}", file=sys.stderr)
        status = exc.status
    except Exception:
        log.exception("worker %d failed", number)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # no cleanup of the parent's state in the child


def _reap_workers(
    children: Mapping[int, tuple[int, int]],
    stopping: Var[int],
    forward: Callable[[int, FrameType | None], None],
) -> tuple[dict[int, dict[str, Any]], int]:
    """Wait for every worker; returns (stats per worker number, how many failed)."""
    results: dict[int, dict[str, Any]] = {}
    failed = 0
    pending = dict(children)
    while pending:
        pid, wstatus = os.waitpid(-1, 0)  # PEP 475: retried after `forward` ran
        if pid not in pending:
            continue
        number, rfd = pending.pop(pid)
        with os.fdopen(rfd) as pipe:
            data = pipe.read()
        code = os.waitstatus_to_exitcode(wstatus)
        if code == 0 and data:
            results[number] = json.loads(data)
        else:
            failed += 1
            log.error("worker %d (pid %d) ended with status %d", number, pid, code)
            if not stopping.value:
                forward(signal.SIGTERM, None)  # one is gone: stop the others too
    return results, failed


# ---------------------------------------------------------------- client


_SCHEME_RX: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: the Request-URI, the transport and (once known) the address."""

    uri: str
    proto: Proto
    host: str
    port: int | None
    family: int | None


def parse_target(text: str, transport: str | None) -> Target:
    """Parse a destination: a SIP URI or ``host[:port]``.

    Raises:
        CliError: unparsable, or a transport that contradicts the URI (status 2).
    """
    uri = text.strip()
    m = _SCHEME_RX.match(uri)
    if m is None or m.group(1).lower() not in ("sip", "sips"):
        if m is not None and not m.group(2).isdigit():  # "host:5060" has no scheme
            raise CliError(f"unsupported URI scheme in {text!r} (sip: or sips:)")
        uri = "sip:" + uri
    try:
        info = sip_uri2sockinfo(uri)
    except ValueError as exc:
        raise CliError(f"cannot parse URI {text!r}: {exc}") from None
    if info is None or not info[1]:
        raise CliError(f"cannot parse URI {text!r}")
    uproto, host, port, family = info
    if uproto is not None and uproto not in PROTOS:
        raise CliError(f"unsupported transport {uproto!r} in {text!r}")
    if transport and uproto and transport != uproto:
        raise CliError(f"--transport {transport} contradicts the URI {text!r}")
    proto: Proto = transport or uproto or "udp"  # type: ignore[assignment]  # checked above
    return Target(uri, proto, host, port, family)


@dataclass(slots=True, eq=False)
class Txn:
    """One client transaction: the request, when it went out, what came back."""

    request: Request
    start: float
    on_done: Callable[[Txn], None]
    on_provisional: Callable[[Txn, Response], None] | None = None
    response: Response | None = None
    source: Addr | None = None
    error: int = 0
    rtt: float = 0.0
    timer: TimerLike | None = None
    provisional: int = 0

    @property
    def ok(self) -> bool:
        return self.response is not None and 200 <= self.response.code() < 300


class Client:
    """A UAC on one leg: sends requests through a Dispatcher, matches final responses.

    Responses are matched by transaction id (Call-ID and CSeq number). A final
    response, a delivery error from the transport (refused, unreachable) or
    ``timeout`` ends a transaction and calls its ``on_done``. Final responses
    to INVITE are ACKed (RFC 3261 17.1.1.3 for non-2xx, 13.2.2.4 for 2xx, and
    again for each retransmitted 2xx).
    """

    def __init__(self, args: argparse.Namespace, target: Target, loop: EventLoop) -> None:
        self.loop = loop
        self.target = target
        self.timeout: float = args.timeout
        self.tags = secrets.token_hex(4)
        self._pending: dict[str, Txn] = {}
        self._acks: OrderedDict[str, Request] = OrderedDict()

        family = target.family
        first_ip: str | None = None
        if family is None:
            ips = hostname2ip(target.host)
            if ips:
                first_ip = ips[0]
                family = Addr.parse((first_ip, 0)).family
            elif target.port is not None:
                raise CliError(f"cannot resolve {target.host!r}")
        else:
            first_ip = target.host
        family = family or socket.AF_INET

        self.dst: Addr | None = None
        if first_ip is not None and (target.family is not None or target.port is not None):
            # an IP, or a name with a port: A/AAAA only (RFC 3263 4.2)
            port = target.port or DEFAULT_PORTS[target.proto]
            host = target.host if target.family is None else None
            self.dst = Addr(first_ip, port, family, host, target.proto)

        bind_ip, bind_port = self._local(args.bind, family, first_ip, target)
        tls = tls_options(args, server=False) if target.proto == "tls" else None
        if tls is None and (args.tls_cert or args.tls_key or args.tls_ca):
            raise CliError("--tls-cert/--tls-key/--tls-ca need --transport tls or a sips: URI")
        try:
            self.leg = _make_leg(addr=bind_ip, port=bind_port, proto=target.proto, tls=tls)
        except OSError as exc:
            where = Addr(bind_ip, bind_port, family)
            raise CliError(f"cannot bind {target.proto}:{where}: {exc.strerror or exc}") from None
        self.dispatcher = Dispatcher([self.leg], loop)
        self.dispatcher.set_receiver(self._receive)
        scheme = "sips" if target.proto == "tls" else "sip"
        self.from_uri = f"{scheme}:netsip@{self.leg.src}"
        if self.dst is None:
            try:
                self._resolve(first_ip, family)
            except BaseException:
                self.dispatcher.close()
                raise

    @staticmethod
    def _local(
        bind: str | None, family: int, first_ip: str | None, target: Target
    ) -> tuple[str, int]:
        if bind:
            try:
                ip, port, fam = ip_string2parts(bind)
            except ValueError as exc:
                raise CliError(f"invalid --bind {bind!r}: {exc}") from None
            if fam is None:
                raise CliError(f"--bind needs an IP address, not {bind!r}")
            if fam != family:
                raise CliError(f"--bind {bind} is not of the destination's address family")
            return ip, port or 0
        if first_ip is None:
            return ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0
        local = laddr4dst(Addr(first_ip, target.port or 5060, family))
        if local is None:
            raise CliError(f"{target.uri}: {os.strerror(errno.ENETUNREACH)}", EXIT_FAIL)
        return local, 0

    def _resolve(self, fallback_ip: str | None, family: int) -> None:
        """RFC 3263 resolution of a host name without port (NAPTR, SRV, A/AAAA)."""
        result: Var[object] = Var()
        self.dispatcher.resolve_uri(
            self.target.uri, result, allowed_proto=[self.target.proto], allowed_legs=[self.leg]
        )
        if result.value is None:
            self.loop.loop(self.timeout, result)
        found = result.value
        if isinstance(found, list) and found:
            self.dst = found[0][0]
            return
        if fallback_ip is not None:
            # no SIP records: the host itself on the default port (RFC 3263 4.2)
            port = DEFAULT_PORTS[self.target.proto]
            self.dst = Addr(fallback_ip, port, family, self.target.host, self.target.proto)
            return
        raise CliError(f"cannot resolve {self.target.host!r}")

    # ----------------------------------------------------------- requests

    def new_callid(self) -> str:
        return f"{secrets.token_hex(8)}@{self.leg.src.addr}"

    def make_request(
        self,
        method: str,
        *,
        callid: str,
        cseq: int,
        uri: str | None = None,
        to: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        """A request with the headers RFC 3261 8.1.1 asks for; ``extra`` overrides them."""
        uri = uri or self.target.uri
        headers: list[tuple[str, str]] = [
            ("Max-Forwards", "70"),
            ("From", f"<{self.from_uri}>;tag={self.tags}"),
            ("To", to or f"<{self.target.uri}>"),
            ("Call-ID", callid),
            ("CSeq", f"{cseq} {method}"),
            ("User-Agent", USER_AGENT),
        ]
        if method == "OPTIONS":
            headers.append(("Accept", "application/sdp"))
        override = {name.lower() for name, _ in extra}
        headers = [(n, v) for n, v in headers if n.lower() not in override]
        headers.extend(extra)
        return Request(method, uri, headers, body)

    def send(
        self,
        request: Request,
        on_done: Callable[[Txn], None],
        on_provisional: Callable[[Txn, Response], None] | None = None,
    ) -> Txn:
        """Send ``request``; ``on_done`` is called once with the finished :class:`Txn`."""
        tid = request.tid()
        txn = Txn(request, time.monotonic(), on_done, on_provisional)
        self._pending[tid] = txn
        txn.timer = self.loop.add_timer(self.timeout, partial(self._timed_out, tid, txn))
        try:
            self.dispatcher.deliver(
                request,
                leg=self.leg,
                dst_addr=self.dst,
                callback=partial(self._delivered, tid, txn),
            )
        except (NetSIPError, ValueError) as exc:
            raise CliError(f"cannot send to {self.dst}: {exc}") from None
        return txn

    def send_raw(self, packet: Packet, callback: Callable[[int], None]) -> None:
        """Send ``packet`` without waiting for responses (a response from ``--file``)."""
        self.dispatcher.deliver(
            packet, leg=self.leg, dst_addr=self.dst, callback=callback, do_retransmits=False
        )

    def _finish(self, tid: str, txn: Txn) -> None:
        if self._pending.get(tid) is txn:
            del self._pending[tid]
        if txn.timer is not None:
            txn.timer.cancel()
            txn.timer = None
        self.dispatcher.cancel_delivery(tid)  # no more retransmissions
        txn.on_done(txn)

    def _delivered(self, tid: str, txn: Txn, err: int) -> None:
        if err and self._pending.get(tid) is txn:
            txn.error = err
            self._finish(tid, txn)

    def _timed_out(self, tid: str, txn: Txn, _timer: object) -> None:
        txn.timer = None
        if self._pending.get(tid) is txn:
            txn.error = errno.ETIMEDOUT
            self._finish(tid, txn)

    def _receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        if not isinstance(packet, Response):
            log.info("ignoring %s request from %s", packet.method(), from_)
            return
        tid = packet.tid()
        txn = self._pending.get(tid)
        if txn is None or packet.method() != txn.request.method():
            ack = self._acks.get(tid)
            if ack is not None and 200 <= packet.code() < 300 and packet.method() == "INVITE":
                # a retransmitted 2xx: our ACK got lost (RFC 3261 13.2.2.4)
                self.dispatcher.deliver(ack, leg=self.leg, dst_addr=self.dst, do_retransmits=False)
            return
        code = packet.code()
        if code < 200:
            txn.provisional += 1
            if txn.on_provisional is not None:
                txn.on_provisional(txn, packet)
            return
        txn.response = packet
        txn.source = from_
        txn.rtt = time.monotonic() - txn.start
        if txn.request.method() == "INVITE":
            self._ack(txn.request, packet)
        self._finish(tid, txn)

    def _ack(self, invite: Request, response: Response) -> None:
        ack = invite.create_ack(response)
        if 200 <= response.code() < 300:
            # the ACK of a 2xx goes to the remote target (RFC 3261 13.2.2.4)
            target = _contact_uri(response)
            if target:
                ack.set_uri(target)
            self._acks[invite.tid()] = ack
            if len(self._acks) > _ACK_MEMORY:
                self._acks.popitem(last=False)
        self.dispatcher.deliver(ack, leg=self.leg, dst_addr=self.dst, do_retransmits=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for tid, txn in list(self._pending.items()):
            if txn.timer is not None:
                txn.timer.cancel()
            del self._pending[tid]
        self.dispatcher.close()


def _contact_uri(response: Response) -> str | None:
    contact = response.get_headers("contact")
    if not contact:
        return None
    value = contact[0]
    if "<" in value:
        start = value.index("<") + 1
        end = value.find(">", start)
        return value[start:end] if end > 0 else None
    return value.split(";", 1)[0].strip() or None


@contextlib.contextmanager
def _client(args: argparse.Namespace, target: Target) -> Iterator[tuple[Client, Var[int]]]:
    """An event loop, signal handling and a :class:`Client`, all closed afterwards."""
    loop = EventLoop()
    stop: Var[int] = Var()
    try:
        with _SignalStop(loop, stop):
            client = Client(args, target, loop)
            try:
                yield client, stop
            finally:
                client.close()
    finally:
        loop.close()


def _peer(addr: Addr | None) -> str:
    return "?" if addr is None else f"{addr.proto}:{addr}" if addr.proto else str(addr)


def _message_text(packet: Packet) -> str:
    """A packet for the terminal: LF line ends, no trailing blank line."""
    return packet.as_string().replace("\r\n", "\n").rstrip("\n")


def _describe(txn: Txn) -> str:
    if txn.response is not None:
        return f"{txn.response.code()} {txn.response.msg()}".rstrip()
    return _strerror(txn.error)


# --------------------------------------------------------------- options


def cmd_options(args: argparse.Namespace) -> int:
    """``netsip options``: a SIP ping."""
    target = parse_target(args.uri, args.transport)
    rtts: list[float] = []
    sent = received = ok = 0
    with _client(args, target) as (client, stop):
        assert client.dst is not None
        print(f"OPTIONS {target.uri} to {_peer(client.dst)} from {client.leg.src}", flush=True)
        callid = client.new_callid()
        started = time.monotonic()
        done: Var[bool] = Var()

        def finished(seq: int, txn: Txn) -> None:
            nonlocal received, ok
            if txn.response is not None:
                received += 1
                rtts.append(txn.rtt * 1000)
                ok += txn.ok
                print(
                    f"{_describe(txn)} from {_peer(txn.source)}: seq={seq} "
                    f"time={txn.rtt * 1000:.3f} ms",
                    flush=True,
                )
            else:
                print(f"seq={seq}: {_describe(txn)}", flush=True)
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


# ------------------------------------------------------------------ send


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

    result: list[Txn] = []
    with _client(args, target) as (client, stop):
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
                raise CliError(f"{target.uri}: {_strerror(errs[0])}", EXIT_FAIL)
            if not done.value:
                raise CliError(f"{target.uri}: {_strerror(errno.ETIMEDOUT)}", EXIT_FAIL)
            print(f"sent {packet.code()} {packet.msg()} to {_peer(client.dst)}", flush=True)
            return EXIT_OK
        if isinstance(packet, Request):
            request = packet
        else:
            request = client.make_request(
                method, callid=client.new_callid(), cseq=1, extra=extra, body=body
            )

        def provisional(txn: Txn, resp: Response) -> None:
            ms = (time.monotonic() - txn.start) * 1000
            print(f"<<< {resp.code()} {resp.msg()} ({ms:.3f} ms)".rstrip())
            print(_message_text(resp) + "\n", flush=True)

        def finished(txn: Txn) -> None:
            result.append(txn)
            done.value = True

        print(f">>> {request.method()} {request.uri()} to {_peer(client.dst)}", flush=True)
        client.send(request, finished, provisional)
        client.loop.loop(None, done, stop)
    if not result:
        return EXIT_FAIL  # interrupted
    txn = result[0]
    if txn.response is None:
        raise CliError(f"{target.uri}: {_strerror(txn.error)}", EXIT_FAIL)
    print(f"<<< {_describe(txn)} from {_peer(txn.source)} ({txn.rtt * 1000:.3f} ms)")
    print(_message_text(txn.response), flush=True)
    return EXIT_OK if txn.ok else EXIT_FAIL


# ----------------------------------------------------------------- bench


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Bench:
    """Closed loop: keep ``concurrency`` units in flight; a unit is one transaction,
    or for INVITE a whole call (INVITE, ACK, BYE)."""

    def __init__(self, args: argparse.Namespace, client: Client, done: Var[bool]) -> None:
        self.client = client
        self.method: str = args.method
        self.concurrency: int = args.concurrency
        self.count: int | None = args.count if args.duration is None else None
        if self.count is None and args.duration is None:
            self.count = 1000
        self.duration: float | None = args.duration
        self.done = done
        self.started = 0.0
        self.ended = 0.0
        self.launched = 0
        self.in_flight = 0
        self.completed = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.fatal: str | None = None
        v = 6 if client.leg.src.family == socket.AF_INET6 else 4
        ip = client.leg.src.addr
        # a minimal offer (RFC 4566): sipp's uas scenario answers with its own SDP
        self._sdp = (
            f"v=0\r\no=netsip 1 1 IN IP{v} {ip}\r\ns=-\r\nc=IN IP{v} {ip}\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ).encode()

    def start(self) -> None:
        self.started = time.monotonic()
        if self.duration is not None:
            self.client.loop.add_timer(self.duration, self._time_up)
        for _ in range(self.concurrency):
            if not self._launch():
                break

    def _time_up(self, _timer: object) -> None:
        self.duration = 0.0
        if self.in_flight == 0:
            self._end()

    def _more(self) -> bool:
        if self.fatal is not None:
            return False
        if self.count is not None:
            return self.launched < self.count
        return self.duration is None or time.monotonic() - self.started < self.duration

    def _launch(self) -> bool:
        if not self._more():
            return False
        self.launched += 1
        self.in_flight += 1
        client = self.client
        callid = client.new_callid()
        start = time.monotonic()
        if self.method == "INVITE":
            req = client.make_request(
                "INVITE",
                callid=callid,
                cseq=1,
                extra=[("Content-Type", "application/sdp")],
                body=self._sdp,
            )
            client.send(req, partial(self._invite_done, start))
        else:
            req = client.make_request(self.method, callid=callid, cseq=1)
            client.send(req, partial(self._unit_done, start))
        return True

    def _invite_done(self, start: float, txn: Txn) -> None:
        if not txn.ok or txn.response is None:
            self._unit_done(start, txn)
            return
        # the call is up (the client ACKed it): hang up within the dialog
        client = self.client
        req = txn.request
        bye = client.make_request(
            "BYE",
            callid=req.callid() or "",
            cseq=2,
            uri=_contact_uri(txn.response) or req.uri(),
            to=txn.response.get_header("to"),
        )
        client.send(bye, partial(self._unit_done, start))

    def _unit_done(self, start: float, txn: Txn) -> None:
        self.in_flight -= 1
        if txn.ok:
            self.completed += 1
            self.latencies.append(time.monotonic() - start)
        else:
            self.failed += 1
            what = _describe(txn)
            self.errors[f"{txn.request.method()}: {what}"] += 1
            if txn.response is None and txn.error not in (0, errno.ETIMEDOUT):
                # refused, unreachable ...: every further request would fail alike
                self.fatal = f"{self.client.target.uri}: {what}"
        if not self._launch() and self.in_flight == 0:
            self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = time.monotonic()
        self.done.value = True

    def progress(self) -> str:
        if self.count is not None:
            frac = (self.completed + self.failed) / self.count
        else:
            frac = min(1.0, (time.monotonic() - self.started) / (self.duration or 1.0))
        width = 30
        bar = "#" * int(frac * width)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"\r[{bar:<{width}}] {frac * 100:3.0f}% {self.completed} ok {self.failed} failed "
            f"{self.completed / elapsed:8.1f}/s"
        )

    def results(self) -> dict[str, Any]:
        end = self.ended or time.monotonic()
        elapsed = max(end - self.started, 1e-9)
        lat = sorted(x * 1000 for x in self.latencies)
        return {
            "target": self.client.target.uri,
            "transport": self.client.target.proto,
            "method": self.method,
            "concurrency": self.concurrency,
            "completed": self.completed,
            "failed": self.failed,
            "elapsed_s": round(elapsed, 4),
            "tx_per_s": round(self.completed / elapsed, 1),
            "latency_ms": {
                "min": round(lat[0], 3) if lat else 0.0,
                "p50": round(percentile(lat, 50), 3),
                "p95": round(percentile(lat, 95), 3),
                "p99": round(percentile(lat, 99), 3),
                "max": round(lat[-1], 3) if lat else 0.0,
                "mean": round(sum(lat) / len(lat), 3) if lat else 0.0,
            },
            "errors": dict(self.errors),
        }


def cmd_bench(args: argparse.Namespace) -> int:
    """``netsip bench``: a closed-loop load generator."""
    target = parse_target(args.uri, args.transport)
    with _client(args, target) as (client, stop):
        done: Var[bool] = Var()
        bench = _Bench(args, client, done)
        tty = sys.stderr.isatty() and not args.json
        bar: TimerLike | None = None
        if tty:

            def show(_timer: object) -> None:
                sys.stderr.write(bench.progress())
                sys.stderr.flush()

            bar = client.loop.add_timer(0.2, show, 0.2, "progress")
        bench.start()
        client.loop.loop(None, done, stop)
        if args.method == "INVITE" and not stop.value:
            # stay a moment to ACK late 2xx retransmissions (RFC 3261 13.2.2.4)
            # and to let the peer end its last calls before our connections close
            client.loop.loop(_LINGER, stop)
        if bar is not None:
            bar.cancel()
            sys.stderr.write(bench.progress() + "\n")
        res = bench.results()
    if args.json:
        print(json.dumps(res, sort_keys=True), flush=True)
    else:
        lat = res["latency_ms"]
        unit = "calls" if args.method == "INVITE" else "transactions"
        print(
            f"{res['completed']} {unit} in {res['elapsed_s']:.2f} s: {res['tx_per_s']:.1f}/s, "
            f"{res['failed']} failed ({target.proto}, concurrency {args.concurrency})"
        )
        print(
            f"latency ms: p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  p99 {lat['p99']:.3f}  "
            f"(min {lat['min']:.3f}, max {lat['max']:.3f})"
        )
        for what, n in sorted(res["errors"].items()):
            print(f"  {n} x {what}")
        sys.stdout.flush()
    if bench.fatal is not None:
        raise CliError(bench.fatal, EXIT_FAIL)
    return EXIT_OK if res["failed"] == 0 and res["completed"] else EXIT_FAIL


# ------------------------------------------------------------------ main

_COMMANDS: Final[Mapping[str, Callable[[argparse.Namespace], int]]] = {
    "listen": cmd_listen,
    "options": cmd_options,
    "send": cmd_send,
    "bench": cmd_bench,
}


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
        with _logging(args):
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
