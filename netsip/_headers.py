"""The header fields of a SIP message: an ordered list with an index by name.

Private to :mod:`netsip.packet`: the header half of ``Net::SIP::Packet``
(its ``get_header``, ``add_header``, ``set_header``, ... on the list of
``Net::SIP::HeaderPair`` objects), the base of :class:`netsip.packet.Packet`.

Headers are an ordered list of ``(key, value, line)`` tuples: ``key`` the
lower-case full name (compact forms expanded, as Net::SIP normalises it),
``value`` a ``str``, ``line`` the index of the received line the value came
from (-1 for a value added here), which lets the packet write unmodified
lines verbatim.

Performance plan:

- Operations: a receiver looks up the same few headers many times per
  message (Call-ID, CSeq, Via, To, From ...); a UAS's leg adds and replaces
  a few (Via received=, Contact, Allow) between lookups.
- Plan: the index (key -> tuple of values) is built on the first lookup and
  kept up to date by every change instead of being dropped (rebuilding it
  after each change cost more than the lookups). Header names resolve
  through KEY_CACHE with one dict lookup. Values are cleaned before the
  list changes, so a bad value changes nothing.

Differences from Net::SIP: ``set_header`` puts the new values where the
first old one was (Net::SIP appends them at the end; the position does not
matter to SIP, but keeping it keeps the original lines in place); line
breaks in values become one SP (RFC 3261 7.3.1) instead of continuation
lines, so no value can inject a header line.
"""

from __future__ import annotations

from typing import Final, overload

from netsip._cache import KEY_CACHE
from netsip._fields import (
    Hdr,
    HeaderValues,
    PacketError,
    clean_value,
    iter_values,
    normalize_header_key,
)

# the cache's lookup (see netsip._cache: bound, so as fast as a dict's)
_key_get: Final = KEY_CACHE.get


