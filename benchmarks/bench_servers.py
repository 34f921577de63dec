#!/usr/bin/env python3
"""The servers against Perl's Net::SIP and Kamailio: digest REGISTER, stateless proxying, memory.

Every server runs in a process of its own on one UDP socket of 127.0.0.1 and
sipp loads it; the figure is the server's CPU time (user + system, from /proc,
all its processes) per completed operation, the median of ``--repeats`` runs.
The servers' runs interleave, round by round in an order rotated each round,
so that a busy phase of the machine hits them alike; the ratios compare
servers measured in the same command.

``register``
    sipp registers with digest (``REGISTER``, ``401``, ``REGISTER`` with
    ``[authentication]``, ``200``: two transactions per registration), ``-l``
    ``--concurrency`` registrations in flight, the AORs in turn (an injection
    file): once with one AOR and once with 1,000 (``--aors``), all
    authenticating as one digest user (sipp cannot take the digest user from
    the file). sipp keeps its address for all runs, so every AOR holds one
    binding. Against
    ``netsip proxy --users FILE --algorithms MD5`` (Authorize, 401, in front
    of the Registrar and its memory store) and ``benchmarks/perl/servers.pl
    register FILE`` (Net::SIP::Authorize in front of Net::SIP::Registrar in a
    ReceiveChain).
``proxy``
    sipp ``uac`` -> proxy -> sipp ``-sn uas``: the uac sends INVITE, ACK and
    BYE to the proxy (``-rsa``) with the UAS in the Request-URI, ACK and BYE
    along the route set (``tests/sipp/uac_route_set.xml``). Six messages
    cross the proxy per call: INVITE, 180, 200, ACK, BYE, 200. Against
    ``netsip proxy`` (no ``--users``: Registrar + StatelessProxy in a chain),
    Perl's Net::SIP::StatelessProxy (``benchmarks/perl/servers.pl proxy``)
    and Kamailio with ``forward()`` (``benchmarks/kamailio_forward.cfg``: one
    UDP worker, no modules, ``-m 32 -M 8``; its CPU is that of all its
    processes).
``memory``
    :mod:`benchmarks.bench_registrar`: ``--registrations`` (100,000) users
    registered in the memory store, RSS per registration.

Perl gets a quarter of the operations per run (it is slower by an order of
magnitude; its runs still last seconds). Results: stdout (Markdown),
``docs/performance-servers.{json,png}`` and the section of
``docs/performance.md`` between this benchmark's markers (with ``--quick``
only if ``--out`` is given). Nothing fails on a number: exit status 0 unless
operations failed.

    python -m benchmarks --only servers [--quick]
    python -m benchmarks.bench_servers [--quick] [--only register,proxy,memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
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

from benchmarks.bench_calls import sipp_stats
from benchmarks.load import (
    cpu_seconds,
    environment,
    loadavg,
    num,
    say,
    sipp_local_ip,
    write_section,
)

REPO: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE: Final = os.path.join(REPO, "benchmarks")
SECTIONS: Final = ("register", "proxy", "memory")

#: the issue's targets
REGISTER_VS_PERL: Final = 5.0  # Perl CPU/registration >= 5x netsip's
PROXY_VS_PERL: Final = 5.0  # Perl CPU/proxied call >= 5x netsip's
#: messages crossing the proxy per call: INVITE, 180, 200, ACK, BYE, 200
MESSAGES_PER_CALL: Final = 6
#: Perl's share of the operations per run (see the module docstring)
PERL_SHARE: Final = 0.25
#: sipp's socket buffers (a burst of responses must not overflow them)
SIPP_BUFFER: Final = 4 * 1024 * 1024
#: the one digest user every registration authenticates as
DIGEST_USER: Final = ("bench", "bench-secret")

MD_BEGIN: Final = (
    "<!-- server benchmark results: begin (written by python -m benchmarks.bench_servers) -->"
)
MD_END: Final = "<!-- server benchmark results: end -->"

REGISTER_SCENARIO: Final = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="netsip REGISTER with digest benchmark">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@example.org>;tag=[call_number]
      To: <sip:[field0]@example.org>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Expires: 3600
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@example.org>;tag=[call_number]
      To: <sip:[field0]@example.org>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      [authentication username={DIGEST_USER[0]} password={DIGEST_USER[1]}]
      Max-Forwards: 70
      Expires: 3600
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""
UAC_SCENARIO: Final = os.path.join(REPO, "tests", "sipp", "uac_route_set.xml")


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A UDP port of 127.0.0.1 that nothing is bound to now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def udp_bound(port: int) -> bool:
    """True if some socket is bound to UDP 127.0.0.1:port (a server is up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of its descendants (Kamailio's workers)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError):  # gone meanwhile
            total += cpu_seconds(p)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
    return total


class Server:
    """A server process: ``kind`` netsip, perl or kamailio; ``mode`` register or proxy."""

    def __init__(
        self, kind: str, mode: str, workdir: str, users_file: str, baseline: str | None = None
    ) -> None:
        self.kind = kind
        tag = f"{kind}-{mode}-{time.monotonic_ns()}"
        self.log_path = os.path.join(workdir, f"{tag}.log")
        self.port = 0
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        if kind == "baseline":  # netsip imported from another checkout
            if baseline is None:
                raise ValueError("baseline server without --baseline DIR")
            env["PYTHONPATH"] = os.path.abspath(baseline) + os.pathsep + env["PYTHONPATH"]
        new_session = False
        if kind in ("netsip", "baseline"):
            self.port = free_port()
            cmd = [sys.executable, "-m", "netsip", "proxy", "-q",
                   "-l", f"udp:127.0.0.1:{self.port}"]  # fmt: skip
            if mode == "register":
                cmd += ["--users", users_file, "--algorithms", "MD5"]
        elif kind == "perl":
            perl = shutil.which("perl")
            if perl is None:
                raise RuntimeError("perl is not installed")
            cmd = [perl, os.path.join(HERE, "perl", "servers.pl"), mode]
            cmd += [users_file] if mode == "register" else []
        elif kind == "kamailio":
            self.port = free_port()
            cmd = kamailio_cmd(self.port, workdir, tag)
            new_session = True  # its workers are stopped with the process group
        else:
            raise ValueError(kind)
        with open(self.log_path, "wb") as log:
            # (python -m puts the working directory first on sys.path)
            cwd = os.path.abspath(baseline) if kind == "baseline" and baseline else REPO
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if kind == "perl" else log,
                                         stderr=log, start_new_session=new_session)  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        if self.kind == "perl":
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode().split()
            if len(line) != 3 or line[0] != "LISTENING":
                raise RuntimeError(f"perl server did not start: {line!r} {self.log_tail()}")
            self.port = int(line[2])
            return
        deadline = time.monotonic() + 30
        while not udp_bound(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start: {self.log_tail()}")
            time.sleep(0.05)  # a process starting: nothing to wait on but its port

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def log_tail(self, n: int = 5) -> list[str]:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return [ln.rstrip() for ln in f.readlines()[-n:]]
        return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.kind == "kamailio":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
    )


def kamailio_cmd(port: int, workdir: str, tag: str) -> list[str]:
    """Kamailio in the foreground with ``benchmarks/kamailio_forward.cfg`` on ``port``."""
    binary = kamailio_binary()
    if binary is None:
        raise RuntimeError("kamailio is not installed")
    with open(os.path.join(HERE, "kamailio_forward.cfg")) as f:
        text = f.read().replace("@KPORT@", str(port))
    cfg = os.path.join(workdir, f"{tag}.cfg")
    with open(cfg, "w") as f:
        f.write(text)
    rundir = os.path.join(workdir, f"{tag}.run")
    os.mkdir(rundir)
    # -DD: foreground (workers still forked), -E: log to stderr, small memory pools
    return [binary, "-f", cfg, "-DD", "-E", "-m", "32", "-M", "8", "-Y", rundir]


@contextlib.contextmanager
def sipp_uas(workdir: str) -> Iterator[tuple[str, int]]:
    """sipp's built-in UAS (``-sn uas``) on a fresh loopback address: its (ip, port)."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed")
    ip, port = sipp_local_ip(), free_port()
    cmd = [sipp, "-sn", "uas", "-i", ip, "-p", str(port), "-t", "u1", "-nostdin",
           "-buff_size", str(SIPP_BUFFER)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not _bound(ip, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sipp -sn uas did not start")
            time.sleep(0.05)  # (as Server._wait_ready)
        yield ip, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _bound(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------- sipp


def run_sipp(args: list[str], n: int, concurrency: int, workdir: str) -> dict[str, Any]:
    """One sipp run of ``n`` calls (``args``: destination and scenario); ok, failed, secs.

    sipp's address is a fresh one of 127.0.0.0/8 unless ``args`` has ``-i``.
    """
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed")
    tag = time.monotonic_ns()
    stat = os.path.join(workdir, f"stat-{tag}.csv")
    errors = os.path.join(workdir, f"errors-{tag}.log")
    timeout = 60 + n // 100
    local = [] if "-i" in args else ["-i", sipp_local_ip()]
    cmd = [sipp, *args, "-t", "u1", *local, "-l", str(concurrency),
           "-m", str(n), "-r", "1000000", "-nd", "-nostdin", "-buff_size", str(SIPP_BUFFER),
           "-trace_stat", "-stf", stat, "-fd", "3600", "-trace_err", "-error_file", errors,
           "-timeout", f"{timeout}s", "-timeout_error"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout + 30, check=False)  # fmt: skip
    secs = time.perf_counter() - t0
    res: dict[str, Any] = {"ok": 0, "failed": n, "retrans": 0}
    res |= sipp_stats(stat)
    res["secs"] = secs
    if res["failed"] or proc.returncode not in (0, 1):
        with contextlib.suppress(OSError), open(errors, errors="replace") as f:
            res["errors"] = [ln for ln in f.read(4000).splitlines() if "\t" in ln][:3]
        if not res.get("errors"):
            res["errors"] = [proc.stderr.decode(errors="replace")[-300:]]
    return res


# ---------------------------------------------------------------- measurement


@dataclass
class Row:
    """One server under one load: medians over the runs."""

    server: str
    section: str  # register | proxy
    ops: int  # operations per run: registrations or calls
    concurrency: int
    ok: int = 0
    failed: int = 0
    retrans: int = 0
    ops_per_s: float | None = None
    cpu_us_per_op: float | None = None
    runs: list[tuple[float, float | None]] = field(default_factory=list)  # (ops/s, us/op)
    errors: list[str] = field(default_factory=list)
    aors: int | None = None  # register: the distinct AORs registering in turn


def interleaved(
    kinds: list[str],
    start: Callable[[str], Server],
    args_of: Callable[[Server], list[str]],
    *,
    section: str,
    ops: int,
    concurrency: int,
    repeats: int,
    warmup: int,
    restart: bool,
    workdir: str,
    log: list[str],
) -> list[Row]:
    """Load every server ``repeats`` times, round by round in a rotated order.

    ``start(kind)`` starts a server and ``args_of(server)`` gives sipp's
    destination and scenario. A server first gets ``warmup`` operations (not
    measured). With ``restart``, every measured run gets a server of its own
    (started, warmed up, measured, stopped), else each server serves all its
    runs.
    """
    rows = [Row(k, section, max(int(ops * (PERL_SHARE if k == "perl" else 1)), 1), concurrency)
            for k in kinds]  # fmt: skip
    with contextlib.ExitStack() as stack:

        def warm(kind: str) -> Server:
            srv = start(kind)
            stack.callback(srv.stop)
            res = run_sipp(args_of(srv), warmup, concurrency, workdir)
            if res["failed"] or not res["ok"]:
                say(log, f"  {section} {kind}: warm-up failed {res.get('errors')}")
            return srv

        servers = {} if restart else {k: warm(k) for k in kinds}
        for r in range(repeats):
            for j in range(len(kinds)):
                i = (j + r) % len(kinds)
                row = rows[i]
                srv = warm(kinds[i]) if restart else servers[kinds[i]]
                cpu0 = srv.cpu()
                res = run_sipp(args_of(srv), row.ops, concurrency, workdir)
                cpu = srv.cpu() - cpu0
                if restart:
                    srv.stop()
                ok = res["ok"]
                row.ok += ok
                row.failed += res["failed"]
                row.retrans += res.get("retrans", 0)
                row.errors += res.get("errors", [])[:3]
                us = round(1e6 * cpu / ok, 2) if ok else None
                row.runs.append((round(ok / res["secs"], 1), us))
                say(log, f"  {section} {row.server:9} {ok / res['secs']:8.0f} ops/s "
                          f"{num(us, '.1f'):>8} us/op ok {ok} failed {res['failed']} "
                          f"retrans {res.get('retrans', 0)}")  # fmt: skip
    for row in rows:
        cpus = [c for _, c in row.runs if c is not None]
        row.ops_per_s = round(statistics.median(t for t, _ in row.runs), 1)
        row.cpu_us_per_op = round(statistics.median(cpus), 2) if cpus else None
    return rows


def register_section(kinds: list[str], ops: int, users: int, concurrency: int, *,
                     repeats: int, workdir: str, log: list[str],
                     baseline: str | None = None) -> list[Row]:  # fmt: skip
    """REGISTER with digest; a fresh server per run (see the comment below)."""
    scen = os.path.join(workdir, "register.xml")
    with open(scen, "w") as f:
        f.write(REGISTER_SCENARIO)
    inf = os.path.join(workdir, f"aors-{users}.csv")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n" + "".join(f"user{i};\n" for i in range(users)))
    users_file = os.path.join(workdir, "users.txt")
    with open(users_file, "w") as f:
        f.write(f"{DIGEST_USER[0]}:{DIGEST_USER[1]}\n")
    # one address for sipp in every run: each AOR keeps one binding (its Contact)
    # instead of gaining one per run, and the 200s stay the same size
    local = ["-i", sipp_local_ip(), "-p", str(free_port())]
    # Perl's Registrar (0.835) adds an event-loop timer on every REGISTER (its
    # check of the last timer compares with a reference, always true), kept
    # until the binding's expiry, and the loop scans its timers on every turn:
    # its cost per registration grows with the registrations it has served. A
    # fresh server per run (netsip's too) makes its runs alike; the warm-up
    # registers every AOR, so the stores hold all of them when measured.
    rows = interleaved(
        kinds,
        lambda kind: Server(kind, "register", workdir, users_file, baseline),
        lambda srv: [f"{srv.addr[0]}:{srv.addr[1]}", "-sf", scen, "-inf", inf, *local],
        section="register", ops=ops, concurrency=concurrency, repeats=repeats,
        warmup=max(users, 200), restart=True,
        workdir=workdir, log=log,
    )  # fmt: skip
    for row in rows:
        row.aors = users
    return rows


def proxy_section(kinds: list[str], ops: int, concurrency: int, *, repeats: int,
                  workdir: str, log: list[str],
                  baseline: str | None = None) -> list[Row]:  # fmt: skip
    """Stateless proxying; each proxy serves all its runs."""
    with sipp_uas(workdir) as uas:
        return interleaved(
            kinds,
            lambda kind: Server(kind, "proxy", workdir, "", baseline),
            lambda srv: [f"{uas[0]}:{uas[1]}", "-rsa", f"{srv.addr[0]}:{srv.addr[1]}",
                         "-sf", UAC_SCENARIO],
            section="proxy", ops=ops, concurrency=concurrency, repeats=repeats,
            warmup=min(ops, 500), restart=False,
            workdir=workdir, log=log,
        )  # fmt: skip


def memory_section(count: int, log: list[str]) -> dict[str, Any]:
    """:mod:`benchmarks.bench_registrar` in a process of its own (its RSS is the figure)."""
    cmd = [sys.executable, os.path.join(HERE, "bench_registrar.py"), "--count", str(count),
           "--json"]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"bench_registrar failed: {proc.stderr[-500:]}")
    res: dict[str, Any] = json.loads(proc.stdout)
    say(log, f"  memory: {res['count']:,} registrations, "
              f"{res['rss_per_registration']:.0f} B RSS each")  # fmt: skip
    return res


# ------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _cpu(rows: list[dict[str, Any]], kind: str) -> float | None:
    for r in rows:
        if r["server"] == kind:
            v: float | None = r["cpu_us_per_op"]
            return v
    return None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for aors, rows in _by_aors(res.get("register", [])).items():
        x = _ratio(_cpu(rows, "perl"), _cpu(rows, "netsip"))
        out.append({"target": f"REGISTER with digest, {aors:,} AOR{'s' if aors != 1 else ''}: "
                              f"Perl CPU/registration >= {REGISTER_VS_PERL:g}x netsip's",
                    "value": x, "hit": None if x is None else x >= REGISTER_VS_PERL})  # fmt: skip
    if "proxy" in res:
        rows = res["proxy"]
        x = _ratio(_cpu(rows, "perl"), _cpu(rows, "netsip"))
        out.append({"target": f"Stateless proxy: Perl CPU/call >= {PROXY_VS_PERL:g}x netsip's",
                    "value": x, "hit": None if x is None else x >= PROXY_VS_PERL})  # fmt: skip
        x = _ratio(_cpu(rows, "netsip"), _cpu(rows, "kamailio"))
        out.append({"target": "Stateless proxy: netsip CPU/call / Kamailio's (reported, "
                              "no target)", "value": x, "hit": None})  # fmt: skip
    return out


SERVER_NAMES: Final = {
    "register": {
        "netsip": "netsip (`netsip proxy --users`: Authorize + Registrar)",
        "perl": "Perl (Net::SIP::Authorize + Registrar)",
        "baseline": "netsip (`--baseline`)",
    },
    "proxy": {
        "netsip": "netsip (`netsip proxy`: Registrar + StatelessProxy)",
        "perl": "Perl (Net::SIP::StatelessProxy)",
        "kamailio": "Kamailio 5 (`forward()`, 1 worker)",
        "baseline": "netsip (`--baseline`)",
    },
}


def _by_aors(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.get("aors") or 0, []).append(r)
    return out


def table(rows: list[dict[str, Any]], unit: str, per_msg: int) -> list[str]:
    aors = rows[0].get("aors") is not None
    out = [
        ("| AORs " if aors else "")
        + f"| server | {unit}s per run | {unit}s/s | CPU µs/{unit} (runs) "
        f"| CPU µs/{'request' if per_msg == 2 else 'message'} | this / netsip "
        "| failed | sipp retrans |",
        ("|---:" if aors else "") + "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        net = _cpu([x for x in rows if x.get("aors") == r.get("aors")], "netsip")
        cpu = r["cpu_us_per_op"]
        runs = ", ".join(num(c, ".0f") for _, c in r["runs"])
        out.append(
            (f"| {r['aors']:,} " if aors else "")
            + f"| {SERVER_NAMES[r['section']].get(r['server'], r['server'])} | {r['ops']:,} "
            f"| {num(r['ops_per_s'], ',.0f')} | **{num(cpu, '.0f')}** ({runs}) "
            f"| {num(cpu / per_msg if cpu else None, '.1f')} "
            f"| {num(_ratio(cpu, net), '.2f')} | {r['failed']} | {r['retrans']} |"
        )
    return out


def report(res: dict[str, Any]) -> list[str]:
    env = res["environment"]
    out = [
        f"Run {env['date']} on {env['cpu']} ({env['cores']} cores), {env['kernel']}; "
        f"Python {env['python']}, {env['sipp']}, Perl Net::SIP {env['perl_netsip']}, "
        f"{res.get('kamailio', 'no Kamailio')}; {res['seconds']:.0f} s in all; load average "
        f"{env['loadavg']} before, {res['loadavg_after']} after.",
        "",
        f"Command: `{res['command']}`",
        "",
    ]
    if "register" in res:
        r0 = res["register"][0]
        out += [
            f"**REGISTER with digest**: sipp, {res['concurrency']} registrations in flight, "
            "the AORs in turn; a registration is REGISTER, 401, REGISTER with "
            f"credentials, 200; median of {len(r0['runs'])} interleaved runs; CPU is the "
            "server process's (user + system).",
            "",
            *table(res["register"], "registration", 2),
            "",
        ]
    if "proxy" in res:
        r0 = res["proxy"][0]
        out += [
            f"**Stateless proxying**: sipp uac -> proxy -> sipp uas, {res['concurrency']} "
            f"calls in flight; a call is INVITE, 180, 200, ACK, BYE, 200 through the "
            f"proxy ({MESSAGES_PER_CALL} messages); median of {len(r0['runs'])} interleaved "
            "runs; CPU of all the proxy's processes.",
            "",
            *table(res["proxy"], "call", MESSAGES_PER_CALL),
            "",
        ]
    m = res.get("memory")
    if m:
        out += [
            f"**Memory**: {m['count']:,} registrations (one contact each) held in the "
            f"memory store: RSS {m['rss_before'] / 2**20:.1f} MiB before, "
            f"{m['rss_registered'] / 2**20:.1f} MiB after, "
            f"**{m['rss_per_registration']:,.0f} B per registration** (the store's own "
            f"estimate by `sys.getsizeof`: {m['store_estimate_per_registration']:,.0f} B); "
            f"{m['cpu_us_per_register']:.1f} µs CPU per REGISTER (parse + registrar, "
            f"in process, no digest); expiring them all: "
            f"{m['cpu_us_per_expired_binding']:.2f} µs per binding.",
            "",
        ]
    out += ["**Targets**, this run:", "", "| target | value | verdict |", "|---|---:|---|"]
    for t in res["targets"]:
        hit = "n/a" if t["hit"] is None else ("hit" if t["hit"] else "MISS")
        out.append(f"| {t['target']} | {num(t['value'], ',.2f')} | {hit} |")
    if res.get("chart"):
        out += ["", f"![CPU per operation of the servers]({res['chart']})"]
    return out


def chart(res: dict[str, Any], path: str) -> bool:
    """CPU per registration and per proxied call, each server a bar; False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415  # the optional "bench" extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    panels = [(k, t) for k, t in (("register", "REGISTER with digest: CPU µs per registration"),
                                  ("proxy", "stateless proxy: CPU µs per call (6 messages)"))
              if res.get(k)]  # fmt: skip
    if not panels:
        return False
    colors = {"netsip": "tab:green", "baseline": "tab:olive", "perl": "tab:red",
              "kamailio": "tab:blue"}  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        rows = [r for r in res[key] if r["cpu_us_per_op"]]
        names = [r["server"] + (f"\n{r['aors']:,} AOR{'s' if r['aors'] != 1 else ''}"
                                if r.get("aors") else "") for r in rows]  # fmt: skip
        ys = [r["cpu_us_per_op"] for r in rows]
        bars = ax.bar(names, ys, color=[colors.get(r["server"], "grey") for r in rows])
        nets = [_cpu([x for x in rows if x.get("aors") == r.get("aors")], "netsip")
                for r in rows]  # fmt: skip
        ax.bar_label(bars, labels=[f"{y:,.0f}" + (f"\n({y / n:.1f}x)" if n else "")
                                   for y, n in zip(ys, nets, strict=True)],
                     fontsize=8, padding=2)  # fmt: skip
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylim(0, max(ys) * 1.25)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("server CPU µs (user + system)")
    fig.suptitle(f"netsip's servers against Perl's Net::SIP and Kamailio ({res['command']})",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_md(path: str, lines: list[str]) -> None:
    """Replace this benchmark's section of ``path`` (between its markers), or append it."""
    write_section(path, MD_BEGIN, MD_END, "Servers: registrar, digest, stateless proxy", lines)


def kamailio_version() -> str | None:
    binary = kamailio_binary()
    if binary is None:
        return None
    v = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False, timeout=30)
    first = (v.stdout or v.stderr).split("\n", 1)[0]  # "version: kamailio 5.6.3 (x86_64/linux)"
    return first.replace("version: ", "").split(" (")[0] or "kamailio"


