"""Load a responder with sipp (or a small Python generator) and measure it.

One measurement: start a responder (:mod:`benchmarks.responders`) in its own
process, warm it up, then let the generator complete ``calls`` OPTIONS
transactions and read the responder's CPU time before and after. Reported:
completed transactions/s, the responder's CPU time per transaction, failures.

The generator is sipp (``-sf`` the OPTIONS scenario below, ``-l <concurrency>``
transactions in flight, paced by that limit only: a closed loop) over one of
sipp's transports: ``u1`` (UDP, one socket), ``t1`` (TCP, one connection for
all calls) or ``tn`` (TCP, a new connection per call). Without sipp a built-in
Python generator does ``u1`` and ``t1`` (it may become the bottleneck itself).
With ``rate`` sipp offers a fixed number of calls per second instead.

CPU time comes from ``/proc/PID/schedstat`` (nanoseconds on the CPU, user and
system) when the kernel has it, else from ``/proc/PID/stat`` (clock ticks).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import platform
import random
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from benchmarks.responders import PERL_UAS

REPO: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: sipp transport -> the responder's transport
TRANSPORTS: Final = {"u1": "udp", "t1": "tcp", "tn": "tcp"}

SIPP_SCENARIO: Final = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="netsip OPTIONS benchmark">
  <send retrans="500">
    <![CDATA[

      OPTIONS sip:bench@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:sipp@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:bench@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""


# ---------------------------------------------------------------- CPU time


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------- responders


def responder_cmd(
    kind: str, proto: str, profile: str | None = None, netsip_path: str | None = None
) -> list[str]:
    """The command line that runs responder ``kind`` for ``proto`` (udp/tcp).

    ``netsip_path``: a directory holding another ``netsip`` package (say, an
    older revision) that the responder imports instead of this checkout's.
    """
    if kind == "perl":
        perl = shutil.which("perl")
        if perl is None:
            raise RuntimeError("perl is not installed")
        return [perl, "-e", PERL_UAS, proto]
    args = [kind, proto] + (["--profile", profile] if profile else [])
    if netsip_path is None:
        return [sys.executable, "-m", "benchmarks.responders", *args]
    paths = [os.path.abspath(netsip_path), REPO]
    code = (
        f"import sys, runpy; sys.path[:0] = {paths!r}; "
        "runpy.run_module('benchmarks.responders', run_name='__main__')"
    )
    return [sys.executable, "-c", code, *args]


def perl_netsip_available() -> bool:
    """True if ``perl -MNet::SIP`` loads."""
    perl = shutil.which("perl")
    if perl is None:
        return False
    res = subprocess.run([perl, "-MNet::SIP", "-e", "1"], capture_output=True, timeout=60,
                         check=False)  # fmt: skip
    return res.returncode == 0


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 20 s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def start_responder(
    kind: str, proto: str, profile: str | None = None, netsip_path: str | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], tuple[str, int]]]:
    """Run a responder; yields ``(process, (ip, port))``; SIGTERM at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = responder_cmd(kind, proto, profile, netsip_path)
    proc = subprocess.Popen(cmd, cwd=REPO if netsip_path is None else netsip_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "LISTENING":
            raise RuntimeError(f"{kind} responder did not start: {line!r}")
        yield proc, (line[1], int(line[2]))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# -------------------------------------------------------------------- sipp


def _sipp_stats(path: str) -> dict[str, Any]:
    with open(path) as f:
        rows = [line.rstrip("\n").split(";") for line in f if line.strip()]
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}
    return {
        "ok": int(last[col["SuccessfulCall(C)"]]),
        "failed": int(last[col["FailedCall(C)"]]),
    }


_ip_counter = itertools.count(random.randrange(1 << 20))


def sipp_local_ip() -> str:
    """A loopback address for sipp's end that no recent run has used.

    In ``tn`` mode every call is a connection that sipp closes, leaving its
    end in TIME_WAIT for 60 s; tens of thousands of those on one local address
    make every further connect() search the ephemeral ports and sipp slows
    down a lot. Each run therefore gets a fresh address of 127.0.0.0/8.
    """
    n = next(_ip_counter) % (1 << 22)
    return f"127.{1 + (n >> 16)}.{(n >> 8) & 255}.{1 + (n & 255) % 254}"


