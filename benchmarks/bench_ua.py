#!/usr/bin/env python3
"""The user agent with media: netsip answering calls against Perl's Net::SIP::Simple.

Three answerers, each a process of its own on a UDP port of 127.0.0.1:

``netsip answer``
    ``python -m netsip answer -l udp:IP:PORT --echo``: the CLI, which also
    looks for DTMF in every call (RFC 4733 events and in-band tones, as it
    prints the digits) and prints a line per call event.
``listen.py``
    netsip's ``examples/bench/listen.py``, the line-by-line port of Perl's
    example: ``Simple.listen(init_media=ua.rtp("recv_echo"))``, no DTMF.
``perl``
    Perl's ``examples/bench/listen.pl`` (``Simple->listen`` with
    ``recv_echo``), run with stdout unbuffered as the tests do.
``stdlib``
    the Python limit, :mod:`benchmarks.ua_stdlib`: a socket per call in
    ``selectors``, one ``recvfrom`` and one ``sendto`` per echoed packet and
    nothing else, signalling without a parser; no target, the floor under
    netsip's cost per packet.

Sections (``--only``, comma-separated):

``media``
    The caller (:mod:`benchmarks.ua_caller`: netsip's Endpoint for the
    signalling, one raw UDP socket for the RTP of every call) ramps up the
    calls to one answerer (``--steps``, by default 1, 10, 20, 50, 100, 200,
    400, 600, 800, 1000, 1200, 1600), each with RTP at 50 packets/s
    that the answerer echoes; per step it measures ``--measure`` seconds:
    loss and the echo's round trip at the caller, the answerer's CPU share.
    A step is held with loss below 1 % and a mean round trip less than 20 ms
    above the 1-call step's of the same ramp; the ramp ends at the first
    step not held. Each answerer is ramped ``--repeats`` times, a fresh
    process each time, the answerers' ramps interleaved round by round in a
    rotated order; per step the medians over the ramps that got to it, and
    an answerer holds a step if most of the ramps hold it (and all steps
    below it). A step not held while the caller's own sends were more than
    10 ms late is measured again, at most twice: other processes held the
    caller up.
``setup``
    Call set-up and tear-down without media: sipp's ``uac`` scenario
    (INVITE with SDP, 200, ACK, BYE, 200) at ``--rate`` calls/s, which every
    answerer sustains; the answerer's CPU time (``/proc``) per completed
    call, medians of ``--repeats`` interleaved runs.

Results go to stdout (Markdown), ``docs/performance-ua.json``,
``docs/performance-ua.png`` (matplotlib) and the section of
``docs/performance.md`` between this benchmark's markers (not with
``--quick`` unless ``--out`` is given). ``python -m benchmarks --only ua``
runs the same. Nothing fails on a number: exit status 0 unless calls failed.

    python -m benchmarks.bench_ua [--quick] [--only media,setup] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Final

# Run from a checkout without installing: the benchmarks package is in the parent.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_calls import run_sipp
from benchmarks.load import (
    cpu_seconds,
    environment,
    loadavg,
    num,
    perl_netsip_available,
    say,
    stop_process,
    write_section,
)

REPO: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERL_BENCH: Final = "/usr/share/doc/libnet-sip-perl/examples/bench"
ANSWERERS: Final = ("netsip", "listen.py", "perl", "stdlib")
LABELS: Final = {
    "netsip": "netsip answer --echo",
    "listen.py": "netsip listen.py",
    "perl": "Perl listen.pl",
    "stdlib": "stdlib echo (limit)",
}
SECTIONS: Final = ("media", "setup")
STEPS: Final = (1, 10, 20, 50, 100, 200, 400, 600, 800, 1000, 1200, 1600)
QUICK_STEPS: Final = (1, 10, 50)

#: the targets: netsip holds >= 5x Perl's calls; Perl's CPU per call >= 5x netsip's
CALLS_VS_PERL: Final = 5.0
SETUP_CPU_VS_PERL: Final = 5.0
#: a step is held below these (the caller's measure)
MAX_LOSS_PCT: Final = 1.0
MAX_ADDED_DELAY_MS: Final = 20.0
#: RTP packets per second and call (each way)
PPS: Final = 50

MD_BEGIN: Final = "<!-- ua benchmark results: begin (written by python -m benchmarks --only ua) -->"
MD_END: Final = "<!-- ua benchmark results: end -->"


# -------------------------------------------------------------- answerers


def answerer_cmd(kind: str, port: int) -> list[str]:
    """The command line of answerer ``kind`` listening on UDP 127.0.0.1:``port``."""
    if kind == "netsip":
        return [sys.executable, "-m", "netsip", "answer", "-l", f"udp:127.0.0.1:{port}", "--echo"]
    if kind == "listen.py":
        return [sys.executable, os.path.join(REPO, "examples", "bench", "listen.py"),
                "-L", f"127.0.0.1:{port}"]  # fmt: skip
    if kind == "stdlib":
        return [sys.executable, os.path.join(REPO, "benchmarks", "ua_stdlib.py"),
                "--port", str(port)]  # fmt: skip
    if kind == "perl":
        perl = shutil.which("perl") or "perl"
        # (stdout unbuffered, as tests/test_cli_call.py runs it)
        return [perl, "-e", "$| = 1; $0 = shift; do $0; die $@ if $@",
                os.path.join(PERL_BENCH, "listen.pl"), "-L", f"127.0.0.1:{port}"]  # fmt: skip
    raise ValueError(kind)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(port: int, timeout: float) -> bool:
    """True once an OPTIONS to 127.0.0.1:port gets an answer (all three answer it)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        me = s.getsockname()[1]
        s.settimeout(0.2)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            msg = (
                f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};"
                f"branch=z9hG4bKready{n}\r\nFrom: <sip:r@127.0.0.1>;tag=1\r\n"
                f"To: <sip:x@127.0.0.1>\r\nCall-ID: ready{n}@bench\r\nCSeq: {n} OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            s.sendto(msg, ("127.0.0.1", port))
            try:
                s.recv(65536)
                return True
            except OSError:
                continue
    return False


