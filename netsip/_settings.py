"""The tunables of :class:`netsip.socketpool.SocketPool`: module-wide values and per-pool records.

Ports the settings of Perl's ``Net::SIP::SocketPool``: the package variables
``$MAX_SIP_HEADER``, ``$MAX_SIP_BODY``, ``$MAX_TIDLIST``, ``$MIN_EXPIRE``,
``$MAX_EXPIRE``, ``$CONNECT_TIMEOUT`` and ``$TCP_READSIZE``, set with
``use Net::SIP::SocketPool (KEY => value)`` and read by every pool.

How it works: ``_global`` holds the module-wide values
(:func:`import_settings`, :func:`get_settings`). Each pool keeps its own
overrides and a :class:`Settings` record of the values in effect
(:func:`effective`); it is rebuilt whenever the overrides or the module-wide
values change. :func:`import_settings` reaches the live pools and
dispatchers through a weak set of their :class:`Subscription` records
(:func:`track`): a record lives as long as its owner, and holds no
reference to it, so an owner that is gone is not kept alive by it. (The
owner itself is not in the set: compiled, it takes no weak references.)

Differences from Net::SIP:

* settings can also be overridden per pool (``SocketPool(settings=...)``,
  ``SocketPool.import_settings``);
* ``MAX_WBUF`` is new: the bytes queued for writing on one connection before
  a ``sendto`` fails with ``ENOBUFS`` (a peer that never reads must not make
  the pool buffer without bound);
* values are checked: an unknown key raises ``ValueError`` naming it, a value
  that is not a positive number raises ``TypeError``/``ValueError``.

Performance plan: the pool's hot paths read the settings as attributes of a
slots dataclass (``cfg.tcp_readsize``), not as dict entries; the record is
rebuilt only when a setting changes.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from netsip._fields import LIMITS

__all__ = [
    "DEFAULT_SETTINGS",
    "Settings",
    "Subscription",
    "consistent",
    "current",
    "effective",
    "get_settings",
    "import_settings",
    "track",
    "untrack",
    "validated",
]

#: Defaults of the tunables, as in Perl's Net::SIP::SocketPool.
DEFAULT_SETTINGS: Final[Mapping[str, int]] = {
    "MAX_SIP_HEADER": 2**14,  # bytes of SIP header on a stream
    "MAX_SIP_BODY": 2**16,  # announced Content-Length on a stream
    "MAX_TIDLIST": 30,  # request tids remembered per connection
    "MIN_EXPIRE": 15,  # idle connections live at least this long (s)
    "MAX_EXPIRE": 120,  # ... and at most this long (s)
    "CONNECT_TIMEOUT": 10,  # TCP connect (and TLS handshake) limit (s)
    "TCP_READSIZE": 2**16,  # bytes per read on a stream
    # Not in Perl: bytes queued for writing on one connection before further
    # sendto's fail with ENOBUFS and the connection is closed.
    "MAX_WBUF": 2**22,
    # Not in Perl: bytes queued for writing on all connections of a pool;
    # past it, the connection with the most queued is closed (ENOBUFS).
    "MAX_WBUF_TOTAL": 2**26,
    # Not in Perl: bytes of responses a Dispatcher keeps to answer
    # retransmitted requests; past it, the oldest are forgotten.
    "MAX_RESPONSE_CACHE": 2**25,
    # Not in Perl: what the parser takes of one message (module-wide only):
    # header lines, and values of one list header; past them it is dropped
    "MAX_HEADERS": 1000,
    "MAX_HEADER_VALUES": 256,
    # Not in Perl: seconds between the keep-alive pings a stream pool sends
    # on the connections it opened (RFC 5626 4.4.1: CRLFCRLF on TCP/TLS, a
    # ping frame on WebSocket); 0 sends none.
    "KEEPALIVE_INTERVAL": 0,
}
#: settings of the parser, which every pool shares: no per-pool override
MODULE_WIDE: Final = frozenset({"MAX_HEADERS", "MAX_HEADER_VALUES"})
_INT_KEYS: Final = frozenset(
    {
        "MAX_SIP_HEADER",
        "MAX_SIP_BODY",
        "MAX_TIDLIST",
        "TCP_READSIZE",
        "MAX_WBUF",
        "MAX_WBUF_TOTAL",
        "MAX_RESPONSE_CACHE",
        "MAX_HEADERS",
        "MAX_HEADER_VALUES",
    }
)
#: The range of each setting: above it a value allocates or waits without
#: sense (a TCP_READSIZE of 2**40 made every pool fail with MemoryError).
#: Small sizes stay allowed: tests read and write in tiny chunks.
_RANGES: Final[Mapping[str, tuple[float, float]]] = {
    "MAX_SIP_HEADER": (1, 2**24),
    "MAX_SIP_BODY": (0, 2**26),
    "MAX_TIDLIST": (1, 10**5),
    "MIN_EXPIRE": (0.001, 86400 * 7),
    "MAX_EXPIRE": (0.001, 86400 * 7),
    "CONNECT_TIMEOUT": (0.001, 3600),
    "TCP_READSIZE": (1, 2**24),
    "MAX_WBUF": (1, 2**30),
    "MAX_WBUF_TOTAL": (1, 2**34),
    "MAX_RESPONSE_CACHE": (0, 2**34),
    "MAX_HEADERS": (10, 10**5),
    "MAX_HEADER_VALUES": (1, 10**5),
    "KEEPALIVE_INTERVAL": (0, 86400),
}


@dataclass(slots=True)
class Settings:
    """The effective tunables of one pool (attribute access on the hot path)."""

    max_sip_header: int
    max_sip_body: int
    max_tidlist: int
    min_expire: float
    max_expire: float
    connect_timeout: float
    tcp_readsize: int
    max_wbuf: int
    max_wbuf_total: int
    keepalive_interval: float


class Subscription:
    """A pool's or dispatcher's entry in what :func:`import_settings` refreshes.

    Args:
        overrides: the owner's own settings (the dict it keeps updating:
            :func:`import_settings` checks new values against it).
        apply: called with the settings in effect after each change, or None
            when the owner uses none of them (it is still checked).
    """

    __slots__ = ("__weakref__", "apply", "overrides")

    def __init__(
        self, overrides: dict[str, float], apply: Callable[[Settings], None] | None
    ) -> None:
        self.overrides = overrides
        self.apply = apply


_global: dict[str, float] = dict(DEFAULT_SETTINGS)
_subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()


def validated(kw: Mapping[str, object]) -> dict[str, float]:
    """``kw`` checked key by key (the rules of :func:`import_settings`)."""
    out: dict[str, float] = {}
    for key, value in kw.items():
        if key not in DEFAULT_SETTINGS:
            raise ValueError(f"no such SocketPool setting {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{key} must be a number, not {value!r}")
        if key in _INT_KEYS and not isinstance(value, int):
            raise TypeError(f"{key} must be an int, not {value!r}")
        low, high = _RANGES[key]
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{key} must be between {low:g} and {high:g}, not {value!r}")
        out[key] = value
    return out


def consistent(values: Mapping[str, float]) -> None:
    """Check the settings that depend on each other (all of them given).

    Raises:
        ValueError: ``MIN_EXPIRE`` above ``MAX_EXPIRE``.
    """
    if values["MIN_EXPIRE"] > values["MAX_EXPIRE"]:
        raise ValueError(
            f"MIN_EXPIRE ({values['MIN_EXPIRE']:g}) is above MAX_EXPIRE ({values['MAX_EXPIRE']:g})"
        )


def current(overrides: Mapping[str, float]) -> dict[str, float]:
    """The values in effect for a pool with ``overrides``, as a new dict."""
    return {**_global, **overrides}


def effective(overrides: Mapping[str, float]) -> Settings:
    """The :class:`Settings` record of a pool with ``overrides``.

    Raises:
        ValueError: the overrides make ``MIN_EXPIRE > MAX_EXPIRE``.
    """
    v = current(overrides)
    consistent(v)
    return Settings(
        max_sip_header=int(v["MAX_SIP_HEADER"]),
        max_sip_body=int(v["MAX_SIP_BODY"]),
        max_tidlist=int(v["MAX_TIDLIST"]),
        min_expire=v["MIN_EXPIRE"],
        max_expire=v["MAX_EXPIRE"],
        connect_timeout=v["CONNECT_TIMEOUT"],
        tcp_readsize=int(v["TCP_READSIZE"]),
        max_wbuf=int(v["MAX_WBUF"]),
        max_wbuf_total=int(v["MAX_WBUF_TOTAL"]),
        keepalive_interval=v["KEEPALIVE_INTERVAL"],
    )


def track(
    overrides: dict[str, float], apply: Callable[[Settings], None] | None = None
) -> Subscription:
    """Follow :func:`import_settings` with ``apply`` while the record returned is kept.

    The owner keeps the record (and nothing else should): it lives as long
    as the owner, or until :func:`untrack`. ``apply`` must not refer to the
    owner, or the two would live until the cyclic garbage collector frees
    them.
    """
    sub = Subscription(overrides, apply)
    _subscriptions.add(sub)
    return sub


def untrack(sub: Subscription) -> None:
    """Stop following (the owner was closed)."""
    _subscriptions.discard(sub)


def import_settings(**kw: float) -> None:
    """Change module-wide settings (Perl: ``use Net::SIP::SocketPool (KEY => v)``).

    Existing pools use the new values for every key they do not override.

    Args:
        **kw: ``MAX_SIP_HEADER``, ``MAX_SIP_BODY``, ``MAX_TIDLIST``,
            ``MIN_EXPIRE``, ``MAX_EXPIRE``, ``CONNECT_TIMEOUT``, ``TCP_READSIZE``,
            ``MAX_WBUF`` (not in Perl: the most bytes queued for writing on
            one connection, default 4 MiB; a sendto that would exceed it fails
            with ``ENOBUFS`` and closes that connection), ``MAX_WBUF_TOTAL``
            (not in Perl: the same for all connections of a pool, default
            64 MiB; past it the connection with the most queued is closed)
            ``MAX_RESPONSE_CACHE`` (not in Perl: bytes of responses a
            Dispatcher keeps for retransmitted requests, default 32 MiB; the
            oldest are forgotten first), ``MAX_HEADERS`` and
            ``MAX_HEADER_VALUES`` (not in Perl, module-wide only: header
            lines per message, default 1,000, and values of one list header,
            default 256; the parser refuses a message beyond them),
            ``KEEPALIVE_INTERVAL`` (not in Perl: seconds between the
            keep-alive pings, RFC 5626 section 4.4.1, a stream pool sends on
            the connections it opened: CRLFCRLF on TCP and TLS, a ping frame
            on WebSocket; default 0, none).

    Nothing is stored when one value is refused.

    Raises:
        ValueError: an unknown key (named in the message), a value out of its
            range (named in the message), or ``MIN_EXPIRE > MAX_EXPIRE``.
        TypeError: a value that is not a number (sizes: not an int).
    """
    checked = validated(kw)
    consistent({**_global, **checked})
    subs = list(_subscriptions)
    for sub in subs:  # ... also with what a live pool overrides
        consistent({**_global, **checked, **sub.overrides})
    _global.update(checked)
    LIMITS.max_headers = int(_global["MAX_HEADERS"])
    LIMITS.max_values = int(_global["MAX_HEADER_VALUES"])
    for sub in subs:
        if sub.apply is not None:
            sub.apply(effective(sub.overrides))


def get_settings() -> dict[str, float]:
    """The module-wide settings as a new dict (key -> value)."""
    return dict(_global)
