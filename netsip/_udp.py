"""UDP for :class:`netsip.socketpool.SocketPool`: batched reads, held responses.

Ports the UDP half of Perl's ``Net::SIP::SocketPool``: ``_handle_read_udp``
(read a datagram, ignore keep-alives, parse, deliver), ``_check_from`` (the
``dst`` restriction) and the UDP branch of ``sendto``.

How it works:

* :class:`UDPTransport` owns the master socket of a UDP pool (bound, or
  connected to one peer). Each readiness reads up to 32 datagrams into one
  preallocated 64 KiB buffer; a datagram below 13 bytes is a keep-alive and
  ignored, one that does not parse is logged and dropped, one from outside
  the pool's ``dst`` restriction is dropped;
* ICMP errors reported on the socket (``ECONNREFUSED`` for an earlier
  datagram, ...) concern that datagram, not the socket: they are logged and
  the socket's error queue is drained, so a socket with ``IP_RECVERR`` is not
  reported readable forever;
* datagrams sent while a batch of received ones is delivered (the
  responses, from the receive callback) are held in :attr:`UDPTransport.held`
  and sent right after the batch, in order, back to back.

Differences from Net::SIP: Perl reads one datagram per readiness and sends
each packet at once; the batching and holding are this port's. A failed
send invokes the ``sendto`` callback with the errno (Perl: ``$!``).

Performance plan. Operations per datagram: one ``recvfrom_into``, one parse,
one callback; per response one ``sendto``. Goal: the fewest syscalls, loop
cycles and allocations per transaction. Plan:

* a batch of reads per readiness: under load one loop cycle (``epoll_wait``,
  dispatch) serves several datagrams; the bound of 32 keeps the other
  sockets and the timers going;
* responses sent back to back after the batch: a ``sendto()`` that wakes a
  peer waiting in ``epoll`` costs the sender that wake-up, about as much as
  the SIP work of a request; sent between two requests' work every response
  wakes the peer anew, sent together one wake-up serves several.
  ``SocketPool.sendto`` appends to :attr:`UDPTransport.held` itself: no call
  per response;
* one receive buffer for the pool's life; only the datagram is copied out;
* the source :class:`~netsip.util.Addr` of a datagram comes from a bounded
  cache keyed by ``(ip, port)`` (cleared when full), and the receive
  callback is a plain callable (no ``invoke_callback`` per packet).
"""

from __future__ import annotations

import errno
import socket
from functools import partial
from typing import Any, Final

from netsip._conn import Conn, Deliver
from netsip._log import get_logger
from netsip.eventloop import EV_READ, Callback, EventLoopLike
from netsip.packet import (
    BodyTruncatedError,
    Packet,
    PacketError,
    Request,
    refused_request,
    truncated_request,
    warning,
)
from netsip.util import Addr, as_callable, invoke_callback

__all__ = ["Held", "UDPTransport"]

# The public module's logger: logging is configured by the name users know.
log: Final = get_logger("netsip.socketpool")

#: Datagrams waiting for the end of a read batch: ``(data, destination, callback)``.
Held = list[tuple[bytes, Addr, Callback]]

# A UDP datagram smaller than this cannot be SIP (shortest first line plus the
# final CRLF CRLF): Perl treats it as a keep-alive and ignores it.
_MIN_DATAGRAM: Final = 13
_UDP_READSIZE: Final = 2**16
_UDP_READS_PER_READY: Final = 32  # datagrams read per readiness
_ADDR_CACHE_MAX: Final = 1024  # remembered source addresses (Addr objects)
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


