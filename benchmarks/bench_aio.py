"""netsip's Dispatcher UAS on its own loop, on asyncio and on uvloop.

``python -m benchmarks.bench_aio`` (about 4 minutes; ``--quick`` under 40 s)
loads three responders (:mod:`benchmarks.responders`) with the same sipp
OPTIONS load:

* ``dispatcher``: Leg + Dispatcher on netsip's :class:`~netsip.eventloop.EventLoop`;
* ``dispatcher-asyncio``: the same on :class:`~netsip.aio.AsyncioEventLoop`
  over the standard library's asyncio loop;
* ``dispatcher-uvloop``: the same over a uvloop loop.

Two loads, as ``python -m benchmarks``: a closed loop (sipp keeps 100
transactions in flight) over UDP (``u1``), TCP on one connection (``t1``) and
TCP with a connection per call (``tn``); and a fixed offered rate
(``--rate`` calls/s over UDP, default 2,000, which every loop sustains), where
CPU per transaction compares equal work at equal load. The responder's CPU
time comes from /proc; each figure is the median of ``--repeats`` runs,
interleaved (every round loads each responder once, in a rotated order), so
a noisy phase of a shared machine hits the three alike and the ratios stay
meaningful even when the absolute figures move.

The issue's targets: asyncio within 1.3x of the native loop's CPU per
transaction, uvloop within 1.1x (or better). Results go to
``performance-asyncio.{md,json,png}`` in ``--out`` (default ``docs/``; a
``--quick`` run writes only when ``--out`` is given). Nothing fails on a
number: the exit status is 1 only if transactions failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Final

from benchmarks.load import REPO, Spec, environment, loadavg, measure_interleaved, say

RESPONDERS: Final = ("dispatcher", "dispatcher-asyncio", "dispatcher-uvloop")
LABELS: Final = {"dispatcher": "native", "dispatcher-asyncio": "asyncio",
                 "dispatcher-uvloop": "uvloop"}  # fmt: skip
#: the issue's targets: CPU per transaction against the native loop's
TARGETS: Final = {"dispatcher-asyncio": 1.3, "dispatcher-uvloop": 1.1}
TRANSPORT_NAMES: Final = {"u1": "UDP", "t1": "TCP, one connection",
                          "tn": "TCP, connection per call"}  # fmt: skip


def run(quick: bool, repeats: int, rate: float, log: list[str]) -> dict[str, Any]:
    """Measure every load; returns the JSON-able results."""
    specs = [Spec(r, label=LABELS[r]) for r in RESPONDERS]
    # (panel, transport, calls per run, rate)
    loads: list[tuple[str, str, int, float | None]] = (
        [("closed", "u1", 10_000, None), ("rate", "u1", 3_000, rate)]
        if quick
        else [("closed", "u1", 60_000, None), ("closed", "t1", 60_000, None),
              ("closed", "tn", 4_000, None), ("rate", "u1", int(rate * 4), rate)]
    )  # fmt: skip
    res: dict[str, Any] = {"env": environment(), "repeats": repeats, "rate_calls_per_s": rate,
                           "quick": quick, "closed": [], "rate": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-aio-") as workdir:
        for panel, transport, calls, r in loads:
            t0 = time.monotonic()
            results = measure_interleaved(specs, transport, calls, 100, workdir=workdir,
                                          rate=r, repeats=repeats, timeout=120)  # fmt: skip
            res[panel] += [asdict(x) for x in results]
            what = f"{r:g} calls/s" if r else "closed loop, 100 in flight"
            say(log, f"{transport} {what}: {time.monotonic() - t0:.0f} s, load {loadavg()}")
            for x in results:
                say(log, f"  {x.responder:8} {x.tx_per_s:9.0f} tx/s  "
                          f"{x.cpu_us_per_tx} us/tx  runs {x.runs}  failed {x.failed}")  # fmt: skip
    return res


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (panel, transport, loop) ratio against native, with the target's verdict."""
    out = []
    for panel in ("closed", "rate"):
        by = {(r["responder"], r["transport"]): r for r in res[panel]}
        for transport in dict.fromkeys(r["transport"] for r in res[panel]):
            native = by[("native", transport)]["cpu_us_per_tx"]
            for kind, target in TARGETS.items():
                other = by[(LABELS[kind], transport)]["cpu_us_per_tx"]
                ratio = other / native if native and other else None
                out.append({"panel": panel, "transport": transport, "loop": LABELS[kind],
                            "native_us": native, "loop_us": other,
                            "ratio": round(ratio, 3) if ratio else None, "target": target,
                            "hit": ratio <= target if ratio else None})  # fmt: skip
    return out