@contextlib.contextmanager
def answerer(kind: str, workdir: str) -> Iterator[tuple[subprocess.Popen[bytes], tuple[str, int]]]:
    """Run answerer ``kind``; yields (process, SIP address); stopped at the end."""
    for _ in range(5):
        port = _free_udp_port()
        err = os.path.join(workdir, f"{kind}-{time.monotonic_ns()}.err")
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        with open(err, "wb") as f:
            proc = subprocess.Popen(answerer_cmd(kind, port), cwd=REPO, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=f)  # fmt: skip
        if _wait_ready(port, 20):
            break
        stop_process(proc)  # (the port was taken meanwhile, or the answerer failed)
    else:
        with open(err, errors="replace") as f:
            raise RuntimeError(f"{kind} did not answer: {f.read()[-300:]}")
    try:
        yield proc, ("127.0.0.1", port)
    finally:
        stop_process(proc)


# ------------------------------------------------------------------ media


def run_caller(
    addr: tuple[str, int], pid: int, steps: list[int], measure: float, setup_rate: float
) -> dict[str, Any]:
    """One ramp of :mod:`benchmarks.ua_caller` against the answerer at ``addr``."""
    cmd = [sys.executable, "-m", "benchmarks.ua_caller", "--target", f"{addr[0]}:{addr[1]}",
           "--pid", str(pid), "--steps", ",".join(map(str, steps)), "--measure", str(measure),
           "--setup-rate", str(setup_rate), "--max-loss", str(MAX_LOSS_PCT),
           "--max-delay", str(MAX_ADDED_DELAY_MS)]  # fmt: skip
    # bounded: every step's set-up, measurement and hang-up
    timeout = 60 + sum(measure + 2 for _ in steps) + 3 * max(steps) / setup_rate
    proc = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False)  # fmt: skip
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"ua_caller failed: {proc.stderr.decode(errors='replace')[-500:]}")
    res: dict[str, Any] = json.loads(lines[-1])
    return res


