"""The WebSocket transport (RFC 7118, netsip._ws): CPU per transaction, memory per connection.

``python -m benchmarks --only ws`` (or ``python -m benchmarks.bench_ws``;
about 1 minute, ``--quick`` well under that) measures:

(1) ``cpu``: OPTIONS transactions over WebSocket against the same over TCP:
    the responder's CPU time per transaction (from /proc) and the ratio
    WS/TCP. Two responders per transport, each in its own process: netsip's
    SocketPool with a callback that answers 200 (``pool``: the transport
    itself), and Leg + Dispatcher (``dispatcher``: what an application
    pays). The load comes from a Python generator in another process that
    keeps ``--concurrency`` transactions in flight on one connection (no
    sipp: it has no WebSocket); its frames are crafted and masked by hand,
    not with netsip. The runs are interleaved (each round loads every
    responder once, in a rotated order) and the median of ``--repeats``
    rounds is reported, so a noisy phase of a shared machine hits both
    transports alike and the ratio stays meaningful.
(2) ``idle``: ``--conns`` (default 10,000) idle WebSocket connections, upgraded
    with subprotocol ``sip``, to one netsip process (a ``ws`` SocketPool): its
    resident memory (VmRSS) before and after, per connection. The target is
    below 16 KiB per connection. The connections come from a separate process
    (the file-descriptor limit of both is raised with ``setrlimit``), from
    loopback source addresses 127.0.0.1, 127.0.0.2, ... when one address
    runs out of ports.

Results: printed, and the ``ws`` section of ``docs/performance.md`` (between
its markers) unless ``--no-write`` or a ``--quick`` run without ``--out``.
Nothing fails on a number.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Final

from benchmarks.load import (
    REPO,
    cpu_seconds,
    environment,
    loadavg,
    num,
    say,
    stop_process,
    write_section,
)

MD_BEGIN: Final = "<!-- ws benchmark: begin (written by python -m benchmarks --only ws) -->"
MD_END: Final = "<!-- ws benchmark: end -->"
HEADING: Final = "WebSocket transport (RFC 7118)"
#: the issue's target: resident memory per idle WebSocket connection
RSS_PER_CONN_TARGET: Final = 16 * 1024
RESPONDERS: Final = ("pool", "dispatcher")
PROTOS: Final = ("tcp", "ws")

_UPGRADE: Final = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
)


# ------------------------------------------------------------------ processes


def _raise_nofile() -> int:
    """Raise the soft file-descriptor limit to the hard one; the new limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(kind: str, proto: str) -> int:
    """A responder: print ``LISTENING ip port``, answer OPTIONS with 200 until SIGTERM."""
    from netsip.dispatcher import Dispatcher  # noqa: PLC0415  # the child process only
    from netsip.eventloop import EventLoop  # noqa: PLC0415
    from netsip.leg import Leg  # noqa: PLC0415
    from netsip.packet import Packet, Request  # noqa: PLC0415
    from netsip.socketpool import SocketPool, import_settings  # noqa: PLC0415
    from netsip.testing import tcp_listener  # noqa: PLC0415
    from netsip.util import Addr, Var  # noqa: PLC0415

    _raise_nofile()
    # idle connections must stay for the memory measurement
    import_settings(MIN_EXPIRE=3600, MAX_EXPIRE=3600)
    stop: Var[bool] = Var()
    signal.signal(signal.SIGTERM, lambda *_: setattr(stop, "value", True))
    loop = EventLoop()
    if kind == "dispatcher":
        leg = Leg(addr="127.0.0.1", port=0, proto=proto)  # type: ignore[arg-type]  # tcp or ws
        disp = Dispatcher([leg], loop)

        def receive(packet: Packet, leg_: Leg, from_: Addr) -> None:
            if isinstance(packet, Request) and packet.method() != "ACK":
                disp.deliver(packet.create_response(200, "OK"), leg=leg_, dst_addr=from_)

        disp.set_receiver(receive)
        port = leg.src.port
    else:
        listener = tcp_listener("127.0.0.1", backlog=4096)
        pool = SocketPool(proto, listener)  # type: ignore[arg-type]  # tcp or ws

        def answer(packet: Packet, from_: Addr) -> None:
            if isinstance(packet, Request):
                pool.sendto(packet.create_response(200, "OK"), from_)

        pool.attach_eventloop(loop, answer)
        port = listener.getsockname()[1]
    print(f"LISTENING 127.0.0.1 {port}", flush=True)
    while not stop:
        loop.loop(1.0, stop)
    return 0


