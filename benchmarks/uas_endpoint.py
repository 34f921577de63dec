"""netsip's Endpoint as the UAS of the call benchmark (:mod:`benchmarks.bench_calls`).

A :class:`~netsip.leg.Leg` on a UDP (or TCP) socket, a
:class:`~netsip.dispatcher.Dispatcher` and an :class:`~netsip.endpoint.Endpoint`
whose application answers an INVITE with ``180 Ringing`` and then ``200 OK``
with a Contact and a small SDP answer (the same bytes as the other UASs of
the benchmark). The endpoint does the rest: the ``100 Trying``, the To tag,
the ACK (which ends the 200's retransmissions) and the ``200`` to BYE.

    python3 benchmarks/uas_endpoint.py [--port PORT] [--proto udp|tcp]

Prints ``LISTENING <ip> <port>``; on SIGUSR1 ``STATS contexts=<n> gc_s=<s>
gc=<g0>/<g1>/<g2> gc_collected=<objects>`` with ``len(endpoint)``, the live
contexts (the held dialogs of the benchmark), the time spent in the cyclic
garbage collector, its runs per generation, and the objects it freed (those
left in reference cycles) so far; a collection of generation 2 walks every
object, so it costs more the more dialogs are held. Serves until
SIGTERM/SIGINT and prints that line once more.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time

from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Request
from netsip.util import Addr


def sdp_answer(ip: str) -> bytes:
    """The SDP answer (the same bytes as :func:`benchmarks.uas_stdlib.sdp_answer`)."""
    return (
        f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    args = ap.parse_args(argv)

    loop = EventLoop()
    leg = Leg(addr="127.0.0.1", port=args.port, proto=args.proto)
    disp = Dispatcher([leg], loop)
    ep = Endpoint(disp)
    ip, port = leg.socketpool().master().getsockname()[:2]
    sdp = sdp_answer(ip)
    answer_headers = {"contact": f"<sip:uas@{ip}:{port}>", "content-type": "application/sdp"}
    ringing_headers = {"contact": answer_headers["contact"]}

    def app(ep: Endpoint, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        method = request.method()
        if method == "INVITE":
            ep.new_response(ctx, request.create_response(180, headers=ringing_headers), leg, from_)
            ep.new_response(
                ctx, request.create_response(200, headers=answer_headers, body=sdp), leg, from_
            )
        elif method not in ("ACK", "BYE", "CANCEL"):  # BYE, CANCEL: the endpoint answers
            ep.new_response(ctx, request.create_response(200), leg, from_)

    ep.set_application(app)
    stop = False

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    gc_time = 0.0
    gc_start = 0.0
    gc_runs = [0, 0, 0, 0]  # runs of generation 0, 1, 2; objects collected

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_time, gc_start
        if phase == "start":
            gc_start = time.perf_counter()
        else:
            gc_time += time.perf_counter() - gc_start
            gc_runs[info["generation"]] += 1
            gc_runs[3] += info["collected"]

    gc.callbacks.append(on_gc)

    def stats() -> None:
        runs = "/".join(map(str, gc_runs[:3]))
        print(
            f"STATS contexts={len(ep)} gc_s={gc_time:.6f} gc={runs} gc_collected={gc_runs[3]}",
            flush=True,
        )

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, lambda s, f: stats())
    print(f"LISTENING {ip} {port}", flush=True)
    loop.loop(None, lambda: stop)
    stats()
    ep.close()
    disp.close()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