class UDPTransport:
    """The master socket of a UDP pool: reads batches, sends datagrams.

    Args:
        master: the record of the bound (or connected) UDP socket.
        family: its address family.
        local_ip: its address (for the log).
        dst: the pool's ``dst`` restriction: datagrams from elsewhere are dropped.
    """

    def __init__(
        self, master: Conn, family: socket.AddressFamily, local_ip: str, dst: Addr | None
    ) -> None:
        self.master = master
        self.family = family
        self.local_ip = local_ip
        self.dst = dst
        self.loop: EventLoopLike | None = None
        self.deliver: Deliver = as_callable(None)
        #: Datagrams sent while a read batch is delivered, None between batches.
        self.held: Held | None = None
        self._rbuf = bytearray(_UDP_READSIZE)
        self._rview = memoryview(self._rbuf)
        self._addr_cache: dict[tuple[str, int], Addr] = {}

    def attach(self, loop: EventLoopLike | None, deliver: Deliver) -> None:
        """Leave the current loop, then watch the socket in ``loop`` (None: detach)."""
        master = self.master
        if self.loop is not None:
            self.loop.del_fd(master.fd)
        self.loop = loop
        self.deliver = deliver
        if loop is not None and not master.closed:
            loop.add_fd(master.fd, EV_READ, partial(self.read, master), "socketpool")

    def close(self) -> None:
        """Send what is held (closed from a receive callback), detach, close the socket."""
        if self.held:
            self.send_held(self.held)
        self.attach(None, self.deliver)
        master = self.master
        master.closed = True
        master.wcallbacks.clear()
        master.close()
        self._rview.release()

    # ---- sending

    def send(self, data: bytes, target: Addr, callback: Callback) -> None:
        """Send one datagram now; ``callback`` gets the errno if that fails."""
        master = self.master
        try:
            if master.peer is not None:
                master.sock.send(data)
            else:
                master.sock.sendto(data, target.sockaddr())
        except OSError as exc:
            log.info("send to %s failed: %s", target, exc)
            invoke_callback(callback, exc.errno or errno.EIO)

    def send_held(self, held: Held) -> None:
        """Send the held datagrams in order (and forget them: sent once)."""
        items = held[:]
        held.clear()
        for data, target, callback in items:
            self.send(data, target, callback)

    # ---- receiving

    def read(self, conn: Conn, _fd: object = None) -> None:
        """EV_READ: deliver a batch of datagrams, then send what was held meanwhile."""
        if self.held is not None:
            self._read_batch(conn)  # re-entered from a callback: one batch
            return
        held: Held = []
        self.held = held
        try:
            self._read_batch(conn)
        finally:
            self.held = None
            if held:
                self.send_held(held)

    def _read_batch(self, conn: Conn) -> None:
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
                log.debug("udp recv on %s: %s", self.local_ip, exc)
                _drain_errqueue(sock)
                return
            if n < _MIN_DATAGRAM:
                continue  # keep-alive (RFC 5626 4.4.2 STUN is longer; CRLF pings are not)
            dst = self.dst
            if dst is not None and (sa[0] != dst.addr or sa[1] != dst.port):
                log.info("drop packet from %s:%s, only accepting %s", sa[0], sa[1], dst)
                continue
            data = self._rview[:n].tobytes()
            try:
                pkt = Packet.new_from_string(data)
            except BodyTruncatedError as exc:
                self._truncated(exc, sa)
                continue
            except PacketError as exc:
                log.info("drop invalid packet from %s:%s: %s", sa[0], sa[1], exc)
                if data[:1] != b"S":  # (a response, "SIP/2.0 ...", is never answered)
                    self._answer_400(refused_request(data), "Bad Request", exc, sa)
                continue
            self.deliver(pkt, self._peer_addr(sa))
            if conn.closed or self.loop is None:
                return  # the callback closed or detached the pool

    def _truncated(self, exc: BodyTruncatedError, sa: Any) -> None:
        """RFC 3261 18.3: a datagram that ends before its body: a request gets
        400 (to where it came from, as rport would have it), a response is
        dropped."""
        log.info("drop invalid packet from %s:%s: %s", sa[0], sa[1], exc)
        self._answer_400(truncated_request(exc), "Content-Length Exceeds Body", None, sa)

    def _answer_400(
        self, request: Request | None, reason: str, exc: PacketError | None, sa: Any
    ) -> None:
        """400 for a request the parser refused (RFC 3261 21.4.1), to where
        it came from, saying why in a Warning; ACKs and responses get none."""
        if request is None or request.method() == "ACK":
            return
        headers = {"warning": warning(exc)} if exc is not None else None
        try:
            response = request.create_response(400, reason, headers)
        except PacketError as err:  # (headers too broken to answer)
            log.info("cannot answer the request from %s:%s: %s", sa[0], sa[1], err)
            return
        data = response.as_bytes()
        target = self._peer_addr(sa)
        if self.held is not None:
            self.held.append((data, target, None))
        else:
            self.send(data, target, None)

    def _peer_addr(self, sa: Any) -> Addr:
        """The Addr (proto udp) for a sockaddr from recvfrom, cached."""
        key: tuple[str, int] = (sa[0], sa[1])
        addr = self._addr_cache.get(key)
        if addr is None:
            if len(self._addr_cache) >= _ADDR_CACHE_MAX:
                self._addr_cache.clear()
            addr = Addr(key[0], key[1], self.family, None, "udp")
            self._addr_cache[key] = addr
        return addr
