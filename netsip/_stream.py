"""TCP and TLS for :class:`netsip.socketpool.SocketPool`: connect, read and frame, corked writes.

Ports the stream half of Perl's ``Net::SIP::SocketPool``:
``_handle_read_tcp_co`` (read a connection, cut out and deliver every
complete message), ``_tcp_connect`` (a non-blocking connect for ``sendto``)
and ``_tcp_send`` (queue and write what the socket takes).

How it works:

* :class:`StreamTransport` holds the connections (a :class:`ConnTable
  <netsip._conntable.ConnTable>`), the listening socket (an
  :class:`~netsip._accept.Acceptor`) or the connected master, and watches
  each connection through the readiness callbacks the connection hands out
  (:meth:`netsip._conn.Conn.read_handler`, ``write_handler``); TLS
  connections run their handshake themselves and come back through
  :meth:`StreamTransport.established`;
* reading: each readiness reads ``TCP_READSIZE`` bytes (TLS: one record,
  then what OpenSSL has buffered) into the connection's buffer, and
  :func:`netsip.framing.next_message` cuts out and parses every complete
  message (it is the one owner of stream framing, with the limits
  ``MAX_SIP_HEADER`` and ``MAX_SIP_BODY``). A framing or parse error closes
  only that connection (``ECONNABORTED`` for its callbacks);
* sending: :meth:`StreamTransport.send` uses, in this order, a connected
  master, the connection the request of a response came in on, an existing
  connection to the destination, or a new one from the master's address.
  The data is appended to the connection's write buffer and written as the
  socket takes it; the rest waits for ``EV_WRITE``. A callback gets 0 once
  its bytes are written, an errno when the connection fails. At most
  ``MAX_WBUF`` bytes wait per connection: a peer that does not read gets its
  connection closed (``ENOBUFS``);
* corking: responses sent from the receive callback while a read is being
  delivered are appended to the write buffer and written together after the
  batch.

Keep-alives: leading CRLFs before a message are skipped (RFC 3261 7.5);
each double CRLF ("ping", RFC 5626 4.4.1) is answered with one CRLF
("pong") on the same connection and counts as activity for the idle
expiry. A ping split across two reads is taken for two single CRLFs and not
answered (clients send the four bytes in one write). With
``KEEPALIVE_INTERVAL`` set, the pool sends a ping on every connection it
opened (the client's side of RFC 5626 4.4.1) at that interval; a pong needs
no handling (it is a leading CRLF).

Differences from Net::SIP: keep-alive pings and pongs (Net::SIP's TODO), corked
writes, ``MAX_WBUF`` and the per-connection connect timer are this port's;
an exception raised by a receive or ``sendto`` callback propagates out of
the loop, and what it interrupted (the messages already read behind it, the
other callbacks due) resumes on a zero-delay timer instead of being lost or
delivered twice.

Performance plan. Operations per message: a read (``recv_into``), the
framing and parse, the callback, the response's append and write. Goal: one
``recv`` and one ``send`` per burst of requests, no allocation beyond the
message and its buffers. Plan:

* one receive buffer per pool, reused by every read; the bytes are copied
  once, into the connection's buffer, and the framed message is cut out of
  it by index (``del buf[:pos]`` moves the bytearray's start, it does not
  copy);
* the framing state (``scan``, ``need``) survives between reads, so a
  message arriving in pieces is not rescanned, and the framer is not called
  before ``need`` bytes are there;
* corking: while a read batch is delivered, the connection's writes are
  only appended (up to 64 KiB); one ``send()`` after the batch serves a
  burst of requests;
* the loop calls the transport's functions directly (``partial`` bound when
  watching starts); ``sendto`` reaches :meth:`StreamTransport.send`, which
  picks the connection and queues in one call; the receive callback is a
  plain callable.
"""

from __future__ import annotations

import errno
import logging
import socket
from functools import partial
from typing import Final

from netsip._accept import Acceptor
from netsip._conn import Conn, ConnFactory, Deliver
from netsip._conntable import ConnTable
from netsip._log import get_logger
from netsip._settings import Settings
from netsip.eventloop import EV_READ, EV_WRITE, Callback, EventLoopLike, TimerLike
from netsip.framing import FramingError, NeedMore, PacketError, next_message
from netsip.packet import Packet, refused_request, warning
from netsip.util import Addr, Proto, as_callable, invoke_callback

__all__ = ["StreamTransport"]

