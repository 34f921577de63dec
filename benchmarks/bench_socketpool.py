#!/usr/bin/env python3
"""Scale benchmark of netsip's SocketPool: many concurrent TCP connections in one pool.

Net::SIP's SocketPool keeps every TCP connection of a leg in one pool driven by
one event loop; this benchmark checks that netsip's port holds that at scale.
One pool in this process listens on 127.0.0.1; a client in a separate process
(plain non-blocking sockets and :mod:`selectors`, no netsip) opens the
connections. The phases, each driven from this process over a pipe to the
client while the pool's event loop runs:

1. ``cpu@10``: 10 connections do sequential OPTIONS/200 round trips; the
   pool's CPU time per transaction is the baseline.
2. ``connect``: the client opens ``--conns`` connections in total (at most
   ``--window`` connects in flight). Connections/s is measured until the pool
   has registered all of them; RSS is measured once they are all idle.
3. ``serve``: one OPTIONS on every connection at once, every 200 awaited by the
   client: responses/s (client and pool view), memory once idle again.
4. ``cpu@N``: the same round trips as phase 1 on 10 connections while all the
   others stay open: the CPU per transaction must not grow with the number of
   open connections (no per-event scan over all connections).
5. ``close``: the client closes everything; the pool's fds go back to baseline.
6. ``tracemalloc``: phases 2-3 again with fewer connections and tracemalloc on,
   for the Python-level bytes per connection (RSS includes allocator slack).

Targets: all connections served, under 16 KiB per idle connection.
The exit status is 0 when both are met, 1 otherwise.

Run::

    python3 benchmarks/bench_socketpool.py [--conns 10000] [--json]
"""

from __future__ import annotations

import argparse
import collections
import errno
import gc
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

# Run from a checkout without installing: netsip is the parent directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netsip.eventloop import EV_READ, EventLoop
from netsip.packet import Request, Response
from netsip.socketpool import SocketPool, import_settings
from netsip.util import Addr

TARGET_SERVED_FRACTION = 1.0
TARGET_BYTES_PER_CONN = 16 * 1024
CPU_CONNS = 10  # active connections in the cpu@ phases
_CONTENT_LENGTH = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)")


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to at least ``need`` (within the hard limit).

    Returns:
        The (soft, hard) limits now in force.

    Raises:
        SystemExit: the hard limit is below ``need``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {need} needed: use fewer --conns")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- the client