def run_sipp(
    transport: str,
    dst: tuple[str, int],
    calls: int,
    concurrency: int,
    *,
    timeout: float,
    workdir: str,
    rate: float | None = None,
    ip: str | None = None,
) -> dict[str, Any]:
    """Run sipp once: ``calls`` OPTIONS transactions against ``dst``.

    ``ip`` is sipp's local address (default: its own choice, 127.0.0.1 here).

    Returns:
        ``ok``, ``failed``, ``secs`` (wall clock of the sipp process), ``rc``.
    """
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed")
    scen = os.path.join(workdir, "options.xml")
    if not os.path.exists(scen):
        with open(scen, "w") as f:
            f.write(SIPP_SCENARIO)
    stat = os.path.join(workdir, f"stat-{time.monotonic_ns()}.csv")
    cmd = [
        sipp, f"{dst[0]}:{dst[1]}", "-sf", scen, "-t", transport,
        "-l", str(concurrency), "-m", str(calls),
        "-r", str(int(rate)) if rate else "1000000",
        # -nd: without sipp's default behaviours a finished call is released at
        # once, so the concurrency limit, not sipp's call bookkeeping, paces the load
        "-nd", "-nostdin", "-trace_stat", "-stf", stat, "-fd", "3600",
        "-timeout", f"{int(timeout)}s", "-timeout_error",
    ]  # fmt: skip
    if ip:
        cmd += ["-i", ip]
    if transport in ("tn", "un"):
        cmd += ["-max_socket", str(max(concurrency * 4, 1024))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout + 30, check=False)  # fmt: skip
    secs = time.perf_counter() - t0
    res: dict[str, Any] = _sipp_stats(stat) if os.path.exists(stat) else {"ok": 0, "failed": calls}
    res["secs"] = secs
    res["rc"] = proc.returncode
    if proc.returncode not in (0, 1):
        res["stderr"] = proc.stderr.decode(errors="replace")[-500:]
    return res


# ----------------------------------------------------- the Python generator


