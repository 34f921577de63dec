"""The listening socket of a stream :class:`netsip.socketpool.SocketPool`: accept, back off.

Ports ``_handle_read_tcp_m`` of Perl's ``Net::SIP::SocketPool``: accept a
connection on the master socket, drop it if it is not from the pool's
``dst``, and add it to the pool.

How it works: :class:`Acceptor` owns the listening socket's record and its
watch in the loop. Each readiness accepts up to 64 connections and hands
each accepted socket to the stream transport (``adopt``). When ``accept``
fails for lack of file descriptors or memory (``EMFILE``, ``ENFILE``,
``ENOBUFS``, ``ENOMEM``) the listener is not watched for a while, doubling
from 50 ms up to 1 s while the shortage lasts, instead of being reported
readable (and failing again) in every loop cycle; connections already
accepted keep being served.

Differences from Net::SIP: Perl accepts one connection per readiness and
has no back-off; accepted connections get ``TCP_NODELAY`` here.

Performance plan. Operations per connection: ``accept``, the socket object,
``TCP_NODELAY``; the per-connection cost shows in connection rates (see
``benchmarks/bench_socketpool.py``). Plan:

* ``TCP_NODELAY`` is set on the listening socket once: Linux copies it to
  accepted sockets. The first accepted connection tells whether this system
  does (``nodelay_inherited``); elsewhere it is set per connection;
* plain TCP sockets stay in blocking mode: every read and write passes
  ``MSG_DONTWAIT`` (see :mod:`netsip._conn`), one syscall less per
  connection. TLS sockets are made non-blocking (``SSLSocket`` takes no flags);
* accepting calls ``socket._accept``, the C method behind
  ``socket.accept()`` (CPython's, private, not in typeshed), and wraps the
  fd itself: ``socket.accept()`` adds enum conversions and a default-timeout
  check that a pool does not need per connection. The method is looked up,
  not assumed, so an interpreter without it takes the public way.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Final

from netsip._conn import DONTWAIT, Conn, Handler
from netsip._log import get_logger
from netsip.eventloop import EV_READ, EventLoopLike, TimerLike
from netsip.util import Addr, Proto

__all__ = ["Acceptor"]

# The public module's logger: logging is configured by the name users know.
log = get_logger("netsip.socketpool")

_ACCEPTS_PER_READY: Final = 64  # accept() calls per readiness of a listener
# accept() failing for lack of resources: the listener is left alone for a
# while (doubling from MIN to MAX seconds while the shortage lasts).
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)
_ACCEPT_BACKOFF_MIN: Final = 0.05
_ACCEPT_BACKOFF_MAX: Final = 1.0


def _accept_detached(lsock: socket.socket) -> tuple[int, Any]:
    """``socket.accept()`` as ``(fd, address)``: the fd detached from its object."""
    sock, sa = lsock.accept()
    return sock.detach(), sa


class Acceptor:
    """Accepts the connections of a listening stream socket.

    Args:
        listener: the record of the listening socket (non-blocking already).
        proto: the pool's protocol (``"tcp"`` or ``"tls"``), for the peers' Addr.
        local_ip: the listener's address (for the log).
        dst: the pool's ``dst`` restriction: connections from elsewhere are closed.
    """

    def __init__(self, listener: Conn, proto: Proto, local_ip: str, dst: Addr | None) -> None:
        self.listener = listener
        self.proto: Proto = proto
        self.local_ip = local_ip
        self.dst = dst
        # the pool's connections are of the listener's type
        self._by_flags = type(listener).dontwait and bool(DONTWAIT)
        self.loop: EventLoopLike | None = None
        self.closed = False
        self._handler: Handler | None = None  # the callback watching the listener
        self._timer: TimerLike | None = None  # while not watched (back-off)
        self._backoff = 0.0  # current pause, 0 while accept works
        #: Does the system copy TCP_NODELAY from the listener? False: set it on
        #: each connection; None: unknown until the first accept.
        self.nodelay_inherited: bool | None = False
        try:
            listener.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nodelay_inherited = None
        except OSError:
            pass

    def attach(self, loop: EventLoopLike | None, handler: Handler | None) -> None:
        """Leave the current loop, then watch the listener in ``loop`` with ``handler``."""
        if self.loop is not None:
            self.loop.del_fd(self.listener.fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop = loop
        self._handler = handler
        if loop is not None and handler is not None and not self.closed:
            loop.add_fd(self.listener.fd, EV_READ, handler, "socketpool-accept")

    def close(self) -> None:
        """Detach and close the listening socket."""
        self.attach(None, None)
        self.closed = True
        listener = self.listener
        listener.closed = True
        listener.close()

    def accept(self, adopt: Callable[[socket.socket, Addr], object]) -> None:
        """Accept what the listener has (up to 64 connections); ``adopt`` each one."""
        lsock = self.listener.sock
        family = lsock.family
        sproto = lsock.proto
        proto = self.proto
        raw_accept: Callable[[], tuple[int, Any]] | None = getattr(lsock, "_accept", None)
        for _ in range(_ACCEPTS_PER_READY):
            try:
                if raw_accept is not None:
                    fd, sa = raw_accept()
                else:
                    fd, sa = _accept_detached(lsock)
            except BlockingIOError:
                self._backoff = 0.0  # backlog drained: resources suffice
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    self._pause(exc)
                    return
                # ECONNABORTED, EPERM, ...: that connection, the listener is fine.
                log.warning("accept on %s failed: %s", self.local_ip, exc)
                return
            try:
                sock = socket.socket(family, socket.SOCK_STREAM, sproto, fd)
            except OSError as exc:  # not expected: the fd is a fresh socket
                os.close(fd)
                log.warning("accept on %s failed: %s", self.local_ip, exc)
                continue
            dst = self.dst
            if dst is not None and (sa[0] != dst.addr or sa[1] != dst.port):
                log.info("refuse connection from %s:%s, only accepting %s", sa[0], sa[1], dst)
                sock.close()
                continue
            if not self._by_flags:
                sock.setblocking(False)
            inherited = self.nodelay_inherited
            if inherited is None:
                inherited = self.nodelay_inherited = bool(
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )
            if not inherited:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            adopt(sock, Addr(sa[0], sa[1], family, None, proto))

    def _pause(self, exc: OSError) -> None:
        """Out of fds: stop watching the listener for a while (doubling up to 1 s).

        The pending connection stays in the backlog, so the listener stays
        readable: watched level-triggered it would fail again in every cycle
        and spin the CPU.
        """
        loop = self.loop
        if loop is None:
            return
        again = self._backoff > 0
        delay = min(max(2 * self._backoff, _ACCEPT_BACKOFF_MIN), _ACCEPT_BACKOFF_MAX)
        self._backoff = delay
        log.log(
            logging.DEBUG if again else logging.WARNING,
            "accept on %s failed: %s; not accepting for %.2fs",
            self.local_ip,
            exc,
            delay,
        )
        loop.del_fd(self.listener.fd, EV_READ)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.add_timer(delay, self._resume, name="socketpool-accept-backoff")

    def _resume(self, _timer: object = None) -> None:
        self._timer = None
        loop = self.loop
        if loop is not None and self._handler is not None and not self.closed:
            loop.add_fd(self.listener.fd, EV_READ, self._handler, "socketpool-accept")
