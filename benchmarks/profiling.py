"""Profile a responder under sipp load: the evidence behind the hot-path work.

Two profilers, both summarised as the functions with the most *own* time:

``cprofile``
    the responder runs under :mod:`cProfile` (``--profile`` of
    :mod:`benchmarks.responders`); deterministic, with call counts, but it
    slows small functions down more than big ones.
``py-spy``
    ``py-spy record`` samples the running responder from outside (no
    instrumentation); needs the ``py-spy`` program (``pip install py-spy``)
    and ptrace permission. It pauses the process for each sample, so waiting
    in ``epoll_wait`` shows as ``EventLoop._epoll_ready`` (``EpollSelector.select``
    in older revisions or with another selector); those samples are
    left out of the percentages (``--keep-idle`` keeps them): the tables
    show where the CPU time goes.

Run::

    python -m benchmarks.profiling dispatcher u1 [--calls 20000] [--tool py-spy] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.load import TRANSPORTS, run_sipp, sipp_local_ip, start_responder
from benchmarks.responders import RESPONDERS


def _short(path: str) -> str:
    """``netsip/packet.py`` for a path inside the repository, the base name otherwise."""
    parts = path.replace("\\", "/").split("/")
    for anchor in ("netsip", "benchmarks"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :])
    return parts[-1]


def cprofile_summary(stats_file: str, top: int) -> list[str]:
    """The ``top`` functions by own time, as table rows (Markdown)."""
    st = pstats.Stats(stats_file)
    # pstats keeps its table in an undocumented attribute
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    out = ["| own % | own s | cum s | calls | function |", "|---:|---:|---:|---:|---|"]
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in rows:
        where = f"{_short(fname)}:{line}" if line else "~"
        out.append(f"| {100 * tt / total:.1f} | {tt:.3f} | {ct:.3f} | {nc} | `{func}` {where} |")
    return out


# the innermost frame of a sample taken while the loop waits in epoll_wait
# (on uvloop, libuv's own work and its epoll_wait both show as run_until_complete:
# not separable, so counted as busy)
_IDLE_FRAMES = ("EpollSelector.select ", "EventLoop._epoll_ready ")


def pyspy_summary(raw_file: str, top: int, keep_idle: bool = False) -> list[str]:
    """The ``top`` functions by own time (leaf frames) and by total time (on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    with open(raw_file) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_pyspy_frame(fr) for fr in stack.split(";")]
            if not keep_idle and frames[-1].startswith(_IDLE_FRAMES):
                idle += n
                continue
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    total = max(total, 1)
    out = [
        f"{total} samples ({idle} more waiting in epoll_wait, left out)",
        "",
        "| own % | total % | function |",
        "|---:|---:|---|",
    ]
    for frame, n in own.most_common(top):
        out.append(f"| {100 * n / total:.1f} | {100 * incl[frame] / total:.1f} | `{frame}` |")
    out += ["", "| total % | own % | function |", "|---:|---:|---|"]
    for frame, n in incl.most_common(top):
        out.append(f"| {100 * n / total:.1f} | {100 * own[frame] / total:.1f} | `{frame}` |")
    return out


def _pyspy_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func netsip/file.py" (lines merged)
    func, _, rest = frame.partition(" (")
    return f"{func} {_short(rest.rstrip(')').rpartition(':')[0])}" if rest else func


def profile(responder: str, transport: str, calls: int, *, concurrency: int = 100,
            tool: str = "cprofile", top: int = 25, rate: float | None = None,
            netsip_path: str | None = None, keep_idle: bool = False) -> list[str]:  # fmt: skip
    """Load ``responder`` over ``transport`` and return the profile summary lines."""
    proto = TRANSPORTS[transport]
    with tempfile.TemporaryDirectory(prefix="netsip-profile.") as workdir:
        out = os.path.join(workdir, "profile.out")
        if tool == "cprofile":
            with start_responder(responder, proto, profile=out, netsip_path=netsip_path) as (
                _proc,
                dst,
            ):
                run_sipp(
                    transport,
                    dst,
                    calls,
                    concurrency,
                    timeout=120,
                    workdir=workdir,
                    rate=rate,
                    ip=sipp_local_ip(),
                )
            return cprofile_summary(out, top)
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            raise SystemExit("py-spy is not installed (pip install py-spy)")
        with start_responder(responder, proto, netsip_path=netsip_path) as (proc, dst):
            run_sipp(
                transport, dst, 500, concurrency, timeout=60, workdir=workdir, ip=sipp_local_ip()
            )  # warm up
            spy = subprocess.Popen(
                [pyspy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "1000",
                 "--output", out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
            run_sipp(
                transport,
                dst,
                calls,
                concurrency,
                timeout=120,
                workdir=workdir,
                rate=rate,
                ip=sipp_local_ip(),
            )
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
        return pyspy_summary(out, top, keep_idle)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="profile a responder under sipp load")
    ap.add_argument("responder", choices=[r for r in RESPONDERS if r != "perl"])
    ap.add_argument("transport", choices=sorted(TRANSPORTS))
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--tool", choices=("cprofile", "py-spy"), default="cprofile")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rate", type=float, help="calls/s (default: a closed loop)")
    ap.add_argument("--netsip-path", metavar="DIR", help="import netsip from DIR (a baseline)")
    ap.add_argument("--keep-idle", action="store_true", help="py-spy: count epoll_wait samples")
    args = ap.parse_args(argv)
    lines = profile(
        args.responder,
        args.transport,
        args.calls,
        concurrency=args.concurrency,
        tool=args.tool,
        top=args.top,
        rate=args.rate,
        netsip_path=args.netsip_path,
        keep_idle=args.keep_idle,
    )
    print(f"{args.tool}: {args.responder} over {args.transport}, {args.calls} transactions")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
