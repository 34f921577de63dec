"""``netsip listen``: answer every request with one status, print one line per transaction.

Net::SIP's counterpart is a sample program (``examples/bench/listen.pl``, the
answering half of ``answer_machine.pl``): a Leg and a Dispatcher whose
receiver answers. Here every request but ACK gets ``--code`` (RFC 3261
17.1.1.3: an ACK is never answered); one line per transaction (time,
transport, peer, method, Call-ID, status) goes to stdout and a summary on
SIGINT/SIGTERM, then the command exits 0 after closing every socket.

``--workers N`` forks N processes, each with its own ``SO_REUSEPORT`` sockets
on the same port(s) (:mod:`netsip.cli._listen_sockets`), so the kernel
spreads UDP flows and TCP connections over them; the parent forwards SIGTERM,
waits, and prints the aggregated summary. ``--work-us N`` burns N
microseconds of CPU per answered request, a stand-in for an application's
work, so that load tests can show what ``--workers`` gains once the
responder, not the load generator, is the bottleneck.

Performance plan: the receiver runs once per request of a load test, so it
does the answer, two counter updates and (unless ``--summary-only``) one
output line; lines are batched and written by a timer (:class:`_Output`),
and the time stamp's ``strftime`` runs once per second (:class:`_Stamp`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

from netsip._log import get_logger
from netsip.cli._answer import Calls, MediaSink, answer_sdp, offer_sdp, to_tag
from netsip.cli._common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Parents,
    SignalStop,
    Subparsers,
    count,
    make_leg,
    positive_int,
    status_code,
    strerror,
    tls_options,
)
from netsip.cli._listen_sockets import (
    Bound,
    ListenSpec,
    open_listen_sockets,
    parse_listen_spec,
    set_rcvbuf,
)
from netsip.cli._workers import run_workers
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import REASON_PHRASES, Packet, Request, Response
from netsip.util import Addr, NetSIPError, Var, laddr4dst

__all__ = ["ListenStats", "Listener", "add_parser", "cmd_listen"]

log = get_logger(__name__)

# Lines to stdout are batched (when stdout is no terminal) and written this often.
_FLUSH_INTERVAL: Final = 0.2
#: methods that exist only within a dialog: without one, 481 (RFC 3261 12.2.2, 15)
_IN_DIALOG_ONLY: Final = frozenset(("BYE", "UPDATE", "PRACK"))
# Writes of at most PIPE_BUF bytes to a pipe are atomic (POSIX), so lines of
# several --workers processes sharing stdout never interleave mid-line.
_ATOMIC_WRITE: Final = 4096
# Bytes of output lines waiting for stdout at most; more are dropped.
_MAX_PENDING: Final = 1 << 20
# Seconds the summary waits for a full stdout at exit.
_FINAL_WAIT: Final = 2.0


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``listen`` subcommand and its options."""
    p = subparsers.add_parser(
        "listen",
        parents=[parents.common, parents.tls],
        help="answer every request with a fixed status",
        description="Answer every SIP request but ACK with --code and print one line per "
        "transaction; a summary on Ctrl-C/SIGTERM.",
    )
    p.add_argument(
        "-l",
        "--listen",
        action="append",
        metavar="[PROTO:]ADDR[:PORT]",
        help="where to listen, repeatable: udp:127.0.0.1:5060, tcp:[::1]:5060, tls:0.0.0.0:5061,"
        " ws:127.0.0.1:8080, wss:127.0.0.1:8443 (WebSocket, RFC 7118; wss with --tls-cert);"
        " without PROTO udp and tcp on one port; port 0 picks a free one"
        " (default: udp+tcp 127.0.0.1:5060, and tls 127.0.0.1:5061 with --tls-cert)",
    )
    p.add_argument(
        "-c",
        "--code",
        type=status_code,
        default=200,
        help="status of the responses (default %(default)s)",
    )
    p.add_argument("--reason", help="reason phrase (default: the standard one for --code)")
    p.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="N processes sharing the port(s) with SO_REUSEPORT (default %(default)s)",
    )
    p.add_argument(
        "--rcvbuf",
        type=count,
        default=0,
        metavar="BYTES",
        help="receive buffer of the UDP sockets (SO_RCVBUF); a flood drops less with a big "
        "one; capped by net.core.rmem_max unless run as root (default: the system's)",
    )
    p.add_argument(
        "--work-us",
        type=count,
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


# ---------------------------------------------------------------- output


class _Output:
    """Lines for stdout: at once on a terminal, else batched and written per timer tick.

    Output never blocks the event loop: a chunk is written only when the
    descriptor is writable (``poll``), and lines that would make more than
    ``max_pending`` bytes wait are dropped and counted (:attr:`dropped`).
    With stdout a pipe that nobody reads, the listener keeps answering.

    Chunks are written with one ``os.write`` of at most ``_ATOMIC_WRITE``
    bytes (``PIPE_BUF``), cut at line ends, so the lines of several worker
    processes sharing one stdout pipe or file never mix, and a pipe that
    ``poll`` reports writable takes the whole chunk.
    """

    def __init__(self, stream: IO[str], max_pending: int = _MAX_PENDING) -> None:
        self._stream = stream
        self._lines: list[str] = []  # without a descriptor (StringIO, capture)
        self._pending = bytearray()  # with one: encoded, waiting for the fd
        self._max_pending = max_pending
        #: lines dropped because stdout did not take them in time
        self.dropped = 0
        self._gone = False  # stdout failed (EPIPE ...): every line is dropped
        self._fd: int | None
        try:
            self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture
            self._fd = None
        self._poll = select.poll()
        if self._fd is not None:
            self._poll.register(self._fd, select.POLLOUT)
        self.interactive = stream.isatty()

    def line(self, text: str, *, keep: bool = False) -> None:
        """Queue one line; ``keep``: never dropped for the bound (the summary)."""
        if self._gone:
            self.dropped += 1
            return
        if self._fd is None:
            self._lines.append(text + "\n")
        else:
            data = (text + "\n").encode("utf-8", "replace")
            if not keep and len(self._pending) + len(data) > self._max_pending:
                self.dropped += 1
                return
            self._pending += data
        if self.interactive:
            self.flush()

    def flush(self, _timer: object = None, wait: float = 0.0) -> None:
        """Write what stdout takes now; with ``wait``, wait up to that long for it."""
        if self._fd is None:
            if self._lines:
                lines, self._lines = self._lines, []
                self._stream.write("".join(lines))
                self._stream.flush()
            return
        if not self._pending:
            return
        deadline = time.monotonic() + wait
        pending = self._pending
        while pending:
            timeout_ms = max(0, round((deadline - time.monotonic()) * 1000))
            events = self._poll.poll(timeout_ms)
            if not events:
                return  # stdout is full: try again next tick
            if events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                self._reader_gone()
                return
            end = len(pending)
            if end > _ATOMIC_WRITE:
                cut = pending.rfind(b"\n", 0, _ATOMIC_WRITE)
                end = cut + 1 if cut >= 0 else _ATOMIC_WRITE
            try:
                n = os.write(self._fd, memoryview(pending)[:end])
            except BlockingIOError:
                return
            except OSError as exc:  # EPIPE, or ENOSPC/EIO on a file: stop writing, keep serving
                if not isinstance(exc, BrokenPipeError):
                    log.warning("stdout failed (%s): output dropped from now on", exc)
                self._reader_gone()
                return
            del pending[:n]

    def give_up(self) -> None:
        """Count what is still waiting for stdout as dropped (at exit)."""
        self.dropped += self._pending.count(b"\n")
        self._pending.clear()

    def _reader_gone(self) -> None:
        # nobody reads stdout any more: keep serving, count what is lost
        self.dropped += self._pending.count(b"\n")
        self._pending.clear()
        assert self._fd is not None
        self._poll.unregister(self._fd)
        self._gone = True


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


# -------------------------------------------------------------- listener


@dataclass(slots=True)
class ListenStats:
    """What a listener saw: requests per transport and method, responses sent."""

    by_proto: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    #: responses with another code than the listener's (481, 488, 415)
    other: Counter[int] = field(default_factory=Counter)
    send_errors: int = 0
    #: transaction lines stdout did not take (see _Output)
    output_dropped: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None

    @property
    def requests(self) -> int:
        """Requests answered, all transports."""
        return sum(self.by_proto.values())

    def to_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (``--json`` and the workers' summary)."""
        end = self.stopped if self.stopped is not None else time.monotonic()
        return {
            "requests": self.requests,
            "by_proto": dict(self.by_proto),
            "by_method": dict(self.by_method),
            "answered": self.answered,
            "other": {str(code): n for code, n in sorted(self.other.items())},
            "send_errors": self.send_errors,
            "output_dropped": self.output_dropped,
            "uptime_s": round(end - self.started, 3),
        }

    @staticmethod
    def summary(data: Mapping[str, Any], code: int, reason: str) -> list[str]:
        """Summary lines from one :meth:`to_dict` (or a merge of several)."""
        protos = ", ".join(f"{p} {n}" for p, n in sorted(data["by_proto"].items()))
        methods = ", ".join(f"{m} {n}" for m, n in sorted(data["by_method"].items()))
        other = ", ".join(f"{c} x {n}" for c, n in sorted(data.get("other", {}).items()))
        lines = [
            f"--- netsip listen: {data['requests']} requests in {data['uptime_s']:.1f} s"
            + (f" ({protos})" if protos else ""),
            f"answered {data['answered']} with {code} {reason}".rstrip()
            + f", {data['send_errors']} failed to send"
            + (f", other answers: {other}" if other else "")
            + (
                f", {data['output_dropped']} output lines dropped"
                if data.get("output_dropped")
                else ""
            )
            + (f"; methods: {methods}" if methods else ""),
        ]
        return lines

    @staticmethod
    def merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Add up the :meth:`to_dict` of several workers."""
        by_proto: Counter[str] = Counter()
        by_method: Counter[str] = Counter()
        other: Counter[str] = Counter()
        for d in parts:
            by_proto.update(d["by_proto"])
            by_method.update(d["by_method"])
            other.update(d.get("other", {}))
        return {
            "requests": sum(d["requests"] for d in parts),
            "by_proto": dict(by_proto),
            "by_method": dict(by_method),
            "answered": sum(d["answered"] for d in parts),
            "other": dict(sorted(other.items())),
            "send_errors": sum(d["send_errors"] for d in parts),
            "output_dropped": sum(d.get("output_dropped", 0) for d in parts),
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
        self.calls = Calls()
        self.media = MediaSink(dispatcher.eventloop)

    def close(self) -> None:
        """Close the media sockets."""
        self.media.close()

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
                response = self._response(packet, method, leg, from_)
                self.dispatcher.deliver(response, leg=leg, dst_addr=from_, callback=self._sent)
            except (NetSIPError, ValueError, OSError) as exc:
                # whatever a peer sends must not stop the listener
                log.warning("cannot answer %s from %s: %s", method, from_, exc)
                stats.send_errors += 1
                status = "!"
            else:
                code = response.code()
                if code == self.code:
                    stats.answered += 1
                else:
                    stats.other[code] += 1
                status = str(code)
        if self.out is not None:
            self.out.line(
                f"{self._stamp()} {from_.proto or leg.proto} {from_} {method} "
                f"{packet.callid() or '-'} {status}"
            )

    def _response(self, request: Request, method: str, leg: Leg, peer: Addr) -> Response:
        """The answer to ``request``: ``self.code``, unless the dialog or the SDP says otherwise."""
        if method in _IN_DIALOG_ONLY or to_tag(request) is not None:
            # RFC 3261 12.2.2: a request within a dialog we do not have
            if request not in self.calls:
                return request.create_response(481)
            if method == "BYE":
                self.calls.end(request)
        if method != "INVITE" or not 200 <= self.code < 300:
            return request.create_response(self.code, self.reason)
        # a 2xx to an INVITE: the SDP answer to its offer, or an offer (RFC 3264)
        ip = leg.src.addr
        if ip in ("0.0.0.0", "::"):
            # a wildcard leg: the address the peer reaches us at (SDP needs a real one)
            ip = laddr4dst(peer.addr) or ip
        body = request.body()
        if body:
            ctype = (request.get_header("content-type") or "").split(";", 1)[0].strip().lower()
            if ctype != "application/sdp":
                return request.create_response(415, None, {"accept": "application/sdp"})
            sdp = answer_sdp(
                body.decode("utf-8", "replace"), ip, self.media.port(ip, leg.src.family)
            )
            if sdp is None:
                return request.create_response(488)
        else:
            sdp = offer_sdp(ip, self.media.port(ip, leg.src.family))
        self.calls.add(request)
        return request.create_response(
            self.code, self.reason, {"content-type": "application/sdp"}, sdp
        )

    def _sent(self, err: int) -> None:
        if err:
            self.stats.send_errors += 1
            log.warning("sending a response failed: %s", strerror(err))


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
        with SignalStop(loop, stop):
            legs = [
                make_leg(
                    sock=sock, proto=spec.proto, tls=tls if spec.proto in ("tls", "wss") else None
                )
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
        if listener is not None:
            listener.close()
        if dispatcher is not None:
            dispatcher.close()
        for _, sock in bound:
            sock.close()  # no-op when its leg closed it already
        loop.close()
        out.flush(wait=_FINAL_WAIT)
        out.give_up()
        if listener is not None:
            listener.stats.output_dropped = out.dropped
        if out.dropped:
            log.warning("stdout did not take %d lines: dropped", out.dropped)
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
    if any(s.proto in ("tls", "wss") for s in specs):
        if not args.tls_cert:
            raise CliError("listening on tls or wss needs --tls-cert (and --tls-key)")
        tls = tls_options(args, server=True)
    elif args.tls_cert or args.tls_key or args.tls_ca:
        raise CliError("--tls-cert/--tls-key/--tls-ca given but nothing listens on tls or wss")
    phrase = args.reason if args.reason is not None else REASON_PHRASES.get(args.code, "")
    if args.rcvbuf > 2**31 - 1:
        raise CliError(f"--rcvbuf {args.rcvbuf}: at most {2**31 - 1}")
    sets = open_listen_sockets(specs, args.workers)
    if args.rcvbuf:
        for spec, sock in (pair for bound in sets for pair in bound):
            if spec.proto != "udp":
                continue
            got = set_rcvbuf(sock, args.rcvbuf)
            if got < args.rcvbuf:
                log.warning(
                    "%s: receive buffer %d bytes, not %d: raise net.core.rmem_max "
                    "(sysctl -w net.core.rmem_max=%d) or run as root",
                    spec,
                    got,
                    args.rcvbuf,
                    args.rcvbuf,
                )
            else:
                log.debug("%s: receive buffer %d bytes", spec, got)

    def ready() -> None:
        for spec, _ in sets[0]:
            log.info("listening on %s", spec)

    cfg = _ServeConfig(args, tls, _Output(sys.stdout))
    if args.workers == 1:
        stats = _serve(sets[0], cfg, on_ready=ready)
        _summary(cfg.out, ListenStats.summary(stats, args.code, phrase))
        return EXIT_OK
    return _run_workers(sets, cfg, phrase, ready)


def _run_workers(
    sets: list[Bound], cfg: _ServeConfig, phrase: str, ready: Callable[[], None]
) -> int:
    """Fork one worker per socket set (:func:`netsip.cli._workers.run_workers`),
    wait for them, print the summary of them all."""

    def serve(bound: Bound, number: int, stop: Var[int]) -> dict[str, Any]:
        return _serve(bound, cfg, stop=stop, worker=number)

    results, failed = run_workers(sets, serve, ready, "netsip listen")
    merged = ListenStats.merge(list(results.values()))
    per = ", ".join(f"#{n} {results[n]['requests']}" for n in sorted(results))
    lines = ListenStats.summary(merged, cfg.args.code, phrase)
    lines.append(f"workers: {len(results)} of {len(sets)} ok; requests per worker: {per}")
    _summary(cfg.out, lines)
    return EXIT_OK if not failed else EXIT_FAIL


def _summary(out: _Output, lines: Sequence[str]) -> None:
    """Write the summary lines; a stdout nobody reads delays the exit by at most _FINAL_WAIT."""
    sys.stdout.flush()
    for text in lines:
        out.line(text, keep=True)
    out.flush(wait=_FINAL_WAIT)
