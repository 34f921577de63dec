"""The SIP responders the benchmarks load with sipp, each in a process of its own.

Every responder answers each request but ACK with ``200 OK`` on one UDP socket
or one listening TCP socket on 127.0.0.1 (port chosen by the system), prints
``LISTENING <ip> <port>`` and serves until SIGTERM/SIGINT:

``stdlib``
    The Python limit: :mod:`selectors` and no real parser (the Via, From, To,
    Call-ID and CSeq lines are copied by name). It does less than any SIP
    stack must (no validation, no To tag, no transaction state) and shows what
    CPython can do at all. Its I/O is the SocketPool's, so the comparison
    measures the SIP work and not the I/O strategy: UDP reads up to 32
    datagrams per readiness and sends their responses after them, back to
    back; TCP reads up to 64 KiB per readiness and writes the responses to
    one read with one ``send``.
``pool``
    netsip at the SocketPool level: an :class:`~netsip.eventloop.EventLoop`,
    a :class:`~netsip.socketpool.SocketPool` and a callback doing
    ``pool.sendto(request.create_response(200), from_)``.
``dispatcher``
    netsip's UAS: a :class:`~netsip.leg.Leg` and a
    :class:`~netsip.dispatcher.Dispatcher` (response cache and retransmissions
    on) with a receiver delivering ``create_response(200)``.
``dispatcher-asyncio``, ``dispatcher-uvloop``
    The same UAS on :class:`~netsip.aio.AsyncioEventLoop`, over a stock
    asyncio loop or a uvloop one (:func:`~netsip.aio.new_asyncio_loop`), run
    by ``AsyncioEventLoop.loop()`` (the asyncio loop is not running before).
``perl``
    The same UAS on Perl's Net::SIP 0.835 (``Net::SIP::Leg`` +
    ``Net::SIP::Dispatcher``), run as ``perl -e PERL_UAS <proto>``.

Run one by hand::

    python -m benchmarks.responders dispatcher udp [--profile out.prof]

``--profile`` runs the loop under :mod:`cProfile` and writes the stats when
the responder is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import errno
import re
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, Final

RESPONDERS: Final = (
    "stdlib",
    "pool",
    "dispatcher",
    "dispatcher-asyncio",
    "dispatcher-uvloop",
    "perl",
)

#: datagrams read per readiness (as netsip.socketpool's _UDP_READS_PER_READY)
UDP_READS_PER_READY: Final = 32

# Perl's Net::SIP UAS: the same work as dispatcher_main() below.
PERL_UAS: Final = r"""
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


class _Stop:
    """Set by SIGTERM/SIGINT; the responders poll it at least every 0.25 s."""

    def __init__(self) -> None:
        self.value = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self.value = True

    def __bool__(self) -> bool:
        return self.value


def _listening(sock: socket.socket) -> None:
    ip, port = sock.getsockname()[:2]
    sys.stdout.write(f"LISTENING {ip} {port}\n")
    sys.stdout.flush()


def _master(proto: str) -> socket.socket:
    if proto == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
    sock.setblocking(False)
    return sock


# ------------------------------------------------------------------ stdlib

