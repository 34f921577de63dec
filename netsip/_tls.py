"""TLS for :class:`netsip.socketpool.SocketPool`: contexts and the TLS connection type.

Ports the TLS parts of Perl's ``Net::SIP::SocketPool``, which hands the TCP
socket of a connection to ``IO::Socket::SSL->start_SSL`` and drives
``accept_SSL`` / ``connect_SSL`` from the event loop until the handshake is
done, with separate option sets for the [m]aster (server) side and the
[c]lient side.

How it works:

* :func:`make_contexts` builds the two :class:`ssl.SSLContext` objects of a
  pool from its ``tls`` options: the server context is used for connections
  the pool accepts, the client context for connections it opens; ready
  contexts can be passed instead;
* :class:`TLSConn` is TLS built on the TCP connection type
  :class:`netsip._conn.Conn` (as sipgo's ``transport_tls.go`` builds on its
  TCP connection) and owns its readiness logic. Once TCP is up the pool
  calls :meth:`TLSConn.establish`: it wraps the socket in a non-blocking
  :class:`ssl.SSLSocket` and runs the handshake from the loop, one step per
  readiness (server side for accepted connections, client side for opened
  ones), watching the direction each step waits for; when it is done it
  hands the connection back to the pool as established. The handshake
  counts against ``CONNECT_TIMEOUT``; data queued meanwhile is written after it;
* reads take at most one TLS record (16 KiB) and the pool drains what
  OpenSSL has buffered (``pending``). ``SSLWantReadError`` /
  ``SSLWantWriteError`` become ``BlockingIOError``; when the TLS layer waits
  for the *other* direction (a read that must first write, e.g. a TLS 1.3
  KeyUpdate answer; a write that must first read) the connection remembers
  it in ``read_wants_write`` / ``write_wants_read``, watches that direction
  (:meth:`TLSConn.write_interest`), and its handlers retry the waiting
  operation first when it comes;
* client side: SNI carries the destination's host name when one is known
  (``Addr.host``), never an IP address (RFC 6066 section 3); with
  ``check_hostname`` the certificate must match that name exactly, wildcards
  excluded (RFC 5922 section 7.2, IO::Socket::SSL's "sip" scheme), or the
  destination IP address when only an address is known (IO::Socket::SSL
  verifies the peer address then, too);
* TLS errors are re-raised as :class:`OSError` with an errno the pool hands to
  ``sendto`` callbacks: ``EPROTO`` for anything the TLS layer rejects (an
  untrusted or mismatching certificate, a missing client certificate, a peer
  that does not speak TLS, a TLS alert), ``ECONNRESET`` for a peer that closed
  the connection during the handshake; socket errors keep their own errno;
* closing sends a ``close_notify`` alert if the socket takes it at once and
  never waits for the peer's (RFC 8446 section 6.1).

Differences from Net::SIP: TLS 1.2 is the minimum (RFC 8996) and
renegotiation is off; a failed handshake closes only that connection, with
``EPROTO`` for the callbacks of what was queued on it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Final

from netsip._conn import Conn, ConnFactory, Handler, StreamIO
from netsip._log import get_logger
from netsip.eventloop import EV_READ, EV_WRITE
from netsip.util import Addr, ip_canonical, ip_is_v46

__all__ = [
    "TLS_OPTIONS",
    "TLS_READSIZE",
    "TLSConn",
    "TLSContexts",
    "conn_factory",
    "make_contexts",
    "server_hostname",
]

# The public module's logger: logging is configured by the name users know.
log = get_logger("netsip.socketpool")

#: Plaintext bytes per read: one TLS record at most (RFC 8446 section 5.1),
#: so nothing decrypted waits inside OpenSSL while the loop waits in select.
TLS_READSIZE: Final = 2**14
#: Plaintext bytes per write: one full record. A write that must wait is
#: retried with at least the same bytes (OpenSSL's rule), which holds because
#: the pool only ever appends to its write buffer meanwhile.
_WRITE_CHUNK: Final = 2**14

#: The keys :func:`make_contexts` accepts.
TLS_OPTIONS: Final = frozenset(
    {"certfile", "keyfile", "cafile", "verify_client", "check_hostname",
     "server_context", "client_context"}
)  # fmt: skip

_SSL_C: Final = re.compile(r" \(_ssl\.c:\d+\)$")
_VERIFY_CLIENT: Final = {0: ssl.CERT_NONE, -1: ssl.CERT_OPTIONAL, 1: ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class TLSContexts:
    """The two contexts of a TLS pool (Perl's ``tls{m}`` and ``tls{c}``).

    Attributes:
        server: for connections the pool accepts.
        client: for connections the pool opens.
    """

    server: ssl.SSLContext
    client: ssl.SSLContext


def _path(opts: Mapping[str, object], key: str) -> str | None:
    value = opts.get(key)
    if value is None or isinstance(value, str):
        return value
    path = os.fspath(value) if isinstance(value, os.PathLike) else None
    if not isinstance(path, str):
        raise TypeError(f"tls option {key} must be a path, not {type(value).__name__}")
    return path


def _context(opts: Mapping[str, object], key: str) -> ssl.SSLContext | None:
    value = opts.get(key)
    if value is not None and not isinstance(value, ssl.SSLContext):
        raise TypeError(f"tls option {key} must be an ssl.SSLContext, not {type(value).__name__}")
    return value


def _harden(ctx: ssl.SSLContext) -> None:
    # RFC 8996: nothing below TLS 1.2. No renegotiation either (TLS 1.2 only):
    # it is the one case where a write has to wait for a read.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION


def make_contexts(tls: Mapping[str, object] | None) -> TLSContexts:
    """Build the server and client contexts of a TLS pool.

    Args:
        tls: ``certfile`` (PEM certificate chain, also the client certificate
            for connections the pool opens, as in Perl), ``keyfile`` (default:
            the key is in ``certfile``), ``cafile`` (trust anchors for both
            directions; default: the system's), ``verify_client`` (0: do not
            ask for a client certificate, -1: ask but do not require one, 1:
            require one; default 0), ``check_hostname`` (check the server
            certificate against the destination's name or address; default
            True). Or ready ``server_context`` / ``client_context``
            (:class:`ssl.SSLContext`), each replacing the context the other
            options would build. None means all defaults.

    Returns:
        The contexts. Built ones accept TLS 1.2 and later, without renegotiation.

    Raises:
        ValueError: an unknown option, a bad ``verify_client``, ``keyfile``
            without ``certfile``, or an option that affects no context.
        TypeError: an option of the wrong type.
        OSError: a file that cannot be read (``ssl.SSLError`` for bad PEM data).
    """
    opts = dict(tls or {})
    unknown = sorted(set(opts) - TLS_OPTIONS)
    if unknown:
        raise ValueError(f"unknown tls option(s) {', '.join(unknown)}")
    server = _context(opts, "server_context")
    client = _context(opts, "client_context")
    certfile = _path(opts, "certfile")
    keyfile = _path(opts, "keyfile")
    cafile = _path(opts, "cafile")
    if keyfile is not None and certfile is None:
        raise ValueError("tls option keyfile needs certfile")
    verify_client = opts.get("verify_client", 0)
    if verify_client is None:
        verify_client = 0
    if isinstance(verify_client, bool):
        verify_client = int(verify_client)
    if not isinstance(verify_client, int) or verify_client not in _VERIFY_CLIENT:
        raise ValueError(f"invalid tls option verify_client {verify_client!r} (0, 1 or -1)")
    check_hostname = opts.get("check_hostname", True)
    if not isinstance(check_hostname, int):  # bool, or Perl-style 0/1
        raise TypeError(f"tls option check_hostname must be a bool, not {check_hostname!r}")
    if server is not None and "verify_client" in opts:
        raise ValueError("tls option verify_client has no effect with server_context")
    if client is not None and "check_hostname" in opts:
        raise ValueError("tls option check_hostname has no effect with client_context")
    if server is not None and client is not None and (certfile or cafile):
        raise ValueError("certfile/keyfile/cafile have no effect with both contexts given")

    if server is None:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(server)
        if certfile is not None:
            server.load_cert_chain(certfile, keyfile)
        else:
            log.info("TLS pool without certfile: accepted connections cannot complete TLS")
        server.verify_mode = _VERIFY_CLIENT[verify_client]
        if verify_client:
            if cafile is not None:
                server.load_verify_locations(cafile)
            else:
                server.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    if client is None:
        # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname by default
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _harden(client)
        client.check_hostname = bool(check_hostname)
        if cafile is not None:
            client.load_verify_locations(cafile)
        else:
            client.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if certfile is not None:
            client.load_cert_chain(certfile, keyfile)
    return TLSContexts(server, client)


def server_hostname(peer: Addr) -> str:
    """The name to send as SNI and to check the server certificate against.

    The destination's host name when one is known, else its IP address.
    Python sends no SNI for an IP address and checks it against the
    certificate's IP address entries instead (``check_hostname``).
    """
    host = peer.host
    if host:
        bare = host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host
        family = ip_is_v46(bare)
        if family is None:
            return bare.rstrip(".")  # a name (a trailing dot is no part of it)
        return ip_canonical(bare, family)
    return peer.addr


def _pairs(items: object, key: str) -> list[str]:
    """The values of the ``(key, value)`` pairs in ``items`` (getpeercert() data)."""
    if not isinstance(items, tuple):
        return []
    return [
        item[1]
        for item in items
        if isinstance(item, tuple)
        and len(item) == 2
        and item[0] == key
        and isinstance(item[1], str)
    ]


def _os_error(exc: ssl.SSLError) -> OSError:
    """An OSError with the errno the pool reports for a TLS error."""
    # args[1] reads "[SSL: REASON_CODE] what it means (_ssl.c:1234)"
    text = _SSL_C.sub("", str(exc.args[1] if len(exc.args) > 1 else exc))
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return OSError(errno.ECONNRESET, f"closed by peer during TLS: {text}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return OSError(errno.EPROTO, f"certificate verify failed: {exc.verify_message}")
    return OSError(errno.EPROTO, text)


@dataclass(slots=True, eq=False)
class TLSConn(Conn):
    """A connection of a TLS pool: a TCP connection plus, once started, its TLS layer.

    Attributes (besides those of :class:`~netsip._conn.Conn`):
        contexts: the pool's contexts (server side for accepted connections).
        server_side: accepted by the pool (TLS server) rather than opened by it.
        tls_sock: the :class:`ssl.SSLSocket` once :meth:`start` ran (then also ``sock``).
        established: the handshake completed.
        failed: the TLS layer failed; no ``close_notify`` is sent then.
        read_wants_write: a read waits until the socket is writable.
        write_wants_read: a write waits until the socket is readable.
        verify_name: the host name the server certificate must name exactly
            (client side with ``check_hostname``; None for IP addresses).
    """

    cross_wants: ClassVar[bool] = True
    dontwait: ClassVar[bool] = False  # SSLSocket calls take no flags

    contexts: TLSContexts | None = None
    server_side: bool = False
    tls_sock: ssl.SSLSocket | None = None
    established: bool = False
    failed: bool = False
    read_wants_write: bool = False
    write_wants_read: bool = False
    verify_name: str | None = None

    # ---- readiness: what the pool calls on any connection

    def read_handler(self, io: StreamIO) -> Handler:
        """The callback for ``EV_READ``: a handshake step, or a read (after a waiting write)."""
        return partial(self._handshaking if self.inside_connect else self._readable, io)

    def write_handler(self, io: StreamIO) -> Handler:
        """The callback for ``EV_WRITE``: the TCP connect check, a handshake step, or a write."""
        if self.tls_sock is None:
            return Conn.write_handler(self, io)  # TCP is still connecting
        return partial(self._handshaking if self.inside_connect else self._writable, io)

    def write_interest(self, want: bool) -> bool:
        """Watch EV_WRITE for a write that waits for it or for a read that does."""
        if self.inside_connect:
            return want  # the handshake steps choose the direction themselves
        return (want and not self.write_wants_read) or self.read_wants_write

    def establish(self, io: StreamIO) -> bool:
        """TCP is up: start TLS (Perl: ``_tls_accept`` / ``_tls_connect``).

        Returns True once the handshake is done (it calls ``io.established``
        then, which asks again). The handshake has to finish before the
        connect timer fires (``CONNECT_TIMEOUT``); accepted connections get
        that timer here.
        """
        if self.tls_sock is not None:
            return True
        if self.timer is None:
            io.arm_connect_timer(self)
        try:
            self.start()
        except OSError as exc:
            io.drop(self, exc.errno or errno.EPROTO, "TLS setup failed: %s", exc)
            return False
        self._handshaking(io)
        return False

    def setup_phase(self) -> str:
        """What the connection waits for while ``inside_connect`` (for the log)."""
        return "connect" if self.tls_sock is None else "TLS handshake"

    def _handshaking(self, io: StreamIO, _fd: object = None) -> None:
        """One handshake step; watch the direction it waits for, or go on as established."""
        try:
            want = self.handshake()
        except OSError as exc:
            # at the default level (rate-limited like every netsip line): a
            # refused certificate or no shared cipher is an operator's problem
            io.drop(
                self,
                exc.errno or errno.EPROTO,
                "TLS handshake failed: %s",
                exc,
                level=logging.WARNING,
            )
            return
        if want is None:
            io.watch_write(self, False)
            io.established(self)
        elif want == EV_READ:
            io.watch_write(self, False)
            io.watch_read(self)
        else:
            # not readable-and-retry while the handshake waits to write: that would spin
            io.unwatch_read(self)
            io.watch_write(self, True)

    def _readable(self, io: StreamIO, _fd: object = None) -> None:
        """EV_READ once established (a write waiting for it goes first)."""
        if self.write_wants_read:
            self.write_wants_read = False
            io.flush(self)
            if self.closed:
                return
        self.read_wants_write = False
        io.read(self)
        if self.read_wants_write and not self.closed:
            io.watch_write(self, True)

    def _writable(self, io: StreamIO, _fd: object = None) -> None:
        """EV_WRITE once established (a read waiting for it goes first)."""
        if self.read_wants_write:
            self.read_wants_write = False
            io.read(self)
            if self.closed:
                return
        io.flush(self)  # also decides whether EV_WRITE stays watched

    # ---- the TLS layer

    def start(self) -> None:
        """Wrap the connected TCP socket; the handshake has not started yet.

        Raises:
            OSError: the socket is not connected any more, or TLS setup failed.
        """
        contexts = self.contexts
        assert contexts is not None, "made by conn_factory"
        raw = self.sock
        raw.getpeername()  # fails (ENOTCONN ...) while raw still owns the socket
        try:
            if self.server_side:
                tls_sock = contexts.server.wrap_socket(
                    raw, server_side=True, do_handshake_on_connect=False
                )
            else:
                assert self.peer is not None
                name = server_hostname(self.peer)
                tls_sock = contexts.client.wrap_socket(
                    raw,
                    server_side=False,
                    do_handshake_on_connect=False,
                    server_hostname=name,
                )
                if contexts.client.check_hostname and ip_is_v46(name) is None:
                    self.verify_name = name
        except ValueError as exc:  # e.g. a host name that cannot be encoded
            self.failed = True
            raise OSError(errno.EINVAL, f"cannot start TLS: {exc}") from exc
        self.tls_sock = tls_sock
        self.sock = tls_sock  # raw is detached into it: closing goes through TLS

    def handshake(self) -> int | None:
        """One non-blocking handshake step.

        Returns:
            ``EV_READ`` or ``EV_WRITE``: wait until the socket is ready that
            way and call again; None: the handshake is complete.

        Raises:
            OSError: the handshake failed (errno as in the module docstring).
        """
        sock = self.tls_sock
        assert sock is not None
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            return EV_READ
        except ssl.SSLWantWriteError:
            return EV_WRITE
        except ssl.SSLError as exc:
            self.failed = True
            raise _os_error(exc) from exc
        except OSError as exc:
            self.failed = not isinstance(exc, BlockingIOError)
            raise
        if self.verify_name is not None:
            self._no_wildcard_match(sock, self.verify_name)
        self.established = True
        if log.isEnabledFor(logging.DEBUG):
            cert = sock.getpeercert()
            log.debug(
                "TLS %s with %s: %s, %s, peer certificate %s",
                "accepted" if self.server_side else "connected",
                self.peer,
                sock.version(),
                (sock.cipher() or ("?",))[0],
                cert.get("subject") if cert else None,
            )
        return None

    def _no_wildcard_match(self, sock: ssl.SSLSocket, name: str) -> None:
        """RFC 5922 section 7.2: a SIP domain matches no wildcard certificate name.

        OpenSSL has checked that the certificate names ``name``, possibly by a
        wildcard (IO::Socket::SSL's "sip" scheme allows none): require an
        exact DNS subjectAltName (or, without any, common name).
        """
        cert = sock.getpeercert() or {}
        names = _pairs(cert.get("subjectAltName"), "DNS")
        if not names:
            subject = cert.get("subject")
            rdns = subject if isinstance(subject, tuple) else ()
            names = [v for rdn in rdns for v in _pairs(rdn, "commonName")]
        try:
            wanted = {name.lower(), name.encode("idna").decode("ascii").lower()}
        except UnicodeError:
            wanted = {name.lower()}
        if not wanted.intersection(n.lower() for n in names):
            self.failed = True
            raise OSError(
                errno.EPROTO,
                f"certificate names {name!r} only by a wildcard (RFC 5922 section 7.2)",
            )

    def recv_into(self, view: memoryview, nbytes: int) -> int:
        """Decrypt up to one record into ``view``; 0 when the peer closed.

        Raises:
            BlockingIOError: nothing to read yet (``read_wants_write`` is set
                if the TLS layer first has to write).
            OSError: the connection or the TLS layer failed.
        """
        sock = self.tls_sock
        assert sock is not None
        try:
            return sock.recv_into(view, min(nbytes, TLS_READSIZE))
        except ssl.SSLWantReadError:
            raise BlockingIOError(errno.EAGAIN, "TLS record incomplete") from None
        except ssl.SSLWantWriteError:
            self.read_wants_write = True
            raise BlockingIOError(errno.EAGAIN, "TLS read waits for a write") from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0  # close_notify, or a plain EOF (ragged, but over all the same)
        except ssl.SSLError as exc:
            self.failed = True
            raise _os_error(exc) from exc
        except OSError as exc:
            self.failed = not isinstance(exc, BlockingIOError)
            raise

    def send(self, data: bytearray) -> int:
        """Encrypt and write the start of ``data`` (at most one record).

        Returns:
            The plaintext bytes taken (all of the chunk: TLS writes are whole).

        Raises:
            BlockingIOError: the socket is full (``write_wants_read`` is set
                if the TLS layer first has to read).
            OSError: the connection or the TLS layer failed.
        """
        sock = self.tls_sock
        assert sock is not None
        try:
            if len(data) <= _WRITE_CHUNK:
                return sock.send(data)
            with memoryview(data) as whole, whole[:_WRITE_CHUNK] as chunk:
                return sock.send(chunk)
        except ssl.SSLWantWriteError:
            raise BlockingIOError(errno.EAGAIN, "TLS write blocked") from None
        except ssl.SSLWantReadError:
            self.write_wants_read = True
            raise BlockingIOError(errno.EAGAIN, "TLS write waits for a read") from None
        except ssl.SSLError as exc:
            self.failed = True
            raise _os_error(exc) from exc
        except OSError as exc:
            self.failed = not isinstance(exc, BlockingIOError)
            raise

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds that the next read returns at once."""
        sock = self.tls_sock
        return sock.pending() if sock is not None else 0

    def close(self) -> None:
        """Send close_notify if that is possible without waiting, then close."""
        sock = self.tls_sock
        if sock is not None and self.established and not self.failed:
            # SSL_shutdown on a non-blocking socket: sends our alert and gives
            # up (SSLWantReadError) waiting for the peer's.
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()
        self.sock.close()


def conn_factory(contexts: TLSContexts) -> ConnFactory:
    """The :class:`~netsip._conn.ConnFactory` of a TLS pool using ``contexts``."""

    def new(
        sock: socket.socket, peer: Addr | None, *, master: bool = False, accepted: bool = False
    ) -> Conn:
        # "connecting" until the handshake is done, from the start (a listener never is)
        return TLSConn(
            sock,
            sock.fileno(),
            peer=peer,
            master=master,
            inside_connect=peer is not None,
            contexts=contexts,
            server_side=accepted,
        )

    return new
