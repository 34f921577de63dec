"""Response cache of Perl's ``Net::SIP::Dispatcher`` (its ``response_cache`` hash).

A UAS that answered a request must answer a retransmission of that request
with the same response instead of handing it to the upper layer again
(RFC 3261 17.2: the server transaction absorbs retransmissions).  Perl's
dispatcher keeps every response it delivers for 32 seconds (64*T1) under the
key ``CSeq, Call-ID, From, To`` and looks every incoming request up there.

The To header enters the key without its ``tag`` parameter: the response
carries the tag the UAS added (RFC 3261 8.2.6.2) while a retransmission of an
initial request has none, so Perl's key (which Net::SIP's own
``create_response`` never hits, as it adds no tag) would miss every time.

Here the cache is a small pure unit: an insertion-ordered dict whose entries
all live equally long, so the oldest entry is always the first to expire and
expiry costs O(1) per entry (no scan of the whole cache).  The caller passes
``now``; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Generic, Protocol, TypeVar

from netsip._abnf import NAME_ADDR_TAG_RE, TAG_PARAM_RE

__all__ = ["CACHE_TIME", "HeaderSource", "ResponseCache", "cache_key", "key_of"]

#: seconds a response is kept: 64*T1 (RFC 3261 17.2.1 Timer H / 17.2.2 Timer J)
CACHE_TIME: Final = 32.0


def _strip_tag(to: str) -> str:
    # the usual case: a name-addr and its tag, nothing else (the To of a
    # response); the same as the general way below
    m = NAME_ADDR_TAG_RE.fullmatch(to)
    if m is not None:
        return m.group(1)
    # the tag is a header parameter: after the closing '>' of a name-addr
    i = to.rfind(">")
    if i < 0:
        return TAG_PARAM_RE.sub("", to)
    return to[: i + 1] + TAG_PARAM_RE.sub("", to[i + 1 :])


class HeaderSource(Protocol):
    """Anything with ``get_headers(name) -> list[str]`` (a netsip Packet).

    An object that also has ``header_values(name) -> Sequence[str]`` (as
    :class:`netsip.packet.Packet` does: the same values without a list copy)
    is read through that instead.
    """

    def get_headers(self, name: str) -> list[str]:
        """The values of header ``name``, in order."""
        ...


R = TypeVar("R")


def cache_key(packet: HeaderSource) -> str:
    """The cache key of a request or response: CSeq, Call-ID, From and To (without tag).

    Args:
        packet: the request (lookup) or response (store).

    Returns:
        The key; a request, its retransmissions and the responses to it have
        the same key.
    """
    # get_headers/header_values never raise on duplicates (unlike get_header), which
    # matters here: the key is computed for every incoming request, including
    # malformed ones. The key is computed twice per transaction (request and
    # response): header_values spares the list copies. (",".join of a single
    # value returns that very string, so no special case is needed for it.)
    values: Callable[[str], Sequence[str]] = (
        getattr(packet, "header_values", None) or packet.get_headers
    )
    return key_of(values("cseq"), values("call-id"), values("from"), values("to"))


def key_of(
    cseq: Sequence[str], callid: Sequence[str], frm: Sequence[str], to: Sequence[str]
) -> str:
    """The cache key of a message with these CSeq, Call-ID, From and To
    values (:func:`cache_key` once the values are at hand)."""
    return "\0".join((",".join(cseq), ",".join(callid), ",".join(frm), _key_to(",".join(to))))


def _key_to(to: str) -> str:
    """The To value without its tag, as the cache key has it."""
    if to[-1:] == ">":
        return to  # a name-addr without parameters (a request's To): no tag
    return _strip_tag(to)


class ResponseCache(Generic[R]):
    """Responses by transaction key, each kept for ``lifetime`` seconds.

    Args:
        lifetime: how long an entry lives (default 32 s, i.e. 64*T1).
    """

    __slots__ = ("_bytes", "_entries", "_expires", "_size", "_sizes", "lifetime", "max_bytes")

    def __init__(
        self,
        lifetime: float = CACHE_TIME,
        *,
        max_bytes: int | None = None,
        size: Callable[[R], int] | None = None,
    ) -> None:
        if lifetime <= 0:
            raise ValueError(f"lifetime must be positive, got {lifetime!r}")
        if (max_bytes is None) != (size is None):
            raise ValueError("max_bytes and size go together")
        self.lifetime = lifetime
        #: the most bytes the entries may hold (None: no bound); the oldest
        #: entries make room (a flood of unique large requests must not
        #: grow the memory without bound)
        self.max_bytes = max_bytes
        self._size = size
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        # key -> response, ordered by expiry because lifetime is constant and
        # entries are moved to the end whenever they are stored again; the
        # expiry times apart in a plain dict of str -> float, which the cyclic
        # GC does not track (a (time, response) tuple per entry would be
        # tracked, and a busy dispatcher keeps many thousand entries)
        self._entries: OrderedDict[str, R] = OrderedDict()
        self._expires: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def put(self, key: str, response: R, now: float, nbytes: int | None = None) -> None:
        """Store (or replace) the response for ``key``, valid until ``now + lifetime``.

        Args:
            key: see :func:`cache_key`.
            response: the response to keep.
            now: the current time.
            nbytes: what the size function gives for ``response``, if the
                caller knows it already (it is then not called).
        """
        entries = self._entries
        expires = self._expires
        if key in entries:
            entries.move_to_end(key)  # stored again: it now expires last
        entries[key] = response
        expires[key] = now + self.lifetime
        size = self._size
        if size is not None:
            n = size(response) if nbytes is None else nbytes
            limit = self.max_bytes
            if limit is not None and n > limit:
                # bigger than the whole cache: keeping it would evict all
                self.discard(key)
                return
            sizes = self._sizes
            self._bytes += n - sizes.get(key, 0)
            sizes[key] = n
            if limit is not None and self._bytes > limit:
                self._shrink(limit)
        # expire(now), its usual case inline: the oldest entry is still valid
        for oldest in entries:
            if expires[oldest] < now:
                self.expire(now)
            break

    def get(self, key: str, now: float) -> R | None:
        """The response stored for ``key`` unless it has expired.

        Args:
            key: see :func:`cache_key`.
            now: the current time.

        Returns:
            The cached response or None.
        """
        when = self._expires.get(key)
        if when is None:
            return None
        if when < now:
            self.expire(now)
            return None
        return self._entries[key]

    @property
    def expires(self) -> Mapping[str, float]:
        """When each entry expires, by key (read only; the same object for
        the cache's life, so a caller may keep it: ``key in expires`` is
        the cheapest test whether a key may have a response; :meth:`get`
        decides)."""
        return self._expires

    @property
    def bytes(self) -> int:
        """The bytes the entries hold (0 without a size function)."""
        return self._bytes

    def shrink(self) -> None:
        """Forget the oldest entries until the rest fit in :attr:`max_bytes`
        (after the bound was lowered)."""
        if self.max_bytes is not None:
            self._shrink(self.max_bytes)

    def _shrink(self, limit: int) -> None:
        """Forget the oldest entries until the rest fit in ``limit`` bytes."""
        entries = self._entries
        while entries and self._bytes > limit:
            self._drop(next(iter(entries)))

    def _drop(self, key: str) -> None:
        del self._entries[key]
        del self._expires[key]
        if self._sizes:
            self._bytes -= self._sizes.pop(key, 0)

    def discard(self, key: str) -> None:
        """Drop the entry for ``key`` if there is one."""
        if key in self._entries:
            self._drop(key)

    def expire(self, now: float) -> float | None:
        """Drop every entry that expired before ``now``.

        Args:
            now: the current time.

        Returns:
            When the next remaining entry expires, or None if the cache is empty.
        """
        entries = self._entries
        expires = self._expires
        while entries:
            key = next(iter(entries))
            when = expires[key]
            if when >= now:
                return when
            self._drop(key)
        return None

    def next_expire(self) -> float | None:
        """When the oldest entry expires (None if empty)."""
        for key in self._entries:
            return self._expires[key]
        return None

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._expires.clear()
        self._sizes.clear()
        self._bytes = 0