def media_section(
    kinds: list[str],
    steps: list[int],
    *,
    measure: float,
    repeats: int,
    setup_rate: float,
    workdir: str,
    log: list[str],
) -> dict[str, Any]:
    """Ramp every answerer ``repeats`` times, interleaved; medians per step."""
    ramps: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(repeats):
        for i in range(len(kinds)):
            kind = kinds[(i + r) % len(kinds)]
            with answerer(kind, workdir) as (proc, addr):
                t0 = time.monotonic()
                res = run_caller(addr, proc.pid, steps, measure, setup_rate)
            ramps[kind].append(res)
            last = res["steps"][-1] if res["steps"] else {}
            why = res["stopped"] or "all held"
            say(log, f"  media {LABELS[kind]:22} ramp {r + 1}: up to {last.get('calls')} "
                      f"calls ({why}; {time.monotonic() - t0:.0f} s)")  # fmt: skip
    out: dict[str, Any] = {"steps": steps, "measure_s": measure, "repeats": repeats,
                           "setup_rate": setup_rate, "answerers": {}}  # fmt: skip
    for kind in kinds:
        rows = []
        highest = 0
        ok_so_far = True
        for n in steps:
            got = [next((s for s in rp["steps"] if s["calls"] == n), None) for rp in ramps[kind]]
            have = [s for s in got if s is not None]
            if not have:
                break
            # the figures: medians over the ramps that got to this step
            row = {
                "calls": n,
                "ramps": len(have),
                "held_in": sum(bool(s["held"]) for s in have),
                "loss_pct": _med([s["loss_pct"] for s in have]),
                "added_delay_ms": _med([s["added_delay_ms"] for s in have]),
                "rtt_p95_ms": _med([s["rtt_ms"].get("p95") for s in have]),
                "answerer_cpu_pct": _med([s["answerer_cpu_pct"] for s in have]),
                "answerer_sys_pct": _med([s.get("answerer_sys_pct") for s in have]),
                # (each call: 50 packets/s in, 50 echoed)
                "answerer_us_per_packet": _med(
                    [s["answerer_cpu_pct"] * 1e4 / (n * PPS) for s in have]
                ),
                "caller_cpu_pct": _med([s["caller_cpu_pct"] for s in have]),
                "other_cores": _med([s.get("other_cores") for s in have]),
                "send_lag_max_ms": _med([s["send_lag_ms"].get("max") for s in have]),
                "caller_drops": sum(s["caller_drops"] for s in have),
                "setup_failed": sum(s["setup_failed"] for s in have),
                "remeasured": sum(s.get("attempts", 1) - 1 for s in have),
            }
            # held: by most of the ramps (one that ended before this step did not hold it)
            row["held"] = 2 * row["held_in"] > len(got)
            ok_so_far = ok_so_far and row["held"]
            if ok_so_far:
                highest = n
            rows.append(row)
        out["answerers"][kind] = {
            "label": LABELS[kind],
            "highest_held": highest,
            # every step held: the answerer's limit is beyond the steps
            "capped": bool(steps) and highest == steps[-1],
            "rows": rows,
            "stopped": [ramp["stopped"] for ramp in ramps[kind]],
            "baseline_rtt_ms": [ramp["baseline_rtt_ms"] for ramp in ramps[kind]],
            "bye_unanswered": sum(ramp["bye_unanswered"] for ramp in ramps[kind]),
            "ramps": ramps[kind],
        }
        say(log, f"  media {LABELS[kind]:22} holds {highest} calls")
    return out


def _med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 3) if vals else None


# ------------------------------------------------------------------ set-up


