"""Port of Perl's ``Net::SIP::SocketPool``: the sockets behind one Leg.

A pool owns a *master* socket (a bound UDP socket, a listening TCP socket, or
a connected UDP/TCP socket) and, for TCP and TLS, the connections accepted on
it or opened by :meth:`SocketPool.sendto`. Attached to an event loop it reads
SIP packets from all of them and hands each to one callback as
``(packet, from_)``; :meth:`SocketPool.sendto` sends a packet to a
destination over the right socket.

How it works: :class:`SocketPool` checks its arguments, keeps the settings
and the public API, and hands the sockets to one transport, below it in
private modules:

* :mod:`netsip._udp`: the UDP master socket (batched reads, responses held
  until the end of a batch);
* :mod:`netsip._stream`: TCP and TLS (connect, read and frame with
  :func:`netsip.framing.next_message`, corked writes), on
  :mod:`netsip._conntable` (the connections by fd, peer and request tid;
  dropping; idle expiry) and :mod:`netsip._accept` (accepting, with
  back-off when file descriptors run out);
* :mod:`netsip._conn`: the per-socket record :class:`Conn` and the plain
  socket transport; :mod:`netsip._tls`: TLS built on it (contexts, the
  handshake, the direction switching), owning its readiness logic;
* :mod:`netsip._ws`: WebSocket (RFC 7118, protos ``ws`` and ``wss``), a
  layer over the stream transport (``wss``: over its TLS connections): the
  upgrade, one SIP message per WebSocket message, pings, close codes;
* :mod:`netsip._settings`: the tunables (:func:`import_settings`).

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

Differences from Net::SIP: the transports' docstrings list theirs (read
batches, held and corked writes, accept back-off, ``MAX_WBUF``, TLS 1.2 as
the minimum, keep-alive pings and pongs); Perl's ``$fo`` hashes are typed
:class:`Conn` records; WebSocket (``ws``, ``wss``) is new (Net::SIP has none).

Performance plan. The hot paths (a datagram or a stream read in, the
callback, the response out) must not pay for the split into modules. The
loop calls the transports' functions directly (bound once, when a socket
starts being watched), the transports call the receive callback directly,
and this class is only on the way out: :meth:`SocketPool.sendto` appends a
UDP response to the transport's held list itself and hands a stream packet
to :meth:`netsip._stream.StreamTransport.send` in one call, as the single
class it replaces did. :mod:`netsip._tls` (and with it :mod:`ssl`, which
loads OpenSSL: about 1 MB and some milliseconds) is imported when the first
TLS pool is made, not with this module, so processes without TLS never load it;
the same holds for :mod:`netsip._ws` and wsproto (with h11) and the first
``ws``/``wss`` pool.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

from netsip._conn import Conn, ConnFactory, new_conn
from netsip._log import get_logger
from netsip._settings import (
    DEFAULT_SETTINGS,
    MODULE_WIDE,
    consistent,
    current,
    effective,
    get_settings,
    import_settings,
    track,
    untrack,
    validated,
)
from netsip._stream import StreamTransport
from netsip._udp import UDPTransport
from netsip.eventloop import Callback, EventLoopLike
from netsip.packet import Packet
from netsip.util import DEFAULT_PORTS, Addr, NetSIPError, Proto, as_callable, invoke_callback

__all__ = ["DEFAULT_SETTINGS", "Conn", "SocketPool", "get_settings", "import_settings"]

log = get_logger(__name__)


class SocketPool:
    """The sockets of a Leg: a master socket plus, for TCP, its connections.

    Args:
        proto: ``"udp"``, ``"tcp"``, ``"tls"``, ``"ws"`` or ``"wss"``
            (WebSocket, RFC 7118: :mod:`netsip._ws`; ``wss`` is WebSocket
            over TLS and takes the ``tls`` options).
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
            ``client_context`` (see :func:`netsip._tls.make_contexts`).
            Accepted connections use the server context, connections the
            pool opens the client context. Also with ``proto="wss"``.
        ws: WebSocket options, only with ``ws``/``wss``: ``path`` (the
            request target of connections the pool opens, default ``"/"``),
            ``host`` (their ``Host`` header, default the destination),
            ``ping_interval`` (seconds between WebSocket pings on every
            connection, 0 = none, the default); see :func:`netsip._ws.ws_options`.
        settings: per-pool overrides of the module settings, e.g.
            ``{"TCP_READSIZE": 4096}``.

    Raises:
        ValueError: unknown proto, a socket of the wrong type, bad settings,
            bad TLS options or TLS options for a UDP/TCP pool.
        TypeError: ``fd`` is not a socket.
        OSError: a TLS certificate, key or CA file cannot be loaded.
        NetSIPError: ``ws``/``wss`` without wsproto installed.
    """

    def __init__(
        self,
        proto: Proto,
        fd: socket.socket,
        dst: object = None,
        connected: bool = False,
        tls: Mapping[str, object] | None = None,
        *,
        ws: Mapping[str, object] | None = None,
        settings: Mapping[str, float] | None = None,
    ) -> None:
        if proto not in DEFAULT_PORTS:
            raise ValueError(f"unknown protocol {proto!r} (udp, tcp, tls, ws or wss)")
        if not isinstance(fd, socket.socket):
            raise TypeError(f"master must be a socket.socket, not {type(fd).__name__}")
        if tls is not None and proto not in ("tls", "wss"):
            raise ValueError("tls options given for a non-TLS pool")
        if ws is not None and proto not in ("ws", "wss"):
            raise ValueError("ws options given for a pool without WebSocket")
        if fd.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"a SocketPool needs an IPv4 or IPv6 socket, not {fd.family.name}")
        want = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        if fd.type != want:
            raise ValueError(f"a {proto} pool needs a {want.name} socket, got {fd.type.name}")
        if (
            proto != "udp"
            and not connected
            and not fd.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        ):
            # accept() on it would fail with EINVAL at every readiness: a busy loop
            raise ValueError(
                f"a {proto} pool needs a listening socket (call listen()) or connected=True"
            )
        make_conn: ConnFactory = new_conn
        if proto in ("tls", "wss"):
            from netsip._tls import conn_factory, make_contexts  # noqa: PLC0415  # see the performance plan

            make_conn = conn_factory(make_contexts(tls))
        transport: type[StreamTransport] = StreamTransport
        extra: dict[str, object] = {}
        if proto in ("ws", "wss"):
            try:
                from netsip._ws import WSTransport, ws_options  # noqa: PLC0415  # see the performance plan
            except ImportError as exc:
                if (exc.name or "").partition(".")[0] not in ("wsproto", "h11"):
                    raise
                raise NetSIPError(
                    f"the {proto} transport needs wsproto: pip install 'netsip[ws]'"
                ) from exc

            transport = WSTransport
            extra["options"] = ws_options(ws)
        self._overrides = validated(settings or {})
        consistent(current(self._overrides))
        if not MODULE_WIDE.isdisjoint(self._overrides):
            raise ValueError(f"{', '.join(sorted(MODULE_WIDE))} are module-wide settings")

        self.proto: Proto = proto
        self._family = fd.family
        # New connections are bound to the master's IP (Perl: LocalAddr).
        local_ip: str = fd.getsockname()[0]
        peer: Addr | None = None
        self._dst: Addr | None = None
        if connected:
            peer = Addr.parse(dst if dst is not None else fd.getpeername())
            peer = Addr(peer.addr, peer.port, peer.family, peer.host, proto)
        elif dst is not None:
            self._dst = Addr.parse(dst)
        self._connected = peer is not None
        fd.setblocking(False)

        # Exactly one transport: the UDP socket, or the stream sockets.
        self._udp: UDPTransport | None = None
        self._stream: StreamTransport | None = None
        if proto == "udp":
            self._master = new_conn(fd, peer, master=True)
            self._udp = UDPTransport(self._master, fd.family, local_ip, self._dst)
            self._conns: dict[int, Conn] = {}
        else:
            stream = transport(
                proto,
                fd,
                peer=peer,
                dst=self._dst,
                local_ip=local_ip,
                cfg=effective(self._overrides),
                new_conn=make_conn,
                **extra,
            )
            self._stream = stream
            self._master = stream.master
            self._conns = stream.conns  # the transport's table (fd -> connection)
        self._closed = False
        # import_settings reaches the stream transport (UDP uses no setting)
        self._settings_sub = track(
            self._overrides, self._stream.set_settings if self._stream is not None else None
        )

    # ---------------------------------------------------------------- settings

    def import_settings(self, **kw: float) -> None:
        """Override settings for this pool only (same keys as the module function).

        Raises:
            ValueError, TypeError: as :func:`import_settings`.
        """
        checked = validated(kw)
        consistent(current({**self._overrides, **checked}))
        if not MODULE_WIDE.isdisjoint(checked):
            raise ValueError(f"{', '.join(sorted(MODULE_WIDE))} are module-wide settings")
        self._overrides.update(checked)
        if self._stream is not None:  # UDP uses none of them
            self._stream.set_settings(effective(self._overrides))

    def get_settings(self) -> dict[str, float]:
        """The settings in effect for this pool (module values plus overrides)."""
        return current(self._overrides)

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
        if self._stream is None:
            return 0
        return sum(len(c.wbuf) for c in self._stream.all())

    def peers(self) -> list[Addr]:
        """The peers of the current connections (not the master), oldest first."""
        return [c.peer for c in self._conns.values() if c.peer is not None]

    def has_connection(self, dst: object) -> bool:
        """Whether a stream connection to ``dst`` is open (or being set up).

        :meth:`sendto` to ``dst`` then uses it and opens none: a flow
        (RFC 5626) to a client that accepts no connections. Always False for
        UDP and for a closed pool.
        """
        stream = self._stream
        if stream is None or self._closed:
            return False
        target = dst if isinstance(dst, Addr) else Addr.parse(dst)
        master = stream.master
        if master.peer is not None and not master.closed:
            return (master.peer.addr, master.peer.port) == (target.addr, target.port)
        return bool(stream.by_peer.get((target.addr, target.port)))

    def keep_connection(self, dst: object, until: float) -> bool:
        """Keep the connections to ``dst`` open until ``until`` (loop time) even if idle.

        A registrar calls this for a flow (RFC 5626): the client is reached
        over its connection only, so the pool's idle expiry must not close
        it while the binding lives. The peer closing it still closes it.

        Returns:
            Whether there was a connection to ``dst``.
        """
        stream = self._stream
        if stream is None or self._closed:
            return False
        target = dst if isinstance(dst, Addr) else Addr.parse(dst)
        conns = stream.by_peer.get((target.addr, target.port))
        for conn in conns or ():
            conn.keep_until = until
        return bool(conns)

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
        # the receive callback as a plain callable (no invoke_callback per packet)
        deliver = as_callable(callback)
        if self._udp is not None:
            self._udp.attach(loop, deliver)
        elif self._stream is not None:
            self._stream.attach(loop, deliver)

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
        if target.family != self._family and not self._connected:
            log.info("cannot send to %s from a %s socket", target, self._family.name)
            invoke_callback(callback, errno.EAFNOSUPPORT)
            return
        data = packet.as_bytes()
        udp = self._udp
        if udp is not None:
            held = udp.held
            if held is not None:
                held.append((data, target, callback))  # a response, usually
            else:
                udp.send(data, target, callback)
        elif self._stream is not None:
            self._stream.send(packet, data, target, callback)

    def close(self) -> None:
        """Detach from the loop and close every socket, the master included.

        Pending sendto callbacks are not invoked. Idempotent.
        """
        if self._closed:
            return
        # (UDP closed from a receive callback: what it sent goes out first)
        if self._udp is not None:
            self._udp.close()
        elif self._stream is not None:
            self._stream.close()
        self._closed = True
        untrack(self._settings_sub)

    def __enter__(self) -> SocketPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SocketPool {self.proto} fd={self._master.fd} conns={len(self._conns)}{state}>"