def report(res: dict[str, Any]) -> list[str]:
    """The Markdown results: the tables and the verdicts."""
    env = res["env"]
    out = [
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, shared with other "
        f"work; load average {env['loadavg']} at the start), {env['kernel']}, Python "
        f"{env['python']}, {env['sipp']}. Command: `python -m benchmarks.bench_aio"
        f"{' --quick' if res['quick'] else ''}`; medians of {res['repeats']} interleaved runs.",
        "",
        "| load | transport | loop | tx/s | CPU us/tx | runs (tx/s, us/tx) | failed |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for panel in ("closed", "rate"):
        what = "closed, 100 in flight" if panel == "closed" else f"{res['rate_calls_per_s']:g}/s"
        for r in res[panel]:
            runs = ", ".join(f"{t:.0f}/{c}" for t, c in r["runs"])
            out.append(f"| {what} | {r['transport']} | {r['responder']} | {r['tx_per_s']:.0f} "
                       f"| {r['cpu_us_per_tx']} | {runs} | {r['failed']} |")  # fmt: skip
    out += [
        "",
        "| load | transport | loop | native us/tx | loop us/tx | ratio | target | verdict |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for v in res["verdicts"]:
        verdict = "n/a" if v["hit"] is None else ("met" if v["hit"] else "**missed**")
        ratio = f"{v['ratio']:.2f}x" if v["ratio"] else "n/a"
        out.append(f"| {v['panel']} | {v['transport']} | {v['loop']} | {v['native_us']} "
                   f"| {v['loop_us']} | {ratio} | <= {v['target']}x | {verdict} |")  # fmt: skip
    if res.get("chart"):
        out += ["", f"![CPU per transaction by loop]({res['chart']})"]
    return out


def chart(res: dict[str, Any], path: str) -> bool:
    """CPU per transaction per loop and load as a PNG; False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415  # the optional "bench" extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    groups = [("closed", r["transport"]) for r in res["closed"]] + [
        ("rate", r["transport"]) for r in res["rate"]
    ]
    groups = list(dict.fromkeys(groups))
    colors = {"native": "tab:green", "asyncio": "tab:blue", "uvloop": "tab:purple"}
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    width = 0.8 / len(colors)
    for i, name in enumerate(colors):
        xs, ys = [], []
        for j, (panel, transport) in enumerate(groups):
            for r in res[panel]:
                if r["responder"] == name and r["transport"] == transport and r["cpu_us_per_tx"]:
                    xs.append(j + (i - 1) * width)
                    ys.append(r["cpu_us_per_tx"])
        bars = ax.bar(xs, ys, width, label=name, color=colors[name])
        ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7, padding=1)
    ticks = [f"{t}\n{TRANSPORT_NAMES[t]}" + ("" if p == "closed" else
             f"\n{res['rate_calls_per_s']:g} calls/s") for p, t in groups]  # fmt: skip
    ax.set_xticks(range(len(groups)), ticks, fontsize=8)
    ax.set_ylabel("responder CPU per transaction (us)")
    ax.set_title("netsip Dispatcher UAS, OPTIONS/200 under sipp, by event loop", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a smoke run (under 40 s)")
    ap.add_argument("--repeats", type=int, help="interleaved runs per load (default 5, quick 3)")
    ap.add_argument("--rate", type=float, default=2000.0, help="offered calls/s (default 2000)")
    ap.add_argument("--out", help="directory for performance-asyncio.* (default docs/)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    log: list[str] = []
    t0 = time.monotonic()
    res = run(args.quick, repeats, args.rate, log)
    res["verdicts"] = verdicts(res)
    out_dir = args.out or (None if args.quick else os.path.join(REPO, "docs"))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        if chart(res, os.path.join(out_dir, "performance-asyncio.png")):
            res["chart"] = "performance-asyncio.png"
    lines = report(res)
    print("\n".join(lines))
    print(f"total {time.monotonic() - t0:.0f} s")
    if out_dir:
        with open(os.path.join(out_dir, "performance-asyncio.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(out_dir, "performance-asyncio.md"), "w") as f:
            f.write("# Performance: netsip on asyncio and uvloop\n\n"
                    "Written by `python -m benchmarks.bench_aio` (see its docstring for the "
                    "method); the\ntutorial is [asyncio.md](asyncio.md).\n\n"
                    + "\n".join(lines) + "\n")  # fmt: skip
    failed = sum(r["failed"] for p in ("closed", "rate") for r in res[p])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
