"""One socket of a :class:`netsip.socketpool.SocketPool`: its state, transport and readiness.

Ports the per-socket record of Perl's ``Net::SIP::SocketPool`` (the hash it
keeps for every socket: the socket, its peer, read and write buffers, the
time of the last activity, the request tids it carried).

How it works:

* :class:`Conn` is one socket of a pool: its master (a bound UDP socket, a
  listening or connected TCP socket) or a TCP connection. It holds the read
  and write buffers, the callbacks waiting for queued data, the last
  activity (``didit``) and the request tids the connection carried, so that
  responses go back over the connection their request came in on (RFC 3261
  section 18.2.2);
* it is also the transport: :meth:`Conn.recv_into`, :meth:`Conn.send`,
  :meth:`Conn.pending` and :meth:`Conn.close` work on the plain socket.
  :class:`netsip._tls.TLSConn` builds TLS on this class and overrides them;
* readiness: the pool calls the same methods on any connection.
  :meth:`Conn.read_handler` and :meth:`Conn.write_handler` give the callback
  the loop runs when the socket is readable or writable,
  :meth:`Conn.write_interest` says whether to watch ``EV_WRITE`` when the
  pool has data to write, and :meth:`Conn.establish` is called once TCP is
  up. A plain connection hands out the stream transport's own functions
  (the reader, the writer, the connect check) and is established with TCP;
  TLS hands out handlers of its own that run the handshake and switch the
  watched direction, and call the transport back through :class:`StreamIO`;
* :class:`ConnFactory`: the stream transport makes its connections through a
  factory (:func:`new_conn` here, :func:`netsip._tls.conn_factory` for TLS),
  so it never needs to know which kind it holds.

Differences from Net::SIP: a typed record instead of a hash. In Perl,
``start_SSL`` turns the socket itself into an ``IO::Socket::SSL`` (so
``sysread``/``syswrite`` go through TLS) and the pool branches on
``$self->{tls}`` for the read size and the handshake; here the socket calls,
the readiness callbacks and the set-up go through the record, and TLS is a
subclass that overrides them.

Performance plan: one slots dataclass per socket (the memory of an idle
connection, attribute access on the hot paths). Reads and writes on streams
pass ``MSG_DONTWAIT``, so an accepted socket needs no ``O_NONBLOCK`` (one
syscall less per connection; where the flag does not exist the pool makes
sockets non-blocking), and ``MSG_NOSIGNAL`` (``EPIPE`` instead of
``SIGPIPE``). The readiness callbacks are bound (:func:`functools.partial`)
when a direction starts being watched, not per event, and a plain
connection's callbacks are the transport's functions themselves: the
connection types cost no call per event.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Final, Protocol

from netsip.eventloop import Callback, TimerLike
from netsip.packet import Packet
from netsip.util import Addr

__all__ = ["DONTWAIT", "Conn", "ConnFactory", "Deliver", "Handler", "StreamIO", "new_conn"]

#: ``MSG_DONTWAIT`` where the system has it, else 0 (sockets are made non-blocking then).
DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)
_RECV_FLAGS: Final = DONTWAIT
_SEND_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0) | DONTWAIT  # EPIPE, not SIGPIPE

#: What the loop calls when a watched socket is ready (it passes the fd).
Handler = Callable[[object], None]
#: The pool's receive callback as the transports call it: ``(packet, from_)``.
Deliver = Callable[[Packet, Addr | None], object]


class StreamIO(Protocol):
    """The stream transport as a connection's readiness handlers see it."""

    def read(self, conn: Conn, _fd: object = None) -> None:
        """Read what ``conn`` has and deliver every complete message."""

    def writable(self, conn: Conn, _fd: object = None) -> None:
        """``conn`` is writable: write what is queued."""

    def connected(self, conn: Conn, _fd: object = None) -> None:
        """``conn`` is writable while connecting: the connect finished."""

    def flush(self, conn: Conn) -> None:
        """Write as much of ``conn.wbuf`` as the socket takes now."""

    def established(self, conn: Conn) -> None:
        """``conn`` is ready for SIP: read it, write what waits."""

    def watch_read(self, conn: Conn) -> None:
        """Watch ``conn`` for ``EV_READ`` with its :meth:`Conn.read_handler`."""

    def unwatch_read(self, conn: Conn) -> None:
        """Stop watching ``conn`` for ``EV_READ``."""

    def watch_write(self, conn: Conn, on: bool) -> None:
        """Watch ``conn`` for ``EV_WRITE`` (as :meth:`Conn.write_interest` says) or stop."""

    def arm_connect_timer(self, conn: Conn) -> None:
        """Give ``conn`` ``CONNECT_TIMEOUT`` seconds to become established."""

    def drop(
        self, conn: Conn, err: int, why: str, *args: object, level: int = logging.INFO
    ) -> None:
        """Close ``conn`` and fail its pending callbacks with ``err``."""


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
        keep_until: loop time before which idle expiry leaves the connection
            open (a registered flow, :meth:`SocketPool.keep_connection`).
        outgoing: opened by the pool (or a connected master): it sends the
            keep-alive pings (``KEEPALIVE_INTERVAL``, RFC 5626 4.4.1).
    """

    #: A read may wait for EV_WRITE and a write for EV_READ (TLS): the pool
    #: then asks :meth:`write_interest` after every write, not only when the
    #: write buffer empties or fills.
    cross_wants: ClassVar[bool] = False
    #: Reads and writes pass ``MSG_DONTWAIT``: the socket may stay in blocking mode.
    dontwait: ClassVar[bool] = True

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
    keep_until: float = 0.0
    outgoing: bool = False

    # ---- the transport (TLSConn overrides these four)

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

    # ---- readiness and set-up (TLSConn overrides these)

    def read_handler(self, io: StreamIO) -> Handler:
        """The callback for ``EV_READ``: the transport's reader."""
        return partial(io.read, self)

    def write_handler(self, io: StreamIO) -> Handler:
        """The callback for ``EV_WRITE``: the connect check while connecting, else the writer."""
        return partial(io.connected if self.inside_connect else io.writable, self)

    def write_interest(self, want: bool) -> bool:
        """Whether to watch ``EV_WRITE`` when the pool does (not) ``want`` to write."""
        return want

    def establish(self, io: StreamIO) -> bool:
        """TCP is up: True when the connection is ready for SIP now.

        A connection that needs more first (TLS: the handshake) starts it,
        returns False and calls ``io.established`` once it is done.
        """
        return True

    def setup_phase(self) -> str:
        """What the connection waits for while ``inside_connect`` (for the log)."""
        return "connect"


class ConnFactory(Protocol):
    """Makes the connections of a stream pool (plain: :func:`new_conn`)."""

    def __call__(
        self,
        sock: socket.socket,
        peer: Addr | None,
        *,
        master: bool = False,
        accepted: bool = False,
    ) -> Conn: ...


def new_conn(
    sock: socket.socket, peer: Addr | None, *, master: bool = False, accepted: bool = False
) -> Conn:
    """A plain connection: one the pool opens is connecting until the connect completes."""
    return Conn(
        sock, sock.fileno(), peer=peer, master=master, inside_connect=not (master or accepted)
    )