@contextmanager
def _responder(kind: str, proto: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_ws", "serve", kind, proto],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "LISTENING":
            raise RuntimeError(f"{kind} {proto} responder did not start: {line!r}")
        yield proc, int(line[2])
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# ------------------------------------------------------------------ the wire, by hand


def _mask_frame(payload: bytes) -> bytes:
    """A masked text frame (RFC 6455 5.2, 5.3), built without netsip or wsproto."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    keys = (key * (n // 4 + 1))[:n]
    return (
        head
        + key
        + (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")
    )


def _frames(buf: bytearray) -> Iterator[bytes]:
    """Cut the complete (unmasked) server frames' payloads out of ``buf``."""
    while len(buf) >= 2:
        n, pos = buf[1] & 0x7F, 2
        if n == 126:
            n, pos = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, pos = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < pos + n:
            return
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        yield payload


def _upgrade(sock: socket.socket) -> bytes:
    """Send an upgrade request on a connected non-blocking socket (its 101 is read later)."""
    key = base64.b64encode(os.urandom(16))
    sock.sendall(_UPGRADE % key)
    return key


def _options(local: tuple[str, int], n: int, proto: str) -> bytes:
    return (
        f"OPTIONS sip:bench@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto.upper()} {local[0]}:{local[1]};branch=z9hG4bKws{n}\r\n"
        f"From: <sip:gen@{local[0]}>;tag={n}\r\nTo: <sip:bench@127.0.0.1>\r\n"
        f"Call-ID: {n}-ws-bench@{local[0]}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def load(proto: str, port: int, calls: int, conc: int, timeout: float) -> dict[str, Any]:
    """Keep ``conc`` OPTIONS in flight on one connection until ``calls`` completed."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    local = sock.getsockname()[:2]
    buf = bytearray()
    if proto == "ws":
        _upgrade(sock)
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(4096)
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise RuntimeError(f"upgrade refused: {head[:80]!r}")
        buf = bytearray(rest)
    sent = ok = failed = 0
    out = bytearray()

    def queue() -> None:
        nonlocal sent
        sent += 1
        data = _options(local, sent, proto)
        out.extend(_mask_frame(data) if proto == "ws" else data)

    for _ in range(min(conc, calls)):
        queue()
    sock.sendall(out)
    out.clear()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while ok + failed < calls and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if proto == "ws":
            msgs = list(_frames(buf))
        else:
            msgs = []
            while (end := buf.find(b"\r\n\r\n")) >= 0:  # the responses have no body
                msgs.append(bytes(buf[: end + 4]))
                del buf[: end + 4]
        for m in msgs:
            if m.startswith(b"SIP/2.0 200 "):
                ok += 1
            else:
                failed += 1
            if sent < calls:
                queue()
        if out:
            sock.sendall(out)
            out.clear()
    secs = time.perf_counter() - t0
    sock.close()
    return {"ok": ok, "failed": calls - ok, "secs": secs}


def _run_load(proto: str, port: int, calls: int, conc: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_ws", "load", proto, str(port), str(calls),
         str(conc)],
        capture_output=True, timeout=300, check=True, cwd=REPO, env=env,
    )  # fmt: skip
    res: dict[str, Any] = json.loads(done.stdout)
    return res


def idle_clients(port: int, n: int) -> int:
    """Open ``n`` upgraded WebSocket connections, print ``READY n``, hold them until stdin ends."""
    _raise_nofile()
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    per_ip = 25000  # below the ephemeral port range of one source address
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.0.{1 + i // per_ip}", 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        _upgrade(s)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, bytearray())
    pending = n
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            buf: bytearray = key.data
            buf += conn.recv(4096)
            if b"\r\n\r\n" in buf:
                if not buf.startswith(b"HTTP/1.1 101 "):
                    raise RuntimeError(f"upgrade refused: {bytes(buf[:80])!r}")
                sel.unregister(conn)
                pending -= 1
    print(f"READY {n - pending}", flush=True)
    sys.stdin.read()  # until the runner closes it
    for s in socks:
        s.close()
    return 0


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------ measurements


def measure_cpu(calls: int, conc: int, repeats: int, log: list[str]) -> list[dict[str, Any]]:
    """CPU per transaction of each responder and transport, interleaved rounds."""
    results: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers = {
            (kind, proto): stack.enter_context(_responder(kind, proto))
            for kind in RESPONDERS
            for proto in PROTOS
        }
        order = list(servers)
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in order}
        failed = dict.fromkeys(order, 0)
        for key, (_proc, port) in servers.items():  # warm-up: imports, caches
            _run_load(key[1], port, min(2000, calls), conc)
        for r in range(repeats):
            for key in order[r % len(order) :] + order[: r % len(order)]:
                proc, port = servers[key]
                before = cpu_seconds(proc.pid)
                res = _run_load(key[1], port, calls, conc)
                cpu = cpu_seconds(proc.pid) - before
                failed[key] += res["failed"]
                runs[key].append((res["ok"] / res["secs"], cpu / max(res["ok"], 1) * 1e6))
        for kind in RESPONDERS:
            tcp = statistics.median(us for _, us in runs[(kind, "tcp")])
            for proto in PROTOS:
                key = (kind, proto)
                us = statistics.median(u for _, u in runs[key])
                tx = statistics.median(t for t, _ in runs[key])
                results.append({"responder": kind, "proto": proto, "tx_per_s": tx,
                                "cpu_us_per_tx": us, "ratio_to_tcp": us / tcp,
                                "failed": failed[key], "runs": runs[key]})  # fmt: skip
                say(log, f"  {kind:10} {proto:3} {tx:8.0f} tx/s  {us:6.1f} us/tx  "
                         f"x{us / tcp:.2f} of tcp  failed {failed[key]}")  # fmt: skip
    return results


def measure_idle(conns: int, log: list[str]) -> dict[str, Any]:
    """RSS of one ws pool process before and after ``conns`` idle upgraded connections."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    with _responder("pool", "ws") as (proc, port):
        # one connection and a transaction first: wsproto and h11 imported, caches warm
        _run_load("ws", port, 100, 10)
        time.sleep(0.5)
        before = _rss(proc.pid)
        clients = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_ws", "idle", str(port), str(conns)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert clients.stdout is not None and clients.stdin is not None
            line = clients.stdout.readline().decode().split()
            if len(line) != 2 or line[0] != "READY":
                raise RuntimeError(f"idle clients did not start: {line!r}")
            ready = int(line[1])
            time.sleep(1.0)  # let the server finish its last writes
            after = _rss(proc.pid)
        finally:
            if clients.stdin is not None:
                clients.stdin.close()
            clients.wait(timeout=60)
            if clients.stdout is not None:
                clients.stdout.close()
    per = (after - before) / max(ready, 1)
    say(log, f"  {ready} idle WebSocket connections: RSS {before / 2**20:.1f} MiB -> "
             f"{after / 2**20:.1f} MiB, {per / 1024:.2f} KiB per connection "
             f"(target < {RSS_PER_CONN_TARGET // 1024} KiB)")  # fmt: skip
    return {"conns": ready, "rss_before": before, "rss_after": after, "bytes_per_conn": per}


# ------------------------------------------------------------------ report


def report(cpu: list[dict[str, Any]], idle: dict[str, Any] | None, args: str, *,
           calls: int, conc: int, repeats: int) -> list[str]:  # fmt: skip
    env = environment()
    lines = [
        f"`{args}`: {env.get('cpu', '?')}, Python {env.get('python', '?')}, load {loadavg()}.",
        "",
        f"OPTIONS transactions, {conc} in flight on one connection, {calls} per run, "
        f"median of {repeats} interleaved rounds; the responder's CPU time per transaction:",
        "",
        "| responder | transport | tx/s | CPU us/tx | vs TCP |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in cpu:
        lines.append(f"| {r['responder']} | {r['proto']} | {num(r['tx_per_s'], '.0f')} | "
                     f"{num(r['cpu_us_per_tx'], '.1f')} | {r['ratio_to_tcp']:.2f}x |")  # fmt: skip
    if idle is not None:
        per = idle["bytes_per_conn"]
        verdict = "met" if per < RSS_PER_CONN_TARGET else "NOT met"
        lines += [
            "",
            f"{idle['conns']} idle WebSocket connections (upgraded, subprotocol sip) to one "
            f"`ws` SocketPool process: RSS {idle['rss_before'] / 2**20:.1f} MiB before, "
            f"{idle['rss_after'] / 2**20:.1f} MiB after: **{per / 1024:.2f} KiB per connection** "
            f"(target < 16 KiB: {verdict}).",
        ]
    return lines


def run(*, quick: bool, repeats: int | None, conns: int | None, out_dir: str | None,
        write: bool, command: str) -> tuple[list[str], int]:  # fmt: skip
    """Both measurements; returns the report lines and the failed transactions."""
    log: list[str] = []
    calls = 3000 if quick else 20000
    conc = 20
    reps = repeats or (1 if quick else 5)
    n = conns or (1000 if quick else 10000)
    say(log, f"ws: CPU per transaction, ws vs tcp ({calls} calls, {reps} rounds)")
    cpu = measure_cpu(calls, conc, reps, log)
    say(log, f"ws: {n} idle connections")
    idle = measure_idle(n, log)
    lines = report(cpu, idle, command, calls=calls, conc=conc, repeats=reps)
    if write:
        path = os.path.join(out_dir or os.path.join(REPO, "docs"), "performance.md")
        write_section(path, MD_BEGIN, MD_END, HEADING, lines)
        say(log, f"ws: wrote {path}")
    return lines, sum(r["failed"] for r in cpu)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1], argv[2])
    if argv[:1] == ["load"]:
        print(json.dumps(load(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), 120.0)))
        return 0
    if argv[:1] == ["idle"]:
        return idle_clients(int(argv[1]), int(argv[2]))
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ws",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("--quick", action="store_true", help="small runs (writes only with --out)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds (default 5, quick 1)")
    ap.add_argument("--conns", type=int, help="idle connections (default 10,000, quick 1,000)")
    ap.add_argument("--out", help="where performance.md is (default: docs/)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    lines, failed = run(
        quick=args.quick, repeats=args.repeats, conns=args.conns, out_dir=args.out,
        write=not args.no_write and (args.out is not None or not args.quick),
        command=" ".join(["python -m benchmarks.bench_ws", *argv]),
    )  # fmt: skip
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
