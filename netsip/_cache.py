"""The memory the packet layer keeps between messages: one bounded cache type and its instances.

Private to :mod:`netsip.packet` (it has no Net::SIP counterpart: Net::SIP
parses every line every time). The parser remembers the results of pure
functions of a header name, a header line or a start line, so that what
repeats from message to message (nearly every line of a UAS's traffic) is
validated once; the packet model remembers how it writes a header name.
Every such cache is listed here, with its bound, so that what a flood of
hostile messages can make the process keep is visible in one place.

Performance plan:

- Operations: a lookup for nearly every header line received and every
  header name looked up; an insert only when a lookup missed.
- Goal: a hit costs one plain dict lookup, nothing more.
- Plan: :class:`BoundedCache` is a ``dict`` subclass; all bookkeeping
  happens on insert (:meth:`BoundedCache.put`). Hot code calls the bound
  ``get`` method of a cache, held in a module global: CPython 3.11 does not
  specialise a ``dict`` method called through an instance of a subclass,
  but calls a bound built-in method as fast as ``dict.get`` on a dict.
- Eviction: a full cache is emptied. Entries are pure functions of their
  keys, so losing them costs only the work of computing them again; a
  working set below the bound refills at once, one above it (a flood of
  distinct garbage) churns without growing. No recency bookkeeping is paid
  on hits, which LRU would need.
"""

from __future__ import annotations

from typing import Final, TypeAlias, TypeVar

__all__ = [
    "CSEQ_NUMBER_CACHE",
    "DIALOG_LINE_CACHE",
    "FIRST_CACHE",
    "HEADER_START_CACHE",
    "KEY_CACHE",
    "LINE_CACHE",
    "LINE_CACHE_LINE_MAX",
    "NAME_CACHE",
    "PREFIX_CACHE",
    "PREFIX_SEEN",
    "BoundedCache",
    "LineEntry",
]

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """A dict of at most ``maxsize`` entries: inserting into a full one empties it first.

    Read it as a dict; insert only through :meth:`put`.

    Args:
        maxsize: the most entries kept.
    """

    __slots__ = ("maxsize",)

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def put(self, key: K, value: V) -> None:
        """Insert ``key``, emptying the cache first if it is full."""
        if len(self) >= self.maxsize:
            self.clear()
        self[key] = value


# A header name as spelled by a peer or caller -> its normalised key
# (netsip._parser.normalize_header_key).
KEY_CACHE: Final[BoundedCache[str, str]] = BoundedCache(2048)

# The name part of a header line as received (up to ':') -> (normalised key,
# header kind or None) (netsip._parser).
NAME_CACHE: Final[BoundedCache[str, tuple[str, int | None]]] = BoundedCache(2048)

# A valid header line as received (unfolded) -> what the parser made of it:
# (key, value, the elements of a list header with several, whether the
# header is single-valued, the CSeq method). Lines repeat across messages
# (Max-Forwards, Content-Length, CSeq, To, Allow, User-Agent ...). Via and
# Call-ID lines are unique per transaction and not stored.
LineEntry: TypeAlias = tuple[str, str, tuple[str, ...] | None, bool, str | None]
LINE_CACHE: Final[BoundedCache[str, LineEntry]] = BoundedCache(4096)

# Longer start and header lines are not stored in FIRST_CACHE and LINE_CACHE
# (long lines rarely repeat, and would make the bound in bytes large).
LINE_CACHE_LINE_MAX: Final = 256

# A valid start line -> (method, 0, Request-URI) or (None, code, phrase). A
# UAS sees the same Request-URI again and again, a UAC the same status lines.
# A tagged From/To line or a Call-ID line -> as LINE_CACHE: lines unique per
# call (dialog) that its later requests repeat; small, about the calls in
# flight (netsip._parser).
DIALOG_LINE_CACHE: Final[BoundedCache[str, LineEntry]] = BoundedCache(256)

FIRST_CACHE: Final[BoundedCache[str, tuple[str | None, int, str]]] = BoundedCache(1024)

# A Via or From/To line up to its last ';' -> (key, single-valued, offset of
# the value): the line without the parameter (branch, tag) that makes it
# unique is valid (netsip._parser.learn_prefix says when).
PREFIX_CACHE: Final[BoundedCache[str, tuple[str, bool, int]]] = BoundedCache(1024)
# such prefixes seen once: a prefix is checked and kept the second time
PREFIX_SEEN: Final[BoundedCache[str, bool]] = BoundedCache(1024)

# A normalised key -> "Canonical-Name: ", the start of a header line netsip
# writes (netsip.packet).
HEADER_START_CACHE: Final[BoundedCache[str, str]] = BoundedCache(2048)

# A CSeq value -> its number, -1 if it is not a valid CSeq (netsip.packet's
# cseq_number: a dialog's few values, "1 INVITE", "2 BYE", come back in
# every call).
CSEQ_NUMBER_CACHE: Final[BoundedCache[str, int]] = BoundedCache(1024)
