"""The Python limit for the call benchmark: a bare stdlib UDP UAS.

Answers what sipp's built-in ``uac`` scenario sends, with the messages the
Endpoint UASs send (:mod:`benchmarks.bench_calls`), as cheaply as CPython
allows: INVITE gets ``100 Trying``, ``180 Ringing`` and ``200 OK`` (the To
tagged, a Contact, a small SDP answer), ACK nothing, BYE (and any other
request) ``200 OK``. There is no parser, no validation, no transaction or
dialog state and no retransmission of the 200: the Via, From, To, Call-ID and
CSeq lines are copied by name, as :func:`benchmarks.responders.stdlib_response`
does for OPTIONS. It shows the cost of a call's seven datagrams in CPython,
not what a SIP stack must do.

The I/O is the SocketPool's (as in :mod:`benchmarks.responders`): up to 32
datagrams read per readiness, their responses sent after them, back to back.

    python3 benchmarks/uas_stdlib.py [--port PORT]

Prints ``LISTENING <ip> <port>``; on SIGUSR1 ``STATS contexts=0`` (there are
none, the line keeps the harness uniform); serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import sys
import zlib
from typing import Any, Final

#: datagrams read per readiness (as netsip.socketpool's _UDP_READS_PER_READY)
UDP_READS_PER_READY: Final = 32

# header lines copied into every response (full and compact names); To apart
_COPY: Final = frozenset((b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq"))
_TO: Final = frozenset((b"to", b"t"))
_CALLID: Final = frozenset((b"call-id", b"i"))


def sdp_answer(ip: str) -> bytes:
    """The SDP answer of every UAS of the benchmark (the same bytes in all three)."""
    return (
        f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


class Responder:
    """Builds the responses; all byte strings that do not vary are made once."""

    def __init__(self, ip: str, port: int) -> None:
        sdp = sdp_answer(ip)
        contact = f"Contact: <sip:uas@{ip}:{port}>\r\n".encode()
        self.trying = b"SIP/2.0 100 Trying\r\n"
        self.ringing = b"SIP/2.0 180 Ringing\r\n"
        self.ok = b"SIP/2.0 200 OK\r\n"
        self.tail_empty = b"Content-Length: 0\r\n\r\n"
        self.tail_ringing = contact + self.tail_empty
        self.tail_sdp = (
            contact
            + b"Content-Type: application/sdp\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(sdp)
            + sdp
        )

    def respond(self, msg: bytes) -> list[bytes]:
        """The responses to one datagram (none for ACK, responses and garbage)."""
        end = msg.find(b"\r\n\r\n")
        if end < 0 or msg.startswith((b"SIP/", b"ACK ")):
            return []
        lines = msg[: end + 2].split(b"\r\n")
        keep = []
        to = b""
        callid = b""
        for ln in lines[1:-1]:
            name = ln.partition(b":")[0].rstrip().lower()
            if name in _COPY:
                keep.append(ln)
                if name in _CALLID:
                    callid = ln
            elif name in _TO:
                to = ln
        copied = b"\r\n".join(keep) + b"\r\n"
        if not msg.startswith(b"INVITE "):
            return [self.ok + copied + to + b"\r\n" + self.tail_empty]
        # RFC 3261 8.2.6.2: the same To tag in every response to the INVITE
        # (and to its retransmissions), so derived from the Call-ID
        tagged = to + (b"" if b";tag=" in to else b";tag=%08x" % zlib.crc32(callid)) + b"\r\n"
        return [
            self.trying + copied + to + b"\r\n" + self.tail_empty,
            self.ringing + copied + tagged + self.tail_ringing,
            self.ok + copied + tagged + self.tail_sdp,
        ]


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
    signal.signal(signal.SIGUSR1, lambda s, f: print("STATS contexts=0", flush=True))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    sock.setblocking(False)
    ip, port = sock.getsockname()[:2]
    respond = Responder(ip, port).respond
    recvfrom, sendto = sock.recvfrom, sock.sendto

    def read() -> None:
        out: list[tuple[list[bytes], Any]] = []
        for _ in range(UDP_READS_PER_READY):  # drain what is queued, bounded
            try:
                data, addr = recvfrom(65536)
            except BlockingIOError:
                break
            except OSError:
                continue  # ICMP errors of earlier sends
            rs = respond(data)
            if rs:
                out.append((rs, addr))
        for rs, addr in out:  # after the batch, back to back (as the SocketPool)
            for r in rs:
                with contextlib.suppress(OSError):
                    sendto(r, addr)

    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    print(f"LISTENING {ip} {port}", flush=True)
    while not stop:
        if sel.select(0.25):
            read()
    sel.close()
    sock.close()
    print("STATS contexts=0", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
