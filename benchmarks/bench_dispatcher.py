#!/usr/bin/env python3
"""Throughput benchmark of netsip's Dispatcher as a UAS, against Perl's Net::SIP.

A UAS (one Leg + Dispatcher + a receiver answering every OPTIONS with 200)
runs in its own process; a load generator in another process keeps a fixed
number of OPTIONS transactions in flight and counts the completed ones. The
same generator command is run against netsip's UAS and against Perl's Net::SIP
UAS (Net::SIP::Leg + Net::SIP::Dispatcher, the layers netsip ports), for UDP
and for TCP. Reported per run: completed transactions/s, the responder's CPU
time per transaction (from /proc), failures; and netsip/Perl ratios.

The generator is sipp (``sipp -sf <OPTIONS scenario> -l <concurrency>``, the
calls paced by the concurrency limit only) when installed, else a small
built-in Python generator (``--generator python``; it may itself become the
bottleneck, so its ratios are lower bounds).

Target (issue 5): netsip at least 3 times Perl's throughput on each transport.
The exit status is 0 when the target is met, 1 otherwise.

Run::

    python3 benchmarks/bench_dispatcher.py [--calls 30000] [--concurrency 100] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

# Run from a checkout without installing: netsip is the parent directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.util import Addr, Proto, Var

TARGET_RATIO = 3.0

SIPP_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
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

# Perl's Net::SIP UAS: the same work as uas_main() below.
PERL_UAS = r"""
use strict; use warnings;
use IO::Socket::IP; use Socket qw(SOCK_DGRAM SOCK_STREAM);
use Net::SIP::Leg; use Net::SIP::Dispatcher; use Net::SIP::Dispatcher::Eventloop;
my ($proto) = @ARGV;
$| = 1;
# the socket is made here: Net::SIP::Leg would try 5060, 5062.. before port 0
my $sock = IO::Socket::IP->new(
    LocalHost => '127.0.0.1', LocalPort => 0, ReuseAddr => 1,
    $proto eq 'udp' ? (Type => SOCK_DGRAM, Proto => 'udp')
                    : (Type => SOCK_STREAM, Proto => 'tcp', Listen => 1024),
) or die "socket: $@";
my $loop = Net::SIP::Dispatcher::Eventloop->new;
my $leg = Net::SIP::Leg->new(sock => $sock, proto => $proto);
my $disp = Net::SIP::Dispatcher->new([$leg], $loop);
my $stop = 0;
$SIG{TERM} = $SIG{INT} = sub { $stop = 1 };
$disp->set_receiver(sub {
    my ($packet, $leg, $from) = @_;
    return if !$packet->is_request || $packet->method eq 'ACK';
    $disp->deliver($packet->create_response(200), leg => $leg, dst_addr => $from);
});
print "LISTENING ", $sock->sockhost, " ", $sock->sockport, "\n";
$loop->loop(3600, \$stop);
"""


# ------------------------------------------------------------------ the UAS


def uas_main(proto: Proto) -> int:
    """netsip's UAS: answer every request but ACK with 200, until SIGTERM."""
    loop = EventLoop()
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto=proto)], loop)
    leg = disp.legs[0]

    def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
        if isinstance(packet, Request) and packet.method() != "ACK":
            disp.deliver(packet.create_response(200), leg=leg, dst_addr=from_)

    disp.set_receiver(receive)
    stop: Var[bool] = Var()

    def on_term(signum: int, frame: object) -> None:
        stop.value = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sys.stdout.write(f"LISTENING {leg.src.addr} {leg.src.port}\n")
    sys.stdout.flush()
    loop.loop(3600, stop)
    disp.close()
    loop.close()
    return 0


# ------------------------------------------------------------ the generator


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
                     timeout: float) -> dict[str, Any]:
    """Keep ``conc`` OPTIONS in flight until ``calls`` completed (own process)."""
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


def _sipp_stats(path: str) -> dict[str, Any]:
    with open(path) as f:
        rows = [line.rstrip("\n").split(";") for line in f if line.strip()]
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}

    def secs(v: str) -> float:
        h, m, s = v.split(":")[:3]
        return int(h) * 3600 + int(m) * 60 + float(s)

    return {
        "ok": int(last[col["SuccessfulCall(C)"]]),
        "failed": int(last[col["FailedCall(C)"]]),
        "secs_sipp": secs(last[col["ElapsedTime(C)"]]),
    }


@dataclass(frozen=True)
class Config:
    """One benchmark setting (the same for netsip and Perl)."""

    proto: str
    generator: str
    calls: int
    concurrency: int
    timeout: float
    workdir: str


