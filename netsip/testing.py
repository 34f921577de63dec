"""Test helpers for applications built on netsip: loopback sockets, a fake clock, loop drivers.

This is the public counterpart of sipgo's ``siptest`` package and of the
small helper library Net::SIP's own tests share (``t/testlib.pl``: sockets
on the loopback, waits that give up after a timeout). It is a plain library
module: it imports neither pytest nor anything from :mod:`netsip.cli`, so it
works the same under unittest, pytest or a script. Import it explicitly
(``import netsip.testing``); :mod:`netsip` does not re-export it.

What it offers:

- loopback sockets on port 0: :func:`udp_socket`, :func:`tcp_listener`,
  :func:`connect`, :func:`addr_of`, and :func:`have_ipv6` /
  :func:`loopbacks` to know whether ``::1`` works on this machine;
- time under the test's control: :class:`FakeClock` for
  ``EventLoop(clock=...)`` and :func:`advance` to move it and run the timers
  that came due;
- driving a loop on the real clock: :func:`drive` (until a condition holds,
  :class:`TimeoutError` after a bound), :func:`spin` (a short while, to show
  that nothing more happens) and :func:`length_is` as a condition;
- what arrived: :func:`collector` (a receive callback and its list),
  :func:`datagrams` (drain a UDP socket), :func:`is_eof` (did the peer close);
- messages: :func:`sip_request` (raw bytes of a valid request) and
  :func:`pkt` (parse);
- leaks: :func:`open_fds` counts this process's file descriptors.

Every helper that waits is bounded: the loop drivers take a time limit and
raise :class:`TimeoutError` when it expires; the socket helpers never block
(``datagrams``, ``is_eof``) or connect with a timeout (``connect``).

Usage (a SocketPool on the loopback receiving one datagram, then a timer
fired by a fake clock)::

    >>> from netsip import EventLoop, SocketPool
    >>> from netsip.testing import (
    ...     FakeClock, addr_of, advance, collector, drive, length_is, sip_request, udp_socket)
    >>> with EventLoop() as loop, SocketPool("udp", udp_socket()) as pool, udp_socket() as peer:
    ...     got, receive = collector()
    ...     pool.attach_eventloop(loop, receive)
    ...     _ = peer.sendto(sip_request(method="OPTIONS"), addr_of(pool.master()).sockaddr())
    ...     drive(loop, length_is(got, 1), seconds=5.0)
    ...     packet, from_ = got[0]
    ...     print(packet.method(), from_.port == addr_of(peer).port)
    OPTIONS True
    >>> clock = FakeClock(1000.0)
    >>> with EventLoop(clock=clock) as loop:
    ...     fired = []
    ...     timer = loop.add_timer(30, lambda ev: fired.append(clock()))
    ...     advance(loop, clock, 60)
    >>> fired
    [1030.0]

Differences from Net::SIP's test library: no forking of test peers (run the
peer in the same event loop, or start a subprocess yourself); waits are
expressed as conditions on the event loop (:func:`drive`) rather than as
patterns in a child's output (``fd_grep``).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sized
from typing import Final, TypeAlias

from netsip.eventloop import EventLoop
from netsip.packet import Packet
from netsip.util import Addr, ip_is_v46

__all__ = [
    "LOOPBACK_IPS",
    "FakeClock",
    "Received",
    "addr_of",
    "advance",
    "collector",
    "connect",
    "datagrams",
    "drive",
    "family",
    "have_ipv6",
    "is_eof",
    "length_is",
    "loopbacks",
    "open_fds",
    "pkt",
    "sip_request",
    "spin",
    "tcp_listener",
    "udp_socket",
]

#: The loopback addresses, IPv4 first; ``::1`` may not work (see :func:`loopbacks`).
LOOPBACK_IPS: Final = ("127.0.0.1", "::1")

#: What :func:`collector` collects: ``(packet, from_)`` as a SocketPool reports them.
Received: TypeAlias = list[tuple[Packet, Addr]]


def _check_seconds(seconds: float, name: str = "seconds") -> None:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, not {seconds!r}")


# ------------------------------------------------------------------ sockets


def family(ip: str) -> socket.AddressFamily:
    """The address family of an IP literal.

    Args:
        ip: an IPv4 or IPv6 address (IPv6 without brackets).

    Returns:
        ``socket.AF_INET`` or ``socket.AF_INET6``.

    Raises:
        ValueError: ``ip`` is not an IP address.
    """
    fam = ip_is_v46(ip)
    if fam is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return socket.AddressFamily(fam)


def have_ipv6(kind: int = socket.SOCK_DGRAM) -> bool:
    """Whether a socket of ``kind`` can bind to the IPv6 loopback ``::1``.

    Args:
        kind: ``socket.SOCK_DGRAM`` (UDP) or ``socket.SOCK_STREAM`` (TCP).

    Returns:
        True if the bind works (containers often have no IPv6 at all).
    """
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, kind) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def loopbacks() -> list[str]:
    """The loopback addresses that work here for both UDP and TCP.

    Returns:
        ``["127.0.0.1"]``, plus ``"::1"`` where IPv6 UDP and TCP sockets can
        bind to it. Parametrise tests over this list.
    """
    ips = [LOOPBACK_IPS[0]]
    if have_ipv6(socket.SOCK_DGRAM) and have_ipv6(socket.SOCK_STREAM):
        ips.append(LOOPBACK_IPS[1])
    return ips


def udp_socket(ip: str = "127.0.0.1") -> socket.socket:
    """A UDP socket bound to ``ip`` on a port the system picks.

    Args:
        ip: the local IP address (``"::1"`` for IPv6).

    Returns:
        The bound, blocking socket; the caller closes it (or hands it to a
        ``SocketPool``, which then owns it).

    Raises:
        ValueError: ``ip`` is not an IP address.
        OSError: the bind failed (for example no IPv6 on this machine).
    """
    s = socket.socket(family(ip), socket.SOCK_DGRAM)
    try:
        s.bind((ip, 0))
    except OSError:
        s.close()
        raise
    return s


def tcp_listener(ip: str = "127.0.0.1", backlog: int = 128, rcvbuf: int = 0) -> socket.socket:
    """A listening TCP socket on ``ip`` on a port the system picks.

    Args:
        ip: the local IP address (``"::1"`` for IPv6).
        backlog: the ``listen()`` backlog; clients connect through it without
            an ``accept()`` (see :func:`connect`).
        rcvbuf: if not 0, ``SO_RCVBUF`` set before ``listen()``, so accepted
            sockets inherit it and the TCP window stays small (to test a
            peer that sends faster than it is read).

    Returns:
        The listening socket; the caller closes it (or hands it to a
        ``SocketPool``, which then owns it).

    Raises:
        ValueError: ``ip`` is not an IP address.
        OSError: bind or listen failed.
    """
    s = socket.socket(family(ip), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((ip, 0))
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    return s


def addr_of(s: socket.socket) -> Addr:
    """The local address of a bound socket.

    Args:
        s: a bound socket (UDP, TCP listener or connected TCP).

    Returns:
        Its ``getsockname()`` as an :class:`~netsip.util.Addr` (no ``proto``).
    """
    return Addr.parse(s.getsockname()[:2])


def connect(dst: Addr | str | tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A TCP client connected to ``dst``.

    The connection completes through the listener's backlog, so the server
    side need not ``accept()`` first (a ``SocketPool`` accepts it when its
    loop runs).

    Args:
        dst: the listening address: an Addr, ``"ip:port"`` or ``(ip, port)``.
        timeout: how long the connect may take, in seconds.

    Returns:
        The connected socket, blocking (no timeout) once connected; the
        caller closes it.

    Raises:
        TimeoutError: the connect took longer than ``timeout``.
        OSError: the connect failed (for example ``ConnectionRefusedError``).
        ValueError: ``dst`` is not an address.
    """
    _check_seconds(timeout, "timeout")
    addr = Addr.parse(dst)
    c = socket.create_connection((addr.addr, addr.port), timeout=timeout)
    c.settimeout(None)
    return c


