"""``netsip bench``: a closed-loop SIP load generator.

``--concurrency`` units are kept in flight until ``--count`` are done or
``--duration`` is over; a unit is one transaction (OPTIONS, MESSAGE, INFO,
REGISTER) or, with ``--method INVITE``, a whole call: INVITE, the ACK of its
2xx, and a BYE within the dialog (RFC 3261 13.2.2.4, 15.1.1). It prints
units/s, failures and latency percentiles, or one JSON object (``--json``).
Net::SIP's counterpart is ``examples/bench/call.pl``.

Performance plan: this is a load generator, so the work per unit is one
request built (:meth:`Client.make_request`), one
:meth:`TransactionClient.send <netsip.transaction.TransactionClient.send>`
and one completion callback that launches the next unit; the statistics are a
list append per unit, sorted once at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

from netsip.cli._client import Client, client_session, describe, parse_target
from netsip.cli._common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Parents,
    Subparsers,
    positive_int,
    seconds,
)
from netsip.eventloop import TimerLike
from netsip.transaction import ClientTransaction
from netsip.util import Var

__all__ = ["add_parser", "cmd_bench", "percentile"]

# Seconds `bench --method INVITE` keeps running after its last call.
_LINGER: Final = 0.3


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``bench`` subcommand and its options."""
    p = subparsers.add_parser(
        "bench",
        parents=[parents.common, parents.client, parents.tls],
        help="load generator",
        description="Closed-loop load: --concurrency transactions in flight until --count "
        "are done or --duration is over; prints tx/s, failures and latency percentiles.",
    )
    p.add_argument("uri", help="target, e.g. sip:127.0.0.1:5060")
    p.add_argument(
        "-c",
        "--concurrency",
        type=positive_int,
        default=10,
        help="transactions in flight (default %(default)s)",
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "-n", "--count", type=positive_int, help="transactions to complete (default 1000)"
    )
    amount.add_argument("-d", "--duration", type=seconds, metavar="S", help="seconds to run")
    p.add_argument(
        "-m",
        "--method",
        default="OPTIONS",
        type=str.upper,
        choices=("OPTIONS", "INVITE", "MESSAGE", "INFO", "REGISTER"),
        help="OPTIONS (default), or INVITE for whole calls (INVITE, ACK, BYE)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")


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

    def _invite_done(self, start: float, txn: ClientTransaction) -> None:
        if not txn.ok or txn.response is None:
            self._unit_done(start, txn)
            return
        # the call is up (the client ACKed it): hang up within the dialog
        try:
            self.client.send_in_dialog(txn, "BYE", 2, partial(self._unit_done, start))
        except CliError as exc:  # e.g. a Contact that cannot be sent to: this call failed
            self.in_flight -= 1
            self.failed += 1
            self.errors[f"BYE: {exc}"] += 1
            if not self._launch() and self.in_flight == 0:
                self._end()

    def _unit_done(self, start: float, txn: ClientTransaction) -> None:
        self.in_flight -= 1
        if txn.ok:
            self.completed += 1
            self.latencies.append(time.monotonic() - start)
        else:
            self.failed += 1
            what = describe(txn)
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
    with client_session(args, target) as (client, stop):
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
