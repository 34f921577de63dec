#!/usr/bin/env python3
"""Beyond one process: the stateful proxy's cost and registrations on Redis.

Two sections (``--only``, comma-separated), each with every server in a
process of its own, sipp as the load, the servers' CPU from /proc and the
medians of runs interleaved round by round (an order rotated each round, so
that a noisy phase of the machine hits every server alike):

``proxy``
    CPU per proxied call of three proxies, one process each: ``netsip proxy``
    (stateless; no ``--users``, no ``--domain``: everything is forwarded),
    ``netsip proxy --stateful`` and Kamailio with a minimal ``t_relay()``
    config (tm, sl, maxfwd; ``children=1``: one UDP worker, the CPU of all its
    processes counted). A call is sipp's built-in ``uac`` scenario (INVITE
    with SDP, 180, 200, ACK, BYE, 200) from ``sipp -sn uac -rsa PROXY`` to a
    ``sipp -sn uas`` behind the proxy, over UDP, ``--concurrency`` calls in
    flight (a closed loop), ``--calls`` calls per run. Both ratios:
    stateful/stateless and stateful/Kamailio. Two diagnostics run beside
    them (``--proxies`` to leave them out): both netsip proxies again with
    Python's cyclic garbage collector off, which shows what it costs (the
    stateful proxy keeps every transaction 32 s after its end: many
    long-lived objects for the collector to traverse, and its full passes
    stall the proxy long enough for sipp to retransmit).
``register``
    Registrations per second of ``netsip proxy --workers N --store
    redis://...`` for N = 1, 2, 4 (``--workers``) and of one ``netsip proxy``
    with the memory store. sipp sends REGISTERs without authentication for
    distinct users (``u[call_number]``, one Contact each) from a UDP socket
    per registration (``-t un``, so that ``SO_REUSEPORT`` spreads them over
    the workers), keeping ``--reg-concurrency`` in flight (a closed loop: the
    rate it reaches with every registration answered is the sustainable
    one); a warm-up registers the users, so the measured runs are refreshes.
    The CPU of all the worker processes, of redis-server and of sipp, and the
    machine's busy cores (``/proc/stat``) per run say where the scaling stops.

Results: stdout (Markdown), and unless ``--quick`` (or with ``--out``):
``docs/performance-cluster.md``, ``.json`` and ``.png`` (matplotlib, the
``bench`` extra). Nothing fails on a number: exit status 0 unless calls or
registrations failed. ::

    python -m benchmarks.bench_cluster [--quick] [--only proxy,register]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Final

# Run from a checkout without installing: the benchmarks package is in the parent.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_calls import SIPP_BUFFER, sipp_cmd, sipp_stats
from benchmarks.load import cpu_seconds, environment, loadavg, say, sipp_local_ip

REPO: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS: Final = ("proxy", "register")
PROXIES: Final = ("stateless", "stateful", "kamailio")
#: the default of ``--proxies``: the three, and the diagnostics below
DEFAULT_PROXIES: Final = ("stateless", "stateful", "kamailio", "stateless-nogc", "stateful-nogc")
#: diagnostics, not run by default: netsip's proxies with the cyclic garbage
#: collector off (``gc.disable()`` before the command starts)
NOGC: Final = ("stateless-nogc", "stateful-nogc")
#: runs ``netsip`` as ``python -m netsip`` does, with the collector off
NOGC_MAIN: Final = (
    "import gc, runpy, sys; gc.disable(); sys.argv[0] = 'netsip'; "
    "runpy.run_module('netsip', run_name='__main__')"
)

#: Kamailio as a minimal transaction-stateful proxy: every request is relayed
#: to its Request-URI by tm; OPTIONS to Kamailio itself (the readiness probe)
#: gets a stateless 200. One UDP worker (children=1).
KAMAILIO_CFG: Final = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no
listen=udp:127.0.0.1:@PORT@
mpath="@MPATH@"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "maxfwd.so"
modparam("tm", "fr_timer", 3000)
modparam("tm", "fr_inv_timer", 5000)
request_route {
    if (method=="OPTIONS" && uri==myself) {
        sl_send_reply("200", "OK");
        exit;
    }
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    t_relay();
}
"""

#: A REGISTER without authentication for user u<call number>, one fixed
#: Contact per user (a later run refreshes the binding instead of adding one).
REGISTER_XML: Final = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:u[call_number]@bench.example>;tag=[call_number]
      To: <sip:u[call_number]@bench.example>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:u[call_number]@127.0.0.1:5060>
      Expires: 3600
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""


# ------------------------------------------------------------------ processes


