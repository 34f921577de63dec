"""WebSocket (RFC 7118) for :class:`netsip.socketpool.SocketPool`: transports ``ws`` and ``wss``.

New (Net::SIP has no WebSocket). Browsers speak SIP only over WebSocket (RFC
7118): a web phone (JsSIP, SIP.js) reaches netsip through a ``ws``/``wss`` pool.

How it works: WebSocket is a layer over the stream transport, as TLS is a
layer over TCP. :class:`WSTransport` is the
:class:`~netsip._stream.StreamTransport` of a ``ws``/``wss`` pool: it
accepts and opens TCP connections as a TCP pool does (``wss``: with the TLS
connection type of :mod:`netsip._tls`, so the TLS handshake runs first), and
replaces two steps of it:

* reading: the bytes read are not framed as a SIP stream but go to the
  connection's WebSocket state (:class:`WSLayer`): first the HTTP upgrade
  (RFC 6455 section 4), then frames. `wsproto` (sans-I/O, imported when the
  first ``ws`` pool is made) runs the upgrade, control frames, fragmented
  messages and every frame that breaks a rule; plain data frames, the
  common case, take a fast path here (see the performance plan);
* sending: a SIP message becomes one WebSocket message (RFC 7118 section 5.2),
  framed here (:func:`frame`): a text frame when the message is UTF-8 (SIP
  is UTF-8 text), else binary; masked from a client (RFC 6455 section 5.3).
  Connections the pool opens send the upgrade request first and hold SIP
  messages until the server accepted it.

The handshake (RFC 7118 section 4): the client asks for the subprotocol
``sip`` (``Sec-WebSocket-Protocol: sip``); a server refuses an upgrade
without it (HTTP 400) and answers ``sip`` otherwise; a client closes a
connection whose server did not pick ``sip``. The request target is the
``path`` option (default ``/``), the ``Host`` header the destination's
name (or address) and port. A server accepts any request target. The
handshake must be done within ``CONNECT_TIMEOUT`` seconds after TCP (and
TLS) is up, or the connection is closed (slow clients, "slowloris"); the
request head may have at most :data:`MAX_HANDSHAKE` bytes.

Messages (RFC 7118 section 5): each text or binary message is one SIP
message, parsed as a datagram is (no ``Content-Length`` needed); fragmented
messages are reassembled up to ``MAX_SIP_HEADER + MAX_SIP_BODY`` bytes.
A message of just CRLFCRLF is a keep-alive ping (RFC 5626 section 4.4.1)
and is answered with a CRLF message; WebSocket pings get their pong.

Bad input closes the connection with a close frame, a log line and
``ECONNABORTED`` for the callbacks of what was queued on it:

* a bad upgrade request (no ``sip`` subprotocol, no or bad
  ``Sec-WebSocket-Key``, a version other than 13, not a GET, too long): an
  HTTP 4xx answer (400; 426 with ``Sec-WebSocket-Version: 13`` for another
  version; 431 for a head that is too long) instead of a close frame;
* a frame the WebSocket layer refuses (unmasked client frame, a reserved
  bit or opcode, a control frame that is fragmented or too long, a
  continuation out of place): 1002 (protocol error);
* invalid UTF-8 in a text message: 1007;
* a message larger than ``MAX_SIP_HEADER + MAX_SIP_BODY``: 1009 (message
  too big);
* a message that is no SIP message: 1008 (policy violation: the ``sip``
  subprotocol carries nothing else). 1003 is for a data type an endpoint
  cannot take at all, and both text and binary are taken.

Closing: a peer's close frame is answered with a close frame and the
connection is closed (RFC 6455 section 5.5.1; the server closes TCP first,
section 7.1.1). :meth:`SocketPool.close` sends a close frame (1001, going
away) on every open connection if the socket takes it at once, and does not
wait for the answer (as TLS sends its ``close_notify``). Pings: the
``ping_interval`` option sends a WebSocket ping on every open connection at
that interval (keeps NAT bindings and proxies of a browser's connection
alive); ``KEEPALIVE_INTERVAL`` sends one on the connections the pool opened.

Other parts of RFC 7118: the Via transport is ``WS``/``WSS`` (section 5.1;
:class:`~netsip.leg.Leg` builds it from the proto), URIs say
``;transport=ws``/``wss``, the resolver knows the NAPTR services
``SIP+D2W``/``SIPS+D2W`` and refuses ``.invalid`` host names (RFC 6761
section 6.4, the hosts browsers put in their Via and Contact). Responses go
back over the connection their request came in on (RFC 7118 section 5.2,
as for TCP: the Via host of a browser cannot be reached).

Default ports: RFC 7118 defines none; 80 for ``ws`` and 443 for ``wss``, as
``ws://`` and ``wss://`` URIs (RFC 6455 section 3).

Differences from Net::SIP:

* Net::SIP has no WebSocket transport at all: everything here is new;
* against this port's TCP transport: a message that is not SIP closes the
  connection with close code 1008 (TCP answers 400 first when it can); the
  idle expiry (``MIN_EXPIRE``/``MAX_EXPIRE``) is the same, so web phones
  that stay silent for long need longer expiry times or ``ping_interval``
  (a pong counts as activity).

Performance plan. Per message in: the common frame (unfragmented text or
binary, masked as its direction requires) is cut out of the read buffer,
unmasked (one big-integer XOR) and parsed here, without wsproto's frame
objects and text decoding (an ASCII check, a UTF-8 decode only for other
text); every other frame goes to wsproto whole. Per message out: the frame
header and the payload are joined once (no masking on the server side).
Memory per idle connection: the handshake objects (h11) live only during the
handshake; afterwards a connection holds one wsproto ``Connection`` and a
:class:`WSLayer` (slots). ``benchmarks/bench_ws.py`` measures both.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from netsip._conn import Conn, ConnFactory, Deliver
from netsip._log import get_logger
from netsip._settings import Settings
from netsip._stream import StreamTransport
from netsip.eventloop import Callback, EventLoopLike, TimerLike
from netsip.packet import Packet, PacketError
from netsip.util import DEFAULT_PORTS, Addr, Proto, invoke_callback

__all__ = ["MAX_HANDSHAKE", "WSLayer", "WSOptions", "WSTransport", "frame", "ws_options"]

# The public module's logger: logging is configured by the name users know.
log = get_logger("netsip.socketpool")

#: Bytes an upgrade request or response head may have (h11's own limit is 16 KiB).
MAX_HANDSHAKE: Final = 8192
#: RFC 6455 7.4.1 close codes used here (the others come from wsproto).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_NOT_SIP: Final = 1008  # policy violation
CLOSE_MESSAGE_TOO_BIG: Final = 1009
#: RFC 7118 section 4.1: the WebSocket subprotocol of SIP.
SUBPROTOCOL: Final = "sip"
#: RFC 5626 4.4.1 over WebSocket: a message of just CRLFCRLF, answered with CRLF.
_PINGS: Final = ("\r\n\r\n", b"\r\n\r\n")
_PONG: Final = b"\r\n"
#: how a keep-alive message starts (a tuple: bytearray slices are not hashable)
_LINE_END_STARTS: Final = ("\r", "\n", "", b"\r", b"\n", b"")
_OPCODE_TEXT: Final = 0x1
_OPCODE_BINARY: Final = 0x2
_RESERVED_OPCODES: Final = frozenset((3, 4, 5, 6, 7, 11, 12, 13, 14, 15))
CLOSE_BAD_DATA: Final = 1007  # invalid UTF-8 in a text message
_FIN: Final = 0x80
_MASKED: Final = 0x80


@dataclass(frozen=True, slots=True)
class WSOptions:
    """The ``ws`` options of a pool (see :func:`ws_options`)."""

    path: str = "/"
    host: str | None = None
    ping_interval: float = 0.0


def ws_options(opts: Mapping[str, object] | None) -> WSOptions:
    """Check the ``ws`` options of a pool.

    Args:
        opts: ``path`` (request target of the connections the pool opens,
            default ``"/"``), ``host`` (their ``Host`` header; default the
            destination's host name or address, with the port unless it is
            the default one), ``ping_interval`` (seconds between WebSocket
            pings on every open connection, 0 for none, the default). None:
            all defaults.

    Raises:
        ValueError: an unknown option or a bad value.
        TypeError: a value of the wrong type.
    """
    given = dict(opts or {})
    unknown = sorted(set(given) - {"path", "host", "ping_interval"})
    if unknown:
        raise ValueError(f"unknown ws option(s) {', '.join(unknown)}")
    path = given.get("path", "/")
    if not isinstance(path, str):
        raise TypeError(f"ws option path must be a str, not {path!r}")
    if not path.startswith("/") or not path.isascii() or any(c in path for c in " \r\n"):
        raise ValueError(f"ws option path must be an absolute path, not {path!r}")
    host = given.get("host")
    if host is not None and (not isinstance(host, str) or not host or not host.isascii()):
        raise ValueError(f"ws option host must be a host[:port], not {host!r}")
    interval = given.get("ping_interval", 0)
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"ws option ping_interval must be a number, not {interval!r}")
    if not 0 <= interval <= 86400:
        raise ValueError(f"ws option ping_interval must be between 0 and 86400, not {interval!r}")
    return WSOptions(path, host, float(interval))


def frame(data: bytes, *, mask: bool) -> bytes:
    """One unfragmented WebSocket data frame carrying ``data`` (RFC 6455 section 5.2).

    A text frame when ``data`` is valid UTF-8 (RFC 7118 section 5.2: SIP is
    UTF-8 text, and browsers hand text messages to the application as
    strings), else a binary frame. ``mask``: a client's frame, masked with
    a fresh random key (RFC 6455 section 5.3).
    """
    opcode = _OPCODE_TEXT
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            opcode = _OPCODE_BINARY
    n = len(data)
    bit = _MASKED if mask else 0
    if n < 126:
        head = bytes((_FIN | opcode, bit | n))
    elif n < 65536:
        head = bytes((_FIN | opcode, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((_FIN | opcode, bit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + _xor_mask(key, data)


@dataclass(slots=True, eq=False)
class WSLayer:
    """The WebSocket state of one connection.

    Attributes:
        server: the pool accepted the connection (it answers the upgrade).
        hs: the upgrade handshake while it runs (a client's from the moment
            its request is sent).
        ws: the open WebSocket connection once the upgrade is done.
        started: the handshake began (its timer runs, a client's request is out).
        held: a client's SIP frames (with their callbacks) waiting for the upgrade.
        parts: the pieces of a message that arrives in several frames.
        size: bytes in ``parts``.
        frag: wsproto holds the first frames of a fragmented message (its
            next frames go to wsproto too).
    """

    server: bool
    hs: H11Handshake | None = None
    ws: Connection | None = None
    started: bool = False
    held: list[tuple[bytes, Callback]] | None = None
    parts: list[str | bytes | bytearray] | None = None
    size: int = 0
    frag: bool = False


def _hostport(peer: Addr, proto: Proto) -> str:
    """The ``Host`` header for ``peer``: its name or address, and a port that is not the default."""
    host = peer.host or peer.addr
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if peer.port == DEFAULT_PORTS[proto] else f"{host}:{peer.port}"


def _xor_mask(key: bytes | bytearray, data: bytes | bytearray) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 5.3): masks and unmasks, as one XOR."""
    n = len(data)
    keys = (bytes(key) * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def _good_key(request: Request) -> bool:
    """RFC 6455 4.2.1 item 5: the key is the base64 encoding of 16 bytes."""
    keys = [v for k, v in request.extra_headers if k.lower() == b"sec-websocket-key"]
    if len(keys) != 1:
        return False
    try:
        return len(base64.b64decode(keys[0].strip(), validate=True)) == 16
    except ValueError:  # binascii.Error
        return False


def _utf8_size(data: str | bytes | bytearray) -> int:
    if not isinstance(data, str) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


class WSTransport(StreamTransport):
    """The sockets of a ``ws`` or ``wss`` pool: the stream transport with WebSocket on top.

    Args:
        proto, master, peer, dst, local_ip, cfg, new_conn: as for
            :class:`~netsip._stream.StreamTransport` (``new_conn`` makes TLS
            connections for ``wss``).
        options: the pool's ``ws`` options.
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
        options: WSOptions,
    ) -> None:
        super().__init__(
            proto, master, peer=peer, dst=dst, local_ip=local_ip, cfg=cfg, new_conn=new_conn
        )
        self.options = options
        #: the WebSocket state of each connection (a connected master included)
        self.layers: dict[Conn, WSLayer] = {}
        self.ping_timer: TimerLike | None = None
        if peer is not None:
            self.layers[self.master] = WSLayer(server=False)

    # ---- connections coming and going

    def attach(self, loop: EventLoopLike | None, deliver: Deliver) -> None:
        """As :meth:`StreamTransport.attach`; handshake timers and pings are re-armed."""
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        super().attach(loop, deliver)
        if loop is None:
            return
        for conn, layer in list(self.layers.items()):
            if conn.closed or conn.inside_connect:
                continue
            if layer.ws is None:
                if layer.started:
                    self._arm_handshake_timer(conn)  # the timers went with the old loop
                elif conn.master:
                    self.established(conn)  # a connected master: send the upgrade now
        if self.options.ping_interval > 0:
            interval = self.options.ping_interval
            self.ping_timer = loop.add_timer(
                interval, self._ping_all, interval, "socketpool-ws-ping"
            )

    def _adopt(self, sock: socket.socket, peer: Addr) -> None:
        """An accepted connection: it waits for the upgrade request (TLS: after its handshake)."""
        conn = self.new_conn(sock, peer, accepted=True)
        self.layers[conn] = WSLayer(server=True)
        self.add(conn, arm_expire=False)
        self.established(conn)

    def established(self, conn: Conn) -> None:
        """TCP (and TLS) is up: start the upgrade (a client sends its request)."""
        layer = self.layers.get(conn)
        if layer is None:  # a connection the pool opened (made by connect())
            layer = self.layers[conn] = WSLayer(server=False)
        super().established(conn)
        if conn.closed or conn.inside_connect or layer.started or layer.ws is not None:
            return
        layer.started = True
        self._arm_handshake_timer(conn)
        if not layer.server:
            hs = layer.hs = H11Handshake(ConnectionType.CLIENT)
            assert conn.peer is not None
            host = self.options.host or _hostport(conn.peer, self.proto)
            request = Request(host=host, target=self.options.path, subprotocols=[SUBPROTOCOL])
            self.queue(conn, hs.send(request), None)

    def drop(
        self, conn: Conn, err: int, why: str, *args: object, level: int = logging.INFO
    ) -> None:
        """As :meth:`StreamTransport.drop`; SIP messages held for the upgrade fail too."""
        if conn.closed:
            return
        layer = self.layers.pop(conn, None)
        super().drop(conn, err, why, *args, level=level)
        if layer is not None and layer.held:
            held = deque((0, cb) for _, cb in layer.held if cb is not None)
            layer.held = None
            if held:
                self.fail_callbacks(held, err)

    def close(self) -> None:
        """Send a close frame (1001) where the socket takes it at once, then close everything."""
        if not self.closed:
            for conn, layer in self.layers.items():
                ws = layer.ws
                if ws is None or conn.closed or ws.state is not ConnectionState.OPEN:
                    continue
                with contextlib.suppress(OSError, LocalProtocolError):
                    data = ws.send(CloseConnection(CLOSE_GOING_AWAY, "shutting down"))
                    if not conn.wbuf:  # else the frame would land inside another
                        conn.send(bytearray(data))
            self.layers.clear()
        super().close()

    def _arm_handshake_timer(self, conn: Conn) -> None:
        loop = self.loop
        if loop is not None:
            if conn.timer is not None:
                conn.timer.cancel()
            conn.timer = loop.add_timer(
                self.cfg.connect_timeout,
                partial(self._handshake_timeout, conn),
                name="socketpool-ws-handshake",
            )

    def _handshake_timeout(self, conn: Conn, _timer: object = None) -> None:
        conn.timer = None
        layer = self.layers.get(conn)
        if layer is not None and layer.ws is None:
            self.drop(
                conn,
                errno.ETIMEDOUT,
                "WebSocket handshake not done within %gs",
                self.cfg.connect_timeout,
            )

    # ---- sending

    def send(self, packet: Packet, data: bytes, target: Addr, callback: Callback) -> None:
        """Send ``data`` (``packet`` as bytes) as one WebSocket message to ``target``."""
        conn = self.pick(packet, target, callback)
        if conn is None:
            return
        layer = self.layers.get(conn)
        if layer is None:  # just opened by pick(): TCP is still connecting
            layer = self.layers[conn] = WSLayer(server=False)
        msg = frame(data, mask=not layer.server)
        ws = layer.ws
        if ws is None:
            # RFC 6455 4.1: no data before the server accepted the upgrade
            if layer.held is None:
                layer.held = []
            layer.held.append((msg, callback))
            return
        if ws.state is not ConnectionState.OPEN:
            invoke_callback(callback, errno.ECONNRESET)  # closing: no data any more
            return
        self.queue(conn, msg, callback)

    def keepalive(self, conn: Conn) -> None:
        """The keep-alive of an opened connection is a WebSocket ping (RFC 6455 5.5.2)."""
        layer = self.layers.get(conn)
        if layer is not None:
            self._ping(conn, layer)

    def _ping_all(self, _timer: object = None) -> None:
        for conn, layer in list(self.layers.items()):
            if not conn.closed:
                self._ping(conn, layer)

    def _ping(self, conn: Conn, layer: WSLayer) -> None:
        ws = layer.ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            self.queue(conn, ws.send(Ping()), None)

    # ---- receiving

    def _extract(self, conn: Conn) -> None:
        """Process what was read: the upgrade, then frames; deliver every complete SIP message."""
        layer = self.layers.get(conn)
        if layer is None:
            conn.rbuf.clear()
            return
        ws = layer.ws
        if ws is None:
            ws = self._handshake(conn, layer)
            if ws is None:
                return
        try:
            self._frames(conn, layer, ws)
        except BaseException:
            # A receive callback raised (it propagates out of loop()): the
            # frames behind its message are read already; pick them up next cycle.
            loop = self.loop
            if loop is not None and not conn.closed:
                loop.add_timer(0, partial(self._resume, conn), name="socketpool-resume")
            raise

    def _resume(self, conn: Conn, _timer: object = None) -> None:
        layer = self.layers.get(conn)
        if layer is not None and layer.ws is not None and not conn.closed:
            self._events(conn, layer, layer.ws)  # what wsproto still holds comes first
            if not conn.closed and conn.rbuf:
                self._frames(conn, layer, layer.ws)

    def _frames(self, conn: Conn, layer: WSLayer, ws: Connection) -> None:
        """Cut the complete frames out of ``conn.rbuf`` (RFC 6455 section 5.2) and process them.

        The fast path: an unfragmented text or binary frame, masked as its
        direction requires, outside a fragmented message, is unmasked and
        delivered here. Every other frame (control frames, fragments, reserved
        bits or opcodes, wrong masking) goes to wsproto whole, which answers,
        reassembles or refuses it; an incomplete frame waits in the buffer, so
        wsproto never holds part of one and the next frame can take the fast
        path again. A data frame announcing more than the message limit is
        refused (1009) from its header, before its payload arrives.
        """
        buf = conn.rbuf
        size = len(buf)
        limit = self.cfg.max_sip_header + self.cfg.max_sip_body
        mask_bit = _MASKED if layer.server else 0  # RFC 6455 5.1: clients mask, servers do not
        open_ = ws.state is ConnectionState.OPEN
        pos = 0
        try:
            while size - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                n = b1 & 0x7F
                head = 2
                if n >= 126:
                    head = 4 if n == 126 else 10
                    if size - pos < head:
                        break
                    n = int.from_bytes(buf[pos + 2 : pos + head], "big")
                if b1 & _MASKED:
                    head += 4
                opcode = b0 & 0x0F
                if opcode <= _OPCODE_BINARY:
                    if layer.size + n > limit:
                        self._fail(
                            conn, CLOSE_MESSAGE_TOO_BIG, "message of more than %d bytes", limit
                        )
                        return
                elif n > 125 or opcode in _RESERVED_OPCODES:
                    # wsproto refuses it from the header: do not wait for the payload
                    chunk = bytes(buf[pos:])
                    pos = size
                    self._slow(conn, layer, ws, chunk)
                    return
                end = pos + head + n
                if end > size:
                    break  # the rest of the frame is still on its way
                if (b0 == _FIN | _OPCODE_TEXT or b0 == _FIN | _OPCODE_BINARY) and (
                    b1 & _MASKED == mask_bit and not layer.frag and open_
                ):
                    if mask_bit:
                        payload = _xor_mask(buf[end - n - 4 : end - n], buf[end - n : end])
                    else:
                        payload = bytes(buf[end - n : end])
                    pos = end
                    if b0 == _FIN | _OPCODE_TEXT and not payload.isascii():
                        try:
                            payload.decode("utf-8")
                        except UnicodeDecodeError as exc:
                            self._fail(
                                conn, CLOSE_BAD_DATA, "invalid UTF-8 in a text message: %s", exc
                            )
                            return
                    self._message(conn, payload)
                else:
                    if opcode <= _OPCODE_BINARY:
                        layer.frag = not b0 & _FIN  # wsproto holds a message until its last frame
                    chunk = bytes(buf[pos:end])
                    pos = end
                    self._slow(conn, layer, ws, chunk)
                    open_ = ws.state is ConnectionState.OPEN
                if conn.closed:
                    return
        finally:
            if not conn.closed:
                del buf[:pos]

    def _slow(self, conn: Conn, layer: WSLayer, ws: Connection, data: bytes) -> None:
        """Hand whole frames to wsproto and process its events."""
        try:
            ws.receive_data(data)
        except LocalProtocolError:  # data after the close handshake
            self.drop(conn, errno.ECONNRESET, "data after the WebSocket close")
            return
        self._events(conn, layer, ws)

    def _events(self, conn: Conn, layer: WSLayer, ws: Connection) -> None:
        limit = self.cfg.max_sip_header + self.cfg.max_sip_body
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                assert isinstance(event, TextMessage | BytesMessage)
                data = event.data
                size = layer.size + _utf8_size(data)
                if size > limit:
                    self._fail(conn, CLOSE_MESSAGE_TOO_BIG, "message of more than %d bytes", limit)
                    return
                if not event.message_finished:
                    if layer.parts is None:
                        layer.parts = []
                    layer.parts.append(data)
                    layer.size = size
                    continue
                if layer.parts is not None:
                    layer.parts.append(data)
                    parts = layer.parts
                    layer.parts = None
                    layer.size = 0
                    data = "".join(parts) if kind is TextMessage else b"".join(parts)  # type: ignore[arg-type]  # one kind per message
                self._message(conn, data)
            elif kind is Ping:
                assert isinstance(event, Ping)
                self.queue(conn, ws.send(event.response()), None)
            elif kind is Pong:
                if self.loop is not None:
                    conn.didit = self.loop.looptime
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                self._close_event(conn, ws, event)
                return
            if conn.closed:
                return

    def _message(self, conn: Conn, data: str | bytes | bytearray) -> None:
        """One complete WebSocket message: a SIP message, or a keep-alive."""
        loop = self.loop
        if loop is not None:
            conn.didit = loop.looptime
        if data[:1] in _LINE_END_STARTS:  # (a SIP message starts with a letter)
            if data in _PINGS:
                # RFC 5626 4.4.1 as SIP.js sends it over WebSocket: answer with CRLF
                self.queue(conn, frame(_PONG, mask=conn.outgoing), None)
                return
            if not data.strip():
                return  # a pong (or stray line ends): activity only
        try:
            pkt = Packet.new_from_string(data)
        except PacketError as exc:
            self._fail(conn, CLOSE_NOT_SIP, "not a SIP message: %s", exc)
            return
        if pkt.is_request():
            self.remember_tid(conn, pkt.tid())
        self.deliver(pkt, conn.peer)

    def _close_event(self, conn: Conn, ws: Connection, event: CloseConnection) -> None:
        state = ws.state
        if state is ConnectionState.OPEN:
            # wsproto refused a frame (the event carries its close code)
            self._fail(conn, event.code, "%s", event.reason or "WebSocket protocol error")
        elif state is ConnectionState.REMOTE_CLOSING:
            # RFC 6455 5.5.1: answer the close, then close TCP
            with contextlib.suppress(LocalProtocolError):
                self.queue(conn, ws.send(event.response()), None)
            if not conn.closed:
                self.flush(conn)
            self.drop(
                conn,
                errno.ECONNRESET,
                "WebSocket closed by peer (%d %s)",
                event.code,
                event.reason or "",
                level=logging.DEBUG,
            )
        else:  # the answer to our close
            self.drop(conn, errno.ECONNRESET, "WebSocket closed", level=logging.DEBUG)

    def _fail(self, conn: Conn, code: int, why: str, *args: object) -> None:
        """Close ``conn`` with close ``code`` (RFC 6455 7.1.7) and a log line."""
        layer = self.layers.get(conn)
        ws = layer.ws if layer is not None else None
        if ws is not None and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            reason = (why % args)[:120]
            with contextlib.suppress(LocalProtocolError):
                self.queue(conn, ws.send(CloseConnection(code, reason)), None)
            if not conn.closed:
                self.flush(conn)
        self.drop(conn, errno.ECONNABORTED, "WebSocket close %d: " + why, code, *args)

    # ---- the upgrade (RFC 6455 section 4, RFC 7118 section 4)

    def _handshake(self, conn: Conn, layer: WSLayer) -> Connection | None:
        """Process the upgrade request (server) or response (client) once its head is in.

        Returns the open connection (what follows the head in ``conn.rbuf``
        are frames), or None: waiting for more, or the connection is closed.
        """
        buf = conn.rbuf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > MAX_HANDSHAKE:
            if len(buf) > MAX_HANDSHAKE or end >= 0:
                if layer.server:
                    fresh = layer.hs or H11Handshake(ConnectionType.SERVER)
                    self._reject(
                        conn, fresh, RejectConnection(status_code=431), "upgrade request too long"
                    )
                else:
                    self.drop(conn, errno.EPROTO, "upgrade response too long")
            return None
        head = bytes(buf[: end + 4])
        del buf[: end + 4]
        hs = layer.hs
        if hs is None:
            if not layer.server:
                self.drop(conn, errno.EPROTO, "data before the WebSocket upgrade request")
                return None
            hs = layer.hs = H11Handshake(ConnectionType.SERVER)
        try:
            hs.receive_data(head)
            events: list[Event] = list(hs.events())
        except RemoteProtocolError as exc:
            if layer.server:
                hint = exc.event_hint
                reject = hint if isinstance(hint, RejectConnection) else RejectConnection()
                self._reject(conn, hs, reject, "bad upgrade request: %s", exc)
            else:
                self.drop(conn, errno.EPROTO, "bad WebSocket upgrade response: %s", exc)
            return None
        for event in events:
            if isinstance(event, Request):
                return self._upgrade(conn, layer, hs, event)
            if isinstance(event, AcceptConnection):
                return self._accepted(conn, layer, hs, event)
            if isinstance(event, RejectConnection):
                self.drop(
                    conn, errno.EPROTO, "WebSocket upgrade refused: HTTP %d", event.status_code
                )
                return None
        if not layer.server:
            self.drop(conn, errno.EPROTO, "no WebSocket upgrade response")
        else:
            self._reject(conn, hs, RejectConnection(), "no upgrade request")
        return None

    def _upgrade(
        self, conn: Conn, layer: WSLayer, hs: H11Handshake, request: Request
    ) -> Connection | None:
        """Server: answer a valid upgrade request; RFC 7118 4.1 requires the ``sip`` subprotocol."""
        if not _good_key(request):
            self._reject(conn, hs, RejectConnection(status_code=400), "bad Sec-WebSocket-Key")
            return None
        sip = next((p for p in request.subprotocols if p.lower() == SUBPROTOCOL), None)
        if sip is None:
            self._reject(
                conn,
                hs,
                RejectConnection(status_code=400),
                "upgrade request without subprotocol sip (offered: %s)",
                ", ".join(request.subprotocols) or "none",
            )
            return None
        try:
            data = hs.send(AcceptConnection(subprotocol=sip))
        except LocalProtocolError as exc:  # e.g. a subprotocol that is not ASCII
            self._reject(conn, hs, RejectConnection(status_code=400), "%s", exc)
            return None
        ws = hs.connection
        assert ws is not None, "set by the accept"
        self._open(conn, layer, ws)
        self.queue(conn, data, None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("WebSocket from %s accepted (target %s)", conn.peer, request.target)
        return self._release(conn, layer, ws)

    def _accepted(
        self, conn: Conn, layer: WSLayer, hs: H11Handshake, event: AcceptConnection
    ) -> Connection | None:
        """Client: the server accepted the upgrade; it must have chosen ``sip`` (RFC 7118 4.1)."""
        if (event.subprotocol or "").lower() != SUBPROTOCOL:
            self.drop(
                conn,
                errno.EPROTO,
                "WebSocket server did not accept subprotocol sip (chose %s)",
                event.subprotocol,
            )
            return None
        ws = hs.connection
        assert ws is not None, "set by the accept"
        self._open(conn, layer, ws)
        return self._release(conn, layer, ws)

    def _release(self, conn: Conn, layer: WSLayer, ws: Connection) -> Connection | None:
        """The upgrade is done: queue the SIP messages held for it, in order."""
        held = layer.held
        layer.held = None
        for msg, callback in held or ():
            self.queue(conn, msg, callback)
            if conn.closed:
                return None
        return None if conn.closed else ws

    def _open(self, conn: Conn, layer: WSLayer, ws: Connection) -> None:
        layer.ws = ws
        layer.hs = None  # the h11 objects go: an idle connection keeps only the frame layer
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if self.loop is not None:
            conn.didit = self.loop.looptime

    def _reject(
        self, conn: Conn, hs: H11Handshake, reject: RejectConnection, why: str, *args: object
    ) -> None:
        """Server: answer a refused upgrade with an HTTP error, close, log."""
        try:
            data = hs.send(reject)
        except LocalProtocolError:
            data = b""
        if data:
            self.queue(conn, data, None)
            if not conn.closed:
                self.flush(conn)
        self.drop(conn, errno.ECONNABORTED, "WebSocket HTTP %d: " + why, reject.status_code, *args)
