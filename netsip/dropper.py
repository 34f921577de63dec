"""Port of Perl's ``Net::SIP::Dropper``, ``Dropper::ByIPPort`` and ``Dropper::ByField``.

A :class:`Dropper` sits early in a :class:`~netsip.chain.ReceiveChain` and
drops messages (no answer, no further processing) that one of its
callbacks flags. Two callbacks come with it:

- :class:`ByIPPort`: drops what comes from a source that sent ``attempts``
  or more messages within the last ``interval`` seconds, a rate limit per
  ``(ip, port)``; entries under port 0 (set by hand through :meth:`data`)
  count for every port of the IP, as in Net::SIP. The counts can live in a
  file (JSON) or behind a load/save callback;
- :class:`ByField`: drops messages whose header fields match (a regular
  expression or any ``invoke_callback`` shape per field), e.g. scanners by
  ``User-Agent``.

Both look only at the ``methods`` given (a ``""`` among them includes
responses), or at everything.

Performance plan: :meth:`ByIPPort.run` runs for every message, so it does
not scan the table (Net::SIP expires every entry of every source on every
packet): counts are kept per whole second, and a queue of ``(second, ip,
port)`` in arrival order expires the old ones incrementally. :meth:`expire`
still scans everything, for tables changed by hand.

Differences from Net::SIP:

- the database file is JSON (Net::SIP uses Storable); it is written at
  most once a second (Net::SIP: on every packet);
- time comes from ``clock`` (default ``time.time``), so tests can inject it;
- ``Dropper(cb=..., cbs=...)``: as in Perl, one of them is required;
  :meth:`Dropper.receive` returns ``True`` (not 1) for a dropped message.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from netsip._log import get_logger
from netsip.leg import Leg
from netsip.packet import Packet
from netsip.util import Addr, invoke_callback

__all__ = ["ByField", "ByIPPort", "Dropper"]

log = get_logger(__name__)

#: ByIPPort's table: ``data[ip][port][second] = count`` (Net::SIP's layout)
Table: TypeAlias = dict[str, dict[int, dict[int, int]]]


def _method_matches(methods: frozenset[str] | None, packet: Packet) -> bool:
    """Whether the ``methods`` filter lets ``packet`` in ("" stands for responses)."""
    if methods is None:
        return True
    if packet.is_response():
        return "" in methods
    return (packet.method() or "") in methods


class Dropper:
    """Drop messages one of the callbacks flags (returns true for).

    Args:
        cb: one callback, invoked with ``(packet, leg, from_)``.
        cbs: several callbacks (``cb`` is ignored then).

    Raises:
        ValueError: neither ``cb`` nor ``cbs``.
    """

    def __init__(self, cb: object = None, cbs: Iterable[object] | None = None) -> None:
        if cbs is not None:
            self.cbs: list[object] = list(cbs)
        elif cb is not None:
            self.cbs = [cb]
        else:
            raise ValueError("argument cb or cbs must exist")
        if not self.cbs:
            raise ValueError("argument cb or cbs must exist")

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> bool | None:
        """True (handled: dropped) if a callback flags ``packet``, else None."""
        for cb in self.cbs:
            if invoke_callback(cb, packet, leg, from_):
                return True
        return None


class ByIPPort:
    """Flag sources that sent ``attempts`` messages within ``interval`` seconds.

    Args:
        attempts: how many messages in the interval make a source dropped.
        interval: the window, in seconds.
        methods: only these methods count and are dropped (``""`` for responses).
        database: a file name (JSON, created if missing) or a callback
            invoked as ``cb(data)`` to load into ``data`` and
            ``cb(data, True)`` to save.
        clock: the time source.

    Raises:
        ValueError: ``attempts`` or ``interval`` not positive.
        OSError: the database file cannot be created or read.
    """

    def __init__(
        self,
        attempts: int,
        interval: float,
        methods: Iterable[str] | None = None,
        database: str | os.PathLike[str] | object = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if attempts < 1 or not interval > 0:
            raise ValueError("attempts and interval should be defined and positive")
        self.attempts = attempts
        self.interval = interval
        self.methods = frozenset(methods) if methods is not None else None
        self.clock = clock
        self._data: Table = {}
        self._order: deque[tuple[int, str, int]] = deque()
        self._saved = -1
        self._dbcb: object = None
        if isinstance(database, str | os.PathLike):
            path = os.fspath(database)
            if not os.path.exists(path):
                self._write(path, {})
            self._dbcb = (self._file_db, path)
        elif database is not None:
            self._dbcb = database
        if self._dbcb is not None:
            invoke_callback(self._dbcb, self._data)
            self._order.extend(
                sorted(
                    (t, ip, port)
                    for ip, p in self._data.items()
                    for port, ts in p.items()
                    for t in ts
                )
            )

    def data(self) -> Table:
        """The table ``data[ip][port][second] = count`` (change it, then :meth:`savedb`)."""
        return self._data

    def run(self, packet: Packet, leg: Leg, from_: Addr) -> bool | None:
        """The Dropper callback: True if ``packet`` is to be dropped."""
        now = self.clock()
        self._expire_due(now)
        if not _method_matches(self.methods, packet):
            return None
        ip, port, sec = from_.addr, from_.port, int(now)
        counts = self._data.setdefault(ip, {}).setdefault(port, {})
        if sec not in counts:
            self._order.append((sec, ip, port))
        counts[sec] = counts.get(sec, 0) + 1
        self._save(sec)
        total = sum(counts.values()) + sum(self._data[ip].get(0, {}).values()) * (port != 0)
        if total >= self.attempts:
            log.info(
                "message from %s:%s dropped: %d messages in %s s", ip, port, total, self.interval
            )
            return True
        return None

    def _expire_due(self, now: float) -> None:
        limit = now - self.interval
        order = self._order
        data = self._data
        while order and order[0][0] <= limit:
            sec, ip, port = order.popleft()
            ports = data.get(ip)
            counts = ports.get(port) if ports is not None else None
            if counts is None or ports is None:
                continue
            counts.pop(sec, None)
            if not counts:
                del ports[port]
                if not ports:
                    del data[ip]

    def expire(self) -> None:
        """Drop every count outside the interval (a full scan, for tables changed by hand)."""
        limit = self.clock() - self.interval
        changed = False
        for ip in list(self._data):
            ports = self._data[ip]
            for port in list(ports):
                counts = ports[port]
                for sec in [s for s in counts if s <= limit]:
                    del counts[sec]
                    changed = True
                if not counts:
                    del ports[port]
            if not ports:
                del self._data[ip]
        if changed:
            self.savedb()

    def savedb(self) -> None:
        """Save the table through the database (if any)."""
        if self._dbcb is not None:
            invoke_callback(self._dbcb, self._data, True)

    def _save(self, sec: int) -> None:
        if self._dbcb is not None and sec != self._saved:
            self._saved = sec
            self.savedb()

    @staticmethod
    def _write(path: str, data: Table) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    @classmethod
    def _file_db(cls, path: str, data: Table, save: object = None) -> None:
        if save:
            cls._write(path, data)
            return
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        data.clear()
        for ip, ports in raw.items():
            data[ip] = {int(p): {int(t): int(c) for t, c in ts.items()} for p, ts in ports.items()}


class ByField:
    """Flag messages whose header fields match.

    Args:
        fields: header name -> matcher: a compiled regular expression (true
            if any value of the header matches) or any ``invoke_callback``
            shape, invoked with every value of the header.
        methods: only these methods are looked at (``""`` for responses).
        **more: further header -> matcher pairs (``User_Agent=`` works for
            ``User-Agent``: ``_`` stands for ``-``).
    """

    def __init__(
        self,
        fields: Mapping[str, object] | None = None,
        methods: Iterable[str] | None = None,
        **more: object,
    ) -> None:
        self.methods = frozenset(methods) if methods is not None else None
        self.fields: list[tuple[str, object]] = list((fields or {}).items())
        self.fields += [(k.replace("_", "-"), v) for k, v in more.items()]
        for name, matcher in self.fields:
            if isinstance(matcher, str):
                raise ValueError(f"matcher for {name} is a string; use re.compile({matcher!r})")

    def run(self, packet: Packet, leg: Leg, from_: Addr) -> bool | None:
        """The Dropper callback: True if a field matches."""
        if not _method_matches(self.methods, packet):
            return None
        for name, matcher in self.fields:
            values = packet.get_headers(name)
            if not values:
                continue
            if isinstance(matcher, re.Pattern):
                hit = any(matcher.search(v) for v in values)
            else:
                hit = bool(invoke_callback(matcher, *values))
            if hit:
                log.info("message from %s dropped: header %s matches", from_, name)
                return True
        return None