def _options(proto: str, local: tuple[str, int], dst: tuple[str, int], n: int) -> bytes:
    return (
        f"OPTIONS sip:bench@{dst[0]}:{dst[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto.upper()} {local[0]}:{local[1]};branch=z9hG4bKpy{n}\r\n"
        f"From: <sip:gen@{local[0]}:{local[1]}>;tag={n}\r\n"
        f"To: <sip:bench@{dst[0]}:{dst[1]}>\r\n"
        f"Call-ID: {n}-bench@{local[0]}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def python_generator(proto: str, dst: tuple[str, int], calls: int, conc: int,
                     timeout: float) -> dict[str, Any]:  # fmt: skip
    """Keep ``conc`` OPTIONS in flight until ``calls`` completed (one socket)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.connect(dst)
    sock.setblocking(False)
    local = sock.getsockname()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sent = ok = failed = 0
    buf = bytearray()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout

    def send_one() -> None:
        nonlocal sent
        sent += 1
        data = _options(proto, local, dst, sent)
        if proto == "udp":
            sock.send(data)
        else:
            sock.setblocking(True)
            sock.sendall(data)
            sock.setblocking(False)

    for _ in range(min(conc, calls)):
        send_one()
    while ok + failed < calls and time.monotonic() < deadline:
        if not sel.select(1.0):
            continue
        while True:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            if proto == "udp":
                msgs = [chunk]
            else:
                buf += chunk
                msgs = []
                while (end := buf.find(b"\r\n\r\n")) >= 0:  # responses have no body
                    msgs.append(bytes(buf[: end + 4]))
                    del buf[: end + 4]
            for m in msgs:
                if m.startswith(b"SIP/2.0 200 "):
                    ok += 1
                else:
                    failed += 1
                if sent < calls:
                    send_one()
    secs = time.perf_counter() - t0
    sel.close()
    sock.close()
    return {"ok": ok, "failed": failed + (calls - ok - failed), "secs": secs}


def run_python_generator(transport: str, dst: tuple[str, int], calls: int, concurrency: int,
                         timeout: float) -> dict[str, Any]:  # fmt: skip
    """The Python generator in its own process (not sharing a core with the runner)."""
    if transport == "tn":
        raise RuntimeError("the Python generator has no connection-per-call mode")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", TRANSPORTS[transport], dst[0], str(dst[1]),
         str(calls), str(concurrency), str(timeout)],
        capture_output=True, timeout=timeout + 30, check=True, cwd=REPO, env=env,
    )  # fmt: skip
    res: dict[str, Any] = json.loads(out.stdout)
    return res


# ------------------------------------------------------------- measurement


@dataclass
class Result:
    """One responder under one load: medians over ``repeats`` measured runs."""

    responder: str
    transport: str
    generator: str
    calls: int
    concurrency: int
    rate: float | None
    repeats: int
    ok: int  # over all runs
    failed: int  # over all runs
    tx_per_s: float
    cpu_us_per_tx: float | None
    cpu_util: float | None  # responder CPU seconds per wall second
    runs: list[tuple[float, float | None]] = field(default_factory=list)  # (tx/s, us/tx)


def measure(
    responder: str,
    transport: str,
    calls: int,
    concurrency: int = 100,
    *,
    generator: str = "sipp",
    timeout: float = 120.0,
    workdir: str,
    rate: float | None = None,
    warmup: int | None = None,
    repeats: int = 1,
    netsip_path: str | None = None,
    label: str | None = None,
) -> Result:
    """Start ``responder``, warm it up, load it ``repeats`` times with ``calls`` transactions.

    Args:
        responder: one of :data:`benchmarks.responders.RESPONDERS`.
        transport: ``u1``, ``t1`` or ``tn`` (sipp's names).
        calls: transactions per measured run.
        concurrency: transactions in flight (sipp ``-l``).
        generator: ``sipp`` or ``python``.
        timeout: bound for one generator run (s).
        workdir: a scratch directory for sipp's files.
        rate: calls per second offered (sipp ``-r``); None for a closed loop.
        warmup: transactions before the measurement (default calls/20, >= 200).
        repeats: measured runs against the same responder; medians are reported.
        netsip_path: import netsip from this directory (a baseline checkout).
        label: the responder's name in the result (default ``responder``).

    Returns:
        The medians of tx/s and CPU per transaction, and every run.
    """
    proto = TRANSPORTS[transport]

    def run(n: int) -> dict[str, Any]:
        if generator == "sipp":
            return run_sipp(
                transport,
                dst,
                n,
                concurrency,
                timeout=timeout,
                workdir=workdir,
                rate=rate,
                ip=sipp_local_ip(),
            )
        return run_python_generator(transport, dst, n, concurrency, timeout)

    runs: list[tuple[float, float | None, float]] = []
    ok_total = failed_total = 0
    with start_responder(responder, proto, netsip_path=netsip_path) as (proc, dst):
        run(warmup if warmup is not None else max(200, calls // 20))
        # sipp's own elapsed time has a resolution of 1 s: use the wall clock
        # less sipp's start/exit overhead, measured with a single call
        overhead = min(run(1)["secs"] for _ in range(3)) if generator == "sipp" else 0.0
        for _ in range(repeats):
            cpu0 = cpu_seconds(proc.pid)
            res = run(calls)
            cpu = cpu_seconds(proc.pid) - cpu0
            secs = max(res["secs"] - overhead, 1e-3)
            ok = res["ok"]
            ok_total += ok
            failed_total += res["failed"]
            runs.append((ok / secs, 1e6 * cpu / ok if ok else None, cpu / secs))
    cpus = [c for _, c, _ in runs if c is not None]
    return Result(
        responder=label or responder, transport=transport, generator=generator, calls=calls,
        concurrency=concurrency, rate=rate, repeats=repeats, ok=ok_total,
        failed=failed_total,
        tx_per_s=round(statistics.median(t for t, _, _ in runs), 1),
        cpu_us_per_tx=round(statistics.median(cpus), 2) if cpus else None,
        cpu_util=round(statistics.median(u for _, _, u in runs), 3),
        runs=[(round(t, 1), round(c, 2) if c is not None else None) for t, c, _ in runs],
    )  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """One responder of an interleaved measurement (see :func:`measure_interleaved`)."""

    responder: str
    netsip_path: str | None = None
    label: str | None = None
    #: this responder's share of ``calls`` per run: a slow responder (Perl)
    #: gets fewer transactions, so that its runs do not take minutes while
    #: the fast ones' still last long enough to average out the noise
    scale: float = 1.0


def measure_interleaved(
    specs: list[Spec],
    transport: str,
    calls: int,
    concurrency: int = 100,
    *,
    timeout: float = 120.0,
    workdir: str,
    rate: float | None = None,
    warmup: int | None = None,
    repeats: int = 1,
) -> list[Result]:
    """:func:`measure` for several responders at once, their runs interleaved.

    All responders are started (an idle one costs nothing) and warmed up; then
    each round loads every responder once, in an order rotated from round to
    round. A slow phase of a shared machine (another process, a noisy
    neighbour) then falls on all of them alike instead of on whichever
    responder happened to run in it, so the ratios of the medians compare
    like with like. sipp only.
    """
    proto = TRANSPORTS[transport]
    with contextlib.ExitStack() as stack:
        started = [
            stack.enter_context(start_responder(sp.responder, proto, netsip_path=sp.netsip_path))
            for sp in specs
        ]

        def run(dst: tuple[str, int], n: int) -> dict[str, Any]:
            return run_sipp(transport, dst, n, concurrency, timeout=timeout, workdir=workdir,
                            rate=rate, ip=sipp_local_ip())  # fmt: skip

        overheads = []
        for _proc, dst in started:
            run(dst, warmup if warmup is not None else max(200, calls // 20))
            # sipp's own elapsed time has a resolution of 1 s: use the wall clock
            # less sipp's start/exit overhead, measured with a single call
            overheads.append(min(run(dst, 1)["secs"] for _ in range(3)))
        runs: list[list[tuple[float, float | None, float]]] = [[] for _ in specs]
        counts = [[0, 0] for _ in specs]  # ok, failed over all runs
        for r in range(repeats):
            for k in range(len(specs)):
                i = (k + r) % len(specs)
                proc, dst = started[i]
                cpu0 = cpu_seconds(proc.pid)
                res = run(dst, max(int(calls * specs[i].scale), 1))
                cpu = cpu_seconds(proc.pid) - cpu0
                secs = max(res["secs"] - overheads[i], 1e-3)
                ok = res["ok"]
                counts[i][0] += ok
                counts[i][1] += res["failed"]
                runs[i].append((ok / secs, 1e6 * cpu / ok if ok else None, cpu / secs))
    out = []
    for sp, rs, (ok_total, failed_total) in zip(specs, runs, counts, strict=True):
        cpus = [c for _, c, _ in rs if c is not None]
        out.append(Result(
            responder=sp.label or sp.responder, transport=transport, generator="sipp",
            calls=max(int(calls * sp.scale), 1), concurrency=concurrency, rate=rate,
            repeats=repeats, ok=ok_total,
            failed=failed_total,
            tx_per_s=round(statistics.median(t for t, _, _ in rs), 1),
            cpu_us_per_tx=round(statistics.median(cpus), 2) if cpus else None,
            cpu_util=round(statistics.median(u for _, _, u in rs), 3),
            runs=[(round(t, 1), round(c, 2) if c is not None else None) for t, c, _ in rs],
        ))  # fmt: skip
    return out


def _generator_main(argv: list[str]) -> int:
    proto, host, port, calls, conc, timeout = argv
    res = python_generator(proto, (host, int(port)), int(calls), int(conc), float(timeout))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(_generator_main(sys.argv[1:]))


def environment() -> dict[str, str]:
    """The machine and the peers, for the header of a benchmark report."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    sipp = "no sipp"
    if shutil.which("sipp"):
        v = subprocess.run(["sipp", "-v"], capture_output=True, text=True, check=False)
        m = re.search(r"v(\d+\.\d+(?:\.\d+)?)", v.stdout + v.stderr)
        sipp = f"sipp {m.group(1)}" if m else "sipp"
    perl = "absent"
    if perl_netsip_available():
        v = subprocess.run(["perl", "-MNet::SIP", "-e", "print $Net::SIP::VERSION"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        perl = v.stdout.strip() or "present"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "sipp": sipp,
        "perl_netsip": perl,
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    """The 1-minute load average (``?`` if unknown): how busy the machine was."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


# ---------------------------------------------------------------- reports


def say(log: list[str], line: str) -> None:
    """Keep ``line`` for the report and show it on stderr as the run goes."""
    log.append(line)
    print(line, file=sys.stderr, flush=True)


def num(x: float | None, spec: str) -> str:
    """``x`` formatted with ``spec``, or ``n/a``."""
    return "n/a" if x is None else format(x, spec)


def write_section(path: str, begin: str, end: str, heading: str, lines: list[str]) -> None:
    """Replace a benchmark's section of ``path`` (between its ``begin`` and
    ``end`` markers), or append it under ``## heading``."""
    block = "\n".join([begin, "", *lines, "", end])
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