# ---------------------------------------------------------------------- run


def run(*, quick: bool, sections: list[str], repeats: int | None, out_dir: str | None,
        write: bool, command: str, registrations: int | None = None,
        aors: tuple[int, ...] = (1, 1000),
        concurrency: int = 20, calls: int | None = None,
        memory_count: int | None = None,
        baseline: str | None = None) -> tuple[list[str], int]:  # fmt: skip
    """Run the sections; returns the Markdown lines and the number of failed operations.

    Files (JSON, PNG, the section of performance.md) go to ``out_dir`` (default
    ``docs/``) if ``write``.
    """
    if shutil.which("sipp") is None:
        sections = [s for s in sections if s == "memory"]
    reps = repeats or (1 if quick else 5)
    log: list[str] = []
    t0 = time.monotonic()
    kam = kamailio_version()
    res: dict[str, Any] = {"command": command, "environment": environment(),
                           "concurrency": concurrency}  # fmt: skip
    if kam:
        res["kamailio"] = kam
    perl = shutil.which("perl") is not None
    with tempfile.TemporaryDirectory(prefix="netsip-servers.") as workdir:
        if "register" in sections:
            n = registrations or (1000 if quick else 4000)
            say(log, f"register: {n} registrations per run, {reps} run(s) each")
            kinds = ["netsip", *(["baseline"] if baseline else []), *(["perl"] if perl else [])]
            res["register"] = [asdict(r) for users in aors for r in register_section(
                kinds, n, users, concurrency, repeats=reps, workdir=workdir, log=log,
                baseline=baseline)]  # fmt: skip
        if "proxy" in sections:
            n = calls or (1000 if quick else 6000)
            say(log, f"proxy: {n} calls per run, {reps} run(s) each")
            kinds = ["netsip", *(["baseline"] if baseline else []),
                     *(["perl"] if perl else []), *(["kamailio"] if kam else [])]  # fmt: skip
            res["proxy"] = [asdict(r) for r in proxy_section(
                kinds, n, concurrency, repeats=reps, workdir=workdir, log=log,
                baseline=baseline)]  # fmt: skip
    if "memory" in sections:
        count = memory_count or (20_000 if quick else 100_000)
        say(log, f"memory: {count:,} registrations")
        res["memory"] = memory_section(count, log)
    res["seconds"] = round(time.monotonic() - t0)
    res["loadavg_after"] = loadavg()
    res["targets"] = targets(res)
    out = out_dir or os.path.join(REPO, "docs")
    if write:
        os.makedirs(out, exist_ok=True)
        if chart(res, os.path.join(out, "performance-servers.png")):
            res["chart"] = "performance-servers.png"
        with open(os.path.join(out, "performance-servers.json"), "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    lines = report(res)
    if write:
        md = os.path.join(out, "performance.md")
        if not os.path.exists(md):
            with open(md, "w") as f:
                f.write("# Performance\n")
        write_md(md, lines)
    failed = sum(r["failed"] for k in ("register", "proxy") for r in res.get(k, []))
    return lines, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_servers",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections (default: all)")
    ap.add_argument("--repeats", type=int, help="measured runs per server (median; default 5)")
    ap.add_argument("--registrations", type=int, help="per register run (Perl a quarter)")
    ap.add_argument("--aors", default="1,1000",
                    help="distinct AORs registering, a run of the register section "
                         "for each (default %(default)s)")  # fmt: skip
    ap.add_argument("--calls", type=int, help="per proxy run (Perl a quarter)")
    ap.add_argument("--concurrency", type=int, default=20, help="sipp -l (default 20)")
    ap.add_argument("--memory-count", type=int, help="registrations held (default 100,000)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run netsip importing the netsip package in DIR "
                         "(another revision: before/after in one run)")  # fmt: skip
    ap.add_argument("--out", help="where performance-servers.* and performance.md go")
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
        out_dir=args.out,
        write=not args.no_write and (args.out is not None or not args.quick),
        command=" ".join(["python -m benchmarks.bench_servers", *argv_list]),
        registrations=args.registrations,
        aors=tuple(int(a) for a in args.aors.split(",") if a),
        concurrency=args.concurrency,
        calls=args.calls,
        memory_count=args.memory_count,
        baseline=args.baseline,
    )
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
