"""The Python limit for the user-agent benchmark: a bare stdlib RTP echo.

An answerer for :mod:`benchmarks.bench_ua` that does per packet what netsip's
media does at the least: one UDP socket per call watched by ``selectors``
(epoll), and for every packet one ``recvfrom`` and one ``sendto`` back to its
source, nothing else (no RTP parsing, no latching, no statistics, no RTCP).
Its count of calls held is what CPython with a system call per packet can
reach on the machine: the floor under netsip's (and Perl's) cost per echoed
packet.

The signalling is as bare (:class:`benchmarks.uas_stdlib.Responder`'s header
copying, no parser, no transaction or dialog state): an INVITE gets a ``200
OK`` with an SDP answer naming the call's new socket, BYE (and OPTIONS, and
anything else) ``200 OK``, and BYE closes the call's socket; ACK gets
nothing. Up to 64 datagrams are read per readiness, as netsip's media reads.

    python3 benchmarks/ua_stdlib.py --port PORT
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import sys
import zlib
from typing import Final

#: datagrams read per readiness (as netsip.rtp's MediaSession._receive)
READS_PER_READY: Final = 64

_COPY: Final = frozenset((b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq"))
_TO: Final = frozenset((b"to", b"t"))
_CALLID: Final = frozenset((b"call-id", b"i"))


def sdp_answer(ip: str, port: int) -> bytes:
    """PCMU on ``port``."""
    return (
        f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    ).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    stop = False

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", args.port))
    sip.setblocking(False)
    ip, port = sip.getsockname()[:2]
    contact = f"Contact: <sip:echo@{ip}:{port}>\r\n".encode()
    calls: dict[bytes, socket.socket] = {}
    sel = selectors.DefaultSelector()

    def echo(sock: socket.socket) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        for _ in range(READS_PER_READY):
            try:
                data, src = recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                continue  # (ICMP errors of earlier sends)
            with contextlib.suppress(OSError):
                sendto(data, src)

    def respond(msg: bytes) -> bytes | None:
        end = msg.find(b"\r\n\r\n")
        if end < 0 or msg.startswith((b"SIP/", b"ACK ")):
            return None
        keep, to, callid = [], b"", b""
        for ln in msg[: end + 2].split(b"\r\n")[1:-1]:
            name = ln.partition(b":")[0].rstrip().lower()
            if name in _COPY:
                keep.append(ln)
                if name in _CALLID:
                    callid = ln.partition(b":")[2].strip()
            elif name in _TO:
                to = ln
        head = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\n"
        if msg.startswith(b"INVITE "):
            rtp = calls.get(callid)
            if rtp is None:  # (a re-INVITE keeps its socket)
                rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                rtp.bind((ip, 0))
                rtp.setblocking(False)
                sel.register(rtp, selectors.EVENT_READ, echo)
                calls[callid] = rtp
            sdp = sdp_answer(ip, rtp.getsockname()[1])
            tag = b"" if b";tag=" in to else b";tag=%08x" % zlib.crc32(callid)
            return (
                head + to + tag + b"\r\n" + contact + b"Content-Type: application/sdp\r\n"
                b"Content-Length: %d\r\n\r\n" % len(sdp) + sdp
            )
        if msg.startswith(b"BYE "):
            rtp = calls.pop(callid, None)
            if rtp is not None:
                sel.unregister(rtp)
                rtp.close()
        return head + to + b"\r\nContent-Length: 0\r\n\r\n"

    def signalling(sock: socket.socket) -> None:
        for _ in range(32):
            try:
                data, src = sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError:
                continue
            r = respond(data)
            if r is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(r, src)

    sel.register(sip, selectors.EVENT_READ, signalling)
    print(f"LISTENING {ip} {port}", flush=True)
    while not stop:
        for key, _ in sel.select(0.25):
            key.data(key.fileobj)
    for rtp in calls.values():
        rtp.close()
    sel.close()
    sip.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