def free_port() -> int:
    """A UDP port free on 127.0.0.1 (TCP too, for ``netsip proxy``'s sake)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers, Kamailio's processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants."""
    total = 0.0
    for p in descendants(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += cpu_seconds(p)
    return total


def busy_cpu() -> float:
    """CPU seconds all processes of the machine spent so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children: the sipp runs."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_options(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once an OPTIONS to the server itself (no user part) gets an answer."""
    msg = (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;"
        "branch=z9hG4bKready;rport\r\nFrom: <sip:r@127.0.0.1>;tag=1\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: ready@bench\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        while time.monotonic() < deadline and (proc is None or proc.poll() is None):
            s.sendto(msg, ("127.0.0.1", port))
            try:
                s.recv(65536)
                return True
            except OSError:
                continue
    return False


class Server:
    """A server process in a session of its own; its port, its CPU, its output."""

    def __init__(self, name: str, cmd: list[str], port: int, workdir: str, *,
                 probe: bool = True) -> None:  # fmt: skip
        self.name, self.port = name, port
        self.out = os.path.join(workdir, f"{name}-{time.monotonic_ns()}.out")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        if probe and not wait_options(port, 20, self.proc):
            self.stop()
            raise RuntimeError(f"{name} did not answer: {self.tail()}")

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def tail(self, n: int = 5) -> list[str]:
        with open(self.out, errors="replace") as f:
            return [ln.rstrip() for ln in f.readlines()[-n:]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # workers left behind
            os.killpg(self.proc.pid, signal.SIGKILL)


def netsip_proxy(name: str, workdir: str, *extra: str, gc: bool = True) -> Server:
    port = free_port()
    python = [sys.executable, "-m", "netsip"] if gc else [sys.executable, "-c", NOGC_MAIN]
    cmd = [*python, "proxy", "-q", "-l", f"udp:127.0.0.1:{port}", *extra]
    return Server(name, cmd, port, workdir)


def kamailio_modules() -> tuple[str, str] | None:
    """The kamailio binary and its module directory, None if not installed."""
    binary = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
    )
    mods = [d for d in ("/usr/lib/x86_64-linux-gnu/kamailio/modules",
                        "/usr/lib/aarch64-linux-gnu/kamailio/modules",
                        "/usr/lib/kamailio/modules") if os.path.isdir(d)]  # fmt: skip
    return (binary, mods[0]) if binary and mods else None


def kamailio(workdir: str) -> Server:
    found = kamailio_modules()
    if found is None:
        raise RuntimeError("kamailio is not installed")
    binary, mpath = found
    port = free_port()
    cfg = os.path.join(workdir, f"kamailio-{port}.cfg")
    with open(cfg, "w") as f:
        f.write(KAMAILIO_CFG.replace("@PORT@", str(port)).replace("@MPATH@", mpath))
    rundir = os.path.join(workdir, f"kamailio-{port}")
    os.mkdir(rundir)
    cmd = [binary, "-f", cfg, "-DD", "-E", "-m", "512", "-M", "16", "-Y", rundir]
    return Server("kamailio", cmd, port, workdir)


def sipp_uas(workdir: str) -> Server:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed")
    port = free_port()
    cmd = [sipp, "-sn", "uas", "-t", "u1", "-i", "127.0.0.1", "-p", str(port), "-nostdin",
           "-buff_size", str(SIPP_BUFFER), "-fd", "3600"]  # fmt: skip
    return Server("sipp-uas", cmd, port, workdir, probe=False)


def redis_server(workdir: str) -> Server:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", workdir, "--daemonize", "no"]  # fmt: skip
    srv = Server("redis", cmd, port, workdir, probe=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return srv
        time.sleep(0.05)  # starting: poll its port
    srv.stop()
    raise RuntimeError(f"redis-server did not answer: {srv.tail()}")


# ---------------------------------------------------------------------- sipp


def run_sipp(cmd: list[str], workdir: str, stat: str, timeout: float, n: int) -> dict[str, Any]:
    """Run one sipp command of ``n`` calls; its statistics (``ok``, ``failed``,
    ``retrans``: a call sipp did not finish counts as failed) and ``secs``."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout + 30, check=False)  # fmt: skip
    res: dict[str, Any] = {"ok": 0, "failed": 0, "retrans": 0}
    res |= sipp_stats(stat)
    res["secs"] = time.perf_counter() - t0
    res["failed"] = max(res["failed"], n - res["ok"])
    if proc.returncode not in (0, 1):
        res["stderr"] = proc.stderr.decode(errors="replace")[-300:]
    return res


def calls_via(proxy: Server, uas: Server, calls: int, conc: int, workdir: str) -> dict[str, Any]:
    """``calls`` sipp ``uac`` calls to ``uas`` through ``proxy`` (``-rsa``)."""
    tag = time.monotonic_ns()
    stat = os.path.join(workdir, f"stat-{tag}.csv")
    timeout = 30 + calls / 100
    cmd = sipp_cmd(
        ("127.0.0.1", uas.port),
        calls,
        conc,
        rate=None,
        pause_ms=0,
        timeout=timeout,
        stat=stat,
        errors=os.path.join(workdir, f"err-{tag}.log"),
    )
    # a call whose request goes unanswered gives up after 4 retransmissions
    # (about 10 s) instead of 7 (32 s): a failed call holds up its run less
    cmd += ["-rsa", f"127.0.0.1:{proxy.port}",
            "-max_invite_retrans", "4", "-max_non_invite_retrans", "4"]  # fmt: skip
    return run_sipp(cmd, workdir, stat, timeout, calls)


def registrations(server: Server, n: int, conc: int, workdir: str) -> dict[str, Any]:
    """``n`` REGISTERs (users u1..un), each from a socket of its own (``-t un``)."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed")
    scen = os.path.join(workdir, "register.xml")
    if not os.path.exists(scen):
        with open(scen, "w") as f:
            f.write(REGISTER_XML)
    stat = os.path.join(workdir, f"reg-{time.monotonic_ns()}.csv")
    timeout = 30 + n / 100
    cmd = [sipp, f"127.0.0.1:{server.port}", "-sf", scen, "-t", "un", "-i", sipp_local_ip(),
           "-l", str(conc), "-m", str(n), "-r", "1000000", "-nd", "-nostdin",
           "-max_socket", str(max(4 * conc, 1024)), "-buff_size", str(SIPP_BUFFER),
           "-trace_stat", "-stf", stat, "-fd", "3600",
           "-timeout", f"{int(timeout)}s", "-timeout_error"]  # fmt: skip
    return run_sipp(cmd, workdir, stat, timeout, n)


# ---------------------------------------------------------------- measurement


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def proxy_section(kinds: list[str], calls: int, conc: int, repeats: int, *, workdir: str,
                  log: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """CPU per proxied call of each proxy, runs interleaved; a row per proxy."""
    with contextlib.ExitStack() as stack:
        servers: list[Server] = []
        uass: list[Server] = []  # a UAS per proxy: no proxy's trouble falls on another's runs
        for kind in kinds:
            if kind == "kamailio":
                srv = kamailio(workdir)
            else:
                stateful = ["--stateful"] if kind.startswith("stateful") else []
                srv = netsip_proxy(kind, workdir, *stateful, gc=not kind.endswith("-nogc"))
            stack.callback(srv.stop)
            servers.append(srv)
            uas = sipp_uas(workdir)
            stack.callback(uas.stop)
            uass.append(uas)
        overhead = []
        for srv, uas in zip(servers, uass, strict=True):
            calls_via(srv, uas, min(calls, 1000), conc, workdir)  # warm-up
            # sipp's start and exit: the best of three 1-call runs
            overhead.append(min(calls_via(srv, uas, 1, 1, workdir)["secs"] for _ in range(3)))
        runs: list[list[dict[str, float]]] = [[] for _ in servers]
        for r in range(repeats):
            for k in range(len(servers)):
                i = (k + r) % len(servers)
                srv = servers[i]
                cpu0, busy0 = srv.cpu(), busy_cpu()
                res = calls_via(srv, uass[i], calls, conc, workdir)
                cpu, busy = srv.cpu() - cpu0, busy_cpu() - busy0
                secs = max(res["secs"] - overhead[i], 1e-3)
                ok = res["ok"]
                run = {"ok": ok, "failed": res["failed"], "retrans": res.get("retrans", 0),
                       "calls_per_s": ok / secs, "cpu_us_per_call": 1e6 * cpu / ok if ok else 0.0,
                       "cpu_util": cpu / secs, "machine_cores": busy / res["secs"]}  # fmt: skip
                runs[i].append(run)
                say(log, f"  {srv.name:9} {run['calls_per_s']:7.0f} calls/s "
                          f"{run['cpu_us_per_call']:7.1f} us/call  failed {res['failed']}"
                          f"  retrans {run['retrans']}")  # fmt: skip
    rows = []
    for srv, uas, rs in zip(servers, uass, runs, strict=True):
        rows.append({
            "proxy": srv.name, "calls": calls, "concurrency": conc, "repeats": repeats,
            "ok": sum(int(r["ok"]) for r in rs), "failed": sum(int(r["failed"]) for r in rs),
            "retrans": sum(int(r["retrans"]) for r in rs),
            "calls_per_s": _median([r["calls_per_s"] for r in rs if r["ok"]]),
            "cpu_us_per_call": _median([r["cpu_us_per_call"] for r in rs if r["ok"]]),
            "cpu_util": _median([r["cpu_util"] for r in rs]),
            "machine_cores": _median([r["machine_cores"] for r in rs]),
            "runs": [(round(r["calls_per_s"], 1), round(r["cpu_us_per_call"], 1)) for r in rs],
            "uas_bye_before_ack": _unexpected_at_ack(uas.out),
        })  # fmt: skip
    return rows


def _unexpected_at_ack(path: str) -> int | None:
    """Calls whose UAS got another request (the BYE) while it waited for the ACK.

    From the screen sipp's UAS prints when it stops: the ``Unexpected-Msg``
    column of its ACK line (sipp then drops the call: its BYE goes unanswered).
    """
    found = None
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode(errors="replace")
            if "----------> ACK" in line:
                fields = line.split()
                found = int(fields[-1]) if fields and fields[-1].isdigit() else found
    return found


def _split(path: str) -> list[int]:
    """Requests per worker, from the summary ``netsip proxy --workers`` prints on SIGTERM."""
    found: list[int] = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("workers: ") and "requests per worker: " in line:
                per = line.split("requests per worker: ", 1)[1].split(", ")
                return [int(x.split()[1]) for x in per]
            if line.startswith("--- netsip proxy: "):  # one worker
                found = [int(line.split()[3])]
    return found


def register_section(counts: list[int], n: int, conc: int, repeats: int, *,
                     workdir: str, log: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Registrations/s of the memory store (1 worker) and Redis with ``counts`` workers."""
    with contextlib.ExitStack() as stack:
        redis = redis_server(workdir)
        stack.callback(redis.stop)
        configs: list[tuple[str, str, int]] = [("memory", "memory:", 1)]
        configs += [(f"redis-{w}", f"redis://127.0.0.1:{redis.port}/{k}", w)
                    for k, w in enumerate(counts)]  # fmt: skip
        servers: list[Server] = []
        for name, store, w in configs:
            srv = netsip_proxy(name, workdir, "--store", store, "--workers", str(w))
            stack.callback(srv.stop)
            servers.append(srv)
        for srv in servers:
            registrations(srv, n, conc, workdir)  # warm-up: u1..un registered
        overhead = min(registrations(servers[0], 1, 1, workdir)["secs"] for _ in range(3))
        runs: list[list[dict[str, float]]] = [[] for _ in servers]
        for r in range(repeats):
            for k in range(len(servers)):
                i = (k + r) % len(servers)
                srv = servers[i]
                w0, r0, s0, b0 = srv.cpu(), redis.cpu(), children_cpu(), busy_cpu()
                res = registrations(srv, n, conc, workdir)
                w1, r1, s1, b1 = srv.cpu(), redis.cpu(), children_cpu(), busy_cpu()
                secs = max(res["secs"] - overhead, 1e-3)
                ok = res["ok"] or 1
                run = {
                    "ok": res["ok"], "failed": res["failed"], "retrans": res.get("retrans", 0),
                    "reg_per_s": res["ok"] / secs,
                    "workers_us": 1e6 * (w1 - w0) / ok,
                    "redis_us": 1e6 * (r1 - r0) / ok if configs[i][1] != "memory:" else 0.0,
                    "sipp_us": 1e6 * (s1 - s0) / ok,
                    "workers_cores": (w1 - w0) / secs,
                    "redis_cores": (r1 - r0) / secs if configs[i][1] != "memory:" else 0.0,
                    "sipp_cores": (s1 - s0) / secs,
                    "machine_cores": (b1 - b0) / res["secs"],
                }  # fmt: skip
                runs[i].append(run)
                say(log, f"  {srv.name:8} {run['reg_per_s']:6.0f} reg/s  workers "
                          f"{run['workers_us']:6.1f} us  redis {run['redis_us']:5.1f} us  "
                          f"busy {run['machine_cores']:.2f} cores  "
                          f"failed {res['failed']}")  # fmt: skip
        for srv in servers:
            srv.stop()  # the summary with the split over the workers
    rows = []
    for (name, store, w), srv, rs in zip(configs, servers, runs, strict=True):
        row: dict[str, Any] = {
            "config": name, "store": store.split(":")[0], "workers": w,
            "registrations": n, "concurrency": conc, "repeats": repeats,
            "ok": sum(int(r["ok"]) for r in rs), "failed": sum(int(r["failed"]) for r in rs),
            "retrans": sum(int(r["retrans"]) for r in rs),
            "requests_per_worker": _split(srv.out),
            "runs": [round(r["reg_per_s"], 1) for r in rs],
        }  # fmt: skip
        for key in ("reg_per_s", "workers_us", "redis_us", "sipp_us", "workers_cores",
                    "redis_cores", "sipp_cores", "machine_cores"):  # fmt: skip
            row[key] = _median([r[key] for r in rs])
        rows.append(row)
    return rows


# -------------------------------------------------------------------- report


def _num(x: float | None, spec: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    by = {r["proxy"]: r for r in res.get("proxy", [])}
    cpu = {k: by[k]["cpu_us_per_call"] if k in by else None for k in PROXIES}
    out: dict[str, Any] = {
        "stateful_vs_stateless": _ratio(cpu["stateful"], cpu["stateless"]),
        "stateful_vs_kamailio": _ratio(cpu["stateful"], cpu["kamailio"]),
        "stateless_vs_kamailio": _ratio(cpu["stateless"], cpu["kamailio"]),
    }
    regs = {r["config"]: r for r in res.get("register", [])}
    base = regs.get("redis-1", {}).get("reg_per_s")
    out["redis_scaling"] = {
        k: _ratio(r["reg_per_s"], base) for k, r in regs.items() if k.startswith("redis-")
    }
    out["redis1_vs_memory"] = _ratio(base, regs.get("memory", {}).get("reg_per_s"))
    return out


def report(res: dict[str, Any]) -> list[str]:
    env = res["environment"]
    out = [
        "# Performance: beyond one process",
        "",
        "Written by `" + res["command"] + '` (issue "Beyond one process", section',
        "Benchmarks; the method is that of [performance.md](performance.md): sipp as the",
        "load, each server in processes of its own, their CPU time from /proc, the medians",
        "of runs interleaved round by round). Set-up and commands: [cluster.md](cluster.md).",
        "",
        "```sh",
        "pip install -e '.[redis,bench]'     # redis-py; matplotlib for the chart",
        "python -m benchmarks.bench_cluster  # about 4 minutes; writes docs/performance-cluster.*",
        "python -m benchmarks.bench_cluster --quick --no-write   # a smoke run, under a minute",
        "python -m benchmarks.bench_cluster --only register --workers 1,2,3",
        "```",
        "",
        "It needs sipp, redis-server and Kamailio (left out if not installed).",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['kernel']}, Python "
        f"{env['python']}, {env['sipp']}; {res['date']}; load average "
        f"{env['loadavg']} before, {res['loadavg_after']} after; {res['seconds']} s.",
        "",
        "**Caveat:** "
        + (
            res["caveat"]
            if res.get("caveat")
            else "the figures are from one run on the development machine."
        ),
        "",
    ]
    if "proxy" in res:
        rows = res["proxy"]
        conc, calls = rows[0]["concurrency"], rows[0]["calls"]
        out += [
            "## Stateful proxy, stateless proxy, Kamailio `t_relay()`",
            "",
            f"sipp `uac` (INVITE with SDP, 180, 200, ACK, BYE, 200) → proxy → sipp `uas`, "
            f"UDP, {conc} calls in flight, {calls:,} calls per run, the median of "
            f"{rows[0]['repeats']} interleaved runs. CPU is the proxy's (all of Kamailio's "
            "processes: one UDP worker, its timers and main process); `busy` is the whole "
            "machine (sipp's two ends included) in cores.",
            "",
            "| proxy | calls/s | CPU µs/call | proxy cores | busy cores | failed | "
            "retrans | runs (calls/s, µs/call) |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        names = {"stateless": "`netsip proxy`", "stateful": "`netsip proxy --stateful`",
                 "kamailio": "Kamailio `t_relay()`",
                 "stateless-nogc": "`netsip proxy`, gc off",
                 "stateful-nogc": "`netsip proxy --stateful`, gc off"}  # fmt: skip
        for r in rows:
            runs = ", ".join(f"({t:,.0f}, {c:.0f})" for t, c in r["runs"])
            out.append(
                f"| {names[r['proxy']]} | {_num(r['calls_per_s'])} | "
                f"{_num(r['cpu_us_per_call'], '.0f')} | {_num(r['cpu_util'], '.2f')} | "
                f"{_num(r['machine_cores'], '.2f')} | {r['failed']} | {r['retrans']} | {runs} |"
            )
        rt = res["ratios"]
        by = {r["proxy"]: r["cpu_us_per_call"] for r in rows}
        out += [
            "",
            f"* stateful / stateless: **{_num(rt['stateful_vs_stateless'], '.2f')}x** "
            f"({_num(by.get('stateful'), '.0f')} µs against "
            f"{_num(by.get('stateless'), '.0f')} µs per call)",
            f"* stateful / Kamailio: **{_num(rt['stateful_vs_kamailio'], '.2f')}x** "
            f"({_num(by.get('stateful'), '.0f')} µs against "
            f"{_num(by.get('kamailio'), '.0f')} µs per call)",
            f"* stateless / Kamailio: {_num(rt['stateless_vs_kamailio'], '.2f')}x",
            "",
            *proxy_notes(rows),
        ]
    if "register" in res:
        rows = res["register"]
        out += [
            "## Registrations per second: memory store, Redis with 1, 2, 4 workers",
            "",
            f"sipp REGISTER (no authentication, {rows[0]['registrations']:,} distinct users "
            "refreshed per run, a UDP socket per registration so that SO_REUSEPORT spreads "
            f"them), {rows[0]['concurrency']} in flight (closed loop: the rate with every "
            f"registration answered), the median of {rows[0]['repeats']} interleaved runs. "
            "CPU per registration of all the workers, of redis-server and of sipp; "
            "then the cores each took while it ran, the whole machine's (`busy`) and "
            "what is left of it for other processes (`others`: on a shared machine, the "
            "load of everything else). Each column is its own median over the runs.",
            "",
            "| store, workers | reg/s | vs redis-1 | workers µs/reg | redis µs/reg | "
            "sipp µs/reg | workers cores | redis cores | sipp cores | busy cores | others | "
            "failed | "
            "requests per worker |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        scale = res["ratios"]["redis_scaling"]
        for r in rows:
            split = " / ".join(f"{x:,}" for x in r["requests_per_worker"])
            out.append(
                f"| {r['store']}, {r['workers']} | {_num(r['reg_per_s'])} | "
                f"{_num(scale.get(r['config']), '.2f')} | {_num(r['workers_us'], '.0f')} | "
                f"{_num(r['redis_us'], '.0f')} | {_num(r['sipp_us'], '.0f')} | "
                f"{_num(r['workers_cores'], '.2f')} | {_num(r['redis_cores'], '.2f')} | "
                f"{_num(r['sipp_cores'], '.2f')} | {_num(r['machine_cores'], '.2f')} | "
                f"{_num(_others(r), '.2f')} | {r['failed']} | {split} |"
            )
        out += [
            "",
            f"Redis with one worker against the memory store: "
            f"{_num(res['ratios']['redis1_vs_memory'], '.2f')}x the registrations/s.",
            "",
            *register_notes(rows, res["ratios"]),
        ]
    if res.get("chart"):
        out += [f"![proxies and registrations]({res['chart']})", ""]
    return out


def _others(r: dict[str, Any]) -> float | None:
    """Cores the rest of the machine (other processes) took during the runs."""
    parts = [r["machine_cores"], r["workers_cores"], r["redis_cores"], r["sipp_cores"]]
    if any(p is None for p in parts):
        return None
    return max(0.0, float(parts[0]) - sum(float(p) for p in parts[1:]))


def proxy_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the proxy table shows, in words, with its figures."""
    by = {r["proxy"]: r for r in rows}
    sl, sf, ka = (by.get(k, {}).get("cpu_us_per_call") for k in PROXIES)
    out = ["What it shows:", ""]
    if sl and sf:
        out.append(
            f"* The stateful proxy costs {sf - sl:,.0f} µs more per call than the stateless "
            "one: per call it sends a 100 Trying, keeps a server and a client transaction for "
            "the INVITE and for the BYE (a response context each, its timers armed and "
            "cancelled: retransmission A/E, Timer C, then D/K for 32 s), and caches the "
            "responses it sends upstream; the stateless proxy forwards each of the six "
            "messages and forgets it."
        )
    if sf and ka:
        out.append(
            f"* Kamailio's `t_relay()` does the transaction work of the stateful proxy "
            f"in C at {ka:,.0f} µs per call: netsip's stateful proxy takes "
            f"{sf / ka:.1f}x its CPU" + (f", the stateless one {sl / ka:.1f}x." if sl else ".")
        )
    for kind in ("stateless", "stateful"):
        on, off = (
            by.get(kind, {}).get("cpu_us_per_call"),
            by.get(f"{kind}-nogc", {}).get("cpu_us_per_call"),
        )
        if on and off:
            out.append(
                f"* {kind.capitalize()} with the cyclic garbage collector off: {off:,.0f} µs "
                f"per call against {on:,.0f} µs with it: the collector takes "
                f"{max(0.0, 100 * (on - off) / on):.0f} % of the {kind} proxy's CPU here."
            )
    fails = sum(r["failed"] for r in rows)
    if fails:
        names = ", ".join(f"{r['proxy']} {r['failed']}" for r in rows if r["failed"])
        out.append(
            f"* Failed calls ({names}) are sipp's `FailedMaxUDPRetrans`: a request retransmitted "
            "four times without an answer; such a run lasts until its last call gave up "
            "(about 10 s later), so its calls/s is meaningless and the medians above are of the "
            "runs; see the runs column."
        )
        early = ", ".join(
            f"{r['proxy']} {r['uas_bye_before_ack']}"
            for r in rows
            if r["failed"] and r.get("uas_bye_before_ack")
        )
        if early:
            out.append(
                f"* sipp's UAS got the BYE of some calls before their ACK ({early} calls), "
                "counted it as an unexpected message and dropped the call: their BYE stays "
                "unanswered. It happens in runs where the proxy stalled for over 500 ms "
                "(sipp retransmitted requests: the retrans column)."
            )
    return [*out, ""]


def register_notes(rows: list[dict[str, Any]], rt: dict[str, Any]) -> list[str]:
    """Where the scaling of the registrations stops and why, with the run's figures."""
    by = {r["config"]: r for r in rows}
    out = ["Where the scaling stops, and why:", ""]
    mem, one = by.get("memory"), by.get("redis-1")
    if mem and one and mem["workers_us"] and one["workers_us"]:
        out.append(
            f"* One worker on Redis spends {one['workers_us']:,.0f} µs of CPU per "
            f"registration against {mem['workers_us']:,.0f} µs with the memory store (the "
            "redis-py client, two commands per REGISTER: `HGETALL`, then `EVALSHA` of the "
            f"update script), and Redis {_num(one['redis_us'], ',.0f')} µs more. It is busy "
            f"only {one['workers_cores']:.2f} of a core: the client blocks the event loop "
            "for each of the two round trips, and the worker waits for Redis (which needs the "
            "other core, with sipp) instead of working"
            + (
                f" (here other processes also took {_others(one) or 0.0:.2f} of a core)."
                if (_others(one) or 0.0) >= 0.3
                else "."
            )
        )
    two = by.get("redis-2")
    if one and two:
        gain = rt["redis_scaling"].get("redis-2") or 0.0
        others = _others(two) or 0.0
        what = (
            "Two workers overlap those waits"
            if gain >= 1.15
            else "Two workers gain nothing in this run: the 2 cores had no idle time left"
            + (f" ({others:.2f} of a core went to other processes)" if others >= 0.3 else "")
        )
        out.append(
            f"* {what}: {_num(two['reg_per_s'])} reg/s, "
            f"{_num(rt['redis_scaling'].get('redis-2'), '.2f')}x one worker; the machine is "
            f"then {two['machine_cores']:.2f} of 2 cores busy (workers "
            f"{two['workers_cores']:.2f}, Redis {two['redis_cores']:.2f}, sipp "
            f"{two['sipp_cores']:.2f}, others {others:.2f})."
        )
    last = by.get(f"redis-{max(r['workers'] for r in rows)}")
    if last and last is not two and last is not one:
        cost = (last["workers_us"] or 0) + (last["redis_us"] or 0) + (last["sipp_us"] or 0)
        ceiling = 2e6 / cost if cost else None
        out.append(
            f"* {last['workers']} workers: {_num(last['reg_per_s'])} reg/s, "
            f"{_num(rt['redis_scaling'].get(last['config']), '.2f')}x one worker, with "
            f"{last['machine_cores']:.2f} of 2 cores busy. Here it stops at the latest: "
            "every registration "
            f"costs {cost:,.0f} µs of CPU on this machine (workers "
            f"{_num(last['workers_us'], ',.0f')}, Redis {_num(last['redis_us'], ',.0f')}, sipp "
            f"{_num(last['sipp_us'], ',.0f')}), so 2 cores carry at most about "
            f"{_num(ceiling)} reg/s; more workers only add processes to schedule. Workers on "
            "cores of their own, Redis on another machine (and the load generator on a "
            "third) are what would scale further: see the estimate in cluster.md."
        )
    if mem and one and mem["reg_per_s"] and one["reg_per_s"]:
        ahead = "stays ahead of" if mem["reg_per_s"] > one["reg_per_s"] else "is behind"
        limit = ""
        if (mem["workers_cores"] or 0) < 0.9 and (mem["machine_cores"] or 0) < 1.5:
            limit = (
                f" Its figure is a floor: its worker was busy only {mem['workers_cores']:.2f} "
                f"of a core and the machine {mem['machine_cores']:.2f} of 2, so the load (sipp "
                f"with {mem['concurrency']} in flight, a socket per registration), not the "
                f"worker, set the pace; its CPU, {_num(mem['workers_us'], ',.0f')} µs per "
                f"registration, says that one core would carry about "
                f"{_num(1e6 / mem['workers_us'] if mem['workers_us'] else None)} reg/s."
            )
        out.append(
            f"* The memory store ({_num(mem['reg_per_s'])} reg/s, one process) {ahead} "
            "Redis on one machine; Redis is what lets several processes (or machines) share "
            "the registrations." + limit
        )
    return [*out, ""]


def chart(res: dict[str, Any], path: str) -> bool:
    """Two panels: CPU per proxied call, registrations/s by store and workers."""
    try:
        import matplotlib  # noqa: PLC0415  (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if "proxy" in res:
        rows = res["proxy"]
        ax = axes[0]
        ax.bar([r["proxy"].replace("-", "\n") for r in rows],
               [r["cpu_us_per_call"] or 0 for r in rows],
               color=["#4c72b0", "#dd8452", "#55a868"][: len(rows)])  # fmt: skip
        ax.set_ylabel("proxy CPU µs per call (INVITE..BYE)")
        ax.set_title("CPU per proxied call")
    if "register" in res:
        rows = res["register"]
        ax = axes[1]
        labels = [f"{r['store']}\n{r['workers']} w" for r in rows]
        ax.bar(labels, [r["reg_per_s"] or 0 for r in rows], color="#4c72b0")
        ax.set_ylabel("registrations/s")
        ax.set_title("REGISTER, closed loop (2 cores: sipp + redis + workers)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_cluster",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections (default: all)")
    ap.add_argument(
        "--proxies",
        default=",".join(DEFAULT_PROXIES),
        help="proxies of the proxy section (default: all); stateless-nogc and "
        "stateful-nogc are netsip's with the cyclic garbage collector off (what it costs)",
    )
    ap.add_argument("--calls", type=int, help="calls per proxy run (default 5000)")
    ap.add_argument("--concurrency", type=int, default=50, help="calls in flight (sipp -l)")
    ap.add_argument("--registrations", type=int, help="REGISTERs per run (default 10000)")
    ap.add_argument("--reg-concurrency", type=int, default=50, help="REGISTERs in flight")
    ap.add_argument("--workers", default="1,2,4", help="worker counts on Redis")
    ap.add_argument("--repeats", type=int, help="measured runs per server (default 5)")
    ap.add_argument("--caveat", help="a sentence on the machine's state for the page")
    ap.add_argument("--out", help="directory of performance-cluster.{md,json,png}")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--from-json", metavar="FILE", help="only render FILE's results again")
    args = ap.parse_args(argv)
    if args.from_json:  # (and its chart again, with --out DIR)
        with open(args.from_json) as f:
            saved = json.load(f)
        if args.out:
            chart(saved, os.path.join(args.out, "performance-cluster.png"))
        print("\n".join(report(saved)))
        return 0
    # stopped with SIGTERM: leave through the ExitStacks, which stop the servers
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(143))
    sections = [s for s in args.only.split(",") if s]
    if set(sections) - set(SECTIONS):
        ap.error(f"sections: {', '.join(SECTIONS)}")
    kinds = [k for k in args.proxies.split(",") if k]
    if set(kinds) - set(PROXIES) - set(NOGC):
        ap.error(f"proxies: {', '.join(PROXIES + NOGC)}")
    if "kamailio" in kinds and kamailio_modules() is None:
        print("kamailio is not installed: left out", file=sys.stderr)
        kinds.remove("kamailio")
    quick = args.quick
    calls = args.calls or (600 if quick else 5000)
    regs = args.registrations or (1000 if quick else 10000)
    repeats = args.repeats or (1 if quick else 5)
    counts = [int(w) for w in args.workers.split(",") if w]
    write = not args.no_write and (args.out is not None or not quick)
    out_dir = args.out or os.path.join(REPO, "docs")
    if shutil.which("sipp") is None:
        print("sipp is not installed", file=sys.stderr)
        return 1
    argv_list = sys.argv[1:] if argv is None else argv
    res: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.bench_cluster", *argv_list]),
        "environment": environment(),
        "caveat": args.caveat,
    }
    res["date"] = res["environment"]["date"]
    t0 = time.monotonic()
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="netsip-cluster.") as workdir:
        if "proxy" in sections and kinds:
            say(log, f"proxy: {', '.join(kinds)}; {calls} calls per run, {repeats} rounds")
            res["proxy"] = proxy_section(kinds, calls, args.concurrency, repeats,
                                         workdir=workdir, log=log)  # fmt: skip
        if "register" in sections:
            say(log, f"register: memory, redis x {counts}; {regs} per run, {repeats} rounds")
            res["register"] = register_section(counts, regs, args.reg_concurrency, repeats,
                                               workdir=workdir, log=log)  # fmt: skip
    res["seconds"] = round(time.monotonic() - t0)
    res["loadavg_after"] = loadavg()
    res["ratios"] = ratios(res)
    if write:
        png = os.path.join(out_dir, "performance-cluster.png")
        if chart(res, png):
            res["chart"] = os.path.basename(png)
    lines = report(res)
    print("\n".join(lines))
    if write:
        with open(os.path.join(out_dir, "performance-cluster.json"), "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        with open(os.path.join(out_dir, "performance-cluster.md"), "w") as f:
            f.write("\n".join(lines).rstrip("\n") + "\n")
    failed = sum(r["failed"] for s in ("proxy", "register") for r in res.get(s, []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