def _options(sock: socket.socket, callid: str, seq: int) -> bytes:
    host, port = sock.getsockname()[:2]
    return (
        f"OPTIONS sip:bench@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{callid}.{seq}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:client@{host}:{port}>;tag={callid}\r\n"
        "To: <sip:bench@127.0.0.1>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {seq} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Client:
    """The client process: opens connections and does transactions on command."""

    def __init__(self, dst: tuple[str, int]) -> None:
        self.dst = dst
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.seq = 0

    def connect(self, n: int, window: int, timeout: float) -> dict[str, Any]:
        """Open ``n`` more connections, at most ``window`` connects in flight."""
        t0 = time.perf_counter()
        pending: dict[int, socket.socket] = {}
        started = errors = 0
        deadline = time.monotonic() + timeout
        while (started < n or pending) and time.monotonic() < deadline:
            while started < n and len(pending) < window:
                started += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex(self.dst)
                if err not in (0, errno.EINPROGRESS):
                    errors += 1
                    s.close()
                    continue
                pending[s.fileno()] = s
                self.sel.register(s, selectors.EVENT_WRITE)
            for key, _ in self.sel.select(timeout=1.0):
                s = pending.pop(key.fd)
                self.sel.unregister(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    errors += 1
                    s.close()
                else:
                    self.socks.append(s)
        for s in pending.values():  # timed out
            self.sel.unregister(s)
            s.close()
            errors += 1
        return {
            "connected": len(self.socks),
            "errors": errors,
            "secs": time.perf_counter() - t0,
        }

    def transact(self, socks: list[socket.socket], timeout: float) -> tuple[int, int]:
        """One OPTIONS on each of ``socks`` at once; wait for every response.

        Returns:
            (responses received, of which 200).
        """
        self.seq += 1
        bufs: dict[int, bytearray] = {}
        socks_by_fd = {s.fileno(): s for s in socks}
        for i, s in enumerate(socks):
            s.sendall(_options(s, f"b{self.seq}x{i}", self.seq))
            bufs[s.fileno()] = bytearray()
            self.sel.register(s, selectors.EVENT_READ)
        got = ok = 0
        deadline = time.monotonic() + timeout
        while bufs and time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=1.0):
                s = socks_by_fd[key.fd]
                buf = bufs[key.fd]
                chunk = s.recv(65536)
                done = not chunk
                buf += chunk
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    m = _CONTENT_LENGTH.search(buf, 0, head_end)
                    if m is None or len(buf) >= head_end + 4 + int(m.group(1)):
                        done = True
                        got += 1
                        ok += buf.startswith(b"SIP/2.0 200 ")
                if done:
                    self.sel.unregister(s)
                    del bufs[key.fd]
        for fd in bufs:
            self.sel.unregister(fd)
        return got, ok

    def serve(self, timeout: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        got, ok = self.transact(self.socks, timeout)
        return {"responses": got, "ok": ok, "secs": time.perf_counter() - t0}

    def pingpong(self, rounds: int, conns: int, timeout: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        total = ok_total = 0
        socks = self.socks[:conns]
        for _ in range(rounds):
            got, ok = self.transact(socks, timeout)
            total += got
            ok_total += ok
        return {"responses": total, "ok": ok_total, "secs": time.perf_counter() - t0}

    def close(self) -> dict[str, Any]:
        for s in self.socks:
            s.close()
        n = len(self.socks)
        self.socks.clear()
        return {"closed": n}


def client_main(port: int, nofile: int) -> int:
    """Run the client: JSON commands on stdin, one JSON reply per line on stdout.

    The client uses plain sockets only (it imports netsip just because this
    file does), so what it measures is the pool, not netsip on both ends.
    """
    raise_nofile(nofile)
    client = Client(("127.0.0.1", port))
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "exit":
            break
        handler: Callable[..., dict[str, Any]] = getattr(client, op)
        reply = handler(**cmd)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    client.close()
    client.sel.close()
    return 0


# ---------------------------------------------------------------- the pool


class Bench:
    """The pool half: a SocketPool responder plus the client's control pipe."""

    def __init__(self, conns: int, window: int, timeout: float) -> None:
        self.conns = conns
        self.window = window
        self.timeout = timeout
        # Idle connections must outlive the benchmark: Net::SIP would expire
        # them after MIN_EXPIRE + (MAX_EXPIRE - MIN_EXPIRE) / (n - 1) seconds.
        import_settings(MIN_EXPIRE=24 * 3600, MAX_EXPIRE=48 * 3600)
        self.loop = EventLoop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(max(conns, 128))  # the kernel caps it at somaxconn
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self.pool = SocketPool("tcp", listener)
        self.answered = 0
        self.written = 0
        self.send_errors = 0
        self.last_write = 0.0
        self.first_request = 0.0

        def on_packet(packet: Request | Response, from_: Addr) -> None:
            if not isinstance(packet, Request) or packet.method() == "ACK":
                return
            if not self.first_request:
                self.first_request = time.perf_counter()
            self.answered += 1
            self.pool.sendto(packet.create_response(200), from_, on_sent)

        def on_sent(err: int) -> None:
            if err:
                self.send_errors += 1
            else:
                self.written += 1
                self.last_write = time.perf_counter()

        self.pool.attach_eventloop(self.loop, on_packet)

        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                *("--_client", str(self.port), "--_nofile", str(conns + 256)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._rbuf = bytearray()
        self._replies: collections.deque[dict[str, Any]] = collections.deque()
        self._client_eof = False
        self.loop.add_fd(self._out, EV_READ, self._on_client_output, name="client")

    def _on_client_output(self, fd: object) -> None:
        try:
            chunk = os.read(self._out, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._client_eof = True
            self.loop.del_fd(self._out)
            return
        self._rbuf += chunk
        while (nl := self._rbuf.find(b"\n")) >= 0:
            self._replies.append(json.loads(self._rbuf[:nl]))
            del self._rbuf[: nl + 1]

    def run_until(self, cond: Callable[[], bool], what: str) -> None:
        self.loop.loop(self.timeout, lambda: cond() or self._client_eof)
        if not cond():
            raise SystemExit(f"benchmark stalled: {what} not done within {self.timeout}s")

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command to the client and run the pool until it answers."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        self.run_until(lambda: bool(self._replies), f"client {op}")
        return self._replies.popleft()

    def pool_conns(self) -> int:
        """Connections in the pool besides the master (cheap: a dict's length)."""
        return self.pool.connection_count()

    def cpu_phase(self, rounds: int) -> dict[str, Any]:
        gc.collect()
        c0 = time.process_time()
        reply = self.call("pingpong", rounds=rounds, conns=CPU_CONNS, timeout=self.timeout)
        cpu = time.process_time() - c0
        n = reply["responses"]
        return {
            "open_connections": self.pool_conns(),
            "transactions": n,
            "ok": reply["ok"],
            "cpu_us_per_transaction": 1e6 * cpu / n if n else None,
            "transactions_per_s": n / reply["secs"] if reply["secs"] else None,
        }

    def connect_phase(self, n: int) -> dict[str, Any]:
        target = self.pool_conns() + n
        t0 = time.perf_counter()
        c0 = time.process_time()
        reply = self.call("connect", n=n, window=self.window, timeout=self.timeout)
        self.run_until(lambda: self.pool_conns() >= target, "accepting connections")
        secs = time.perf_counter() - t0
        return {
            "new_connections": n,
            "client_connected": reply["connected"],
            "client_errors": reply["errors"],
            "pool_connections": self.pool_conns(),
            "secs": secs,
            "connections_per_s": n / secs,
            "cpu_us_per_connection": 1e6 * (time.process_time() - c0) / n,
        }

    def serve_phase(self) -> dict[str, Any]:
        answered0, written0 = self.answered, self.written
        self.first_request = 0.0
        c0 = time.process_time()
        t0 = time.perf_counter()
        reply = self.call("serve", timeout=self.timeout)
        cpu = time.process_time() - c0
        answered = self.answered - answered0
        written = self.written - written0
        pool_secs = self.last_write - self.first_request if self.first_request else 0.0
        return {
            "requests": reply["responses"],
            "answered": answered,
            "written": written,
            "client_ok": reply["ok"],
            "client_secs": reply["secs"],
            "responses_per_s_client": reply["responses"] / reply["secs"],
            "responses_per_s_pool": written / pool_secs if pool_secs else None,
            "cpu_us_per_transaction": 1e6 * cpu / answered if answered else None,
            "wall_secs": time.perf_counter() - t0,
        }

    def close_phase(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        reply = self.call("close")
        self.run_until(lambda: self.pool_conns() <= 0, "closing connections")
        return {"closed": reply["closed"], "secs": time.perf_counter() - t0}

    def finish(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.pool.close()
        self.loop.close()


def _per_conn(delta: int, n: int) -> float:
    return delta / n if n else 0.0


def run(conns: int, window: int, rounds: int, trace_conns: int, timeout: float) -> dict[str, Any]:
    nofile = raise_nofile(conns + 256)
    bench = Bench(conns, window, timeout)
    res: dict[str, Any] = {
        "conns": conns,
        "rlimit_nofile": list(nofile),
        "python": sys.version.split()[0],
    }
    try:
        # phase 1: 10 connections, CPU per transaction; also warms up code paths
        res["connect_10"] = bench.connect_phase(CPU_CONNS)
        res["cpu_at_10"] = bench.cpu_phase(rounds)

        # phase 2: all connections, memory once established and idle
        gc.collect()
        rss0 = rss_bytes()
        fds0 = open_fds()
        res["connect"] = bench.connect_phase(conns - CPU_CONNS)
        gc.collect()
        rss1 = rss_bytes()
        n_new = conns - CPU_CONNS
        res["memory"] = {
            "rss_before": rss0,
            "rss_established": rss1,
            "bytes_per_established_conn": _per_conn(rss1 - rss0, n_new),
            "fds_per_conn": _per_conn(open_fds() - fds0, n_new),
        }

        # phase 3: one OPTIONS on every connection
        res["serve"] = bench.serve_phase()
        gc.collect()
        rss2 = rss_bytes()
        res["memory"]["rss_served_idle"] = rss2
        res["memory"]["bytes_per_idle_conn"] = _per_conn(rss2 - rss0, n_new)

        # phase 4: CPU per transaction with everything open
        res["cpu_at_n"] = bench.cpu_phase(rounds)

        # phase 5: close; the pool must drop every connection
        res["close"] = bench.close_phase()
        res["close"]["pool_conns_left"] = bench.pool_conns()

        # phase 6: Python-level bytes per connection (tracemalloc is slow and
        # inflates RSS, hence a separate, smaller pass at the end)
        if trace_conns:
            gc.collect()
            tracemalloc.start()
            t0 = tracemalloc.get_traced_memory()[0]
            bench.connect_phase(trace_conns)
            gc.collect()
            t1 = tracemalloc.get_traced_memory()[0]
            bench.serve_phase()
            gc.collect()
            t2 = tracemalloc.get_traced_memory()[0]
            bench.close_phase()
            tracemalloc.stop()
            res["tracemalloc"] = {
                "conns": trace_conns,
                "bytes_per_established_conn": _per_conn(t1 - t0, trace_conns),
                "bytes_per_idle_conn": _per_conn(t2 - t0, trace_conns),
            }
    finally:
        bench.finish()

    served = res["serve"]["written"]
    res["targets"] = {
        "all_served": served >= conns * TARGET_SERVED_FRACTION
        and res["serve"]["client_ok"] == conns,
        "under_16KiB_per_idle_conn": res["memory"]["bytes_per_idle_conn"] < TARGET_BYTES_PER_CONN,
    }
    return res


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(res: dict[str, Any]) -> Iterable[str]:
    c, s, m = res["connect"], res["serve"], res["memory"]
    a, b = res["cpu_at_10"], res["cpu_at_n"]
    yield f"netsip SocketPool, {res['conns']:,} TCP connections (Python {res['python']})"
    yield (
        f"  established: {c['pool_connections']:,} in the pool, "
        f"{_fmt(c['connections_per_s'])} conn/s, {_fmt(c['cpu_us_per_connection'])} us CPU/conn"
        f" (client errors: {c['client_errors']})"
    )
    yield (
        f"  served:      {s['written']:,} responses written, "
        f"{s['client_ok']:,} x 200 at the client;"
        f" {_fmt(s['responses_per_s_client'])} resp/s (client), "
        f"{_fmt(s['responses_per_s_pool'])} resp/s (pool), "
        f"{_fmt(s['cpu_us_per_transaction'])} us CPU/txn"
    )
    yield (
        f"  memory:      {_fmt(m['bytes_per_established_conn'])} B RSS/established conn, "
        f"{_fmt(m['bytes_per_idle_conn'])} B RSS/idle conn after serving"
    )
    if "tracemalloc" in res:
        t = res["tracemalloc"]
        yield (
            f"  tracemalloc: {_fmt(t['bytes_per_established_conn'])} B/established conn, "
            f"{_fmt(t['bytes_per_idle_conn'])} B/idle conn ({t['conns']:,} conns)"
        )
    yield (
        f"  CPU/txn:     {_fmt(a['cpu_us_per_transaction'], ',.1f')} us at "
        f"{a['open_connections']:,} open, {_fmt(b['cpu_us_per_transaction'], ',.1f')} us at "
        f"{b['open_connections']:,} open ({a['transactions']:,} round trips each)"
    )
    yield f"  close:       pool back to {res['close']['pool_conns_left']} connections"
    t = res["targets"]
    yield (
        f"  targets:     all served: {'PASS' if t['all_served'] else 'FAIL'}; "
        f"< 16 KiB/idle conn: {'PASS' if t['under_16KiB_per_idle_conn'] else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="SocketPool scale benchmark (see module docstring)")
    ap.add_argument("--conns", type=int, default=10_000, help="connections (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--window", type=int, default=256, help="connects in flight (default 256)")
    ap.add_argument(
        "--rounds", type=int, default=1000, help="round trips per cpu@ phase (default 1000)"
    )
    ap.add_argument(
        "--trace-conns", type=int, default=2000, help="tracemalloc pass size, 0 skips it"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on any one phase")
    ap.add_argument("--_client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_nofile", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._client is not None:
        return client_main(args._client, args._nofile)
    if args.conns <= CPU_CONNS:
        ap.error(f"--conns must be above {CPU_CONNS}")
    res = run(args.conns, args.window, args.rounds, min(args.trace_conns, args.conns), args.timeout)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print("\n".join(report(res)))
    return 0 if all(res["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
