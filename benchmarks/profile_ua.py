#!/usr/bin/env python3
"""Profile a user-agent answerer under sipp ``-sn uac``: where a call's set-up goes.

The answerer (``netsip``: ``netsip answer --echo``; ``listen.py``:
``examples/bench/listen.py``, as :mod:`benchmarks.bench_ua` runs them) gets
``--warmup`` calls, then the measured ``--calls`` at ``--rate`` calls/s (no
media: sipp's ``uac`` sends no RTP; the answerer still creates and starts the
call's media as with RTP).  Only the measured calls are profiled:

``cprofile``
    :mod:`cProfile` switched on and off by signals around the measured run;
    the functions with the most own time and the most cumulative time.
``callgrind``
    the answerer runs under ``valgrind --tool=callgrind`` (50-100x slower:
    use a low rate, e.g. 5 calls/s); the counters are zeroed after the
    warm-up and dumped after the measured calls (``callgrind_control``), and
    the instructions per call are the total over the calls.  Repeatable on a
    busy machine, unlike CPU time.
``cpu``
    the answerer's CPU time per call from ``/proc`` (as bench_ua's set-up
    section), for comparison.

    python -m benchmarks.profile_ua listen.py --tool cprofile --calls 1000 --rate 100
    python -m benchmarks.profile_ua netsip --tool callgrind --calls 100 --rate 5
"""

from __future__ import annotations

import argparse
import glob
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Run from a checkout without installing: the benchmarks package is in the parent.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_calls import run_sipp
from benchmarks.bench_ua import _free_udp_port, _wait_ready, answerer_cmd
from benchmarks.load import cpu_seconds
from benchmarks.profiling import cprofile_summary

#: run in the answerer before its program: SIGUSR1 starts cProfile, SIGUSR2
#: stops it and writes the stats to the file named by the first argument
_WRAPPER = """
import cProfile, runpy, signal, sys
out, prog, sys.argv = sys.argv[1], sys.argv[2], sys.argv[2:]
prof = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
def stop(*_):
    prof.disable()
    prof.dump_stats(out)
signal.signal(signal.SIGUSR2, stop)
if prog == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(prog, run_name="__main__")
"""


def _cumulative(stats_file: str, top: int) -> list[str]:
    st = pstats.Stats(stats_file)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:top]
    out = ["| cum % | cum s | calls | function |", "|---:|---:|---:|---|"]
    for (fname, line, func), (_cc, nc, _tt, ct, _callers) in rows:
        where = f"{fname.rpartition('netsip/')[2] or fname}:{line}" if line else "~"
        out.append(f"| {100 * ct / total:.1f} | {ct:.3f} | {nc} | `{func}` {where} |")
    return out


def _callgrind_total(out_file: str) -> int:
    """The instructions in a callgrind dump (its ``summary:`` or ``totals:`` line)."""
    with open(out_file) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise ValueError(f"no totals in {out_file}")


def profile(  # noqa: PLR0917  (the command line)
    kind: str,
    tool: str,
    calls: int,
    rate: float,
    warmup: int,
    top: int,
    save: str | None = None,
    netsip_path: str | None = None,
) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="netsip-profile-ua.") as workdir:
        port = _free_udp_port()
        if kind == "endpoint":
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "uas_endpoint.py")
            cmd = [sys.executable, script, "--port", str(port)]
        else:
            cmd = answerer_cmd(kind, port)
        env = dict(os.environ)
        if netsip_path is not None:
            # another revision: its netsip first on the path, its example
            env["PYTHONPATH"] = os.path.abspath(netsip_path)
            if kind == "listen.py":
                cmd[1] = os.path.join(netsip_path, "examples", "bench", "listen.py")
        stats = os.path.join(workdir, "profile.out")
        if tool == "cprofile":
            cmd = [cmd[0], "-c", _WRAPPER, stats, *cmd[1:]]
        elif tool == "callgrind":
            valgrind = shutil.which("valgrind")
            if valgrind is None:
                raise SystemExit("valgrind is not installed")
            cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={workdir}/cg.%p",
                   "--dump-instr=no", *cmd]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            if not _wait_ready(port, 120 if tool == "callgrind" else 20):
                raise SystemExit(f"{kind} did not answer: {proc.stderr and proc.stderr.read()!r}")
            addr = ("127.0.0.1", port)
            run_sipp(addr, warmup, 10000, workdir, rate=rate, timeout=60 + 2 * warmup / rate)
            if tool == "cprofile":
                proc.send_signal(signal.SIGUSR1)
            elif tool == "callgrind":
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
            cpu0 = cpu_seconds(proc.pid)
            res = run_sipp(addr, calls, 10000, workdir, rate=rate, timeout=60 + 2 * calls / rate)
            cpu = cpu_seconds(proc.pid) - cpu0
            lines = [
                f"{kind}: {res['ok']} calls ok, {res['failed']} failed, "
                f"{res.get('retrans', 0)} retransmissions at {rate:g} calls/s; "
                f"CPU {1e6 * cpu / max(res['ok'], 1):.0f} µs per call",
                "",
            ]
            if tool == "cprofile":
                proc.send_signal(signal.SIGUSR2)
                time.sleep(1.0)  # (the answerer writes the stats)
                lines += [*cprofile_summary(stats, top), "", *_cumulative(stats, top)]
                if save:
                    shutil.copy(stats, save)
            elif tool == "callgrind":
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
                dumps = sorted(glob.glob(f"{workdir}/cg.{proc.pid}.*"))
                total = _callgrind_total(dumps[-1])
                lines.append(
                    f"callgrind: {total:,} instructions over {res['ok']} calls: "
                    f"{total // max(res['ok'], 1):,} per call"
                )
            return lines
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("answerer", choices=("netsip", "listen.py", "endpoint"))
    ap.add_argument("--tool", choices=("cprofile", "callgrind", "cpu"), default="cprofile")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--save", help="keep the cProfile stats in this file")
    ap.add_argument("--netsip-path", help="run the netsip (and example) of this source tree")
    args = ap.parse_args(argv)
    for line in profile(
        args.answerer,
        args.tool,
        args.calls,
        args.rate,
        args.warmup,
        args.top,
        args.save,
        args.netsip_path,
    ):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
