"""Where a registrar keeps its bindings: the store protocol and the in-memory store.

Net::SIP's ``Registrar`` keeps ``{aor: {contact: expire}}`` in a hash and
scans the whole hash on every REGISTER to drop what expired (its own FIXME
asks for "an object interface with a simple default implementation").
This module is that interface:

- :class:`Binding`: one contact of an address of record, with what RFC 3261
  10.3 needs to order refreshes (Call-ID, CSeq), its expiry as an absolute
  time, its q-value, Path (RFC 3327) and ``+sip.instance``/``reg-id``
  (RFC 5626);
- :class:`RegistrationStore`: the protocol a store implements. Its methods
  are coarse, one call per REGISTER: :meth:`~RegistrationStore.get` the
  bindings of an AOR, :meth:`~RegistrationStore.put` (replace) them,
  :meth:`~RegistrationStore.delete` them. A store backed by Redis maps an
  AOR to one key holding its serialised bindings with a TTL at the latest
  expiry, lets Redis expire keys, filters expired bindings in ``get``, and
  answers :meth:`~RegistrationStore.expire` with 0 and
  :meth:`~RegistrationStore.next_expiry` with None (nothing to schedule);
- :class:`MemoryStore`: the default, a dict of AOR to bindings plus a heap
  of ``(expiry, aor)``: :meth:`MemoryStore.expire` pops only the entries
  that are due, never scanning the store.

Performance plan: one REGISTER costs one ``get`` and one ``put`` (dict
operations on the AOR, work linear in that AOR's few bindings) and at most
one heap push. Each AOR has one *scheduled* time (its earliest expiry when
it was last pushed); a ``put`` pushes again only when the new earliest
expiry comes before the scheduled one, so refreshes (which move expiries
later) push nothing: when the old entry pops, the AOR is looked at and
pushed again at its true earliest expiry. Entries left behind by
``put``/``delete`` are skipped when popped; when the heap holds more than
twice as many entries as AORs (plus a slack) it is rebuilt from the
scheduled times, so a client that keeps moving its expiry earlier cannot
grow it without bound. Memory: a :class:`Binding` has slots and shares its
empty tuples; :file:`benchmarks/bench_registrar.py` measures RSS per
registration.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

__all__ = ["Binding", "MemoryStore", "RegistrationStore"]

#: heap entries beyond 2 per AOR that are tolerated before a rebuild
_HEAP_SLACK: Final = 1024


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding of an address of record to a contact (RFC 3261 10).

    Attributes:
        contact: the contact URI, as the client sent it (without ``<>``).
        expires: when the binding expires: an absolute time on the clock of
            the registrar's event loop (``looptime``).
        callid: the Call-ID of the REGISTER that made or last refreshed it.
        cseq: that request's CSeq number (RFC 3261 10.3 step 7).
        q: the q-value (0 to 1), None if the client gave none.
        params: other Contact header parameters to return with the binding,
            as the client wrote them (``;methods="INVITE";audio``), or "".
        path: the Path header values of the REGISTER (RFC 3327), in order.
        instance: the ``+sip.instance`` value (RFC 5626 4.1), or None.
        reg_id: the ``reg-id`` (RFC 5626 4.2) when outbound processing
            applied to the binding, else None.
    """

    contact: str
    expires: float
    callid: str
    cseq: int
    q: float | None = None
    params: str = ""
    path: tuple[str, ...] = ()
    instance: str | None = None
    reg_id: int | None = None


