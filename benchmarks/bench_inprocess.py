"""In-process hot-path benchmarks: the SocketPool and Dispatcher paths without sipp.

A responder and a client in one process, over real loopback sockets, driven
by polling the responder's event loop: the client sends a burst of OPTIONS
requests (100 over one TCP connection to a SocketPool responder, 50 UDP
datagrams to a Leg + Dispatcher UAS), the loop runs until every response is
back. The figure is the process's CPU time per transaction (client
included, best of 5 rounds). Less noisy than the sipp runs and quick to
repeat, so it is the figure to compare two revisions of the code with::

    python3 benchmarks/bench_inprocess.py                      # this checkout
    python3 benchmarks/bench_inprocess.py --netsip-path DIR    # e.g. a git archive

It is not a substitute for ``python -m benchmarks``, which measures the
responder alone under a real load generator.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

_REQUEST = (
    "OPTIONS sip:bench@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/{proto} 127.0.0.1:{port};branch=z9hG4bK-{r}-{i}-0\r\n"
    "From: <sip:sipp@127.0.0.1:{port}>;tag={r}x{i}\r\n"
    "To: <sip:bench@127.0.0.1:5060>\r\n"
    "Call-ID: {r}-{i}@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _poll_until(loop: Callable[[float], object], receive: Callable[[], int], want: int) -> None:
    """Poll the loop once, then ``receive`` (responses got), until ``want`` came back.

    Bounded: after 100,000 polls a lost response ends the burst.
    """
    got = 0
    for _ in range(100_000):
        loop(0)
        with contextlib.suppress(BlockingIOError):
            got += receive()
        if got >= want:
            return


def _drain_datagrams(sock: socket.socket) -> int:
    """Read every datagram waiting on ``sock``; how many."""
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(65536)
            n += 1
    return n


def _best(run: Callable[[Iterable[int]], None], rounds: int, per_round: int) -> float:
    """CPU microseconds per transaction, best of 5 runs of ``rounds`` bursts."""
    run(range(10**6, 10**6 + 20))  # warm-up
    best = float("inf")
    for k in range(5):
        t0 = time.process_time()
        run(range(k * rounds, (k + 1) * rounds))
        best = min(best, time.process_time() - t0)
    return best / (rounds * per_round) * 1e6


def pool_tcp(rounds: int = 300, burst: int = 100) -> float:
    """SocketPool responder over one TCP connection (µs/tx)."""
    from netsip.eventloop import EventLoop  # noqa: PLC0415  # after --netsip-path
    from netsip.packet import Packet, Request  # noqa: PLC0415
    from netsip.socketpool import SocketPool  # noqa: PLC0415

    loop = EventLoop()
    master = socket.socket()
    master.bind(("127.0.0.1", 0))
    master.listen(10)
    master.setblocking(False)
    pool = SocketPool("tcp", master)

    def on_packet(p: Packet, f: Any) -> None:
        if isinstance(p, Request) and p.method() != "ACK":
            pool.sendto(p.create_response(200), f)

    pool.attach_eventloop(loop, on_packet)
    client = socket.create_connection(master.getsockname())
    client.setblocking(False)
    port = client.getsockname()[1]

    def run(rs: Iterable[int]) -> None:
        for r in rs:
            client.sendall(b"".join(
                _REQUEST.format(proto="TCP", port=port, r=r, i=i).encode() for i in range(burst)
            ))  # fmt: skip
            _poll_until(loop.loop, lambda: client.recv(1 << 20).count(b"SIP/2.0 200"), burst)

    try:
        return _best(run, rounds, burst)
    finally:
        client.close()
        pool.close()
        loop.close()


def dispatcher_udp(rounds: int = 400, burst: int = 50) -> float:
    """Leg + Dispatcher UAS over UDP (µs/tx)."""
    from netsip.dispatcher import Dispatcher  # noqa: PLC0415  # after --netsip-path
    from netsip.eventloop import EventLoop  # noqa: PLC0415
    from netsip.leg import Leg  # noqa: PLC0415
    from netsip.packet import Packet, Request  # noqa: PLC0415

    loop = EventLoop()
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
    leg = disp.legs[0]

    def receive(p: Packet, leg: Leg, f: Any) -> None:
        if isinstance(p, Request) and p.method() != "ACK":
            disp.deliver(p.create_response(200), leg=leg, dst_addr=f)

    disp.set_receiver(receive)
    addr = leg.socketpool().master().getsockname()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    port = client.getsockname()[1]

    def run(rs: Iterable[int]) -> None:
        for r in rs:
            for i in range(burst):
                client.sendto(_REQUEST.format(proto="UDP", port=port, r=r, i=i).encode(), addr)
            _poll_until(loop.loop, lambda: _drain_datagrams(client), burst)

    try:
        return _best(run, rounds, burst)
    finally:
        client.close()
        disp.close()
        loop.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--netsip-path", metavar="DIR", help="import netsip from DIR")
    args = ap.parse_args(argv)
    if args.netsip_path:
        sys.path.insert(0, args.netsip_path)
    mod = importlib.import_module("netsip")
    print(f"netsip from {mod.__file__}")
    print(f"SocketPool, TCP, 100 per burst:  {pool_tcp():6.2f} us/tx")
    print(f"Dispatcher, UDP, 50 per burst:   {dispatcher_udp():6.2f} us/tx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