def datagrams(s: socket.socket) -> list[bytes]:
    """Every datagram waiting on a UDP socket, in order of arrival; never blocks.

    Args:
        s: a UDP socket.

    Returns:
        The datagrams (an empty list if none is waiting).
    """
    out: list[bytes] = []
    while True:
        try:
            out.append(s.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def is_eof(s: socket.socket) -> bool:
    """Whether the peer of a connected TCP socket closed it; never blocks.

    Args:
        s: a connected stream socket. Unread data is left in place.

    Returns:
        True at EOF or after a reset, False while the connection is open
        (also while data is waiting).
    """
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def open_fds() -> int:
    """How many file descriptors this process has open.

    Compare two counts, before and after, to show that code closes what it
    opens: the count itself includes the descriptor used to read it.

    Returns:
        The number of entries in ``/proc/self/fd`` (Linux) or ``/dev/fd``.

    Raises:
        OSError: neither directory exists on this system.
    """
    for d in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(d):
            return len(os.listdir(d))
    raise OSError("cannot count open file descriptors: no /proc/self/fd or /dev/fd")


# ------------------------------------------------------------------ messages


def sip_request(
    n: int = 1, body: bytes = b"", callid: str = "c1", method: str = "OPTIONS", proto: str = "TCP"
) -> bytes:
    """The wire form of a valid SIP request from 127.0.0.1:5060.

    Args:
        n: its CSeq number; also part of the branch and From tag, so each
            ``n`` is a new transaction of the same dialog.
        body: the body; ``Content-Length`` matches it.
        callid: the Call-ID.
        method: the method (also in CSeq).
        proto: the transport in the Via header (``"UDP"``, ``"TCP"``, ``"TLS"``).

    Returns:
        The request as bytes, ready to send or to :func:`pkt`.
    """
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto} 127.0.0.1:5060;branch=z9hG4bK-{callid}-{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {n} {method}\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"\r\n"
    ).encode() + body