@runtime_checkable
class RegistrationStore(Protocol):
    """What a registrar needs from a store of bindings.

    AORs are canonical strings (``sip:user@host[:port]``, see
    :func:`netsip.registrar.canonical_aor`). Times are absolute, on the
    registrar's event loop clock. A store may keep expired bindings until
    :meth:`expire` or its own mechanism (a TTL) drops them, but :meth:`get`
    never returns them.
    """

    def get(self, aor: str, now: float) -> list[Binding]:
        """The bindings of ``aor`` that have not expired at ``now`` (any order)."""
        ...

    def put(self, aor: str, bindings: Sequence[Binding], now: float) -> None:
        """Replace every binding of ``aor`` with ``bindings`` (none: delete the AOR).

        All or nothing: a store that cannot commit raises ``OSError`` or a
        subclass (the registrar then answers 500, RFC 3261 10.3 step 7; a
        Redis store wraps its client's errors). :meth:`get` fails the same way.
        """
        ...

    def delete(self, aor: str) -> None:
        """Forget ``aor`` and its bindings (no error if unknown)."""
        ...

    def expire(self, now: float) -> int:
        """Drop the bindings expired at ``now``; returns how many were dropped."""
        ...

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work, or None (empty, or a store that expires itself)."""
        ...

    def aors(self) -> Iterator[str]:
        """The AORs with bindings (for dumps and monitoring; may be slow)."""
        ...


class MemoryStore:
    """The default store: bindings in a dict, expiries in a heap.

    Not shared between processes and lost on restart (as Net::SIP's).
    """

    __slots__ = ("_heap", "_scheduled", "_table")

    def __init__(self) -> None:
        self._table: dict[str, tuple[Binding, ...]] = {}
        #: the time each AOR has an entry in the heap for (its earliest expiry then)
        self._scheduled: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """The number of AORs held (expired ones included until :meth:`expire`)."""
        return len(self._table)

    def heap_size(self) -> int:
        """Entries in the expiry heap (monitoring and tests)."""
        return len(self._heap)

    def get(self, aor: str, now: float) -> list[Binding]:
        """The bindings of ``aor`` that have not expired at ``now``."""
        bindings = self._table.get(aor)
        if not bindings:
            return []
        return [b for b in bindings if b.expires > now]

    def put(self, aor: str, bindings: Sequence[Binding], now: float) -> None:
        """Replace every binding of ``aor`` with ``bindings`` (none: delete the AOR)."""
        if not bindings:
            self.delete(aor)
            return
        kept = tuple(bindings)
        self._table[aor] = kept
        first = min(b.expires for b in kept)
        scheduled = self._scheduled.get(aor)
        if scheduled is None or first < scheduled:
            self._scheduled[aor] = first
            heapq.heappush(self._heap, (first, aor))
            if len(self._heap) > 2 * len(self._scheduled) + _HEAP_SLACK:
                self._rebuild()

    def delete(self, aor: str) -> None:
        """Forget ``aor`` and its bindings (its heap entry is skipped when it pops)."""
        # the heap entry stays; it is skipped when it pops
        self._table.pop(aor, None)
        self._scheduled.pop(aor, None)

    def expire(self, now: float) -> int:
        """Drop the bindings expired at ``now``; returns how many were dropped."""
        heap = self._heap
        dropped = 0
        while heap and heap[0][0] <= now:
            when, aor = heapq.heappop(heap)
            if self._scheduled.get(aor) != when:
                continue  # left behind by a put that moved the expiry earlier, or a delete
            bindings = self._table[aor]
            kept = tuple(b for b in bindings if b.expires > now)
            dropped += len(bindings) - len(kept)
            if not kept:
                del self._table[aor]
                del self._scheduled[aor]
                continue
            if len(kept) != len(bindings):
                self._table[aor] = kept
            first = min(b.expires for b in kept)
            self._scheduled[aor] = first
            heapq.heappush(heap, (first, aor))
        return dropped

    def next_expiry(self) -> float | None:
        """When the earliest binding expires, or None when the store is empty."""
        heap = self._heap
        while heap and self._scheduled.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # (a stale entry on top: not worth a timer)
        return heap[0][0] if heap else None

    def aors(self) -> Iterator[str]:
        """The AORs with bindings (a snapshot: the store may change meanwhile)."""
        return iter(list(self._table))

    def _rebuild(self) -> None:
        self._heap = [(when, aor) for aor, when in self._scheduled.items()]
        heapq.heapify(self._heap)