def setup_section(
    kinds: list[str], *, rate: float, calls: int, repeats: int, workdir: str, log: list[str]
) -> list[dict[str, Any]]:
    """sipp ``-sn uac`` at ``rate`` calls/s against every answerer, interleaved."""
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(answerer(k, workdir)) for k in kinds]
        for _proc, addr in started:  # warm up
            run_sipp(addr, min(calls, max(int(rate), 50)), 10000, workdir, rate=rate,
                     timeout=60)  # fmt: skip
        rows: list[dict[str, Any]] = [
            {"answerer": k, "label": LABELS[k], "rate": rate, "calls": calls, "ok": 0,
             "failed": 0, "retrans": 0, "runs": [], "errors": []}
            for k in kinds
        ]  # fmt: skip
        for r in range(repeats):
            for i in range(len(kinds)):
                j = (i + r) % len(kinds)
                (proc, addr), row = started[j], rows[j]
                cpu0 = cpu_seconds(proc.pid)
                res = run_sipp(addr, calls, 10000, workdir, rate=rate, timeout=60 + calls / rate)
                cpu = cpu_seconds(proc.pid) - cpu0
                ok = res["ok"]
                row["ok"] += ok
                row["failed"] += res["failed"]
                row["retrans"] += res.get("retrans", 0)
                row["errors"] += res.get("errors", [])[:3]
                us = round(1e6 * cpu / ok, 1) if ok else None
                row["runs"].append(us)
                say(log, f"  setup {row['label']:22} {num(us, '.0f'):>6} us/call ok {ok} "
                          f"failed {res['failed']} retrans {res.get('retrans', 0)}")  # fmt: skip
    for row in rows:
        row["cpu_us_per_call"] = _med(row["runs"])
    return rows


# ------------------------------------------------------------------ report


def _verdict(hit: bool | None) -> str:
    return "n/a" if hit is None else ("hit" if hit else "**MISS**")


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    media = res.get("media", {}).get("answerers", {})
    perl = media.get("perl", {}).get("highest_held")
    perl_capped = media.get("perl", {}).get("capped", False)
    for kind in ("netsip", "listen.py"):
        if kind not in media:
            continue
        mine = media[kind]["highest_held"]
        x = round(mine / perl, 2) if perl and not perl_capped else None
        hit = None if x is None else x >= CALLS_VS_PERL
        if media[kind]["capped"] and not hit:
            hit = None  # (a lower bound below the target: no verdict)
        out.append({
            "target": f"{LABELS[kind]}: calls held with echo >= {CALLS_VS_PERL:g}x Perl's",
            "netsip": mine, "perl": perl, "value": x, "hit": hit,
        })  # fmt: skip
    setup = {r["answerer"]: r for r in res.get("setup", [])}
    p = setup.get("perl", {}).get("cpu_us_per_call")
    for kind in ("netsip", "listen.py"):
        mine = setup.get(kind, {}).get("cpu_us_per_call")
        if kind not in setup:
            continue
        x = round(p / mine, 2) if p and mine else None
        out.append({
            "target": f"{LABELS[kind]}: CPU per call set-up + tear-down <= 1/{SETUP_CPU_VS_PERL:g} "
                      "of Perl's",
            "netsip": mine, "perl": p, "value": x,
            "hit": None if x is None else x >= SETUP_CPU_VS_PERL,
        })  # fmt: skip
    return out