# The public module's logger: logging is configured by the name users know.
log = get_logger("netsip.socketpool")

_CORK_MAX: Final = 2**16  # bytes coalesced at most before a write (see read)
#: RFC 5626 4.4.1: the keep-alive a client sends on a stream, and the server's answer
_PING: Final = b"\r\n\r\n"
_PONG: Final = b"\r\n"


class StreamTransport(ConnTable):
    """The sockets of a TCP or TLS pool: a listener or a connected master, and connections.

    Args:
        proto: ``"tcp"`` or ``"tls"``.
        master: the master socket (listening, or connected to ``peer``),
            non-blocking already.
        peer: the peer of a connected master, None for a listener.
        dst: the pool's ``dst`` restriction (connections from elsewhere are refused).
        local_ip: the master's address; connections the pool opens are bound to it.
        cfg: the pool's settings.
        new_conn: makes the connection records (plain or TLS).
    """

    def __init__(
        self,
        proto: Proto,
        master: socket.socket,
        *,
        peer: Addr | None,
        dst: Addr | None,
        local_ip: str,
        cfg: Settings,
        new_conn: ConnFactory,
    ) -> None:
        conn = new_conn(master, peer, master=True)
        conn.outgoing = peer is not None
        super().__init__(cfg, conn)
        self.proto: Proto = proto
        self.family = master.family
        self.local_ip = local_ip
        self.new_conn = new_conn
        self.acceptor = Acceptor(conn, proto, local_ip, dst) if peer is None else None
        self.deliver: Deliver = as_callable(None)
        self.corked: Conn | None = None  # its writes wait for the end of a read batch
        #: bytes in the write buffers of all connections (MAX_WBUF_TOTAL)
        self.wbuf_total = 0
        self.keepalive_timer: TimerLike | None = None
        self._rbuf = bytearray(cfg.tcp_readsize)
        self._rview = memoryview(self._rbuf)

    def set_settings(self, cfg: Settings) -> None:
        """Use ``cfg`` from now on (existing connections included)."""
        self.cfg = cfg
        if cfg.tcp_readsize > len(self._rbuf):
            self._rbuf = bytearray(cfg.tcp_readsize)
            self._rview = memoryview(self._rbuf)

    def attach(self, loop: EventLoopLike | None, deliver: Deliver) -> None:
        """Leave the current loop, then watch every socket in ``loop`` (None: detach)."""
        old = self.loop
        if old is not None:
            for conn in self.all():
                old.del_fd(conn.fd)
                conn.watch_write = False
                if conn.timer is not None:
                    conn.timer.cancel()
                    conn.timer = None
            if self.expire_timer is not None:
                self.expire_timer.cancel()
                self.expire_timer = None
            if self.keepalive_timer is not None:
                self.keepalive_timer.cancel()
                self.keepalive_timer = None
        if self.acceptor is not None:
            self.acceptor.attach(loop, self._accept if loop is not None else None)
        self.loop = loop
        self.deliver = deliver
        if loop is None:
            return
        now = loop.looptime
        for conn in self.all():
            if not conn.master:
                conn.didit = now  # another loop may have another clock
            if conn.inside_connect:
                # the connect gets the full timeout again after a re-attach
                self.arm_connect_timer(conn)
                self.watch_write(conn, True)
            else:
                self.watch_read(conn)
                if conn.wbuf:
                    self.watch_write(conn, True)
        self.arm_expire_timer()
        self.arm_keepalive_timer()

    def close(self) -> None:
        """Detach and close every socket; pending callbacks are not invoked."""
        self.attach(None, self.deliver)
        self.closed = True
        for conn in self.all():
            conn.closed = True
            conn.wcallbacks.clear()
            conn.close()
        if self.acceptor is not None:
            self.acceptor.close()
        self.conns.clear()
        self.tids.clear()
        self.by_peer.clear()
        self.master.closed = True
        self._rview.release()

    # ---- watching (the callbacks come from the connection)

    def watch_read(self, conn: Conn) -> None:
        """Watch ``conn`` for ``EV_READ`` with its read handler."""
        loop = self.loop
        if loop is not None:
            loop.add_fd(conn.fd, EV_READ, conn.read_handler(self), "socketpool")

    def unwatch_read(self, conn: Conn) -> None:
        """Stop watching ``conn`` for ``EV_READ``."""
        if self.loop is not None:
            self.loop.del_fd(conn.fd, EV_READ)

    def watch_write(self, conn: Conn, on: bool) -> None:
        """Watch ``conn`` for ``EV_WRITE`` (as far as the connection wants) or stop."""
        loop = self.loop
        if loop is None:
            return
        on = conn.write_interest(on)
        if on == conn.watch_write:
            return
        conn.watch_write = on
        if on:
            loop.add_fd(conn.fd, EV_WRITE, conn.write_handler(self), "socketpool-write")
        else:
            loop.del_fd(conn.fd, EV_WRITE)

    # ---- connections coming and going

    def _accept(self, _fd: object = None) -> None:
        """EV_READ on the listener."""
        assert self.acceptor is not None
        try:
            self.acceptor.accept(self._adopt)
        finally:
            self.arm_expire_timer()  # once for the batch

    def _adopt(self, sock: socket.socket, peer: Addr) -> None:
        """An accepted connection (TLS: its handshake starts here)."""
        conn = self.new_conn(sock, peer, accepted=True)
        self.add(conn, arm_expire=False)
        self.established(conn)

    def connect(self, dst: Addr, callback: Callback) -> Conn | None:
        """Start a non-blocking connect to ``dst``; None (callback told) on failure."""
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: out of resources
            log.warning("cannot connect to %s: %s", dst, exc)
            invoke_callback(callback, exc.errno or errno.EIO)
            return None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.local_ip, 0))
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
        conn = self.new_conn(sock, Addr(dst.addr, dst.port, dst.family, dst.host, self.proto))
        conn.outgoing = True
        self.add(conn)
        self.arm_keepalive_timer()
        if err == 0:
            self.established(conn)
        else:
            self.arm_connect_timer(conn)
            self.watch_write(conn, True)
        return conn

    def connected(self, conn: Conn, _fd: object = None) -> None:
        """EV_WRITE on a connecting socket: the connect finished, one way or the other."""
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.drop(conn, err, "connect failed: %s", errno.errorcode.get(err, err))
            return
        self.watch_write(conn, False)
        self.established(conn)

    def established(self, conn: Conn) -> None:
        """TCP is up: read, and write what is queued, once the connection is ready.

        A TLS connection first runs its handshake (the connect timer keeps
        running) and calls this again when it is done.
        """
        if not conn.establish(self):
            return
        conn.inside_connect = False
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if self.loop is not None:
            conn.didit = self.loop.looptime
        self.watch_read(conn)
        if conn.wbuf:
            self.flush(conn)
        if not conn.closed and conn.pending():
            self.read(conn)  # TLS records that came with the handshake

    # ---- receiving

    def read(self, conn: Conn, _fd: object = None) -> None:
        """Read what ``conn`` has and deliver every complete message (Perl: _handle_read_tcp_co)."""
        view = self._rview
        size = self.cfg.tcp_readsize
        rbuf = conn.rbuf
        while True:
            try:
                n = conn.recv_into(view, size)
            except BlockingIOError:
                return
            except OSError as exc:
                self.drop(conn, exc.errno or errno.EIO, "read failed: %s", exc)
                return
            if not n:
                self.drop(conn, errno.ECONNRESET, "closed by peer", level=logging.DEBUG)
                return
            rbuf += view[:n]
            if len(rbuf) >= conn.need:
                # Responses sent from the callbacks are queued and written
                # together after the batch: one send() for a burst of requests.
                self.corked = conn
                try:
                    self._extract(conn)
                except BaseException:
                    self.corked = None
                    if conn.wbuf and not conn.closed and not conn.inside_connect:
                        self.watch_write(conn, True)  # written in the next cycle
                    raise
                self.corked = None
                if conn.closed:
                    return
                if conn.wbuf and not conn.watch_write and not conn.inside_connect:
                    self.flush(conn)
                    if conn.closed:
                        return
            if not conn.pending():
                return

    def _extract(self, conn: Conn) -> None:
        """Deliver every complete message in ``conn.rbuf``."""
        buf = conn.rbuf
        cfg = self.cfg
        max_header = cfg.max_sip_header
        max_body = cfg.max_sip_body
        pos = 0
        scan = conn.scan
        rest: NeedMore | None = None
        loop = self.loop
        try:
            while True:
                if buf.startswith(_PING, pos):
                    # RFC 5626 4.4.1: a double CRLF between messages is a
                    # keep-alive "ping"; the server answers each with a CRLF "pong"
                    while buf.startswith(_PING, pos):
                        pos += len(_PING)
                        self._pong(conn)
                    scan = pos
                    if conn.closed:
                        return
                    if loop is not None:
                        conn.didit = loop.looptime
                try:
                    got = next_message(buf, pos, scan, max_header, max_body)
                except FramingError as exc:
                    self.drop(conn, errno.ECONNABORTED, "%s", exc)
                    return
                except PacketError as exc:
                    self._refuse(conn, bytes(buf[pos : pos + max_header]), exc)
                    self.drop(conn, errno.ECONNABORTED, "invalid packet: %s", exc)
                    return
                if isinstance(got, NeedMore):
                    rest = got
                    return
                pkt, pos = got
                scan = pos
                if pkt.is_request():
                    self.remember_tid(conn, pkt.tid())
                if loop is not None:
                    conn.didit = loop.looptime
                self.deliver(pkt, conn.peer)
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

    def _refuse(self, conn: Conn, head: bytes, exc: PacketError) -> None:
        """Best effort before the connection is dropped (its framing is lost):
        400 for a request the parser refused (RFC 3261 21.4.1), written at
        once when nothing else is queued; responses and ACKs get none."""
        end = head.find(b"\r\n\r\n")
        if end < 0 or conn.wbuf or head[:1] == b"S":
            return
        request = refused_request(head[: end + 4])
        if request is None:
            return
        try:
            data = request.create_response(400, "Bad Request", {"warning": warning(exc)})
            conn.send(bytearray(data.as_bytes()))
        except (PacketError, OSError) as err:
            log.info("cannot answer the refused request: %s", err)

    def _pong(self, conn: Conn) -> None:
        """Queue an RFC 5626 4.4.1 "pong" on ``conn`` (written after the read batch)."""
        conn.wbuf += _PONG
        conn.queued += len(_PONG)
        self.wbuf_total += len(_PONG)
        if conn is not self.corked and not conn.watch_write and not conn.inside_connect:
            self.flush(conn)

    # ---- keep-alive pings (RFC 5626 4.4.1)

    def arm_keepalive_timer(self) -> None:
        """Start the keep-alive pings if ``KEEPALIVE_INTERVAL`` asks for them and they are off."""
        loop = self.loop
        interval = self.cfg.keepalive_interval
        if loop is None or interval <= 0 or self.keepalive_timer is not None:
            return
        self.keepalive_timer = loop.add_timer(
            interval, self._keepalive, interval, "socketpool-keepalive"
        )

    def _keepalive(self, timer: object = None) -> None:
        """Send a ping on every established connection the pool opened."""
        sent = False
        if self.cfg.keepalive_interval > 0:
            for conn in self.all():
                if conn.outgoing and not conn.inside_connect and not conn.closed:
                    self.keepalive(conn)
                    sent = True
        if not sent and self.keepalive_timer is not None:
            # no client connection left (or the setting went to 0): off until the next connect
            self.keepalive_timer.cancel()
            self.keepalive_timer = None

    def keepalive(self, conn: Conn) -> None:
        """Queue one keep-alive ping on ``conn``: a double CRLF (RFC 5626 4.4.1)."""
        self.queue(conn, _PING, None)

    def _resume_extract(self, conn: Conn, _timer: object = None) -> None:
        if not conn.closed and conn.rbuf and len(conn.rbuf) >= conn.need:
            self._extract(conn)

    # ---- sending

    def send(self, packet: Packet, data: bytes, target: Addr, callback: Callback) -> None:
        """Queue ``data`` (``packet`` as bytes) for ``target`` and write what the socket takes.

        The connection: a connected master, else the one the request of a
        response came in on, else one to ``target``, else a new one (Perl:
        ``_tcp_connect``); a failed connect tells ``callback`` at once.
        """
        conn = self.pick(packet, target, callback)
        if conn is not None:
            self.queue(conn, data, callback)

    def pick(self, packet: Packet, target: Addr, callback: Callback) -> Conn | None:
        """The connection to send ``packet`` over; None (callback told) if a connect failed."""
        conn = self.master
        if conn.peer is None or conn.closed:  # a connected stream master carries everything
            found = self.tids.get(packet.tid()) if packet.is_response() else None
            if found is None:
                same = self.by_peer.get((target.addr, target.port))
                found = same[0] if same else self.connect(target, callback)
            return found
        return conn

    def queue(self, conn: Conn, data: bytes, callback: Callback) -> None:
        """Append ``data`` to ``conn``'s write buffer and write what the socket takes.

        ``callback`` gets 0 once ``data`` is written, an errno if that fails
        (``ENOBUFS`` at once when ``MAX_WBUF`` or ``MAX_WBUF_TOTAL`` would be exceeded).
        """
        wbuf = conn.wbuf
        if (
            conn is self.corked
            and len(wbuf) + len(data) < _CORK_MAX <= self.cfg.max_wbuf
            and self.wbuf_total + len(data) <= self.cfg.max_wbuf_total
        ):
            # A response to a request of the batch being read (the common case
            # under load): appended, written with the others after the batch.
            wbuf += data
            conn.queued += len(data)
            self.wbuf_total += len(data)
            if callback is not None:
                conn.wcallbacks.append((conn.queued, callback))
            return
        limit = self.cfg.max_wbuf
        if conn is self.corked and len(wbuf) + len(data) > limit and wbuf:
            # Coalescing must not make MAX_WBUF bite: write the batch so far first.
            self.flush(conn)
            if conn.closed:  # that write failed: the batch failed with it, so does this
                invoke_callback(callback, errno.EPIPE)
                return
        if len(wbuf) + len(data) > limit:
            # The loop writes whenever the socket takes data, so a full buffer
            # means the peer stopped reading: give up on it rather than buffer
            # without bound. Everything queued fails, then this packet.
            self.drop(
                conn,
                errno.ENOBUFS,
                "write buffer full (%d + %d bytes > MAX_WBUF %d)",
                len(wbuf),
                len(data),
                limit,
                level=logging.WARNING,
            )
            invoke_callback(callback, errno.ENOBUFS)
            return
        if self.wbuf_total + len(data) > self.cfg.max_wbuf_total and not self._make_room(
            conn, len(data)
        ):
            invoke_callback(callback, errno.ENOBUFS)
            return
        wbuf += data
        conn.queued += len(data)
        self.wbuf_total += len(data)
        if callback is not None:
            conn.wcallbacks.append((conn.queued, callback))
        if (
            not conn.inside_connect
            and not conn.watch_write
            and (conn is not self.corked or len(wbuf) >= _CORK_MAX)
        ):
            self.flush(conn)

    def _make_room(self, conn: Conn, size: int) -> bool:
        """The pool's write buffers are full: close the connections that
        queued the most (peers that do not read) until ``size`` more bytes fit.

        Returns False when ``conn`` itself holds the most: then its packet is
        refused (ENOBUFS) and the connection stays.
        """
        limit = self.cfg.max_wbuf_total
        while self.wbuf_total + size > limit:
            worst = max(self.conns.values(), key=lambda c: len(c.wbuf), default=None)
            if worst is None or worst is conn or not worst.wbuf:
                return False
            self.drop(
                worst,
                errno.ENOBUFS,
                "pool write buffers full (%d + %d bytes > MAX_WBUF_TOTAL %d), %d bytes here",
                self.wbuf_total,
                size,
                limit,
                len(worst.wbuf),
                level=logging.WARNING,
            )
        return True

    def drop(
        self, conn: Conn, err: int, why: str, *args: object, level: int = logging.INFO
    ) -> None:
        """As :meth:`ConnTable.drop`; what ``conn`` still queued leaves the total."""
        if not conn.closed:
            self.wbuf_total -= len(conn.wbuf)
            conn.wbuf.clear()
        super().drop(conn, err, why, *args, level=level)

    def writable(self, conn: Conn, _fd: object = None) -> None:
        """EV_WRITE on an established connection."""
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        """Write as much of ``conn.wbuf`` as the socket takes now."""
        wbuf = conn.wbuf
        before = conn.written
        try:
            while wbuf:
                n = conn.send(wbuf)
                del wbuf[:n]  # O(1): bytearray just moves its start
                conn.written += n
                self.wbuf_total -= n
        except BlockingIOError:
            pass
        except OSError as exc:
            self.drop(conn, exc.errno or errno.EIO, "write failed: %s", exc)
            return
        loop = self.loop
        if loop is not None:
            if conn.written != before:
                # only progress counts: a peer that stops reading expires
                conn.didit = loop.looptime
            pending = bool(wbuf)
            if pending != conn.watch_write or conn.cross_wants:
                self.watch_write(conn, pending)
        if conn.wcallbacks:
            self.fire_written(conn)
