#!/usr/bin/env python3
"""Full calls against three UASs: netsip's Endpoint, Perl's Net::SIP Endpoint, the stdlib limit.

sipp's built-in ``uac`` scenario (``-sn uac``: INVITE, 100, 180, 200, ACK,
BYE, 200; the INVITE with SDP, over UDP) loads each UAS in a process of its
own; the UAS's CPU time (user + system, /proc) per completed call is the
figure. The UASs answer alike: 100, 180 and a 200 with Contact and the same
small SDP answer to INVITE, nothing to ACK, 200 to BYE.

``netsip``
    :mod:`benchmarks.uas_endpoint`: Leg + Dispatcher + Endpoint, an
    application sending 180 and 200; the endpoint sends the 100, keeps the
    dialog, answers BYE and retransmits the 200 until the ACK.
``perl``
    ``benchmarks/perl/uas_endpoint.pl``: the same on Perl's Net::SIP
    (Leg + Dispatcher + Endpoint).
``stdlib``
    :mod:`benchmarks.uas_stdlib`: the Python limit, no parser and no state.
``compiled`` (only with ``--compiled DIR``)
    the ``netsip`` UAS on netsip's compiled build (``NETSIP_COMPILE=1``, the
    call path compiled with mypyc) in the copy of this checkout that
    ``python -m benchmarks.build_compiled DIR`` made. It is held to the same
    targets as the pure-Python ``netsip``, in rows of its own.

Sections (``--only``, comma-separated):

``closed``
    sipp keeps ``--concurrency`` calls in flight (``-l``, a closed loop);
    ``--calls`` calls per run (Perl a quarter: it is slower by an order of
    magnitude, and its runs still last seconds). The UASs' runs interleave,
    round by round, in an order rotated each round; medians of ``--repeats``.
``rate``
    sipp offers ``--rate`` calls/s (``-r``), which all three sustain: CPU per
    call at equal load, also interleaved.
``dialogs``
    Two netsip UASs; one holds 10 established dialogs, the other
    ``--dialogs`` (sipp calls paused before their BYE), each confirmed with
    ``len(endpoint)``. RSS per held dialog (RSS after minus before, over the
    dialogs, once right after the set-up and once after ``--settle`` seconds,
    when the INVITE transactions and cached responses have expired), then
    CPU per call of a short-call load (closed loop) against both, interleaved.
``pyspy``
    netsip's UAS under a closed-loop load with ``py-spy record`` attached:
    the functions with the most samples (own and inclusive).
``sweep``
    Why a fixed rate costs more per call than the closed loop: each UAS at
    ``--sweep-rates`` calls/s (Perl only where it has the CPU to keep up),
    CPU per call and the times the UAS was put on a CPU per call (the
    third field of ``/proc/PID/schedstat``: its wakeups, as it sleeps in
    epoll/select whenever its socket is empty). A least-squares line over
    the rates splits each UAS's CPU per call into a part per call and a part
    per wakeup.

Results go to stdout (Markdown), ``docs/performance-calls.json`` and the
section of ``docs/performance.md`` between this benchmark's markers (not with
``--quick`` unless ``--out`` is given). Nothing fails on a number: exit
status 0 unless calls failed.

    python3 -m benchmarks.bench_calls [--quick] [--only closed,rate,dialogs,pyspy,sweep]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

# Run from a checkout without installing: the benchmarks package is in the parent.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.load import (
    cpu_seconds,
    environment,
    loadavg,
    num,
    say,
    sipp_local_ip,
    write_section,
)
from netsip._native import compiled_modules

REPO: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE: Final = os.path.join(REPO, "benchmarks")
UASS: Final = ("netsip", "perl", "stdlib")
SECTIONS: Final = ("closed", "rate", "dialogs", "pyspy", "sweep")
#: calls/s of the sweep section; Perl runs only up to SWEEP_PERL_MAX_RATE
SWEEP_RATES: Final = (100.0, 300.0, 1000.0, 3000.0)
SWEEP_PERL_MAX_RATE: Final = 300.0

#: targets of the Endpoint work
PERL_VS_NETSIP: Final = 5.0  # Perl CPU/call >= 5x netsip's (aim 10x)
NETSIP_VS_STDLIB: Final = 3.0  # netsip CPU/call <= 3x the stdlib limit's
BYTES_PER_DIALOG: Final = 4096  # RSS per held dialog below 4 KiB
HELD_CPU_GROWTH: Final = 1.2  # CPU/call at 10,000 held dialogs within 20 % of at 10

#: Perl's share of the closed loop's calls per run (see the module docstring)
PERL_SHARE: Final = 0.25
#: sipp's socket buffers: with the default (64 KiB) a burst of 100 calls'
#: responses overflows sipp's receive queue on loopback, and a lost 200 to an
#: INVITE is never recovered from the stdlib UAS (it does not retransmit)
SIPP_BUFFER: Final = 4 * 1024 * 1024
#: the pause of a held call (ms): longer than any run
HOLD_MS: Final = 36_000_000

#: ``--netsip-path``: a directory whose ``netsip`` package the UAS imports
NETSIP_PATH: str | None = None
#: ``--compiled``: the checkout copy of :mod:`benchmarks.build_compiled`
COMPILED_PATH: str | None = None
#: CPUs of the UAS and of sipp (``--no-pin`` leaves both to the scheduler):
#: on a small machine the scheduler runs sipp on the UAS's CPU, woken by the
#: UAS's own sendto, and sipp preempts the UAS there (an involuntary context
#: switch per response). Peers on other hosts do not do that; pinning keeps
#: each on a CPU of its own, alike for every UAS.
PIN: tuple[set[int], set[int]] | None = None


def pinning(enabled: bool) -> tuple[set[int], set[int]] | None:
    """The UAS on the last CPU this process may use, sipp on the others (None if < 2)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def _pinned(which: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` putting the child on its CPUs (0: the UAS, 1: sipp), or None."""
    if PIN is None:
        return None
    cpus = PIN[which]
    return lambda: os.sched_setaffinity(0, cpus)


MD_BEGIN: Final = (
    "<!-- call benchmark results: begin (written by python -m benchmarks.bench_calls) -->"
)
MD_END: Final = "<!-- call benchmark results: end -->"


# ------------------------------------------------------------------ the UASs


def uas_cmd(kind: str) -> list[str]:
    if kind in ("netsip", "compiled"):
        return [sys.executable, os.path.join(HERE, "uas_endpoint.py")]
    if kind == "stdlib":
        return [sys.executable, os.path.join(HERE, "uas_stdlib.py")]
    if kind == "perl":
        perl = shutil.which("perl")
        if perl is None:
            raise RuntimeError("perl is not installed")
        return [perl, os.path.join(HERE, "perl", "uas_endpoint.pl")]
    raise ValueError(kind)


class Uas:
    """A UAS process: its address, its ``STATS`` lines, its CPU and RSS."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.stderr_path = os.path.join(workdir, f"uas-{kind}-{time.monotonic_ns()}.err")
        env = dict(os.environ)
        first = COMPILED_PATH if kind == "compiled" else NETSIP_PATH
        paths = [*([first] if first else []), REPO, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                uas_cmd(kind),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=_pinned(0),  # noqa: PLW1509 (no threads here)
            )
        self._buf = b""
        line = self._line(30.0).split()
        if len(line) != 3 or line[0] != "LISTENING":
            self.stop()
            raise RuntimeError(f"{kind} UAS did not start: {line!r}, {self.stderr_tail()}")
        self.addr = (line[1], int(line[2]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def stats(self, timeout: float = 10.0) -> dict[str, str]:
        """The UAS's ``STATS`` line, asked with SIGUSR1 (empty if no answer)."""
        self.proc.send_signal(signal.SIGUSR1)
        line = self._line(timeout)
        if not line.startswith("STATS "):
            return {}
        return dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)

    def contexts(self, timeout: float = 10.0) -> int | None:
        """``len(endpoint)`` (None if no answer)."""
        n = self.stats(timeout).get("contexts")
        return int(n) if n is not None else None

    def gc_seconds(self) -> float | None:
        """Seconds the UAS spent in the cyclic garbage collector so far (netsip only)."""
        s = self.stats().get("gc_s")
        return float(s) if s is not None else None

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def slices(self) -> tuple[int, int] | None:
        """How often the process was put on a CPU so far (``/proc/PID/schedstat``),
        and how often it was taken off while it could run (preempted)."""
        try:
            with open(f"/proc/{self.proc.pid}/schedstat") as f:
                slices = int(f.read().split()[2])
            with open(f"/proc/{self.proc.pid}/status") as f:
                for ln in f:
                    if ln.startswith("nonvoluntary_ctxt_switches:"):
                        return slices, int(ln.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stderr_tail(self, n: int = 5) -> list[str]:
        """The last lines the UAS logged (warnings, tracebacks)."""
        with open(self.stderr_path, errors="replace") as f:
            return [ln.rstrip() for ln in f.readlines()[-n:]]

    def stderr_lines(self) -> int:
        with open(self.stderr_path, errors="replace") as f:
            return sum(1 for _ in f)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def started(kinds: list[str], workdir: str) -> Iterator[list[Uas]]:
    uass: list[Uas] = []
    try:
        for k in kinds:
            uass.append(Uas(k, workdir))
        yield uass
    finally:
        for u in uass:
            u.stop()


# ---------------------------------------------------------------------- sipp


def sipp_cmd(
    dst: tuple[str, int],
    calls: int,
    concurrency: int,
    *,
    rate: float | None,
    pause_ms: int,
    timeout: float,
    stat: str,
    errors: str,
    stat_every_s: int = 3600,
) -> list[str]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed")
    return [
        sipp,
        f"{dst[0]}:{dst[1]}",
        "-sn",
        "uac",
        "-t",
        "u1",
        "-i",
        sipp_local_ip(),
        "-l",
        str(concurrency),
        "-m",
        str(calls),
        "-r",
        str(int(rate)) if rate else "1000000",
        "-d",
        str(pause_ms),
        "-buff_size",
        str(SIPP_BUFFER),
        # -nd: a finished call is released at once (the concurrency limit, not
        # sipp's call bookkeeping, paces the closed loop)
        "-nd",
        "-nostdin",
        "-trace_stat",
        "-stf",
        stat,
        "-fd",
        str(stat_every_s),
        "-trace_err",
        "-error_file",
        errors,
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
    ]


def sipp_stats(path: str) -> dict[str, int]:
    """The last row of sipp's statistics file: calls ok/failed/current, retransmissions."""
    try:
        with open(path) as f:
            rows = [ln.rstrip("\n").split(";") for ln in f if ln.strip()]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}
    out = {}
    for key, name in (
        ("ok", "SuccessfulCall(C)"),
        ("failed", "FailedCall(C)"),
        ("current", "CurrentCall"),
        ("retrans", "Retransmissions(C)"),
        ("unexpected", "FailedUnexpectedMessage(C)"),
        ("timeouts", "FailedMaxUDPRetrans(C)"),
    ):
        if name in col:
            out[key] = int(last[col[name]])
    return out


def _errors(path: str, n: int = 3) -> list[str]:
    """The first events of sipp's error log (what went wrong, in sipp's words)."""
    try:
        with open(path, errors="replace") as f:
            text = f.read(4000)
    except OSError:
        return []
    return [ln for ln in text.splitlines() if "\t" in ln][:n]


def run_sipp(
    dst: tuple[str, int],
    calls: int,
    concurrency: int,
    workdir: str,
    *,
    rate: float | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """One sipp run of ``calls`` short calls; ``ok``, ``failed``, ``retrans``, ``secs``."""
    tag = time.monotonic_ns()
    stat = os.path.join(workdir, f"stat-{tag}.csv")
    errors = os.path.join(workdir, f"errors-{tag}.log")
    cmd = sipp_cmd(
        dst, calls, concurrency, rate=rate, pause_ms=0, timeout=timeout, stat=stat, errors=errors
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout + 30,
        check=False,
        preexec_fn=_pinned(1),
    )
    secs = time.perf_counter() - t0
    res: dict[str, Any] = {"ok": 0, "failed": calls, "retrans": 0}
    res |= sipp_stats(stat)
    res["secs"] = secs
    res["rc"] = proc.returncode
    if res["failed"] or proc.returncode not in (0, 1):
        res["errors"] = _errors(errors) or [proc.stderr.decode(errors="replace")[-300:]]
    return res


class Hold:
    """A sipp that sets up ``n`` calls at ``rate`` calls/s and holds them (no BYE)."""

    def __init__(self, dst: tuple[str, int], n: int, rate: float, workdir: str) -> None:
        tag = time.monotonic_ns()
        self.stat = os.path.join(workdir, f"hold-{tag}.csv")
        self.errors = os.path.join(workdir, f"hold-{tag}.log")
        cmd = sipp_cmd(
            dst,
            n,
            n,
            rate=rate,
            pause_ms=HOLD_MS,
            timeout=HOLD_MS // 1000,
            stat=self.stat,
            errors=self.errors,
            stat_every_s=1,
        )
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pinned(1),  # noqa: PLW1509 (no threads here)
        )

    def stats(self) -> dict[str, int]:
        return sipp_stats(self.stat)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def hold(uas: Uas, n: int, rate: float, workdir: str, timeout: float) -> tuple[Hold, int | None]:
    """Hold ``n`` dialogs on ``uas``; returns once its endpoint counts ``n`` contexts
    (and sipp has no call in set-up), or at the timeout. The count is returned."""
    h = Hold(uas.addr, n, rate, workdir)
    deadline = time.monotonic() + timeout
    count = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        count = uas.contexts()
        st = h.stats()
        if h.proc.poll() is not None:
            break
        if count is not None and count >= n and st.get("current") == n:
            # the ACKs are in: sipp sent its last ACK before the pause; one
            # more look at the stats a second later (they are written every second)
            time.sleep(1.0)
            count = uas.contexts()
            break
    return h, count


# ---------------------------------------------------------------- measurement


@dataclass
class Row:
    """One UAS under one load: medians over the runs."""

    uas: str
    mode: str  # closed | rate | held
    calls: int
    concurrency: int
    rate: float | None
    ok: int = 0
    failed: int = 0
    retrans: int = 0
    calls_per_s: float | None = None
    cpu_us_per_call: float | None = None
    runs: list[tuple[float, float | None]] = field(default_factory=list)  # (calls/s, us/call)
    gc_us_per_call: list[float] = field(default_factory=list)  # per run (netsip's UAS)
    wakeups_per_call: list[float] = field(default_factory=list)  # per run (schedstat)
    preempted_per_call: list[float] = field(default_factory=list)  # per run (status)
    errors: list[str] = field(default_factory=list)
    contexts_after: int | None = None
    uas_log_lines: int = 0


def interleaved(
    uass: list[Uas],
    labels: list[str],
    calls: list[int],
    concurrency: int,
    *,
    rate: float | None,
    repeats: int,
    warmup: int,
    workdir: str,
    mode: str,
    log: list[str],
) -> list[Row]:
    """Load every UAS ``repeats`` times, round by round in a rotated order."""
    overheads = []
    for u, n in zip(uass, calls, strict=True):
        run_sipp(
            u.addr, min(warmup, n), concurrency, workdir, rate=rate, timeout=_timeout(warmup, rate)
        )
        # sipp's start and exit, subtracted from the wall clock of a run
        overheads.append(min(run_sipp(u.addr, 1, 1, workdir)["secs"] for _ in range(3)))
    rows = [Row(label, mode, n, concurrency, rate) for label, n in zip(labels, calls, strict=True)]
    for r in range(repeats):
        for k in range(len(uass)):
            i = (k + r) % len(uass)
            u, row = uass[i], rows[i]
            gc0 = u.gc_seconds()
            slices0 = u.slices()
            cpu0 = u.cpu()
            res = run_sipp(
                u.addr,
                row.calls,
                concurrency,
                workdir,
                rate=rate,
                timeout=_timeout(row.calls, rate),
            )
            cpu = u.cpu() - cpu0
            slices1 = u.slices()
            gc1 = u.gc_seconds()
            if slices0 is not None and slices1 is not None and res["ok"]:
                row.wakeups_per_call.append(round((slices1[0] - slices0[0]) / res["ok"], 3))
                row.preempted_per_call.append(round((slices1[1] - slices0[1]) / res["ok"], 3))
            if gc0 is not None and gc1 is not None and res["ok"]:
                row.gc_us_per_call.append(round(1e6 * (gc1 - gc0) / res["ok"], 2))
            ok = res["ok"]
            secs = max(res["secs"] - overheads[i], 1e-3)
            row.ok += ok
            row.failed += res["failed"]
            row.retrans += res.get("retrans", 0)
            row.errors += res.get("errors", [])[:3]
            row.runs.append((round(ok / secs, 1), round(1e6 * cpu / ok, 2) if ok else None))
            say(
                log,
                f"  {mode} {row.uas:8} {ok / secs:8.0f} calls/s "
                f"{num(1e6 * cpu / ok if ok else None, '.1f'):>8} us/call "
                f"ok {ok} failed {res['failed']} retrans {res.get('retrans', 0)}"
                + (f" gc {row.gc_us_per_call[-1]:.1f} us/call" if row.gc_us_per_call else ""),
            )
    for u, row in zip(uass, rows, strict=True):
        cpus = [c for _, c in row.runs if c is not None]
        row.calls_per_s = round(statistics.median(t for t, _ in row.runs), 1)
        row.cpu_us_per_call = round(statistics.median(cpus), 2) if cpus else None
        row.contexts_after = u.contexts()
        row.uas_log_lines = u.stderr_lines()
    return rows


def _timeout(calls: int, rate: float | None) -> float:
    return 60.0 + (calls / rate if rate else calls / 200)


def calls_section(
    kinds: list[str],
    calls: int,
    concurrency: int,
    *,
    rate: float | None,
    repeats: int,
    workdir: str,
    log: list[str],
) -> list[Row]:
    with started(kinds, workdir) as uass:
        n = [
            max(int(calls * (PERL_SHARE if rate is None and k == "perl" else 1)), 1) for k in kinds
        ]
        return interleaved(
            uass,
            kinds,
            n,
            concurrency,
            rate=rate,
            repeats=repeats,
            warmup=min(calls, 1000),
            workdir=workdir,
            mode="closed" if rate is None else "rate",
            log=log,
        )


def dialogs_section(
    n: int,
    calls: int,
    concurrency: int,
    *,
    repeats: int,
    settle: float,
    workdir: str,
    log: list[str],
    kind: str = "netsip",
    setup_rate: float = 1000.0,
) -> dict[str, Any]:
    """RSS per held dialog and CPU per call at 10 and ``n`` held dialogs."""
    out: dict[str, Any] = {"dialogs": n, "settle_s": settle, "uas": kind, "setup_rate": setup_rate}
    holds: list[Hold] = []
    with started([kind, kind], workdir) as (small, big):
        try:
            for u in (small, big):  # warm up: the steady state of a short-call load
                run_sipp(u.addr, calls, concurrency, workdir)
            time.sleep(settle)  # the warm-up's transactions expire too
            rss0 = {"small": small.rss(), "big": big.rss()}
            out["contexts_before"] = [small.contexts(), big.contexts()]
            t0 = time.monotonic()
            h_small, c_small = hold(small, 10, setup_rate, workdir, 60)
            holds.append(h_small)
            h_big, c_big = hold(big, n, setup_rate, workdir, 60 + n / setup_rate * 3)
            holds.append(h_big)
            out["setup_s"] = round(time.monotonic() - t0, 1)
            out["held"] = [c_small, c_big]
            out["hold_sipp"] = [h_small.stats(), h_big.stats()]
            out["hold_errors"] = _errors(h_big.errors)
            rss1 = {"small": small.rss(), "big": big.rss()}
            cpu_idle0 = big.cpu()
            time.sleep(settle)
            out["idle_cpu_s_per_s_big"] = round((big.cpu() - cpu_idle0) / max(settle, 1e-3), 4)
            rss2 = {"small": small.rss(), "big": big.rss()}
            held = c_big or n
            out["rss_before"] = rss0
            out["rss_after_setup"] = rss1
            out["rss_after_settle"] = rss2
            out["bytes_per_dialog_setup"] = round((rss1["big"] - rss0["big"]) / held)
            out["bytes_per_dialog_settled"] = round((rss2["big"] - rss0["big"]) / held)
            say(
                log,
                f"  dialogs: held {out['held']} in {out['setup_s']} s; RSS "
                f"{rss0['big'] / 2**20:.1f} -> {rss1['big'] / 2**20:.1f} -> "
                f"{rss2['big'] / 2**20:.1f} MiB: {out['bytes_per_dialog_setup']} B/dialog "
                f"after set-up, {out['bytes_per_dialog_settled']} after {settle:g} s",
            )
            rows = interleaved(
                [small, big],
                ["10 held", f"{n:,} held"],
                [calls, calls],
                concurrency,
                rate=None,
                repeats=repeats,
                warmup=min(calls, 500),
                workdir=workdir,
                mode="held",
                log=log,
            )
            out["rows"] = [asdict(r) for r in rows]
            out["held_after"] = [small.contexts(), big.contexts()]
            out["hold_sipp_after"] = [h.stats() for h in holds]
        finally:
            for h in holds:
                h.stop()
    return out


def pyspy_section(
    calls: int, concurrency: int, workdir: str, log: list[str], kind: str = "netsip"
) -> dict[str, Any]:
    """py-spy on netsip's UAS under a closed-loop load: the hottest functions."""
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        return {"error": "py-spy is not installed"}
    raw = os.path.join(workdir, "pyspy.txt")
    with started([kind], workdir) as (u,):
        run_sipp(u.addr, min(calls, 1000), concurrency, workdir)
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(u.pid),
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                raw,
                "--idle",
                "--full-filenames",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # attached
        cpu0 = u.cpu()
        res = run_sipp(u.addr, calls, concurrency, workdir)
        cpu = u.cpu() - cpu0
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    if not os.path.exists(raw):
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"}
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    with open(raw) as f:
        for ln in f:
            stack, _, count = ln.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            k = int(count)
            raw_frames = stack.split(";")
            # --idle samples every state, so that system calls (sendto) count;
            # the event loop's wait in epoll/select is idle time, not CPU
            if _is_wait(raw_frames[-1]):
                idle += k
                continue
            frames = [_frame(fr) for fr in raw_frames]
            total += k
            own[frames[-1]] += k
            own_lines[_frame(raw_frames[-1], line=True)] += k
            for fr in set(frames):
                incl[fr] += k

    def top(c: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return [(fr, round(100 * k / total, 1)) for fr, k in c.most_common(n)] if total else []

    out = {
        "calls": res["ok"],
        "cpu_us_per_call": round(1e6 * cpu / res["ok"], 1) if res["ok"] else None,
        "samples": total,
        "idle_samples": idle,
        "own": top(own, 25),
        "own_lines": top(own_lines, 25),
        "inclusive": top(incl, 40),
    }
    say(log, f"  pyspy: {total} busy samples ({idle} idle) over {res['ok']} calls")
    for fr, pct in out["own"][:15]:
        say(log, f"    own {pct:5.1f} %  {fr}")
    return out


def sweep_section(
    kinds: list[str],
    rates: list[float],
    *,
    secs: float,
    repeats: int,
    workdir: str,
    log: list[str],
) -> dict[str, Any]:
    """Every UAS at every rate (Perl up to :data:`SWEEP_PERL_MAX_RATE`): CPU and
    wakeups per call, and per UAS the line ``CPU/call = a + b * wakeups/call``."""
    rows: list[dict[str, Any]] = []
    with started(kinds, workdir) as uass:
        for rate in rates:
            here = [
                (u, k)
                for u, k in zip(uass, kinds, strict=True)
                if k != "perl" or rate <= SWEEP_PERL_MAX_RATE
            ]
            n = max(int(rate * secs), 100)
            got = interleaved(
                [u for u, _ in here],
                [k for _, k in here],
                [n] * len(here),
                10000,
                rate=rate,
                repeats=repeats,
                warmup=min(n, 1000),
                workdir=workdir,
                mode="sweep",
                log=log,
            )
            for r in got:
                wakeups = statistics.median(r.wakeups_per_call) if r.wakeups_per_call else None
                pre = statistics.median(r.preempted_per_call) if r.preempted_per_call else None
                rows.append(
                    asdict(r)
                    | {"wakeups_per_call_median": wakeups, "preempted_per_call_median": pre}
                )
    fits: dict[str, dict[str, float]] = {}
    for k in kinds:
        pts = [
            (r["wakeups_per_call_median"], r["cpu_us_per_call"])
            for r in rows
            if r["uas"] == k
            and r["wakeups_per_call_median"] is not None
            and r["cpu_us_per_call"] is not None
        ]
        if len(pts) >= 2 and len({x for x, _ in pts}) >= 2:
            xs, ys = zip(*pts, strict=True)
            slope, intercept = statistics.linear_regression(xs, ys)
            fits[k] = {
                "us_per_wakeup": round(slope, 1),
                "us_per_call_without_wakeups": round(intercept, 1),
                "r": round(statistics.correlation(xs, ys), 3),
            }
            say(log, f"  sweep {k}: {intercept:.1f} us/call + {slope:.1f} us/wakeup")
    return {"rates": rates, "secs": secs, "rows": rows, "fits": fits}


def _where(fr: str) -> tuple[str, str, int]:
    """``func (path/to/file.py:123)`` -> (func, path, line)."""
    name, _, where = fr.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    return name, path, int(line) if line.isdigit() else 0


_WAITS: dict[tuple[str, int], bool] = {}


def _is_wait(fr: str) -> bool:
    """True if the frame's source line waits in ``poll``/``select`` (the event loop idling)."""
    _name, path, line = _where(fr)
    key = (path, line)
    if key not in _WAITS:
        text = ""
        with contextlib.suppress(OSError, IndexError), open(path) as f:
            text = f.readlines()[line - 1]
        _WAITS[key] = any(w in text for w in (".poll(", ".select(", "select.select("))
    return _WAITS[key]


def _frame(fr: str, *, line: bool = False) -> str:
    """``func (path/to/file.py:123)`` -> ``func (netsip/file.py)``, or with ``:123``."""
    name, path, n = _where(fr)
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 and parts[-2] == "netsip" else parts[-1]
    return f"{name} ({short}:{n})" if line else f"{name} ({short})"


# ------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _by(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["uas"]: r for r in rows}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode in ("closed", "rate"):
        if mode not in res:
            continue
        by = _by(res[mode])
        what = (
            f"closed loop, {res['concurrency']} in flight"
            if mode == "closed"
            else f"{res['rate_calls_per_s']:g} calls/s"
        )
        perl = by.get("perl", {}).get("cpu_us_per_call")
        std = by.get("stdlib", {}).get("cpu_us_per_call")
        # the issue's targets, for netsip pure and compiled
        for kind, vs_perl, vs_std in (
            (
                "netsip",
                f"Perl CPU/call >= {PERL_VS_NETSIP:g}x netsip's ({what}; aim 10x)",
                f"netsip CPU/call <= {NETSIP_VS_STDLIB:g}x stdlib's ({what})",
            ),
            (
                "compiled",
                f"Perl CPU/call >= {PERL_VS_NETSIP:g}x compiled netsip's ({what}; aim 10x)",
                f"compiled netsip CPU/call <= {NETSIP_VS_STDLIB:g}x stdlib's ({what})",
            ),
        ):
            if kind == "compiled" and kind not in by:
                continue
            cpu = by.get(kind, {}).get("cpu_us_per_call")
            x = _ratio(perl, cpu)
            hit = None if x is None else x >= PERL_VS_NETSIP
            out.append({"target": vs_perl, "value": x, "hit": hit})
            x = _ratio(cpu, std)
            hit = None if x is None else x <= NETSIP_VS_STDLIB
            out.append({"target": vs_std, "value": x, "hit": hit})
    d = res.get("dialogs")
    if d and "rows" in d:
        b = d["bytes_per_dialog_settled"]
        out.append(
            {
                "target": f"RSS per held dialog < {BYTES_PER_DIALOG} B (after {d['settle_s']:g} s)",
                "value": b,
                "hit": b < BYTES_PER_DIALOG,
            }
        )
        small, big = (r["cpu_us_per_call"] for r in d["rows"])
        x = _ratio(big, small)
        out.append(
            {
                "target": f"CPU/call at {d['dialogs']:,} held dialogs <= "
                f"{HELD_CPU_GROWTH:g}x at 10",
                "value": x,
                "hit": None if x is None else x <= HELD_CPU_GROWTH,
            }
        )
    return out


def calls_table(rows: list[dict[str, Any]]) -> list[str]:
    by = _by(rows)
    net, std, perl = (by.get(k, {}).get("cpu_us_per_call") for k in ("netsip", "stdlib", "perl"))
    out = [
        "| UAS | calls per run | calls/s | CPU µs/call (runs) | x stdlib | Perl / this "
        "| failed | sipp retrans |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = r["cpu_us_per_call"]
        runs = ", ".join(num(c, ".0f") for _, c in r["runs"])
        out.append(
            f"| {r['uas']} | {r['calls']:,} | {num(r['calls_per_s'], ',.0f')} "
            f"| **{num(cpu, '.1f')}** ({runs}) | {num(_ratio(cpu, std), '.2f')} "
            f"| {num(_ratio(perl, cpu), '.2f')} | {r['failed']} | {r['retrans']} |"
        )
    del net
    return out


def report(res: dict[str, Any]) -> list[str]:
    env = res["environment"]
    out = [
        f"Run {env['date']} on {env['cpu']} ({env['cores']} cores), {env['kernel']}; "
        f"Python {env['python']}, {env['sipp']}, Perl Net::SIP {env['perl_netsip']}; "
        f"{res['seconds']:.0f} s in all; load average {env['loadavg']} before, "
        f"{res['loadavg_after']} after.",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Pinning: {res.get('pinning', 'none')}.",
        "",
    ]
    if "closed" in res:
        r0 = res["closed"][0]
        out += [
            f"**Closed loop**: sipp `-sn uac -l {res['concurrency']}`, calls per run as "
            f"shown, median of {r0['runs'] and len(r0['runs'])} interleaved runs; CPU is "
            "the UAS process's (user + system) per completed call.",
            "",
            *calls_table(res["closed"]),
            "",
        ]
    if "rate" in res:
        r0 = res["rate"][0]
        out += [
            f"**Fixed rate**: sipp `-sn uac -r {res['rate_calls_per_s']:g}`, "
            f"{r0['calls']:,} calls per run, median of {len(r0['runs'])} interleaved runs.",
            "",
            *calls_table(res["rate"]),
            "",
        ]
    d = res.get("dialogs")
    if d and "rows" in d:
        small, big = d["rows"]
        out += [
            f"**Held dialogs**: two {d['uas']} UASs; sipp calls paused before their BYE hold 10 on "
            f"one and {d['dialogs']:,} on the other (set up at {d['setup_rate']:,g} calls/s in "
            f"{d['setup_s']:g} s; `len(endpoint)`: {d['held'][0]:,} and "
            f"{num(d['held'][1], ',')}; after the loads {d['held_after'][0]:,} and "
            f"{num(d['held_after'][1], ',')}).",
            "",
            "| | RSS before | after set-up | after " + f"{d['settle_s']:g} s | per dialog "
            "(set-up) | per dialog (settled) |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {d['dialogs']:,} held | {d['rss_before']['big'] / 2**20:.1f} MiB "
            f"| {d['rss_after_setup']['big'] / 2**20:.1f} MiB "
            f"| {d['rss_after_settle']['big'] / 2**20:.1f} MiB "
            f"| {d['bytes_per_dialog_setup']:,} B | **{d['bytes_per_dialog_settled']:,} B** |",
            f"| 10 held | {d['rss_before']['small'] / 2**20:.1f} MiB "
            f"| {d['rss_after_setup']['small'] / 2**20:.1f} MiB "
            f"| {d['rss_after_settle']['small'] / 2**20:.1f} MiB | | |",
            "",
            f"Idle, the UAS holding {d['dialogs']:,} dialogs used "
            f"{1e3 * d['idle_cpu_s_per_s_big']:.1f} ms of CPU per second. Short calls "
            f"(closed loop, {small['concurrency']} in flight, {small['calls']:,} per run, "
            f"median of {len(small['runs'])} interleaved runs) while the dialogs are held:",
            "",
            "| held dialogs | calls/s | CPU µs/call (runs) | of which in the cyclic GC "
            "(runs) | failed |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in (small, big):
            runs = ", ".join(num(c, ".0f") for _, c in r["runs"])
            gcs = r.get("gc_us_per_call") or []
            gc_med = statistics.median(gcs) if gcs else None
            out.append(
                f"| {r['uas']} | {num(r['calls_per_s'], ',.0f')} "
                f"| **{num(r['cpu_us_per_call'], '.1f')}** ({runs}) "
                f"| {num(gc_med, '.1f')} ({', '.join(num(g, '.1f') for g in gcs)}) "
                f"| {r['failed']} |"
            )
        out.append("")
    p = res.get("pyspy")
    if p and "own" in p:
        out += [
            f"**Where netsip's UAS spends its CPU** (py-spy, {p['samples']:,} busy samples "
            f"over {p['calls']:,} calls at {num(p['cpu_us_per_call'], '.0f')} µs/call; "
            "share of the samples; the event loop's wait in epoll excluded):",
            "",
            "| function | own % |",
            "|---|---:|",
        ]
        out += [f"| `{fr}` | {pct:.1f} |" for fr, pct in p["own"][:15]]
        out += ["", "| line | own % |", "|---|---:|"]
        out += [f"| `{fr}` | {pct:.1f} |" for fr, pct in p.get("own_lines", [])[:12]]
        out += ["", "| function | inclusive % |", "|---|---:|"]
        out += [f"| `{fr}` | {pct:.1f} |" for fr, pct in p["inclusive"][:25]]
        out.append("")
    sw = res.get("sweep")
    if sw and sw.get("rows"):
        out += [
            "**CPU per call and wakeups** (sipp `-sn uac -r RATE`, "
            f"{sw['secs']:g} s per run, medians of {len(sw['rows'][0]['runs'])} interleaved "
            "runs): a wakeup is the UAS being put on a CPU (`/proc/PID/schedstat`), which "
            "happens whenever its socket was empty and it slept in epoll/select.",
            "",
            "| calls/s | UAS | CPU µs/call (runs) | wakeups/call | of which preempted "
            "| CPU ÷ wakeups | failed |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in sw["rows"]:
            w, cpu = r["wakeups_per_call_median"], r["cpu_us_per_call"]
            runs = ", ".join(num(c, ".0f") for _, c in r["runs"])
            out.append(
                f"| {r['rate']:,.0f} | {r['uas']} | **{num(cpu, '.1f')}** ({runs}) "
                f"| {num(w, '.2f')} | {num(r.get('preempted_per_call_median'), '.2f')} "
                f"| {num(cpu / w if cpu and w else None, '.1f')} "
                f"| {r['failed']} |"
            )
        out += ["", "A line through each UAS's points (least squares):", ""]
        out += ["| UAS | µs per call | + µs per wakeup | correlation |", "|---|---:|---:|---:|"]
        for k, f in sw.get("fits", {}).items():
            out.append(
                f"| {k} | {f['us_per_call_without_wakeups']:.1f} | {f['us_per_wakeup']:.1f} "
                f"| {f['r']:.3f} |"
            )
        out.append("")
    out += ["**Targets**, this run:", "", "| target | value | verdict |", "|---|---:|---|"]
    for t in res["targets"]:
        hit = "n/a" if t["hit"] is None else ("hit" if t["hit"] else "MISS")
        out.append(f"| {t['target']} | {num(t['value'], ',.2f')} | {hit} |")
    return out


def write_md(path: str, lines: list[str]) -> None:
    """Replace this benchmark's section of ``path`` (between its markers), or append it."""
    write_section(path, MD_BEGIN, MD_END, "Calls: the Endpoint as UAS", lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_calls",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections (default: all)")
    ap.add_argument("--uas", default=",".join(UASS), help="UASs of closed and rate")
    ap.add_argument("--calls", type=int, help="calls per closed-loop run (Perl a quarter)")
    ap.add_argument("--concurrency", type=int, default=50, help="calls in flight (sipp -l)")
    ap.add_argument("--rate", type=float, default=300.0, help="calls/s of the rate section")
    ap.add_argument(
        "--sweep-rates",
        default=",".join(f"{r:g}" for r in SWEEP_RATES),
        help="calls/s of the sweep section (default %(default)s)",
    )
    ap.add_argument("--rate-secs", type=float, help="seconds per fixed-rate run")
    ap.add_argument("--repeats", type=int, help="measured runs per UAS (median)")
    ap.add_argument("--dialogs", type=int, help="dialogs held (default 10,000)")
    ap.add_argument(
        "--dialogs-uas",
        default="netsip",
        choices=UASS[:2],
        help="the UAS of the dialogs section (default %(default)s)",
    )
    ap.add_argument(
        "--setup-rate",
        type=float,
        default=1000.0,
        help="calls/s setting up the held dialogs (default %(default)g)",
    )
    ap.add_argument("--settle", type=float, help="seconds before the settled RSS (default 40)")
    ap.add_argument(
        "--netsip-path",
        metavar="DIR",
        help="netsip's UAS imports the netsip package in DIR (another revision)",
    )
    ap.add_argument(
        "--compiled",
        metavar="DIR",
        help="add the compiled UAS: netsip's compiled build in DIR "
        "(made by python -m benchmarks.build_compiled DIR)",
    )
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="leave the UAS and sipp to the scheduler (default: each on CPUs of its own)",
    )
    ap.add_argument("--out", help="where performance-calls.json and performance.md go")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    global NETSIP_PATH, COMPILED_PATH, PIN  # read by Uas and the sipp runs, set once here
    NETSIP_PATH = os.path.abspath(args.netsip_path) if args.netsip_path else None
    COMPILED_PATH = os.path.abspath(args.compiled) if args.compiled else None
    if COMPILED_PATH and not compiled_modules(os.path.join(COMPILED_PATH, "netsip")):
        # (the UAS would import the tree's netsip and report it as compiled)
        ap.error(f"no compiled netsip in {COMPILED_PATH}: run benchmarks.build_compiled DIR")
    PIN = pinning(not args.no_pin)
    sections = [s for s in args.only.split(",") if s]
    if set(sections) - set(SECTIONS):
        ap.error(f"sections: {', '.join(SECTIONS)}")
    quick = args.quick
    calls = args.calls or (2000 if quick else 20000)
    repeats = args.repeats or (1 if quick else 5)
    dialogs = args.dialogs or (2000 if quick else 10000)
    settle = args.settle if args.settle is not None else (1.0 if quick else 40.0)
    rate_secs = args.rate_secs or (2.0 if quick else 10.0)
    kinds = [k for k in args.uas.split(",") if k]
    if COMPILED_PATH and "compiled" not in kinds:
        kinds.append("compiled")
    if "compiled" in kinds and not COMPILED_PATH:
        ap.error("the compiled UAS needs --compiled DIR (python -m benchmarks.build_compiled DIR)")
    if set(kinds) - {*UASS, "compiled"}:
        ap.error(f"UASs: {', '.join(UASS)}, compiled")
    write = not args.no_write and (args.out is not None or not quick)
    out_dir = args.out or os.path.join(REPO, "docs")
    if shutil.which("sipp") is None:
        print("sipp is not installed", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    log: list[str] = []
    argv_list = sys.argv[1:] if argv is None else argv
    res: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.bench_calls", *argv_list]),
        "environment": environment(),
        "concurrency": args.concurrency,
        "pinning": (
            f"UAS on CPU {','.join(map(str, sorted(PIN[0])))}, "
            f"sipp on CPU {','.join(map(str, sorted(PIN[1])))}"
            if PIN
            else "none (the scheduler's choice)"
        ),
    }
    with tempfile.TemporaryDirectory(prefix="netsip-calls.") as workdir:
        if "closed" in sections:
            say(log, f"closed loop, {args.concurrency} in flight, {calls} calls per run")
            res["closed"] = [
                asdict(r)
                for r in calls_section(
                    kinds,
                    calls,
                    args.concurrency,
                    rate=None,
                    repeats=repeats,
                    workdir=workdir,
                    log=log,
                )
            ]
        if "rate" in sections:
            say(log, f"fixed rate {args.rate:g} calls/s")
            res["rate_calls_per_s"] = args.rate
            res["rate"] = [
                asdict(r)
                for r in calls_section(
                    kinds,
                    int(args.rate * rate_secs),
                    10000,
                    rate=args.rate,
                    repeats=repeats,
                    workdir=workdir,
                    log=log,
                )
            ]
        if "dialogs" in sections:
            say(log, f"dialogs: 10 and {dialogs} held")
            res["dialogs"] = dialogs_section(
                dialogs,
                max(calls // 4, 1000),
                args.concurrency,
                repeats=repeats,
                settle=settle,
                workdir=workdir,
                log=log,
                kind=args.dialogs_uas,
                setup_rate=args.setup_rate,
            )
        if "pyspy" in sections:
            say(log, "pyspy")
            res["pyspy"] = pyspy_section(calls, args.concurrency, workdir, log)
        if "sweep" in sections:
            rates = [float(x) for x in args.sweep_rates.split(",") if x]
            say(log, f"sweep: {', '.join(f'{r:g}' for r in rates)} calls/s")
            res["sweep"] = sweep_section(
                kinds,
                rates,
                secs=2.0 if quick else 5.0,
                repeats=1 if quick else 3,
                workdir=workdir,
                log=log,
            )
    res["seconds"] = round(time.monotonic() - t0)
    res["loadavg_after"] = loadavg()
    res["targets"] = targets(res)
    lines = report(res)
    print("\n".join(lines))
    if write:
        with open(os.path.join(out_dir, "performance-calls.json"), "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        write_md(os.path.join(out_dir, "performance.md"), lines)
    failed = sum(r["failed"] for m in ("closed", "rate") for r in res.get(m, []))
    failed += sum(r["failed"] for r in res.get("sweep", {}).get("rows", []))
    failed += sum(r["failed"] for r in res.get("dialogs", {}).get("rows", []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
