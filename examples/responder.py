#!/usr/bin/env python3
"""A stateless SIP responder on netsip's SocketPool: every request but ACK gets a 200.

The smallest useful program on netsip's transport layer, in the spirit of the
``answer everything`` loops in Net::SIP's examples: one :class:`SocketPool` per
transport (a bound UDP socket and/or a listening TCP socket on the same port),
both attached to one :class:`EventLoop`. Each request is answered with
``request.create_response(200)`` through ``pool.sendto(response, from_)``; on
TCP the pool sends the response back over the connection the request came in
on (RFC 3261 18.2.2). ACK is never answered (RFC 3261 17.1.1.3), responses are
ignored. One log line per request goes to stderr: time, transport, peer,
method, Call-ID and the status sent (``-`` for none).

SIGINT and SIGTERM stop the loop through ``signal.set_wakeup_fd``: the signal
wakes the selector, the loop sees its stop variable, every socket is closed and
the program exits with status 0.

Run it::

    python3 examples/responder.py                       # udp+tcp on 127.0.0.1:5060
    python3 examples/responder.py --port 0 --proto tcp  # the system picks the port
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from netsip.eventloop import EV_READ, EventLoop
from netsip.packet import Request, Response
from netsip.socketpool import SocketPool
from netsip.util import Addr, Proto, Var, bind_socket

log = logging.getLogger("responder")

# How often binding TCP to the port the system chose for UDP may fail before
# we give up (another program can take the TCP port between the two binds).
_BIND_ATTEMPTS = 20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--addr", default="127.0.0.1", help="IP address to bind (default %(default)s)")
    ap.add_argument(
        "--port", type=int, default=5060, help="port, 0 lets the system pick (default %(default)s)"
    )
    ap.add_argument(
        "--proto",
        choices=("udp", "tcp", "both"),
        default="both",
        help="transport(s) to serve (default %(default)s)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging of netsip")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error(f"invalid port {args.port}")
    try:
        Addr.parse((args.addr, 0))
    except ValueError as exc:
        ap.error(f"invalid address {args.addr!r}: {exc}")
    return args


def open_sockets(
    addr: str, port: int, protos: Sequence[Proto]
) -> list[tuple[Proto, socket.socket]]:
    """Bind every transport in ``protos`` to the same ``addr`` and ``port``.

    With port 0 the first socket gets a port from the system and the others
    take the same one (SIP expects UDP and TCP on one port, RFC 3261 18.1);
    if that port is taken for another transport the whole set is retried.

    Raises:
        OSError: when the sockets cannot be bound.
    """
    family = Addr.parse((addr, 0)).family
    for attempt in range(_BIND_ATTEMPTS if port == 0 else 1):
        socks: list[tuple[Proto, socket.socket]] = []
        try:
            want = port
            for proto in protos:
                sock = bind_socket(proto, addr, want, family)
                socks.append((proto, sock))
                want = sock.getsockname()[1]
            return socks
        except OSError as exc:
            for _, sock in socks:
                sock.close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class Responder:
    """Answers every request but ACK with 200 on the pools it is given."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.pools: list[SocketPool] = []
        self.answered = 0

    def add(self, proto: Proto, sock: socket.socket) -> SocketPool:
        """Wrap ``sock`` in a pool, attach it to the loop and serve it."""
        pool = SocketPool(proto, sock)
        self.pools.append(pool)
        pool.attach_eventloop(self.loop, functools.partial(self.receive, pool))
        return pool

    def receive(self, pool: SocketPool, packet: Request | Response, from_: Addr) -> None:
        """Receive callback of a pool: log the request and answer it."""
        if not isinstance(packet, Request):
            return  # nobody asked for responses: drop them
        method = packet.method()
        status = "-"
        if method != "ACK":
            response = packet.create_response(200)
            pool.sendto(response, from_, functools.partial(self._sent, from_, packet.callid()))
            self.answered += 1
            status = "200"
        log.info("%s %s %s %s %s", from_.proto, from_, method, packet.callid(), status)

    @staticmethod
    def _sent(to: Addr, callid: str | None, err: int) -> None:
        """Delivery callback: ``0`` means written (TCP), anything else failed."""
        if err:
            log.warning(
                "response for %s to %s/%s failed: %s", callid, to.proto, to, os.strerror(err)
            )

    def close(self) -> None:
        """Detach and close every pool (and so every socket)."""
        for pool in self.pools:
            pool.close()
        self.pools.clear()


def _install_signal_wakeup(loop: EventLoop, stop: Var[int]) -> tuple[socket.socket, socket.socket]:
    """Make SIGINT/SIGTERM set ``stop`` and wake the loop's selector.

    A Python-level handler alone would run only once ``select`` returns for
    another reason (PEP 475 retries the call), so the C handler also writes
    the signal number to a socketpair the loop watches.
    """
    rsock, wsock = socket.socketpair()
    rsock.setblocking(False)
    wsock.setblocking(False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.value = signum

    def on_wakeup(fd: object) -> None:
        try:
            while rsock.recv(512):
                pass
        except BlockingIOError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    loop.add_fd(rsock, EV_READ, on_wakeup, name="signal-wakeup")
    return rsock, wsock


def main(argv: Sequence[str] | None = None) -> int:
    """Run the responder until SIGINT/SIGTERM; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("netsip").setLevel(logging.WARNING)
    protos: list[Proto] = ["udp", "tcp"] if args.proto == "both" else [args.proto]
    try:
        socks = open_sockets(args.addr, args.port, protos)
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.addr, args.port, exc.strerror)
        return 1

    loop = EventLoop()
    responder = Responder(loop)
    stop: Var[int] = Var()
    wakeup = _install_signal_wakeup(loop, stop)
    try:
        for proto, sock in socks:
            responder.add(proto, sock)
            log.info("listening %s %s", proto, Addr.parse(sock.getsockname()[:2]))
        loop.loop(None, stop)
        log.info(
            "stopped by %s after %d answered requests",
            signal.Signals(stop.value).name if stop.value else "?",
            responder.answered,
        )
    finally:
        signal.set_wakeup_fd(-1)
        responder.close()
        for _, sock in socks:
            sock.close()  # no-op when the pool closed it already
        loop.close()
        for s in wakeup:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