# header lines copied into the response (full and compact names)
_COPY: Final = frozenset((b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"))
_STATUS: Final = b"SIP/2.0 200 OK\r\n"
_TAIL: Final = b"\r\nContent-Length: 0\r\n\r\n"
_CLEN: Final = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*([0-9]+)", re.IGNORECASE)


def stdlib_response(msg: bytes) -> bytes | None:
    """The 200 for a request (None for ACK, responses and garbage): no real parsing."""
    end = msg.find(b"\r\n\r\n")
    if end < 0 or msg.startswith((b"SIP/", b"ACK ")):
        return None
    lines = msg[:end].split(b"\r\n")
    keep = [ln for ln in lines[1:] if ln.partition(b":")[0].rstrip().lower() in _COPY]
    return _STATUS + b"\r\n".join(keep) + _TAIL


def stdlib_main(proto: str) -> int:
    """Serve with the standard library only (see the module docstring)."""
    stop = _Stop()
    master = _master(proto)
    sel = selectors.DefaultSelector()
    respond = stdlib_response

    def read_udp() -> None:
        recvfrom, sendto = master.recvfrom, master.sendto
        out: list[tuple[bytes, Any]] = []  # (response, sockaddr)
        for _ in range(UDP_READS_PER_READY):  # drain what is queued, bounded
            try:
                data, addr = recvfrom(65536)
            except BlockingIOError:
                break
            except OSError:
                continue  # ICMP errors of earlier sends
            r = respond(data)
            if r is not None:
                out.append((r, addr))
        for r, addr in out:  # after the batch, back to back (as the SocketPool)
            with contextlib.suppress(OSError):
                sendto(r, addr)

    bufs: dict[int, bytearray] = {}

    def read_tcp(conn: socket.socket) -> None:
        fd = conn.fileno()
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(conn)
            del bufs[fd]
            conn.close()
            return
        buf = bufs[fd]
        buf += chunk
        out = []
        pos = 0
        while (hend := buf.find(b"\r\n\r\n", pos)) >= 0:
            m = _CLEN.search(buf, pos, hend + 2)
            end = hend + 4 + (int(m.group(1)) if m else 0)
            if end > len(buf):
                break
            r = respond(bytes(buf[pos:end]))
            if r is not None:
                out.append(r)
            pos = end
        del buf[:pos]
        if out:
            # a loopback socket takes a few responses at once; a real server
            # would queue the rest and wait for EVENT_WRITE
            with contextlib.suppress(OSError):
                conn.sendall(b"".join(out))

    def accept() -> None:
        for _ in range(64):
            try:
                conn, _addr = master.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            bufs[conn.fileno()] = bytearray()
            sel.register(conn, selectors.EVENT_READ, lambda c=conn: read_tcp(c))

    sel.register(master, selectors.EVENT_READ, read_udp if proto == "udp" else accept)
    _listening(master)
    while not stop:
        for key, _ in sel.select(0.25):
            callback: Callable[[], None] = key.data
            callback()
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        if isinstance(key.fileobj, socket.socket):
            key.fileobj.close()
    sel.close()
    return 0


# -------------------------------------------------------------------- netsip


def pool_main(proto: str) -> int:
    """Serve with a netsip SocketPool and a callback (see the module docstring)."""
    from netsip.eventloop import EventLoop  # noqa: PLC0415  # not needed by stdlib/perl
    from netsip.packet import Packet, Request  # noqa: PLC0415
    from netsip.socketpool import SocketPool  # noqa: PLC0415
    from netsip.util import Addr  # noqa: PLC0415

    stop = _Stop()
    loop = EventLoop()
    master = _master(proto)
    pool = SocketPool("udp" if proto == "udp" else "tcp", master)

    def on_packet(packet: Packet, from_: Addr) -> None:
        if isinstance(packet, Request) and packet.method() != "ACK":
            pool.sendto(packet.create_response(200), from_)

    pool.attach_eventloop(loop, on_packet)
    _listening(master)
    loop.loop(None, lambda: stop.value)
    pool.close()
    loop.close()
    return 0


def dispatcher_main(proto: str, loop_kind: str = "native") -> int:
    """Serve with netsip's Leg and Dispatcher (see the module docstring).

    ``loop_kind``: ``native`` (netsip's EventLoop), ``asyncio`` or ``uvloop``
    (an :class:`~netsip.aio.AsyncioEventLoop` on that asyncio loop).
    """
    from netsip.dispatcher import Dispatcher  # noqa: PLC0415
    from netsip.eventloop import EventLoop  # noqa: PLC0415
    from netsip.leg import Leg  # noqa: PLC0415
    from netsip.packet import Packet, Request  # noqa: PLC0415
    from netsip.util import Addr  # noqa: PLC0415

    stop = _Stop()
    if loop_kind == "native":
        loop = EventLoop()
    else:
        from netsip.aio import AsyncioEventLoop, new_asyncio_loop  # noqa: PLC0415

        aloop = new_asyncio_loop(loop_kind)
        loop = AsyncioEventLoop(aloop)
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto="udp" if proto == "udp" else "tcp")],
                      loop)  # fmt: skip
    leg = disp.legs[0]

    def receive(packet: Packet, leg: Leg, from_: Addr) -> None:
        if isinstance(packet, Request) and packet.method() != "ACK":
            disp.deliver(packet.create_response(200), leg=leg, dst_addr=from_)

    disp.set_receiver(receive)
    _listening(leg.socketpool().master())
    loop.loop(None, lambda: stop.value)
    disp.close()
    loop.close()
    if loop_kind != "native":
        aloop.close()
    return 0


_MAINS: Final[dict[str, Callable[[str], int]]] = {
    "stdlib": stdlib_main,
    "pool": pool_main,
    "dispatcher": dispatcher_main,
    "dispatcher-asyncio": lambda proto: dispatcher_main(proto, "asyncio"),
    "dispatcher-uvloop": lambda proto: dispatcher_main(proto, "uvloop"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run one benchmark responder (see module docstring)")
    ap.add_argument("kind", choices=sorted(_MAINS))
    ap.add_argument("proto", choices=("udp", "tcp"))
    ap.add_argument("--profile", metavar="FILE", help="run under cProfile, stats to FILE")
    args = ap.parse_args(argv)
    run = _MAINS[args.kind]
    if not args.profile:
        return run(args.proto)
    prof = cProfile.Profile()
    try:
        return prof.runcall(run, args.proto)
    finally:
        prof.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
