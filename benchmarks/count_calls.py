"""Instructions per call of a call-benchmark UAS, counted by callgrind.

The CPU figures of :mod:`benchmarks.bench_calls` vary with the machine's
load; the instructions a UAS executes per call do not (callgrind counts
them in user space: the kernel's share of the system calls is not in
them). This runs one UAS of the call benchmark under
``valgrind --tool=callgrind``, warms it up with a few calls, zeroes the
counters, runs sipp's ``uac`` scenario (closed loop) against it and reports
the instructions per completed call. Repeated runs of one revision agree
within about 0.5 %, so two revisions compare in one run each::

    python -m benchmarks.count_calls                       # netsip, this tree
    python -m benchmarks.count_calls --netsip-path DIR     # another revision's netsip
    python -m benchmarks.count_calls --uas stdlib          # the stdlib limit

Under callgrind the UAS runs some 50 times slower: keep the calls few
(default 2,000, about 15 s) and the concurrency low (default 10), so that
sipp's timers do not fire (the retransmissions it counts are printed: they
add work).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks import bench_calls
from benchmarks.bench_calls import REPO, sipp_cmd, sipp_stats, uas_cmd


def _sipp(dst: tuple[str, int], calls: int, concurrency: int, workdir: str) -> dict[str, int]:
    tag = time.monotonic_ns()
    stat = os.path.join(workdir, f"stat-{tag}.csv")
    cmd = sipp_cmd(
        dst,
        calls,
        concurrency,
        rate=None,
        pause_ms=0,
        timeout=600.0,
        stat=stat,
        errors=os.path.join(workdir, f"errors-{tag}.log"),
    )
    subprocess.run(
        cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return sipp_stats(stat)


def count(
    kind: str,
    calls: int,
    concurrency: int,
    *,
    warmup: int,
    netsip_path: str | None,
    workdir: str,
) -> tuple[float, dict[str, int]]:
    """Instructions per call of UAS ``kind``, and sipp's statistics of the run."""
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise RuntimeError("valgrind (callgrind) is not installed")
    out = os.path.join(workdir, "callgrind.out")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*([netsip_path] if netsip_path else []), REPO])
    uas = subprocess.Popen(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *uas_cmd(kind)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert uas.stdout is not None
    try:
        line = uas.stdout.readline().split()
        if len(line) != 3 or line[0] != b"LISTENING":
            raise RuntimeError(f"{kind} UAS did not start: {line!r}")
        dst = (line[1].decode(), int(line[2]))
        _sipp(dst, warmup, concurrency, workdir)
        subprocess.run(
            [control, "--zero", str(uas.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        # the UAS waits in epoll: a signal (its STATS line) makes it run and
        # so take the request to zero the counters
        time.sleep(0.5)
        uas.send_signal(signal.SIGUSR1)
        uas.stdout.readline()
        stats = _sipp(dst, calls, concurrency, workdir)
    finally:
        uas.terminate()
        uas.wait(timeout=60)
    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            for ln in f:
                if ln.startswith(("summary:", "totals:")):
                    total = max(total, int(ln.split()[1]))
    ok = stats.get("ok", 0)
    return (total / ok if ok else 0.0), stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--uas", choices=("netsip", "stdlib"), default="netsip")
    ap.add_argument("--calls", type=int, default=2000, help="calls counted")
    ap.add_argument("--concurrency", type=int, default=10, help="calls in flight (sipp -l)")
    ap.add_argument("--warmup", type=int, default=200, help="calls before the counters are zeroed")
    ap.add_argument("--netsip-path", help="a directory whose netsip package the UAS imports")
    ap.add_argument(
        "--keep", metavar="FILE", help="keep callgrind's output there (for callgrind_annotate)"
    )
    args = ap.parse_args(argv)
    path = os.path.abspath(args.netsip_path) if args.netsip_path else None
    bench_calls.NETSIP_PATH = path
    with tempfile.TemporaryDirectory(prefix="count-calls-") as workdir:
        per_call, stats = count(
            args.uas,
            args.calls,
            args.concurrency,
            warmup=args.warmup,
            netsip_path=path,
            workdir=workdir,
        )
        if args.keep:
            outs = sorted(glob.glob(os.path.join(workdir, "callgrind.out*")), key=os.path.getsize)
            if outs:
                shutil.copy(outs[-1], args.keep)
            else:
                print("callgrind wrote no output to keep", file=sys.stderr)
    print(
        f"{args.uas}{' (' + path + ')' if path else ''}: {per_call:,.0f} instructions per call "
        f"({stats.get('ok', 0)} calls, {stats.get('failed', 0)} failed, "
        f"{stats.get('retrans', 0)} sipp retransmissions)"
    )
    return 0 if stats.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
