#!/usr/bin/env python3
"""Throughput benchmark of netsip's Dispatcher as a UAS, against Perl's Net::SIP.

A UAS (one Leg + Dispatcher + a receiver answering every OPTIONS with 200)
runs in its own process; a load generator in another process keeps a fixed
number of OPTIONS transactions in flight and counts the completed ones. The
same generator command is run against netsip's UAS and against Perl's Net::SIP
UAS (Net::SIP::Leg + Net::SIP::Dispatcher, the layers netsip ports), for UDP
and for TCP. Reported per run: completed transactions/s, the responder's CPU
time per transaction (from /proc), failures; and netsip/Perl ratios.

The responders and the load are those of ``python -m benchmarks``
(:mod:`benchmarks.responders`, :mod:`benchmarks.load`), which runs this
comparison too, next to the SocketPool level and the Python limit. The
generator is sipp when installed, else a small built-in Python generator
(``--generator python``; it may itself become the bottleneck, so its ratios
are lower bounds).

Target: netsip at least 3 times Perl's throughput on each transport.
The exit status is 0 when the target is met, 1 otherwise.

Run::

    python3 benchmarks/bench_dispatcher.py [--calls 30000] [--concurrency 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict

# Run from a checkout without installing: the repository is the parent directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.load import Result, measure

TARGET_RATIO = 3.0

_SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Dispatcher UAS throughput vs Perl (see docstring)")
    ap.add_argument("--calls", type=int, default=30000, help="transactions per run")
    ap.add_argument("--concurrency", type=int, default=100, help="transactions in flight")
    ap.add_argument("--protos", default="udp,tcp", help="comma-separated transports")
    ap.add_argument("--generator", choices=["auto", "sipp", "python"], default="auto")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound for one run (s)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    gen = args.generator
    if gen == "auto":
        gen = "sipp" if shutil.which("sipp") else "python"
    results: list[Result] = []
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_dispatcher.") as workdir:
        for proto in args.protos.split(","):
            by_impl = {}
            for impl, responder in (("netsip", "dispatcher"), ("perl", "perl")):
                r = measure(responder, _SIPP_TRANSPORT[proto], args.calls, args.concurrency,
                            generator=gen, timeout=args.timeout, workdir=workdir)  # fmt: skip
                results.append(r)
                by_impl[impl] = r
                if not args.json:
                    print(
                        f"{impl:6} {proto}: {r.tx_per_s:9.1f} transactions/s, "
                        f"{r.cpu_us_per_tx} us UAS CPU/transaction, "
                        f"{r.ok} ok, {r.failed} failed ({gen}, -l {r.concurrency})",
                        flush=True,
                    )
            perl_tps = by_impl["perl"].tx_per_s
            netsip_tps = by_impl["netsip"].tx_per_s
            ratios[proto] = round(netsip_tps / perl_tps, 2) if perl_tps else 0.0
    met = all(r >= TARGET_RATIO for r in ratios.values()) and all(r.failed == 0 for r in results)
    if args.json:
        print(
            json.dumps(
                {
                    "results": [asdict(r) for r in results],
                    "ratios": ratios,
                    "target_ratio": TARGET_RATIO,
                    "target_met": met,
                },
                indent=2,
            )
        )
    else:
        for proto, ratio in ratios.items():
            print(f"ratio netsip/perl {proto}: {ratio:.2f} (target >= {TARGET_RATIO})")
        print("target met" if met else "target NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