class HeaderFields:
    """The header list of a packet and its index; see the module docstring."""

    __slots__ = ("_hdrs", "_index")

    _hdrs: list[Hdr]
    # values by key, built by the first get_header(s) and kept up to date
    # (None until built). Tuples of str, so the cyclic GC untracks the whole
    # index: a dispatcher keeps every response for 32 s and full collections
    # scan what is tracked.
    _index: dict[str, tuple[str, ...]] | None

    def _headers_changed(self, key: str) -> None:
        """The values of header ``key`` changed (the index is already updated)."""
        raise NotImplementedError

    @overload
    def get_header(self) -> dict[str, list[str]]: ...
    @overload
    def get_header(self, name: str) -> str | None: ...

    def get_header(self, name: str | None = None) -> str | dict[str, list[str]] | None:
        """The single value of a header, or all headers.

        Args:
            name: the header name (any case, compact forms allowed). Without
                it, all headers are returned as :meth:`headers` does.

        Returns:
            The value, or None if the header is absent. Several equal values
            count as one (Net::SIP tolerates duplicated Content-Length this way).

        Raises:
            PacketError: the header has several different values.
        """
        if name is None:
            return self.headers()
        key = _key_get(name) or normalize_header_key(name)
        index = self._index
        if index is None:
            index = self._build_index()
        values = index.get(key)
        if values is None:
            return None
        found = values[0]
        if len(values) > 1:
            for v in values:
                if v != found:
                    raise PacketError(f"multiple values for {key} in packet")
        return found

    def get_headers(self, name: str) -> list[str]:
        """All values of a header, in order (empty list if absent)."""
        key = _key_get(name) or normalize_header_key(name)
        index = self._index
        if index is None:
            index = self._build_index()
        values = index.get(key)
        return list(values) if values is not None else []

    def header_values(self, name: str) -> tuple[str, ...]:
        """All values of a header, in order, as a tuple (empty if absent).

        :meth:`get_headers` without the copy: the tuple is the packet's own
        (immutable, so safe to keep) and a later change of the header
        replaces it rather than changing it.
        """
        key = _key_get(name) or normalize_header_key(name)
        index = self._index
        if index is None:
            index = self._build_index()
        return index.get(key, ())

    def has_headers(self, keys: frozenset[str]) -> bool:
        """Whether every header of ``keys`` (normalised names) is present.

        One set operation on the index: cheaper than a lookup per name, so
        it suits checks that run for every received message.
        """
        index = self._index
        if index is None:
            index = self._build_index()
        return index.keys() >= keys

    def _build_index(self) -> dict[str, tuple[str, ...]]:
        hdrs = self._hdrs
        # the usual message has no header twice: one comprehension, and the
        # general way below only if a key came back (fewer keys than headers)
        index: dict[str, tuple[str, ...]] = {k: (v,) for k, v, _ in hdrs}
        if len(index) == len(hdrs):
            self._index = index
            return index
        # linear: a repeated header collects its values in a list first (a
        # tuple grown with += per value made 65,000 values cost seconds)
        index.clear()
        repeated: dict[str, list[str]] | None = None
        for k, v, _ in self._hdrs:
            if k in index:  # (rare: most headers occur once)
                if repeated is None:
                    repeated = {}
                values = repeated.get(k)
                if values is None:
                    repeated[k] = values = list(index[k])
                values.append(v)
            else:
                index[k] = (v,)
        if repeated:
            for k, values in repeated.items():
                index[k] = tuple(values)
        self._index = index
        return index

    def headers(self) -> dict[str, list[str]]:
        """All headers: normalised key (``"call-id"``) -> list of values, in order."""
        result: dict[str, list[str]] = {}
        for k, v, _ in self._hdrs:
            result.setdefault(k, []).append(v)
        return result

    def header_items(self) -> list[tuple[str, str]]:
        """All headers as ``(normalised key, value)`` pairs, in order."""
        return [(k, v) for k, v, _ in self._hdrs]

    def add_header(self, name: str, value: HeaderValues) -> None:
        """Append a header (each value of a list as a header of its own)."""
        key = _key_get(name) or normalize_header_key(name)
        values = [clean_value(v) for v in iter_values(value)]
        self._hdrs.extend([(key, v, -1) for v in values])
        index = self._index
        if index is not None and values:
            index[key] = (*index.get(key, ()), *values)
        self._headers_changed(key)

    def insert_header(self, name: str, value: HeaderValues) -> None:
        """Insert a header before all others (a list keeps its order)."""
        key = _key_get(name) or normalize_header_key(name)
        index = self._index
        if type(value) is str and "\n" not in value and "\r" not in value:
            # one plain value (a leg's Via, Allow, Supported on every packet):
            # what _clean_value and the general case below make of it
            value = value.strip(" \t")
            self._hdrs.insert(0, (key, value, -1))
            if index is not None:
                index[key] = (value, *index.get(key, ()))
            self._headers_changed(key)
            return
        values = [clean_value(v) for v in iter_values(value)]
        self._hdrs[0:0] = [(key, v, -1) for v in values]
        if index is not None and values:
            index[key] = (*values, *index.get(key, ()))
        self._headers_changed(key)

    def del_header(self, name: str) -> None:
        """Remove every value of a header."""
        key = _key_get(name) or normalize_header_key(name)
        self._hdrs = [h for h in self._hdrs if h[0] != key]
        if self._index is not None:
            self._index.pop(key, None)
        self._headers_changed(key)

    def set_header(self, name: str, value: HeaderValues) -> None:
        """Replace a header: its values take the place of the first old one
        (Net::SIP appends them at the end; the position does not matter to
        SIP but keeping it keeps the original lines in place)."""
        key = _key_get(name) or normalize_header_key(name)
        values = [clean_value(v) for v in iter_values(value)]
        new = [(key, v, -1) for v in values]
        hdrs = self._hdrs
        index = self._index
        for pos in range(len(hdrs)):
            if hdrs[pos][0] == key:
                old = index.get(key) if index is not None else None
                if old is not None and len(old) == 1:
                    hdrs[pos : pos + 1] = new  # the only old value (the index says)
                else:
                    hdrs[pos:] = new + [h for h in hdrs[pos:] if h[0] != key]
                break
        else:
            hdrs.extend(new)
        if index is not None:
            if values:
                index[key] = tuple(values)
            else:
                index.pop(key, None)
        self._headers_changed(key)
