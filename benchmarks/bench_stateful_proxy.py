"""CPU per proxied call in one process: StatelessProxy against StatefulProxy.

A call is INVITE / (100) / 200 / ACK / BYE / 200 from a raw UDP caller
through the proxy (on its own Dispatcher and UDP leg) to a netsip UAS (a
Dispatcher answering 200), all on one event loop. Two figures per proxy:
the process CPU per call for everything (caller, proxy, UAS: the same for
both proxies but for the proxy's part) and the CPU spent inside
``proxy.receive`` alone (its own work on requests and responses; the
dispatcher's parsing and the stateful proxy's timers are outside it).

This is a cheap, in-process comparison of the two proxies' own cost; the
comparison with Kamailio's ``t_relay`` (proxies in processes of their own,
loaded with sipp) is a separate benchmark. Run::

    python -m benchmarks.bench_stateful_proxy [--calls 2000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from typing import Final

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.proxy import StatelessProxy
from netsip.stateful_proxy import StatefulProxy
from netsip.util import Addr

AOR: Final = "sip:bob@example.com"
BATCH: Final = 50


def _request(method: str, uri: str, src: Addr, n: int, *, cseq: int, extra: str = "") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src.addr}:{src.port};branch=z9hG4bK{method}{n}x{cseq};rport\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        f"To: <{AOR}>{extra}\r\n"
        f"Call-ID: call-{n}@bench\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:alice@{src.addr}:{src.port}>\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _uas(disp: Dispatcher) -> None:
    def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
        if isinstance(packet, Request) and packet.method() != "ACK":
            hdrs = {"to": f"{packet.get_header('to')};tag=bob"}
            if packet.method() == "INVITE":
                hdrs["contact"] = f"<{leg.contact}>"
            disp.deliver(packet.create_response(200, None, hdrs), leg=leg, dst_addr=from_)

    disp.set_receiver(receive)


def run(kind: str, calls: int) -> tuple[float, float]:
    """(CPU per call in all, CPU per call in proxy.receive), in microseconds."""
    loop = EventLoop()
    pleg = Leg(addr="127.0.0.1", port=0, proto="udp")
    pdisp = Dispatcher([pleg], loop)
    udisp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp")], loop)
    _uas(udisp)
    contact = udisp.legs[0].contact

    def lookup(aor: str) -> list[str]:
        return [contact] if aor == AOR else []

    proxy: StatelessProxy
    if kind == "stateful":
        proxy = StatefulProxy(dispatcher=pdisp, lookup=lookup, domains=["example.com"])
    else:
        proxy = StatelessProxy(dispatcher=pdisp, lookup=lookup, domains=["example.com"])
    spent = 0.0

    def timed(packet: Packet, leg: Leg, from_: Addr) -> None:
        nonlocal spent
        t = time.process_time()
        proxy.receive(packet, leg, from_)
        spent += time.process_time() - t

    pdisp.set_receiver(timed)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    caller.bind(("127.0.0.1", 0))
    caller.setblocking(False)
    src = Addr.parse(caller.getsockname())
    dst = (pleg.src.addr, pleg.src.port)

    def drain(want: int, pick: str) -> list[Response]:
        got: list[Response] = []
        deadline = time.monotonic() + 30
        while len(got) < want and time.monotonic() < deadline:
            loop.loop(0.01)
            while True:
                try:
                    data = caller.recv(65535)
                except BlockingIOError:
                    break
                resp = Packet.new_from_string(data)
                if (
                    isinstance(resp, Response)
                    and resp.code() == 200
                    and (resp.get_header("cseq") or "").endswith(pick)
                ):
                    got.append(resp)
        if len(got) < want:
            raise RuntimeError(f"{kind}: {len(got)} of {want} responses")
        return got

    started = time.process_time()
    try:
        for first in range(0, calls, BATCH):
            batch = range(first, min(first + BATCH, calls))
            for n in batch:
                caller.sendto(_request("INVITE", AOR, src, n, cseq=1), dst)
            for ok in drain(len(batch), "INVITE"):
                n = int((ok.callid() or "").split("-")[1].split("@")[0])
                uri = (ok.get_header("contact") or "").strip("<>")
                routes = "".join(
                    f"\r\nRoute: {r}" for r in reversed(ok.get_headers("record-route"))
                )
                extra = ";tag=bob" + routes
                for method, cseq in (("ACK", 1), ("BYE", 2)):
                    caller.sendto(_request(method, uri, src, n, cseq=cseq, extra=extra), dst)
            drain(len(batch), "BYE")
    finally:
        caller.close()
        if isinstance(proxy, StatefulProxy):
            proxy.close()
        pdisp.close()
        udisp.close()
        loop.close()
    total = time.process_time() - started
    return total / calls * 1e6, spent / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    for kind in ("stateless", "stateful"):
        runs = [run(kind, args.calls) for _ in range(args.rounds)]
        results[kind] = {
            "us_per_call_total": statistics.median(r[0] for r in runs),
            "us_per_call_proxy": statistics.median(r[1] for r in runs),
        }
    ratio = results["stateful"]["us_per_call_proxy"] / results["stateless"]["us_per_call_proxy"]
    if args.json:
        print(json.dumps({"calls": args.calls, **results, "ratio_proxy": ratio}))
    else:
        for kind, r in results.items():
            print(
                f"{kind:9s}: {r['us_per_call_total']:6.0f} us CPU per call in all, "
                f"{r['us_per_call_proxy']:6.0f} us in proxy.receive"
            )
        print(f"stateful / stateless (proxy.receive): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