def report(res: dict[str, Any]) -> list[str]:
    env = res["environment"]
    out = [
        f"Run {env['date']} on {env['cpu']} ({env['cores']} cores), {env['kernel']}; "
        f"Python {env['python']}, {env['sipp']}, Perl Net::SIP {env['perl_netsip']}; "
        f"{res['seconds']:.0f} s in all; load average {env['loadavg']} before, "
        f"{res['loadavg_after']} after (other processes disturb the figures).",
        "",
        f"Command: `{res['command']}`",
        "",
    ]
    media = res.get("media")
    if media:
        out += [
            f"**Calls with RTP echo** (50 packets/s each way per call): steps "
            f"{', '.join(map(str, media['steps']))} calls, {media['measure_s']:g} s measured "
            f"per step, {media['repeats']} ramp(s) per answerer, interleaved; the figures "
            "are medians over the ramps that got to the step. A ramp holds a step with "
            f"loss < {MAX_LOSS_PCT:g} % and a mean round trip less than "
            f"{MAX_ADDED_DELAY_MS:g} ms above its 1-call step's, and ends at the first step "
            "it does not hold (measured again, at most twice, when the caller's own sends "
            "were more than 10 ms late: other processes had the cores); an answerer holds a "
            "step that most of its ramps held (and every step below). CPU: the answerer's "
            "share of one core (of which in the kernel), the caller's, and what the rest "
            f"of the machine took meanwhile (of {env['cores']} cores: more than a few "
            "tenths disturbs the figures).",
            "",
            "| answerer | calls | held in (ramps) | loss % | added delay ms | p95 RTT ms "
            "| answerer CPU % (sys) | caller CPU % | caller max send lag ms "
            "| other processes, cores |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for a in media["answerers"].values():
            for row in a["rows"]:
                mark = "**" if row["calls"] == a["highest_held"] else ""
                out.append(
                    f"| {a['label']} | {mark}{row['calls']:,}{mark} "
                    f"| {row['held_in']} ({row['ramps']}) | {num(row['loss_pct'], '.2f')} "
                    f"| {num(row['added_delay_ms'], '.2f')} | {num(row['rtt_p95_ms'], '.2f')} "
                    f"| {num(row['answerer_cpu_pct'], '.0f')} "
                    f"({num(row.get('answerer_sys_pct'), '.0f')}) "
                    f"| {num(row['caller_cpu_pct'], '.0f')} "
                    f"| {num(row['send_lag_max_ms'], '.1f')} "
                    f"| {num(row.get('other_cores'), '.2f')} |"
                )
        out += ["", "| answerer | highest calls held | CPU µs per echoed packet there "
                "| the ramps ended by |", "|---|---:|---:|---|"]  # fmt: skip
        for a in media["answerers"].values():
            why = "; ".join(s or "all steps held" for s in a["stopped"])
            at_least = ">= " if a["capped"] else ""
            there: dict[str, Any] = next(
                (r for r in a["rows"] if r["calls"] == a["highest_held"]), {}
            )
            us = num(there.get("answerer_us_per_packet"), ".1f")
            out.append(f"| {a['label']} | **{at_least}{a['highest_held']:,}** | {us} | {why} |")
        out.append("")
        out += equal_load_table(media["answerers"])
    setup = res.get("setup")
    if setup:
        r0 = setup[0]
        out += [
            f"**Call set-up and tear-down** (no media): sipp `-sn uac -r {r0['rate']:g}`, "
            f"{r0['calls']:,} calls per run, median of {len(r0['runs'])} interleaved runs; "
            "CPU of the answerer per completed call.",
            "",
            "| answerer | CPU µs/call (runs) | Perl / this | failed | sipp retrans |",
            "|---|---:|---:|---:|---:|",
        ]
        perl = next((r["cpu_us_per_call"] for r in setup if r["answerer"] == "perl"), None)
        for r in setup:
            runs = ", ".join(num(x, ".0f") for x in r["runs"])
            ratio = perl / r["cpu_us_per_call"] if perl and r["cpu_us_per_call"] else None
            out.append(f"| {r['label']} | **{num(r['cpu_us_per_call'], ',.0f')}** ({runs}) "
                       f"| {num(ratio, '.2f')} | {r['failed']} | {r['retrans']} |")  # fmt: skip
        out.append("")
    out += ["**Targets**, this run:", "", "| target | netsip | Perl | ratio | verdict |",
            "|---|---:|---:|---:|---|"]  # fmt: skip
    for t in res["targets"]:
        x = "n/a" if t["value"] is None else f"{t['value']:.2f}x"
        out.append(f"| {t['target']} | {num(t['netsip'], ',g')} | {num(t['perl'], ',g')} "
                   f"| {x} | {_verdict(t['hit'])} |")  # fmt: skip
    if res.get("chart"):
        out += ["", f"![The user agent with media]({res['chart']})"]
    return out


def equal_load_table(answerers: dict[str, Any]) -> list[str]:
    """CPU per echoed packet of netsip and Perl at the same number of calls: the
    highest step both held (less sensitive to the machine's noise than the counts)."""
    perl = answerers.get("perl")
    if perl is None:
        return []
    out = [
        "CPU per echoed packet at equal load (the highest step both held):",
        "",
        "| answerer | calls | netsip µs/packet | Perl µs/packet | Perl / netsip |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("netsip", "listen.py"):
        a = answerers.get(kind)
        if a is None:
            continue
        n = min(a["highest_held"], perl["highest_held"])
        mine = next((r for r in a["rows"] if r["calls"] == n), None)
        theirs = next((r for r in perl["rows"] if r["calls"] == n), None)
        if not n or mine is None or theirs is None:
            continue
        x, y = mine["answerer_us_per_packet"], theirs["answerer_us_per_packet"]
        ratio = f"{y / x:.2f}x" if x and y else "n/a"
        out.append(f"| {a['label']} | {n:,} | {num(x, '.1f')} | {num(y, '.1f')} | {ratio} |")
    return [*out, ""]


def chart(res: dict[str, Any], path: str) -> bool:
    """Answerer CPU and added delay by calls, CPU per set-up; False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415  # the optional "bench" extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    media, setup = res.get("media"), res.get("setup")
    panels = (2 if media else 0) + (1 if setup else 0)
    if not panels:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6), squeeze=False)
    colors = {"netsip": "tab:orange", "listen.py": "tab:green", "perl": "tab:red",
              "stdlib": "tab:gray"}  # fmt: skip
    ax_list = list(axes[0])
    if media:
        ax_cpu, ax_delay = ax_list[0], ax_list[1]
        for kind, a in media["answerers"].items():
            xs = [r["calls"] for r in a["rows"]]
            label = f"{a['label']} (holds {a['highest_held']})"
            ax_cpu.plot(xs, [r["answerer_cpu_pct"] for r in a["rows"]], "o-",
                        color=colors[kind], label=label)  # fmt: skip
            pts = [(r["calls"], max(r["added_delay_ms"] or 0.0, 0.01))
                   for r in a["rows"] if r["added_delay_ms"] is not None]  # fmt: skip
            if pts:
                ax_delay.plot(*zip(*pts, strict=True), "o-", color=colors[kind], label=a["label"])
            if a["highest_held"]:
                for ax in (ax_cpu, ax_delay):
                    ax.axvline(a["highest_held"], color=colors[kind], ls=":", lw=1)
        for ax in (ax_cpu, ax_delay):
            ax.set_xscale("log")
            ax.set_xlabel("calls, RTP echo at 50 packets/s each")
        ax_cpu.set_ylabel("answerer CPU (% of one core)")
        ax_cpu.set_title("CPU by calls (dotted: highest held)", fontsize=10)
        ax_cpu.legend(fontsize=7)
        ax_delay.set_yscale("log")
        ax_delay.axhline(MAX_ADDED_DELAY_MS, color="grey", ls="--", lw=1)
        ax_delay.set_ylabel("added mean round trip (ms, log; 0.01: none)")
        ax_delay.set_title(f"echo delay over 1 call (limit {MAX_ADDED_DELAY_MS:g} ms)",
                           fontsize=10)  # fmt: skip
    if setup:
        ax = ax_list[-1]
        labels = [r["label"] for r in setup]
        ys = [r["cpu_us_per_call"] or 0 for r in setup]
        bars = ax.bar(range(len(ys)), ys, color=[colors[r["answerer"]] for r in setup])
        ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=8)
        ax.set_xticks(range(len(ys)), labels, fontsize=7)
        ax.set_ylabel("answerer CPU per call (µs)")
        ax.set_title(f"set-up + tear-down, sipp uac at {setup[0]['rate']:g}/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_md(path: str, lines: list[str]) -> None:
    """Replace this benchmark's section of ``path`` (between its markers), or append it."""
    write_section(path, MD_BEGIN, MD_END, "The user agent with media", lines)


# --------------------------------------------------------------------- run


def run(
    *,
    quick: bool,
    sections: list[str],
    repeats: int | None,
    steps: list[int] | None,
    measure: float | None,
    rate: float,
    kinds: list[str] | None,
    out_dir: str | None,
    write: bool,
    command: str,
) -> tuple[list[str], int]:
    """Run the sections; (the report's lines, failed calls). Writes the files if ``write``."""
    kinds = list(kinds or ANSWERERS)
    if not perl_netsip_available() or not os.path.exists(os.path.join(PERL_BENCH, "listen.pl")):
        kinds = [k for k in kinds if k != "perl"]
    repeats = repeats or (1 if quick else 3)
    steps = steps or list(QUICK_STEPS if quick else STEPS)
    measure = measure or (1.0 if quick else 1.25)
    t0 = time.monotonic()
    log: list[str] = []
    res: dict[str, Any] = {"command": command, "environment": environment()}
    with tempfile.TemporaryDirectory(prefix="netsip-ua.") as workdir:
        if "media" in sections:
            say(log, f"ua media: {', '.join(LABELS[k] for k in kinds)}; steps {steps}")
            res["media"] = media_section(kinds, steps, measure=measure, repeats=repeats,
                                         setup_rate=200.0, workdir=workdir, log=log)  # fmt: skip
        if "setup" in sections and shutil.which("sipp"):
            calls = int(rate * (2 if quick else 4))
            say(log, f"ua setup: sipp uac at {rate:g} calls/s, {calls} calls per run")
            res["setup"] = setup_section(kinds, rate=rate, calls=calls, repeats=repeats,
                                         workdir=workdir, log=log)  # fmt: skip
    res["seconds"] = round(time.monotonic() - t0)
    res["loadavg_after"] = loadavg()
    res["targets"] = targets(res)
    out_dir = out_dir or os.path.join(REPO, "docs")
    if write:
        os.makedirs(out_dir, exist_ok=True)
        if chart(res, os.path.join(out_dir, "performance-ua.png")):
            res["chart"] = "performance-ua.png"
        with open(os.path.join(out_dir, "performance-ua.json"), "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    lines = report(res)
    if write:
        write_md(os.path.join(out_dir, "performance.md"), lines)
    failed = sum(r["failed"] for r in res.get("setup", []))
    for a in res.get("media", {}).get("answerers", {}).values():
        failed += a["bye_unanswered"]
    return lines, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ua",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections (default: all)")
    ap.add_argument("--answerers", default=",".join(ANSWERERS), help="default: all four")
    ap.add_argument("--repeats", type=int, help="ramps / runs per answerer (default 3)")
    ap.add_argument("--steps", help="calls per step, comma-separated")
    ap.add_argument("--measure", type=float, help="seconds measured per step (default 1.25)")
    ap.add_argument("--rate", type=float, default=100.0, help="calls/s of the set-up section")
    ap.add_argument("--out", help="where performance-ua.{json,png} and performance.md go")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    if set(sections) - set(SECTIONS):
        ap.error(f"sections: {', '.join(SECTIONS)}")
    argv_list = sys.argv[1:] if argv is None else argv
    lines, failed = run(
        quick=args.quick,
        sections=sections,
        repeats=args.repeats,
        steps=[int(s) for s in args.steps.split(",")] if args.steps else None,
        measure=args.measure,
        rate=args.rate,
        kinds=[k for k in args.answerers.split(",") if k],
        out_dir=args.out,
        write=not args.no_write and (args.out is not None or not args.quick),
        command=" ".join(["python -m benchmarks.bench_ua", *argv_list]),
    )
    print("\n".join(lines))
    if failed:
        print(f"{failed} calls failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
