"""Port of Perl's ``Net::SIP::SocketPool``: the sockets behind one Leg.

A pool owns a *master* socket (a bound UDP socket, a listening TCP socket, or
a connected UDP/TCP socket) and, for TCP, the connections accepted on it or
opened by :meth:`SocketPool.sendto`. Attached to an event loop it reads SIP
packets from all of them and hands each to one callback as ``(packet, from_)``.

How it works:

* every socket has a :class:`Conn` record (a slots dataclass) holding its read
  and write buffers, the callbacks waiting for queued data, its last activity
  (``didit``) and the request tids it carried, so responses go back over the
  connection their request came in on (RFC 3261 18.2.2);
* UDP: up to 32 ``recvfrom_into`` per readiness into a preallocated 64 KiB buffer;
  datagrams below 13 bytes are keep-alives, unparsable ones are logged and
  dropped, ICMP errors reported on the socket are ignored; datagrams sent
  while such a batch is delivered (the responses) go out after it, back to back;
* TCP: each readiness reads ``TCP_READSIZE`` bytes into the connection's
  buffer and :func:`netsip.framing.next_message` cuts out and parses every
  complete message (the one owner of stream framing);
  a framing or parse error closes only that connection. Accepting costs few
  syscalls: ``TCP_NODELAY`` is set on the listening socket once (Linux copies
  it to accepted sockets; elsewhere it is set per connection) and reads and
  writes pass ``MSG_DONTWAIT`` instead of making each socket non-blocking;
* sending over TCP appends to the connection's write buffer and writes what
  the socket takes; the rest waits for ``EV_WRITE``. A sendto callback gets
  ``0`` once its bytes are written, an errno when the connection fails; at
  most ``MAX_WBUF`` bytes wait per connection (a peer that does not read
  gets its connection closed, with ``ENOBUFS``);
* when ``accept`` fails for lack of file descriptors (``EMFILE``, ``ENFILE``)
  the listening socket is not watched for a short, growing while, instead of
  being reported readable (and failing again) in every loop cycle;
* idle connections are closed by one periodic timer that exists only while
  there are connections (Perl's ``_timeout_sockets``); connects (and, with
  TLS, handshakes) have a ``CONNECT_TIMEOUT`` timer of their own;
* TLS (``proto="tls"``) is TCP plus :class:`netsip.tlsconn.TLSConn`: once TCP
  is up, the handshake runs non-blocking in the loop (server side for accepted
  connections, client side for opened ones, each with its own context) and
  counts against ``CONNECT_TIMEOUT``; data queued meanwhile is written after
  it. Reads take at most one TLS record (16 KiB) and drain what OpenSSL has
  buffered; a read or write that waits for the other direction switches the
  watched event. A failed handshake closes only that connection.

Errno values given to ``sendto`` callbacks when a connection fails with data
still queued: the socket's own errno (``ECONNREFUSED``, ``EPIPE``,
``ECONNRESET``, ``EHOSTUNREACH`` ...); ``ETIMEDOUT`` for a connect slower
than ``CONNECT_TIMEOUT`` or a connection that expired with unwritten data;
``ECONNRESET`` when the peer closed the connection; ``ECONNABORTED`` when the
pool closed it because the peer sent something that is not SIP;
``EAFNOSUPPORT`` for a destination of the wrong address family;
``ENOBUFS`` when queueing the packet would exceed ``MAX_WBUF`` (the
connection is closed: every packet still queued on it fails with it).
TLS adds ``EPROTO`` for everything the TLS layer refuses (an untrusted or
mismatching certificate, a missing client certificate, a peer that does not
speak TLS, a TLS alert) and ``ETIMEDOUT`` for a handshake not done within
``CONNECT_TIMEOUT``; a peer closing during the handshake gives ``ECONNRESET``.
With TLS 1.3 a client's handshake ends before the server has checked its
certificate, so a refused client certificate can show as a written packet
(0) followed by the connection closing.
:meth:`SocketPool.close` does not invoke pending callbacks.

An exception raised by a receive or ``sendto`` callback propagates out of
the event loop; what it interrupted (messages already read behind it, the
other callbacks due) is resumed by a zero-delay timer, so the next ``loop()``
continues where it stopped and nothing is delivered twice.

Settings (``MAX_SIP_HEADER`` ...) are module-wide (:func:`import_settings`,
like Perl's ``use Net::SIP::SocketPool (KEY => value)``) and can be
overridden per pool (``SocketPool(..., settings={...})`` or
:meth:`SocketPool.import_settings`); module-wide changes reach existing pools
for every key they do not override.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

from netsip.eventloop import EV_READ, EV_WRITE, Callback, EventLoopLike, TimerLike
from netsip.framing import FramingError, NeedMore, PacketError, next_message
from netsip.packet import Packet
from netsip.util import Addr, NetSIPError, Proto, as_callable, invoke_callback

if TYPE_CHECKING:  # netsip.tlsconn imports this module; loaded at run time by TLS pools only
    from netsip.tlsconn import TLSConn, TLSContexts

__all__ = ["Conn", "SocketPool", "get_settings", "import_settings"]

log = logging.getLogger(__name__)

#: Defaults of the tunables, as in Perl's Net::SIP::SocketPool.
DEFAULT_SETTINGS: Final[Mapping[str, int]] = {
    "MAX_SIP_HEADER": 2**14,  # bytes of SIP header on a stream
    "MAX_SIP_BODY": 2**16,  # announced Content-Length on a stream
    "MAX_TIDLIST": 30,  # request tids remembered per connection
    "MIN_EXPIRE": 15,  # idle connections live at least this long (s)
    "MAX_EXPIRE": 120,  # ... and at most this long (s)
    "CONNECT_TIMEOUT": 10,  # TCP connect (and TLS handshake) limit (s)
    "TCP_READSIZE": 2**16,  # bytes per read on a stream
    # Not in Perl: bytes queued for writing on one connection before further
    # sendto's fail with ENOBUFS and the connection is closed (a peer that
    # never reads must not make the pool buffer without bound).
    "MAX_WBUF": 2**22,
}
_INT_KEYS: Final = frozenset(
    {"MAX_SIP_HEADER", "MAX_SIP_BODY", "MAX_TIDLIST", "TCP_READSIZE", "MAX_WBUF"}
)

# A UDP datagram smaller than this cannot be SIP (shortest first line plus the
# final CRLF CRLF): Perl treats it as a keep-alive and ignores it.
_MIN_DATAGRAM: Final = 13
_UDP_READSIZE: Final = 2**16

_ACCEPTS_PER_READY: Final = 64  # accept() calls per readiness of a listener
_UDP_READS_PER_READY: Final = 32  # datagrams read per readiness of a UDP socket
_CORK_MAX: Final = 2**16  # bytes coalesced at most before a write (see _read_stream)
# accept() failing for lack of resources: the listener is left alone for a
# while (doubling from MIN to MAX seconds while the shortage lasts).
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)
_ACCEPT_BACKOFF_MIN: Final = 0.05
_ACCEPT_BACKOFF_MAX: Final = 1.0
_ADDR_CACHE_MAX: Final = 1024  # remembered UDP source addresses (Addr objects)

# Every stream read and write is non-blocking by its flags (MSG_DONTWAIT),
# so accepted plain TCP sockets need no O_NONBLOCK (one syscall less per
# connection); where the flag does not exist they are made non-blocking.
_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)
_RECV_FLAGS: Final = _DONTWAIT
_SEND_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0) | _DONTWAIT  # EPIPE, not SIGPIPE
_MSG_ERRQUEUE: Final = getattr(socket, "MSG_ERRQUEUE", 0)  # Linux only


def _drain_errqueue(sock: socket.socket) -> None:
    """Discard the ICMP errors queued on a UDP socket (Linux, ``IP_RECVERR`` set).

    Without ``IP_RECVERR`` the queue is always empty and this costs one
    failing syscall; it only runs when a read found no datagram.
    """
    if not _MSG_ERRQUEUE:
        return
    for _ in range(64):
        try:
            sock.recvmsg(1, 1024, _MSG_ERRQUEUE)
        except OSError:
            return


def _accept_detached(lsock: socket.socket) -> tuple[int, Any]:
    """``socket.accept()`` as ``(fd, address)``: the fd detached from its object."""
    sock, sa = lsock.accept()
    return sock.detach(), sa


@dataclass(slots=True)
class _Settings:
    """The effective tunables of one pool (attribute access on the hot path)."""

    max_sip_header: int
    max_sip_body: int
    max_tidlist: int
    min_expire: float
    max_expire: float
    connect_timeout: float
    tcp_readsize: int
    max_wbuf: int


_global: dict[str, float] = dict(DEFAULT_SETTINGS)
_pools: weakref.WeakSet[SocketPool] = weakref.WeakSet()


def _validated(kw: Mapping[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in kw.items():
        if key not in DEFAULT_SETTINGS:
            raise ValueError(f"no such SocketPool setting {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{key} must be a number, not {value!r}")
        if key in _INT_KEYS and not isinstance(value, int):
            raise TypeError(f"{key} must be an int, not {value!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and key != "MAX_SIP_BODY"):
            raise ValueError(f"{key} must be positive, not {value!r}")
        out[key] = value
    return out


def _make_settings(v: Mapping[str, float]) -> _Settings:
    return _Settings(
        max_sip_header=int(v["MAX_SIP_HEADER"]),
        max_sip_body=int(v["MAX_SIP_BODY"]),
        max_tidlist=int(v["MAX_TIDLIST"]),
        min_expire=v["MIN_EXPIRE"],
        max_expire=v["MAX_EXPIRE"],
        connect_timeout=v["CONNECT_TIMEOUT"],
        tcp_readsize=int(v["TCP_READSIZE"]),
        max_wbuf=int(v["MAX_WBUF"]),
    )


def import_settings(**kw: float) -> None:
    """Change module-wide settings (Perl: ``use Net::SIP::SocketPool (KEY => v)``).

    Existing pools use the new values for every key they do not override.

    Args:
        **kw: ``MAX_SIP_HEADER``, ``MAX_SIP_BODY``, ``MAX_TIDLIST``,
            ``MIN_EXPIRE``, ``MAX_EXPIRE``, ``CONNECT_TIMEOUT``, ``TCP_READSIZE``,
            ``MAX_WBUF`` (not in Perl: the most bytes queued for writing on
            one connection, default 4 MiB; a sendto that would exceed it fails
            with ``ENOBUFS`` and closes that connection).

    Raises:
        ValueError: an unknown key (named in the message) or a value <= 0.
        TypeError: a value that is not a number (sizes: not an int).
    """
    _global.update(_validated(kw))
    for pool in list(_pools):
        pool._refresh_settings()


def get_settings() -> dict[str, float]:
    """The module-wide settings as a new dict (key -> value)."""
    return dict(_global)


@dataclass(slots=True, eq=False)
class Conn:
    """Per-socket state of a pool (Perl's ``$fo`` hash), one per socket.

    Attributes:
        sock: the socket. An accepted plain TCP socket may be in blocking
            mode: :meth:`recv_into` and :meth:`send` pass ``MSG_DONTWAIT``.
        fd: its file descriptor number (stable while open; the pool's key).
        peer: the other end with ``proto`` set, or None for an unconnected
            master (a bound UDP or a listening TCP socket).
        master: True for the pool's master socket (never expires).
        rbuf: received stream bytes not yet framed into a message.
        wbuf: bytes queued for writing.
        wcallbacks: ``(end, callback)`` for queued packets: ``callback`` gets 0
            once ``written`` reaches ``end``, else an errno when the connection fails.
        queued: bytes ever appended to ``wbuf``; written: bytes ever written.
        didit: loop time of the last activity (a message received, data
            written, the connection set up); drives idle expiry.
        inside_connect: True while connecting (or, with TLS, handshaking).
        tids: tids of requests received here, newest last (at most MAX_TIDLIST).
        scan, need: framing state (see :class:`netsip.framing.NeedMore`).
        watch_write: True while the loop watches the socket for EV_WRITE.
        timer: the connect/handshake deadline while ``inside_connect``.
        closed: set once the pool dropped the socket.
        tls: per-connection TLS state (``ssl.SSLObject`` and its BIOs or an
            ``SSLSocket``) for the TLS transport, None for plain TCP/UDP.
    """

    sock: socket.socket
    fd: int
    peer: Addr | None = None
    master: bool = False
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    wcallbacks: deque[tuple[int, Callback]] = field(default_factory=deque)
    queued: int = 0
    written: int = 0
    didit: float = 0.0
    inside_connect: bool = False
    tids: deque[str] = field(default_factory=deque)
    scan: int = 0
    need: int = 0
    watch_write: bool = False
    timer: TimerLike | None = None
    closed: bool = False
    tls: object | None = None

    # The transport strategy: plain sockets here; the TLS transport overrides
    # these three (SSLWantRead/WriteError map to BlockingIOError plus the
    # direction to watch, pending() reports decrypted bytes still buffered).

    def recv_into(self, view: memoryview, nbytes: int) -> int:
        """Read up to ``nbytes`` into ``view``; 0 at EOF. Raises BlockingIOError, OSError."""
        return self.sock.recv_into(view, nbytes, _RECV_FLAGS)

    def send(self, data: bytearray) -> int:
        """Write from ``data``; returns the bytes taken. Raises BlockingIOError, OSError."""
        return self.sock.send(data, _SEND_FLAGS)

    def pending(self) -> int:
        """Bytes already read from the socket but not yet returned (TLS records)."""
        return 0

    def close(self) -> None:
        """Close the socket (TLS first sends close_notify if it can without waiting)."""
        self.sock.close()


class SocketPool:
    """The sockets of a Leg: a master socket plus, for TCP, its connections.

    Args:
        proto: ``"udp"``, ``"tcp"`` or ``"tls"``.
        fd: the master socket: a bound UDP socket, a listening TCP socket, or
            a connected UDP/TCP socket with ``connected=True`` (TLS: the pool
            is the client of its handshake). The pool owns it from now on
            (made non-blocking, closed by :meth:`close`).
        dst: with ``connected`` false an optional restriction: every packet
            is sent to ``dst`` whatever ``sendto`` is given, and packets (and
            TCP connections) from anywhere else are dropped. With
            ``connected`` true the peer of the master socket (default: its
            ``getpeername()``). Anything :meth:`Addr.parse` takes.
        connected: the master socket is connected to ``dst``.
        tls: TLS options, only with ``proto="tls"``: ``certfile``,
            ``keyfile``, ``cafile``, ``verify_client`` (0, -1, 1),
            ``check_hostname`` or ready ``server_context`` /
            ``client_context`` (see :func:`netsip.tlsconn.make_contexts`).
            Accepted connections use the server context, connections the
            pool opens the client context.
        settings: per-pool overrides of the module settings, e.g.
            ``{"TCP_READSIZE": 4096}``.

    Raises:
        ValueError: unknown proto, a socket of the wrong type, bad settings,
            bad TLS options or TLS options for a UDP/TCP pool.
        TypeError: ``fd`` is not a socket.
        OSError: a TLS certificate, key or CA file cannot be loaded.
    """

    def __init__(
        self,
        proto: Proto,
        fd: socket.socket,
        dst: object = None,
        connected: bool = False,
        tls: Mapping[str, object] | None = None,
        *,
        settings: Mapping[str, float] | None = None,
    ) -> None:
        if proto not in ("udp", "tcp", "tls"):
            raise ValueError(f"unknown protocol {proto!r} (udp, tcp or tls)")
        if not isinstance(fd, socket.socket):
            raise TypeError(f"master must be a socket.socket, not {type(fd).__name__}")
        if tls is not None and proto != "tls":
            raise ValueError("tls options given for a non-TLS pool")
        want = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        if fd.type != want:
            raise ValueError(f"a {proto} pool needs a {want.name} socket, got {fd.type.name}")
        self._tls: TLSContexts | None = None
        self._conn_cls: type[Conn] = Conn
        if proto == "tls":
            # imported here, not at the top: netsip.tlsconn subclasses Conn
            from netsip.tlsconn import TLSConn, make_contexts  # noqa: PLC0415

            self._tls = make_contexts(tls)
            self._conn_cls = TLSConn
        self._overrides = _validated(settings or {})
        self._cfg = _make_settings({**_global, **self._overrides})

        self.proto: Proto = proto
        self._stream = proto != "udp"
        self._family = fd.family
        # New connections are bound to the master's IP (Perl: LocalAddr).
        self._local_ip: str = fd.getsockname()[0]

        peer: Addr | None = None
        self._dst: Addr | None = None
        if connected:
            peer = Addr.parse(dst if dst is not None else fd.getpeername())
            peer = Addr(peer.addr, peer.port, peer.family, peer.host, proto)
        elif dst is not None:
            self._dst = Addr.parse(dst)

        fd.setblocking(False)
        # Accepted connections get TCP_NODELAY. Linux copies it from the
        # listening socket, so it is set there once; the first accepted
        # connection tells whether this system does (see _accept).
        self._nodelay_inherited: bool | None = False
        if self._stream and peer is None:
            try:
                fd.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._nodelay_inherited = None  # unknown until the first accept
            except OSError:
                pass
        # A connected TLS master is "connecting" until its handshake is done.
        handshake = peer is not None and self._tls is not None
        self._master = self._conn_cls(
            fd, fd.fileno(), peer=peer, master=True, inside_connect=handshake
        )
        self._conns: dict[int, Conn] = {}  # fd -> connection (not the master)
        self._tids: dict[str, Conn] = {}  # request tid -> connection it came in on
        self._by_peer: dict[tuple[str, int], list[Conn]] = {}
        self._loop: EventLoopLike | None = None
        self._cb: Callback = None
        # the receive callback as a plain callable (no invoke_callback per packet)
        self._deliver: Callable[[Packet, Addr | None], object] = as_callable(None)
        self._expire_timer: TimerLike | None = None
        self._accept_timer: TimerLike | None = None  # listener paused (EMFILE)
        self._accept_backoff = 0.0  # current pause, 0 while accept works
        self._corked: Conn | None = None  # its writes wait for the end of a read batch
        # datagrams sent while a batch of received ones is delivered: sent
        # right after the batch (see _read_udp)
        self._held: list[tuple[bytes, Addr, Callback]] | None = None
        self._closed = False

        self._rbuf = bytearray(max(_UDP_READSIZE, self._cfg.tcp_readsize))
        self._rview = memoryview(self._rbuf)
        self._addr_cache: dict[tuple[str, int], Addr] = {}
        _pools.add(self)

    # ---------------------------------------------------------------- settings

    def import_settings(self, **kw: float) -> None:
        """Override settings for this pool only (same keys as the module function).

        Raises:
            ValueError, TypeError: as :func:`import_settings`.
        """
        self._overrides.update(_validated(kw))
        self._refresh_settings()

    def get_settings(self) -> dict[str, float]:
        """The settings in effect for this pool (module values plus overrides)."""
        return {**_global, **self._overrides}

    def _refresh_settings(self) -> None:
        self._cfg = _make_settings({**_global, **self._overrides})
        if self._cfg.tcp_readsize > len(self._rbuf):
            self._rbuf = bytearray(self._cfg.tcp_readsize)
            self._rview = memoryview(self._rbuf)

    # ------------------------------------------------------------ public API

    def master(self) -> socket.socket:
        """The master socket."""
        return self._master.sock

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def connection_count(self) -> int:
        """Number of connections besides the master (for tests and leak checks)."""
        return len(self._conns)

    def queued_bytes(self) -> int:
        """Bytes queued by sendto and not yet written, over all connections."""
        return sum(len(c.wbuf) for c in self._all())

    def peers(self) -> list[Addr]:
        """The peers of the current connections (not the master), oldest first."""
        return [c.peer for c in self._conns.values() if c.peer is not None]

    def attach_eventloop(self, loop: EventLoopLike | None, callback: Callback = None) -> None:
        """Attach to ``loop`` and deliver every received packet to ``callback``.

        Args:
            loop: an :class:`~netsip.eventloop.EventLoop` or compatible; None
                just detaches from the current loop (nothing is read or
                written until attached again).
            callback: invoked as ``invoke_callback(callback, packet, from_)``
                with ``from_`` an :class:`Addr` whose ``proto`` is set.
        """
        if self._closed:
            if loop is not None:
                raise NetSIPError("SocketPool is closed")
            return
        old = self._loop
        if old is not None:
            for conn in self._all():
                old.del_fd(conn.fd)
                conn.watch_write = False
                if conn.timer is not None:
                    conn.timer.cancel()
                    conn.timer = None
            if self._expire_timer is not None:
                self._expire_timer.cancel()
                self._expire_timer = None
            if self._accept_timer is not None:
                self._accept_timer.cancel()
                self._accept_timer = None
        self._loop = loop
        self._cb = callback
        self._deliver = as_callable(callback)
        if loop is None:
            return
        now = loop.looptime
        for conn in self._all():
            if not conn.master:
                conn.didit = now  # another loop may have another clock
            if conn.inside_connect:
                # the connect gets the full timeout again after a re-attach
                self._arm_connect_timer(conn)
                self._watch_write(conn, True)
            else:
                self._watch_read(conn)
                if conn.wbuf:
                    self._watch_write(conn, True)
        self._arm_expire_timer()

    def sendto(self, packet: Packet, dst: object, callback: Callback = None) -> None:
        """Send ``packet`` to ``dst``.

        UDP goes out over the master socket at once, except while the pool
        delivers a batch of received datagrams (from its receive callback,
        e.g. a response): then right after that batch, in order, back to back
        (one wake-up of a waiting peer serves several). TCP and TLS use, in this
        order, the connection the request of a response came in on, an
        existing connection to ``dst``, or a new connection from the master's
        address; the data is queued and written as the socket allows (TLS:
        once the handshake is done; SNI and the certificate check use
        ``dst.host`` when it is a name, else the address).

        Args:
            packet: the packet; its ``as_bytes()`` is sent.
            dst: the destination (anything :meth:`Addr.parse` takes); replaced
                by the pool's ``dst`` restriction if there is one.
            callback: UDP: invoked with an errno only if sending failed
                (after the batch for a datagram held as above). TCP,
                TLS: invoked with 0 once the packet is fully written, or with
                an errno once that is impossible (exactly once either way).

        Raises:
            ValueError, TypeError: ``dst`` cannot be parsed.
        """
        if self._closed:
            log.info("sendto on a closed SocketPool: dropped")
            invoke_callback(callback, errno.EBADF)
            return
        target = self._dst
        if target is None:
            target = dst if isinstance(dst, Addr) else Addr.parse(dst)
        master = self._master
        if target.family != self._family and master.peer is None:
            log.info("cannot send to %s from a %s socket", target, self._family.name)
            invoke_callback(callback, errno.EAFNOSUPPORT)
            return
        data = packet.as_bytes()

        if not self._stream:
            held = self._held
            if held is not None:
                held.append((data, target, callback))  # a response, usually
            else:
                self._send_datagram(data, target, callback)
            return

        conn: Conn | None = None
        if master.peer is not None and not master.closed:
            conn = master  # a connected stream master carries everything
        else:
            if packet.is_response():
                conn = self._tids.get(packet.tid())
            if conn is None:
                same = self._by_peer.get((target.addr, target.port))
                if same:
                    conn = same[0]
            if conn is None:
                conn = self._connect(target, callback)
                if conn is None:
                    return
        self._queue(conn, data, callback)

    def close(self) -> None:
        """Detach from the loop and close every socket, the master included.

        Pending sendto callbacks are not invoked. Idempotent.
        """
        if self._closed:
            return
        if self._held:
            # closed from a receive callback: what it sent goes out first
            self._send_held(self._held)
        self.attach_eventloop(None)
        self._closed = True
        for conn in self._all():
            conn.closed = True
            conn.wcallbacks.clear()
            conn.close()
        self._conns.clear()
        self._tids.clear()
        self._by_peer.clear()
        self._master.closed = True
        self._rview.release()
        _pools.discard(self)

    def __enter__(self) -> SocketPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SocketPool {self.proto} fd={self._master.fd} conns={len(self._conns)}{state}>"

    # ------------------------------------------------------------- internals

    def _all(self) -> list[Conn]:
        conns = list(self._conns.values())
        if not self._master.closed:
            conns.insert(0, self._master)
        return conns

    def _watch_read(self, conn: Conn) -> None:
        loop = self._loop
        if loop is None:
            return
        if not self._stream:
            handler = partial(self._read_udp, conn)
        elif conn.master and conn.peer is None:
            handler = partial(self._accept, conn)
        elif conn.tls is not None:
            tls_handler = self._tls_handshake if conn.inside_connect else self._tls_readable
            handler = partial(tls_handler, cast("TLSConn", conn))
        else:
            handler = partial(self._read_stream, conn)
        loop.add_fd(conn.fd, EV_READ, handler, "socketpool")

    def _watch_write(self, conn: Conn, on: bool) -> None:
        loop = self._loop
        if loop is None:
            return
        if conn.tls is not None and not conn.inside_connect:
            # TLS: a read may wait for EV_WRITE, a write for EV_READ instead
            on = cast("TLSConn", conn).write_interest(on)
        if on == conn.watch_write:
            return
        conn.watch_write = on
        if not on:
            loop.del_fd(conn.fd, EV_WRITE)
        elif conn.tls is not None:
            tls_handler = self._tls_handshake if conn.inside_connect else self._tls_writable
            handler = partial(tls_handler, cast("TLSConn", conn))
            loop.add_fd(conn.fd, EV_WRITE, handler, "socketpool-tls")
        elif conn.inside_connect:
            loop.add_fd(conn.fd, EV_WRITE, partial(self._connected, conn), "socketpool-connect")
        else:
            loop.add_fd(conn.fd, EV_WRITE, partial(self._writable, conn), "socketpool-write")

    def _new_conn(self, sock: socket.socket, peer: Addr, *, accepted: bool) -> Conn:
        """The record of a new connection (TLS: "connecting" until the handshake is done)."""
        if self._tls is None:
            return Conn(sock, sock.fileno(), peer=peer, inside_connect=not accepted)
        conn = cast("TLSConn", self._conn_cls(sock, sock.fileno(), peer=peer, inside_connect=True))
        conn.server_side = accepted
        return conn

    def _add_conn(self, conn: Conn, *, arm_expire: bool = True) -> None:
        self._conns[conn.fd] = conn
        assert conn.peer is not None
        self._by_peer.setdefault((conn.peer.addr, conn.peer.port), []).append(conn)
        if self._loop is not None:
            conn.didit = self._loop.looptime
        if arm_expire:
            self._arm_expire_timer()

    def _drop(
        self, conn: Conn, err: int, why: str, *args: object, level: int = logging.INFO
    ) -> None:
        """Remove ``conn`` from the pool, close it, fail its pending callbacks.

        Args:
            conn: the connection (or a connected stream master).
            err: the errno for the sendto callbacks still waiting.
            why, args: the reason, a %-format for the log line.
            level: the log level (routine closes log at DEBUG).
        """
        if conn.closed:
            return
        conn.closed = True
        if log.isEnabledFor(level):  # the format is built only when it is logged
            log.log(level, "close connection to %s: " + why, conn.peer, *args)
        loop = self._loop
        if loop is not None:
            loop.del_fd(conn.fd)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        if conn.peer is not None:
            key = (conn.peer.addr, conn.peer.port)
            same = self._by_peer.get(key)
            if same is not None:
                if len(same) == 1:  # the usual case: one connection per peer
                    if same[0] is conn:
                        del self._by_peer[key]
                elif conn in same:
                    same.remove(conn)
        tids = self._tids
        for tid in conn.tids:
            if tids.get(tid) is conn:
                del tids[tid]
        conn.close()
        if not self._conns and self._expire_timer is not None:
            self._expire_timer.cancel()
            self._expire_timer = None
        # Each pending callback exactly once, even if one of them re-enters or raises.
        if conn.wcallbacks:
            self._fail_callbacks(conn.wcallbacks, err)

    # ---- receiving

    def _peer_addr(self, sa: Any) -> Addr:
        """The Addr (proto udp) for a sockaddr from recvfrom, cached."""
        key: tuple[str, int] = (sa[0], sa[1])
        addr = self._addr_cache.get(key)
        if addr is None:
            if len(self._addr_cache) >= _ADDR_CACHE_MAX:
                self._addr_cache.clear()
            addr = Addr(key[0], key[1], self._family, None, "udp")
            self._addr_cache[key] = addr
        return addr

    def _read_udp(self, conn: Conn, _fd: object = None) -> None:
        # Up to _UDP_READS_PER_READY datagrams per readiness: under load one
        # loop cycle (epoll_wait, dispatch) serves several, and the bound keeps
        # the other sockets and the timers going.
        #
        # Datagrams sent meanwhile (the responses) are held and sent together
        # after the batch. A sendto() that wakes a peer waiting in epoll
        # costs the sender that wake-up, about as much as the SIP work of a
        # request: sent between two requests' work, every response wakes the
        # peer anew; sent back to back, one wake-up serves several.
        if self._held is not None:
            self._read_udp_batch(conn)  # re-entered from a callback: one batch
            return
        held: list[tuple[bytes, Addr, Callback]] = []
        self._held = held
        try:
            self._read_udp_batch(conn)
        finally:
            self._held = None
            if held:
                self._send_held(held)

    def _send_datagram(self, data: bytes, target: Addr, callback: Callback) -> None:
        master = self._master
        try:
            if master.peer is not None:
                master.sock.send(data)
            else:
                master.sock.sendto(data, target.sockaddr())
        except OSError as exc:
            log.info("send to %s failed: %s", target, exc)
            invoke_callback(callback, exc.errno or errno.EIO)

    def _send_held(self, held: list[tuple[bytes, Addr, Callback]]) -> None:
        """Send the held datagrams in order (and forget them: sent once)."""
        items = held[:]
        held.clear()
        for data, target, callback in items:
            self._send_datagram(data, target, callback)

    def _read_udp_batch(self, conn: Conn) -> None:
        sock = conn.sock
        for i in range(_UDP_READS_PER_READY):
            try:
                n, sa = sock.recvfrom_into(self._rview, _UDP_READSIZE)
            except BlockingIOError:
                if not i:
                    # Reported readable without data: an ICMP error queued on a
                    # socket with IP_RECVERR keeps epoll reporting EPOLLERR
                    # until it is read.
                    _drain_errqueue(sock)
                return
            except OSError as exc:
                # e.g. ECONNREFUSED: an ICMP error for an earlier datagram. It
                # concerns that datagram, not this socket: keep going.
                log.debug("udp recv on %s: %s", self._local_ip, exc)
                _drain_errqueue(sock)
                return
            if n < _MIN_DATAGRAM:
                continue  # keep-alive (RFC 5626 4.4.2 STUN is longer; CRLF pings are not)
            dst = self._dst
            if dst is not None and (sa[0] != dst.addr or sa[1] != dst.port):
                log.info("drop packet from %s:%s, only accepting %s", sa[0], sa[1], dst)
                continue
            data = self._rview[:n].tobytes()
            try:
                pkt = Packet.new_from_string(data)
            except PacketError as exc:
                log.info("drop invalid packet from %s:%s: %s", sa[0], sa[1], exc)
                continue
            self._deliver(pkt, self._peer_addr(sa))
            if conn.closed or self._loop is None:
                return  # the callback closed or detached the pool

    def _accept(self, master: Conn, _fd: object = None) -> None:
        lsock = master.sock
        family = self._family
        sproto = lsock.proto
        proto = self.proto
        plain = self._tls is None
        accepted = False
        # CPython's C method behind socket.accept() (not in typeshed, not
        # promised to other interpreters: looked up, not assumed)
        raw_accept: Callable[[], tuple[int, Any]] | None = getattr(lsock, "_accept", None)
        try:
            for _ in range(_ACCEPTS_PER_READY):
                try:
                    # socket.accept() without what a pool does not need per
                    # connection: the enum conversions, the default-timeout check
                    # (_accept is the C method socket.accept() itself calls)
                    if raw_accept is not None:
                        fd, sa = raw_accept()
                    else:  # an interpreter without it: the public way
                        fd, sa = _accept_detached(lsock)
                except BlockingIOError:
                    self._accept_backoff = 0.0  # backlog drained: resources suffice
                    return
                except OSError as exc:
                    if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                        self._pause_accept(master, exc)
                        return
                    # ECONNABORTED, EPERM, ...: that connection, the listener is fine.
                    log.warning("accept on %s failed: %s", self._local_ip, exc)
                    return
                try:
                    sock = socket.socket(family, socket.SOCK_STREAM, sproto, fd)
                except OSError as exc:  # not expected: the fd is a fresh socket
                    os.close(fd)
                    log.warning("accept on %s failed: %s", self._local_ip, exc)
                    continue
                dst = self._dst
                if dst is not None and (sa[0] != dst.addr or sa[1] != dst.port):
                    log.info("refuse connection from %s:%s, only accepting %s", sa[0], sa[1], dst)
                    sock.close()
                    continue
                if not (plain and _DONTWAIT):
                    sock.setblocking(False)  # else the flags of every read and write do
                inherited = self._nodelay_inherited
                if inherited is None:
                    # asked once per pool: does the system copy TCP_NODELAY from
                    # the listening socket (Linux does)?
                    inherited = self._nodelay_inherited = bool(
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    )
                if not inherited:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = Addr(sa[0], sa[1], family, None, proto)
                accepted = True
                conn = self._new_conn(sock, peer, accepted=True)
                self._add_conn(conn, arm_expire=False)  # armed once for the batch, below
                self._established(conn)  # TLS: the handshake starts here
        finally:
            if accepted:
                self._arm_expire_timer()

    def _pause_accept(self, master: Conn, exc: OSError) -> None:
        """Out of fds: stop watching the listener for a while (doubling up to 1 s).

        The pending connection stays in the backlog, so the listener stays
        readable: watched level-triggered it would fail again in every cycle
        and spin the CPU. Connections already accepted keep being served.
        """
        loop = self._loop
        if loop is None:
            return
        again = self._accept_backoff > 0
        delay = min(max(2 * self._accept_backoff, _ACCEPT_BACKOFF_MIN), _ACCEPT_BACKOFF_MAX)
        self._accept_backoff = delay
        log.log(
            logging.DEBUG if again else logging.WARNING,
            "accept on %s failed: %s; not accepting for %.2fs",
            self._local_ip,
            exc,
            delay,
        )
        loop.del_fd(master.fd, EV_READ)
        if self._accept_timer is not None:
            self._accept_timer.cancel()
        self._accept_timer = loop.add_timer(
            delay, partial(self._resume_accept, master), name="socketpool-accept-backoff"
        )

    def _resume_accept(self, master: Conn, _timer: object = None) -> None:
        self._accept_timer = None
        if not self._closed and not master.closed:
            self._watch_read(master)

    def _read_stream(self, conn: Conn, _fd: object = None) -> None:
        view = self._rview
        size = self._cfg.tcp_readsize
        rbuf = conn.rbuf
        while True:
            try:
                n = conn.recv_into(view, size)
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop(conn, exc.errno or errno.EIO, "read failed: %s", exc)
                return
            if not n:
                self._drop(conn, errno.ECONNRESET, "closed by peer", level=logging.DEBUG)
                return
            rbuf += view[:n]
            if len(rbuf) >= conn.need:
                # Responses sent from the callbacks are queued and written
                # together after the batch: one send() for a burst of requests.
                self._corked = conn
                try:
                    self._extract(conn)
                except BaseException:
                    self._corked = None
                    if conn.wbuf and not conn.closed and not conn.inside_connect:
                        self._watch_write(conn, True)  # written in the next cycle
                    raise
                self._corked = None
                if conn.closed:
                    return
                if conn.wbuf and not conn.watch_write and not conn.inside_connect:
                    self._flush(conn)
                    if conn.closed:
                        return
            if not conn.pending():
                return

    def _extract(self, conn: Conn) -> None:
        """Deliver every complete message in ``conn.rbuf``."""
        buf = conn.rbuf
        cfg = self._cfg
        max_header = cfg.max_sip_header
        max_body = cfg.max_sip_body
        pos = 0
        scan = conn.scan
        rest: NeedMore | None = None
        loop = self._loop
        try:
            while True:
                try:
                    got = next_message(buf, pos, scan, max_header, max_body)
                except FramingError as exc:
                    self._drop(conn, errno.ECONNABORTED, "%s", exc)
                    return
                except PacketError as exc:
                    self._drop(conn, errno.ECONNABORTED, "invalid packet: %s", exc)
                    return
                if isinstance(got, NeedMore):
                    rest = got
                    return
                pkt, pos = got
                scan = pos
                if pkt.is_request():
                    self._remember_tid(conn, pkt.tid())
                if loop is not None:
                    conn.didit = loop.looptime
                self._deliver(pkt, conn.peer)
                if conn.closed or pos == len(buf):
                    # closed, or nothing left to frame (what frame() would
                    # report as NeedMore(pos, pos, 0), handled as such below)
                    return
        except BaseException:
            # The callback raised: it propagates out of loop(). Messages behind
            # this one were read from the socket already, so no readiness will
            # report them: pick them up in the next cycle.
            if loop is not None and not conn.closed and len(buf) > pos:
                loop.add_timer(0, partial(self._resume_extract, conn), name="socketpool-resume")
            raise
        finally:
            # also when the callback raised: never deliver a message twice
            if not conn.closed:
                if rest is not None:
                    del buf[: rest.start]
                    conn.scan = rest.scan - rest.start
                    conn.need = rest.need - rest.start if rest.need else 0
                else:
                    del buf[:pos]
                    conn.scan = conn.need = 0

    def _resume_extract(self, conn: Conn, _timer: object = None) -> None:
        if not conn.closed and conn.rbuf and len(conn.rbuf) >= conn.need:
            self._extract(conn)

    def _remember_tid(self, conn: Conn, tid: str) -> None:
        # Trimmed by hand rather than deque(maxlen=...): a forgotten tid must
        # leave the pool's map too (Perl does the same), and a changed
        # MAX_TIDLIST applies to existing connections.
        tids = conn.tids
        limit = self._cfg.max_tidlist
        pool_tids = self._tids
        while len(tids) >= limit:
            old = tids.popleft()
            if pool_tids.get(old) is conn:
                del pool_tids[old]
        tids.append(tid)
        pool_tids[tid] = conn

    # ---- sending

    def _connect(self, dst: Addr, callback: Callback) -> Conn | None:
        """Start a non-blocking connect to ``dst``; None (callback told) on failure."""
        try:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: out of resources
            log.warning("cannot connect to %s: %s", dst, exc)
            invoke_callback(callback, exc.errno or errno.EIO)
            return None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._local_ip, 0))
            err = sock.connect_ex(dst.sockaddr())
        except OSError as exc:
            sock.close()
            log.info("connect to %s failed: %s", dst, exc)
            invoke_callback(callback, exc.errno or errno.EIO)
            return None
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            sock.close()
            log.info("connect to %s failed: %s", dst, errno.errorcode.get(err, err))
            invoke_callback(callback, err)
            return None
        peer = Addr(dst.addr, dst.port, dst.family, dst.host, self.proto)
        conn = self._new_conn(sock, peer, accepted=False)
        self._add_conn(conn)
        if err == 0:
            self._established(conn)
        else:
            self._arm_connect_timer(conn)
            self._watch_write(conn, True)
        return conn

    def _arm_connect_timer(self, conn: Conn) -> None:
        if self._loop is not None:
            conn.timer = self._loop.add_timer(
                self._cfg.connect_timeout,
                partial(self._connect_timeout, conn),
                name="socketpool-connect-timeout",
            )

    def _connect_timeout(self, conn: Conn, _timer: object = None) -> None:
        conn.timer = None
        if conn.inside_connect:
            what = "TLS handshake" if conn.tls is not None else "connect"
            self._drop(conn, errno.ETIMEDOUT, "%s timed out", what)

    def _connected(self, conn: Conn, _fd: object = None) -> None:
        """EV_WRITE on a connecting socket: the connect finished, one way or the other."""
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop(conn, err, "connect failed: %s", errno.errorcode.get(err, err))
            return
        self._watch_write(conn, False)
        self._established(conn)

    def _established(self, conn: Conn) -> None:
        """The transport is up: start reading and write what is queued.

        The TLS transport starts its handshake here instead and calls back
        when it is done; the connect timer keeps running until then.
        """
        if self._tls is not None and conn.tls is None:
            self._tls_start(cast("TLSConn", conn))
            return
        conn.inside_connect = False
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if self._loop is not None:
            conn.didit = self._loop.looptime
        self._watch_read(conn)
        if conn.wbuf:
            self._flush(conn)
        if conn.tls is not None and not conn.closed and conn.pending():
            self._read_stream(conn)  # records that came with the handshake

    # ---- TLS (the transport itself is netsip.tlsconn.TLSConn)

    def _tls_start(self, conn: TLSConn) -> None:
        """TCP is up: put TLS on it and start the handshake (Perl: _tls_accept/_tls_connect).

        The handshake has to finish before the connect timer fires
        (``CONNECT_TIMEOUT``); accepted connections get that timer here.
        """
        assert self._tls is not None
        if conn.timer is None:
            self._arm_connect_timer(conn)
        try:
            conn.start(self._tls)
        except OSError as exc:
            self._drop(conn, exc.errno or errno.EPROTO, "TLS setup failed: %s", exc)
            return
        self._tls_handshake(conn)

    def _tls_handshake(self, conn: TLSConn, _fd: object = None) -> None:
        """One handshake step; watch the direction it waits for, or go on as established."""
        try:
            want = conn.handshake()
        except OSError as exc:
            self._drop(conn, exc.errno or errno.EPROTO, "TLS handshake failed: %s", exc)
            return
        if want is None:
            self._watch_write(conn, False)
            self._established(conn)
        elif want == EV_READ:
            self._watch_write(conn, False)
            self._watch_read(conn)
        else:
            # not readable-and-retry while the handshake waits to write: that would spin
            if self._loop is not None:
                self._loop.del_fd(conn.fd, EV_READ)
            self._watch_write(conn, True)

    def _tls_readable(self, conn: TLSConn, _fd: object = None) -> None:
        """EV_READ on an established TLS connection (a waiting write goes first)."""
        if conn.write_wants_read:
            conn.write_wants_read = False
            self._flush(conn)
            if conn.closed:
                return
        conn.read_wants_write = False
        self._read_stream(conn)
        if conn.read_wants_write and not conn.closed:
            self._watch_write(conn, True)

    def _tls_writable(self, conn: TLSConn, _fd: object = None) -> None:
        """EV_WRITE on an established TLS connection (a waiting read goes first)."""
        if conn.read_wants_write:
            conn.read_wants_write = False
            self._read_stream(conn)
            if conn.closed:
                return
        self._flush(conn)  # also decides whether EV_WRITE stays watched

    def _queue(self, conn: Conn, data: bytes, callback: Callback) -> None:
        wbuf = conn.wbuf
        if conn is self._corked and len(wbuf) + len(data) < _CORK_MAX <= self._cfg.max_wbuf:
            # A response to a request of the batch being read (the common case
            # under load): appended, written with the others after the batch.
            wbuf += data
            conn.queued += len(data)
            if callback is not None:
                conn.wcallbacks.append((conn.queued, callback))
            return
        limit = self._cfg.max_wbuf
        if conn is self._corked and len(conn.wbuf) + len(data) > limit and conn.wbuf:
            # Coalescing must not make MAX_WBUF bite: write the batch so far first.
            self._flush(conn)
            if conn.closed:  # that write failed: the batch failed with it, so does this
                invoke_callback(callback, errno.EPIPE)
                return
        if len(conn.wbuf) + len(data) > limit:
            # The loop writes whenever the socket takes data, so a full buffer
            # means the peer stopped reading: give up on it rather than buffer
            # without bound. Everything queued fails, then this packet.
            self._drop(
                conn,
                errno.ENOBUFS,
                "write buffer full (%d + %d bytes > MAX_WBUF %d)",
                len(conn.wbuf),
                len(data),
                limit,
                level=logging.WARNING,
            )
            invoke_callback(callback, errno.ENOBUFS)
            return
        conn.wbuf += data
        conn.queued += len(data)
        if callback is not None:
            conn.wcallbacks.append((conn.queued, callback))
        if (
            not conn.inside_connect
            and not conn.watch_write
            and (conn is not self._corked or len(conn.wbuf) >= _CORK_MAX)
        ):
            self._flush(conn)

    def _writable(self, conn: Conn, _fd: object = None) -> None:
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        """Write as much of ``conn.wbuf`` as the socket takes now."""
        wbuf = conn.wbuf
        before = conn.written
        try:
            while wbuf:
                n = conn.send(wbuf)
                del wbuf[:n]  # O(1): bytearray just moves its start
                conn.written += n
        except BlockingIOError:
            pass
        except OSError as exc:
            self._drop(conn, exc.errno or errno.EIO, "write failed: %s", exc)
            return
        loop = self._loop
        if loop is not None:
            if conn.written != before:
                # only progress counts: a peer that stops reading expires
                conn.didit = loop.looptime
            pending = bool(wbuf)
            if pending != conn.watch_write or conn.tls is not None:
                self._watch_write(conn, pending)
        if conn.wcallbacks:
            self._fire_written(conn)

    def _fire_written(self, conn: Conn, _timer: object = None) -> None:
        """Invoke the callbacks (with 0) of the packets written completely, in order."""
        cbs = conn.wcallbacks
        try:
            while cbs and cbs[0][0] <= conn.written and not conn.closed:
                invoke_callback(cbs.popleft()[1], 0)
        except BaseException:
            # A callback raised; it propagates out of loop(). The callbacks of
            # the other written packets still get their 0, in the next cycle.
            loop = self._loop
            if loop is not None and cbs and cbs[0][0] <= conn.written and not conn.closed:
                loop.add_timer(0, partial(self._fire_written, conn), name="socketpool-callbacks")
            raise

    def _fail_callbacks(
        self, cbs: deque[tuple[int, Callback]], err: int, _timer: object = None
    ) -> None:
        """Invoke each pending callback with ``err`` exactly once, even if one re-enters."""
        if self._closed:
            return  # close() does not invoke pending callbacks
        try:
            while cbs:
                invoke_callback(cbs.popleft()[1], err)
        except BaseException:
            # as in _fire_written: the rest get their errno in the next cycle
            loop = self._loop
            if loop is not None and cbs:
                retry = partial(self._fail_callbacks, cbs, err)
                loop.add_timer(0, retry, name="socketpool-callbacks")
            raise

    # ---- expiry

    def _arm_expire_timer(self) -> None:
        loop = self._loop
        if loop is None or self._expire_timer is not None or not self._conns:
            return
        # Perl checks every int(MIN_EXPIRE/2)+1 seconds.
        interval = int(self._cfg.min_expire / 2) + 1
        self._expire_timer = loop.add_timer(interval, self._expire, interval, "socketpool-timeout")

    def _expire(self, _timer: object = None) -> None:
        """Close connections idle for longer than the (load dependent) expiry time."""
        conns = self._conns
        loop = self._loop
        if conns and loop is not None:
            cfg = self._cfg
            # The more connections, the sooner they expire (n counts the master
            # in Perl's MIN + (MAX-MIN)/(n-1), so this divides by the connections).
            expire = cfg.min_expire + (cfg.max_expire - cfg.min_expire) / len(conns)
            now = loop.looptime
            idle = [c for c in conns.values() if not c.inside_connect and now - c.didit > expire]
            for conn in idle:
                self._drop(conn, errno.ETIMEDOUT, "idle for %.1fs", expire, level=logging.DEBUG)
        if not conns and self._expire_timer is not None:
            self._expire_timer.cancel()
            self._expire_timer = None