def run_sipp(sipp: str, cfg: Config, dst: tuple[str, int], calls: int) -> dict[str, Any]:
    proto, conc, timeout, workdir = cfg.proto, cfg.concurrency, cfg.timeout, cfg.workdir
    scen = os.path.join(workdir, "options.xml")
    with open(scen, "w") as f:
        f.write(SIPP_SCENARIO)
    stat = os.path.join(workdir, f"stat-{time.monotonic_ns()}.csv")
    cmd = [
        sipp, f"{dst[0]}:{dst[1]}", "-sf", scen,
        "-t", "u1" if proto == "udp" else "t1",
        "-l", str(conc), "-r", "1000000", "-m", str(calls),
        # -nd: without sipp's default behaviours a finished call is released at
        # once, so the concurrency limit, not sipp's call bookkeeping, paces the load
        "-nd", "-nostdin", "-trace_stat", "-stf", stat, "-fd", "3600",
        "-timeout", f"{int(timeout)}s", "-timeout_error",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        timeout=timeout + 30, check=False,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    res: dict[str, Any] = (
        _sipp_stats(stat) if os.path.exists(stat) else {"ok": 0, "failed": calls}
    )
    res["secs"] = secs
    res["rc"] = proc.returncode
    if proc.returncode not in (0, 1):
        res["stderr"] = proc.stderr.decode(errors="replace")[-500:]
    return res


# ------------------------------------------------------------- orchestration


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (no psutil needed)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@contextlib.contextmanager
def start_uas(impl: str, proto: str) -> Iterator[tuple[subprocess.Popen[bytes], tuple[str, int]]]:
    if impl == "netsip":
        cmd = [sys.executable, os.path.abspath(__file__), "--_uas", proto]
    else:
        perl = shutil.which("perl")
        if perl is None:
            raise SystemExit("perl is not installed")
        cmd = [perl, "-e", PERL_UAS, proto]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if not line or line[0] != "LISTENING":
            raise SystemExit(f"{impl} UAS did not start: {line!r}")
        yield proc, (line[1], int(line[2]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Result:
    impl: str
    proto: str
    generator: str
    calls: int
    concurrency: int
    ok: int
    failed: int
    secs: float
    transactions_per_s: float
    uas_cpu_us_per_transaction: float | None


def measure(impl: str, cfg: Config) -> Result:
    with start_uas(impl, cfg.proto) as (proc, dst):
        # warm up (code paths, allocator) before measuring
        warm = max(200, cfg.calls // 20)
        if cfg.generator == "sipp":
            sipp = shutil.which("sipp")
            assert sipp is not None
            run_sipp(sipp, cfg, dst, warm)
            # sipp's own elapsed time has a resolution of 1 s: use the wall clock
            # less sipp's start/exit overhead, measured with a single call
            overhead = min(run_sipp(sipp, cfg, dst, 1)["secs"] for _ in range(3))
            cpu0 = _cpu_seconds(proc.pid)
            res = run_sipp(sipp, cfg, dst, cfg.calls)
            secs = max(res["secs"] - overhead, 1e-3)
        else:
            _run_python_gen(cfg, dst, warm)
            cpu0 = _cpu_seconds(proc.pid)
            res = _run_python_gen(cfg, dst, cfg.calls)
            secs = res["secs"]
        cpu = _cpu_seconds(proc.pid) - cpu0
    ok = res["ok"]
    return Result(
        impl=impl, proto=cfg.proto, generator=cfg.generator, calls=cfg.calls,
        concurrency=cfg.concurrency,
        ok=ok, failed=res["failed"], secs=round(secs, 3),
        transactions_per_s=round(ok / secs, 1) if secs else 0.0,
        uas_cpu_us_per_transaction=round(1e6 * cpu / ok, 1) if ok else None,
    )  # fmt: skip


def _run_python_gen(cfg: Config, dst: tuple[str, int], calls: int) -> dict[str, Any]:
    """The Python generator in its own process (so it does not share a core with the UAS)."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_gen", cfg.proto, dst[0], str(dst[1]),
         str(calls), str(cfg.concurrency), str(cfg.timeout)],
        capture_output=True, timeout=cfg.timeout + 30, check=True,
    )  # fmt: skip
    res: dict[str, Any] = json.loads(out.stdout)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Dispatcher UAS throughput vs Perl (see docstring)")
    ap.add_argument("--calls", type=int, default=30000, help="transactions per run")
    ap.add_argument("--concurrency", type=int, default=100, help="transactions in flight")
    ap.add_argument("--protos", default="udp,tcp", help="comma-separated transports")
    ap.add_argument("--generator", choices=["auto", "sipp", "python"], default="auto")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound for one run (s)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--_uas", choices=["udp", "tcp"], help=argparse.SUPPRESS)
    ap.add_argument("--_gen", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._uas:
        return uas_main("udp" if args._uas == "udp" else "tcp")
    if args._gen:
        proto, host, port, calls, conc, timeout = args._gen
        res = python_generator(proto, (host, int(port)), int(calls), int(conc), float(timeout))
        print(json.dumps(res))
        return 0

    gen = args.generator
    if gen == "auto":
        gen = "sipp" if shutil.which("sipp") else "python"
    results: list[Result] = []
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_dispatcher.") as workdir:
        for proto in args.protos.split(","):
            by_impl = {}
            cfg = Config(proto, gen, args.calls, args.concurrency, args.timeout, workdir)
            for impl in ("netsip", "perl"):
                r = measure(impl, cfg)
                results.append(r)
                by_impl[impl] = r
                if not args.json:
                    print(
                        f"{impl:6} {proto}: {r.transactions_per_s:9.1f} transactions/s, "
                        f"{r.uas_cpu_us_per_transaction} us UAS CPU/transaction, "
                        f"{r.ok} ok, {r.failed} failed, {r.secs} s ({gen}, -l {r.concurrency})",
                        flush=True,
                    )
            perl_tps = by_impl["perl"].transactions_per_s
            netsip_tps = by_impl["netsip"].transactions_per_s
            ratios[proto] = round(netsip_tps / perl_tps, 2) if perl_tps else 0.0
    met = all(r >= TARGET_RATIO for r in ratios.values()) and all(
        r.failed == 0 for r in results
    )
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "ratios": ratios,
                          "target_ratio": TARGET_RATIO, "target_met": met}, indent=2))
    else:
        for proto, ratio in ratios.items():
            print(f"ratio netsip/perl {proto}: {ratio:.2f} (target >= {TARGET_RATIO})")
        print("target met" if met else "target NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
