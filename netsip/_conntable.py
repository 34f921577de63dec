"""The connections of a stream :class:`netsip.socketpool.SocketPool`: lookup, drop, expiry.

Ports the bookkeeping of Perl's ``Net::SIP::SocketPool``: ``_add_socket`` and
``_del_socket`` (the pool's sockets by fd), ``_error`` (a connection fails:
close it, tell the callbacks waiting on it), ``_timeout_sockets`` (close
idle connections) and the per-connection tid list that sends a response
back over the connection its request came in on (RFC 3261 section 18.2.2).

How it works: :class:`ConnTable` keeps the connections by fd, by peer
``(ip, port)`` and by the tids of the requests they carried (at most
``MAX_TIDLIST`` per connection, the oldest forgotten first).
:meth:`ConnTable.drop` is the one way a connection leaves the pool: it stops
watching the socket, forgets it everywhere, closes it and invokes every
callback still waiting on it with the errno (exactly once, also when one of
them re-enters or raises). Idle connections are closed by one periodic
timer that exists only while there are connections; a connection being set
up has a ``CONNECT_TIMEOUT`` timer of its own.

Differences from Net::SIP: the connect timer is per connection, not part of
the idle scan; a tid is dropped from the pool's map only while it still
points to the connection that forgets it (Perl deletes it whatever it points
to, so a newer connection carrying the same tid lost it); every callback
still waiting on a dropped connection gets the errno (Perl keeps one
``error_cb`` per connection).

Performance plan: the tables are dicts, so nothing scans all connections
per event (only the idle timer does, every ``MIN_EXPIRE/2`` seconds); one
connection per peer is the usual case and is handled without list searches.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from functools import partial

from netsip._conn import Conn
from netsip._log import get_logger
from netsip._settings import Settings
from netsip.eventloop import Callback, EventLoopLike, TimerLike
from netsip.util import invoke_callback

__all__ = ["ConnTable"]

# The public module's logger: logging is configured by the name users know.
log = get_logger("netsip.socketpool")


class ConnTable:
    """The connections of a stream pool and their timers.

    Args:
        cfg: the pool's settings (replaced when they change).
        master: the pool's master socket: a connected one carries traffic
            like a connection (but never expires); a listening one is the
            :class:`~netsip._accept.Acceptor`'s.
    """

    def __init__(self, cfg: Settings, master: Conn) -> None:
        self.cfg = cfg
        self.master = master
        self.loop: EventLoopLike | None = None
        self.closed = False  # the pool was closed: pending callbacks stay silent
        self.conns: dict[int, Conn] = {}  # fd -> connection (not the master)
        self.tids: dict[str, Conn] = {}  # request tid -> connection it came in on
        self.by_peer: dict[tuple[str, int], list[Conn]] = {}
        self.expire_timer: TimerLike | None = None

    def all(self) -> list[Conn]:
        """The connections, a connected master first."""
        conns = list(self.conns.values())
        master = self.master
        if master.peer is not None and not master.closed:
            conns.insert(0, master)
        return conns

    def add(self, conn: Conn, *, arm_expire: bool = True) -> None:
        """Add a new connection (Perl: ``_add_socket``)."""
        self.conns[conn.fd] = conn
        assert conn.peer is not None
        self.by_peer.setdefault((conn.peer.addr, conn.peer.port), []).append(conn)
        if self.loop is not None:
            conn.didit = self.loop.looptime
        if arm_expire:
            self.arm_expire_timer()

    def drop(
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
        loop = self.loop
        if loop is not None:
            loop.del_fd(conn.fd)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        if conn.peer is not None:
            key = (conn.peer.addr, conn.peer.port)
            same = self.by_peer.get(key)
            if same is not None:
                if len(same) == 1:  # the usual case: one connection per peer
                    if same[0] is conn:
                        del self.by_peer[key]
                elif conn in same:
                    same.remove(conn)
        tids = self.tids
        for tid in conn.tids:
            if tids.get(tid) is conn:
                del tids[tid]
        conn.close()
        if not self.conns and self.expire_timer is not None:
            self.expire_timer.cancel()
            self.expire_timer = None
        # Each pending callback exactly once, even if one of them re-enters or raises.
        if conn.wcallbacks:
            self.fail_callbacks(conn.wcallbacks, err)

    def remember_tid(self, conn: Conn, tid: str) -> None:
        """``conn`` carried the request ``tid``: its responses go back over ``conn``."""
        # Trimmed by hand rather than deque(maxlen=...): a forgotten tid must
        # leave the pool's map too, and a changed MAX_TIDLIST applies to
        # existing connections.
        tids = conn.tids
        limit = self.cfg.max_tidlist
        pool_tids = self.tids
        while len(tids) >= limit:
            old = tids.popleft()
            if pool_tids.get(old) is conn:
                del pool_tids[old]
        tids.append(tid)
        pool_tids[tid] = conn

    # ---- the callbacks of queued packets

    def fire_written(self, conn: Conn, _timer: object = None) -> None:
        """Invoke the callbacks (with 0) of the packets written completely, in order."""
        cbs = conn.wcallbacks
        try:
            while cbs and cbs[0][0] <= conn.written and not conn.closed:
                invoke_callback(cbs.popleft()[1], 0)
        except BaseException:
            # A callback raised; it propagates out of loop(). The callbacks of
            # the other written packets still get their 0, in the next cycle.
            loop = self.loop
            if loop is not None and cbs and cbs[0][0] <= conn.written and not conn.closed:
                loop.add_timer(0, partial(self.fire_written, conn), name="socketpool-callbacks")
            raise

    def fail_callbacks(
        self, cbs: deque[tuple[int, Callback]], err: int, _timer: object = None
    ) -> None:
        """Invoke each pending callback with ``err`` exactly once, even if one re-enters."""
        if self.closed:
            return  # close() does not invoke pending callbacks
        try:
            while cbs:
                invoke_callback(cbs.popleft()[1], err)
        except BaseException:
            # as in fire_written: the rest get their errno in the next cycle
            loop = self.loop
            if loop is not None and cbs:
                retry = partial(self.fail_callbacks, cbs, err)
                loop.add_timer(0, retry, name="socketpool-callbacks")
            raise

    # ---- timers

    def arm_connect_timer(self, conn: Conn) -> None:
        """Give ``conn`` ``CONNECT_TIMEOUT`` seconds to become established."""
        if self.loop is not None:
            conn.timer = self.loop.add_timer(
                self.cfg.connect_timeout,
                partial(self._connect_timeout, conn),
                name="socketpool-connect-timeout",
            )

    def _connect_timeout(self, conn: Conn, _timer: object = None) -> None:
        conn.timer = None
        if conn.inside_connect:
            self.drop(conn, errno.ETIMEDOUT, "%s timed out", conn.setup_phase())

    def arm_expire_timer(self) -> None:
        """Start the idle check if there are connections and it is not running."""
        loop = self.loop
        if loop is None or self.expire_timer is not None or not self.conns:
            return
        # Perl checks every int(MIN_EXPIRE/2)+1 seconds.
        interval = int(self.cfg.min_expire / 2) + 1
        self.expire_timer = loop.add_timer(interval, self._expire, interval, "socketpool-timeout")

    def _expire(self, _timer: object = None) -> None:
        """Close connections idle for longer than the (load dependent) expiry time."""
        conns = self.conns
        loop = self.loop
        if conns and loop is not None:
            cfg = self.cfg
            # The more connections, the sooner they expire (n counts the master
            # in Perl's MIN + (MAX-MIN)/(n-1), so this divides by the connections).
            expire = cfg.min_expire + (cfg.max_expire - cfg.min_expire) / len(conns)
            now = loop.looptime
            idle = [
                c
                for c in conns.values()
                if not c.inside_connect and now - c.didit > expire and c.keep_until <= now
            ]
            for conn in idle:
                self.drop(conn, errno.ETIMEDOUT, "idle for %.1fs", expire, level=logging.DEBUG)
        if not conns and self.expire_timer is not None:
            self.expire_timer.cancel()
            self.expire_timer = None