def pkt(data: bytes) -> Packet:
    """Parse a SIP message.

    Args:
        data: the wire form.

    Returns:
        A :class:`~netsip.packet.Request` or :class:`~netsip.packet.Response`.

    Raises:
        netsip.packet.PacketError: ``data`` is not a valid SIP message.
    """
    return Packet.new_from_string(data)


def collector() -> tuple[Received, Callable[[Packet, Addr], None]]:
    """A receive callback and the list it fills.

    Returns:
        ``(got, callback)``: pass ``callback`` to
        ``SocketPool.attach_eventloop``; each received ``(packet, from_)``
        is appended to ``got``.
    """
    got: Received = []

    def cb(packet: Packet, from_: Addr) -> None:
        got.append((packet, from_))

    return got, cb


# ------------------------------------------------------------------ time and the loop


class FakeClock:
    """A clock the test moves by hand, for ``EventLoop(clock=FakeClock())``.

    Calling it returns :attr:`now`. Nothing moves it but the test: assign
    :attr:`now`, call :meth:`advance`, or let :func:`advance` step it while
    it runs the loop. Use an epoch-like start value (the default) if the code
    under test passes absolute times to ``add_timer``.

    Args:
        now: the initial time, in seconds.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        """Move the clock by ``dt`` seconds (negative to model a clock step back)."""
        self.now += dt

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


def advance(
    loop: EventLoop, clock: FakeClock, seconds: float, step: float = 0.0625, polls: int = 3
) -> None:
    """Move a fake clock forward, running the loop at each step.

    The clock goes forward in steps of ``step`` seconds (the default is a
    binary fraction, so the times stay exact); at each step the loop is
    polled ``polls`` times without blocking (``loop.loop(0)``), which fires
    the timers that came due and lets loopback traffic go a few hops (send,
    receive, answer). Before the first step the loop is polled at the
    current time, for what is already in flight.

    Args:
        loop: an EventLoop built with ``clock=clock``.
        clock: the fake clock.
        seconds: how far to move the clock (>= 0).
        step: the clock step (> 0).
        polls: loop polls per step (>= 1).

    Raises:
        ValueError: a negative ``seconds``, a ``step`` that is not positive,
            ``polls`` below 1.
    """
    _check_seconds(seconds)
    _check_seconds(step, "step")
    if step == 0:
        raise ValueError("step must be > 0")
    if polls < 1:
        raise ValueError(f"polls must be >= 1, not {polls!r}")
    end = clock.now + seconds
    for _ in range(polls):
        loop.loop(0)
    while clock.now < end:
        clock.now = min(clock.now + step, end)
        for _ in range(polls):
            loop.loop(0)


def drive(
    loop: EventLoop, cond: Callable[[], object], seconds: float = 5.0, what: str = ""
) -> None:
    """Run the loop until ``cond()`` is true, for at most ``seconds`` of real time.

    The bound is on the real (monotonic) clock whatever clock the loop uses,
    so a loop with a :class:`FakeClock` is bounded too (its timers only fire
    when the test moves the clock: use :func:`advance` for those). The loop
    looks at ``cond`` after every cycle and at least every
    ``netsip.eventloop.STOPVAR_POLL_INTERVAL`` seconds.

    Args:
        loop: the event loop.
        cond: a zero-argument callable; its result counts as true or false.
        seconds: the time limit (>= 0).
        what: words for the condition in the error message (default: the
            callable's name).

    Raises:
        TimeoutError: ``cond()`` was still false when the time was up.
        RuntimeError: the loop ended before that (closed by a callback).
        ValueError: ``seconds`` is negative or not finite.
        Exception: whatever a callback or ``cond`` raised.
    """
    _check_seconds(seconds)
    deadline = time.monotonic() + seconds
    reached = False
    timed_out = False

    def stop() -> bool:
        nonlocal reached, timed_out
        if cond():
            reached = True
        elif time.monotonic() >= deadline:
            timed_out = True
        return reached or timed_out

    loop.loop(None, stop)
    if reached:
        return
    desc = what or getattr(cond, "__qualname__", None) or repr(cond)
    if timed_out:
        raise TimeoutError(f"drive: condition {desc} not reached within {seconds} s")
    raise RuntimeError(f"drive: the event loop ended before condition {desc} was reached")


def spin(loop: EventLoop, seconds: float = 0.2) -> None:
    """Run the loop for ``seconds`` of real time (to show that nothing more happens).

    Args:
        loop: the event loop.
        seconds: how long (>= 0).

    Raises:
        ValueError: ``seconds`` is negative or not finite.
        Exception: whatever a callback raised.
    """
    _check_seconds(seconds)
    deadline = time.monotonic() + seconds
    loop.loop(None, lambda: time.monotonic() >= deadline)


def length_is(items: Sized, n: int) -> Callable[[], bool]:
    """A condition for :func:`drive`: ``items`` has exactly ``n`` elements.

    Args:
        items: a list (or anything sized) that callbacks fill.
        n: the length to wait for.

    Returns:
        A zero-argument callable; its repr (used in :func:`drive`'s error
        message) shows the length wanted and the length now.
    """
    return _LengthIs(items, n)


class _LengthIs:
    __slots__ = ("items", "n")

    def __init__(self, items: Sized, n: int) -> None:
        self.items = items
        self.n = n

    def __call__(self) -> bool:
        return len(self.items) == self.n

    def __repr__(self) -> str:
        return f"length_is({self.n}) (length now {len(self.items)})"
