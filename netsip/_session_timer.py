"""Session timers (RFC 4028) for :mod:`netsip._call`.

Net::SIP has no session timers; this module is new. A call's parameters
(:class:`TimerConfig.from_param`) say what it wants:

``session_expires``
    the session interval to ask for (seconds, at least 90), or as the UAS the
    largest interval accepted (a larger one is lowered to it, RFC 4028 9).
    None (the default): ask for none, but honour the peer's.
``min_se``
    the smallest interval accepted (default and floor 90, RFC 4028 5); a
    request below it gets 422 with ``Min-SE`` (RFC 4028 8.1 / 9).
``session_refresh``
    how to refresh: ``"update"`` (default; a re-INVITE when the peer does not
    allow UPDATE) or ``"invite"`` (a re-INVITE with the unchanged SDP).
``session_refresher``
    who should refresh when we may choose: ``"uac"``, ``"uas"`` or None
    (the UAS decides; ours picks ``uac`` when the caller supports timers).

The negotiation is pure (:func:`uas_negotiate`, :func:`uac_result`): a
request and our configuration in, an interval and a refresher (or the
rejection) out. :class:`SessionTimer` runs the two timers of a dialog: the
refresher refreshes at half the interval (RFC 4028 10), either side ends the
call with BYE at ``interval - min(32, interval / 3)`` when no refresh
succeeded (RFC 4028 10: "the minimum of 32 seconds and one third of the
session interval is RECOMMENDED").

Differences from Net::SIP: all of it (Net::SIP ignores ``Session-Expires``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal

from netsip._prack import has_option, header_value
from netsip.eventloop import EventLoop, TimerLike
from netsip.packet import Packet, Request, Response
from netsip.util import sip_hdrval2parts

__all__ = [
    "MIN_SE",
    "Negotiated",
    "Rejection",
    "SessionExpires",
    "SessionTimer",
    "TimerConfig",
    "parse_min_se",
    "parse_session_expires",
    "retry_after_422",
    "uac_result",
    "uas_headers",
    "uas_negotiate",
]

log = logging.getLogger(__name__)

Role = Literal["uac", "uas"]
#: RFC 4028 4: "the minimum ... is 90 seconds"; 5: the default Min-SE
MIN_SE: Final = 90
#: RFC 3261 20 (delta-seconds): a value above 2**32-1 is read as 2**32-1
MAX_DELTA: Final = 2**32 - 1
#: EventLoop.add_timer reads a delay of a year or more as an epoch time
_RELATIVE_LIMIT: Final = 365 * 86400


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """A ``Session-Expires`` value: the interval and the refresher, if named."""

    interval: int
    refresher: Role | None = None

    def header(self) -> str:
        return (
            f"{self.interval};refresher={self.refresher}" if self.refresher else str(self.interval)
        )


def _delta(value: str) -> int | None:
    value = value.strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    return min(int(value), MAX_DELTA)


def parse_session_expires(value: str | None) -> SessionExpires | None:
    """``Session-Expires: delta-seconds *(;se-params)`` (RFC 4028 4), None if
    malformed (not a number, or a refresher other than uac/uas)."""
    if value is None:
        return None
    try:
        data, params = sip_hdrval2parts("session-expires", value)
    except ValueError:
        return None
    interval = _delta(data)
    if interval is None:
        return None
    refresher = params.get("refresher")
    if refresher is None:
        return SessionExpires(interval)
    refresher = refresher.lower()
    if refresher not in ("uac", "uas"):
        return None
    return SessionExpires(interval, "uac" if refresher == "uac" else "uas")


def parse_min_se(value: str | None) -> int | None:
    """``Min-SE: delta-seconds *(;generic-param)`` (RFC 4028 5), None if malformed."""
    if value is None:
        return None
    return _delta(value.split(";", 1)[0])


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """What a call wants of session timers (see the module docstring)."""

    session_expires: int | None = None
    min_se: int = MIN_SE
    refresh: Literal["update", "invite"] = "update"
    refresher: Role | None = None

    @classmethod
    def from_param(cls, param: Mapping[str, Any]) -> TimerConfig:
        """The configuration of a call's parameters.

        Raises:
            ValueError: a value out of range or unknown.
        """
        se = param.get("session_expires")
        min_se = int(param.get("min_se") or MIN_SE)
        refresh = param.get("session_refresh") or "update"
        refresher = param.get("session_refresher")
        if min_se < MIN_SE or min_se > MAX_DELTA:
            raise ValueError(f"min_se must be between {MIN_SE} and {MAX_DELTA}, not {min_se}")
        if se is not None:
            se = int(se)
            if not min_se <= se <= MAX_DELTA:
                raise ValueError(f"session_expires {se} is below min_se {min_se} or too large")
        if refresh not in ("update", "invite"):
            raise ValueError(f"session_refresh must be 'update' or 'invite', not {refresh!r}")
        if refresher not in (None, "uac", "uas"):
            raise ValueError(f"session_refresher must be 'uac', 'uas' or None, not {refresher!r}")
        return cls(se, min_se, "invite" if refresh == "invite" else "update", refresher)

    def request_headers(
        self, interval: int | None = None, min_se: int | None = None
    ) -> dict[str, str]:
        """The headers of an INVITE/UPDATE asking for ``interval`` (RFC 4028 7.1)."""
        headers = {}
        interval = interval if interval is not None else self.session_expires
        if interval is not None:
            headers["session-expires"] = SessionExpires(interval, self.refresher).header()
        floor = max(self.min_se, min_se or 0)
        if interval is not None or floor != MIN_SE:
            # (5: without it the peer assumes 90)
            headers["min-se"] = str(floor)
        return headers


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of a negotiation: the interval and who refreshes, relative
    to the transaction it was negotiated in (``uac`` = its sender)."""

    interval: int
    refresher: Role

    def header(self) -> str:
        return SessionExpires(self.interval, self.refresher).header()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request the UAS must refuse: the status and the headers to add."""

    code: int
    reason: str
    headers: dict[str, str]


def uas_negotiate(cfg: TimerConfig, request: Request) -> Negotiated | Rejection | None:
    """What a UAS answers to an INVITE or UPDATE (RFC 4028 9).

    Returns:
        The session timer for the 2xx, a rejection (400 for a malformed
        ``Session-Expires`` or ``Min-SE``, 422 with our ``Min-SE`` for an
        interval below it), or None (no session timer).
    """
    raw = header_value(request, "session-expires")
    raw_min = header_value(request, "min-se")
    their_min = parse_min_se(raw_min) if raw_min is not None else MIN_SE
    if their_min is None:
        return Rejection(400, "Malformed Min-SE", {})
    uac_supports = has_option(request, "supported", "timer")
    if raw is None:
        if cfg.session_expires is None:
            return None
        # 9: the UAS may ask for a session timer itself; with a UAC that does
        # not support timers only as the refresher
        interval = max(cfg.session_expires, their_min)
        refresher: Role = (cfg.refresher or "uac") if uac_supports else "uas"
        return Negotiated(interval, refresher)
    se = parse_session_expires(raw)
    if se is None:
        return Rejection(400, "Malformed Session-Expires", {})
    if se.interval < cfg.min_se or se.interval < MIN_SE:
        # 9: "the UAS MUST reject it with a 422 ... with a Min-SE header"
        return Rejection(422, "Session Interval Too Small", {"min-se": str(cfg.min_se)})
    interval = se.interval
    if cfg.session_expires is not None and interval > cfg.session_expires:
        # 9: the UAS may lower it, but not below the request's Min-SE
        interval = max(cfg.session_expires, their_min, cfg.min_se)
    if se.refresher is not None:
        refresher = se.refresher
    elif uac_supports:
        refresher = cfg.refresher or "uac"
    else:
        refresher = "uas"
    return Negotiated(interval, refresher)


def uas_headers(result: Negotiated) -> dict[str, str]:
    """The headers of the 2xx that accepts ``result`` (RFC 4028 9: Require:
    timer when the UAC refreshes)."""
    headers = {"session-expires": result.header()}
    if result.refresher == "uac":
        headers["require"] = "timer"
    return headers


def uac_result(asked: int | None, response: Response) -> Negotiated | None:
    """The session timer a 2xx to our INVITE/UPDATE sets up (RFC 4028 7.2).

    Args:
        asked: the interval we asked for (None: none).
        response: the 2xx.

    Returns:
        The timer, or None when the 2xx has no (usable) ``Session-Expires``:
        no session timer ("can be turned off in mid dialog").
    """
    se = parse_session_expires(header_value(response, "session-expires"))
    if se is None:
        return None
    interval = se.interval
    if interval < MIN_SE:
        return None
    if asked is not None and interval > asked:
        interval = asked  # (8: a UAS may only lower it)
    # 7.2: no refresher in the 2xx: the UAC refreshes
    return Negotiated(interval, se.refresher or "uac")


def retry_after_422(cfg: TimerConfig, asked: int | None, response: Packet) -> int | None:
    """The interval to ask for after a 422 (RFC 4028 7.4), None to give up
    (no usable ``Min-SE``, or not above what we asked)."""
    their_min = parse_min_se(header_value(response, "min-se"))
    if their_min is None or their_min < MIN_SE:
        return None
    if asked is not None and their_min <= asked:
        return None
    return max(their_min, cfg.session_expires or 0)


class SessionTimer:
    """The timers of one dialog's session timer.

    Args:
        loop: the event loop.
        refresh: sends a refresh (the refresher's timer, at half the interval).
        expired: ends the call (no successful refresh before the end).
    """

    def __init__(
        self, loop: EventLoop, refresh: Callable[[], object], expired: Callable[[], object]
    ) -> None:
        self._loop = loop
        self._refresh = refresh
        self._expired = expired
        self._timers: list[TimerLike] = []
        self.interval: int | None = None
        self.refresher = False

    def start(self, interval: int, we_refresh: bool) -> None:
        """(Re)start the timers for ``interval`` seconds."""
        self.stop()
        self.interval = interval
        self.refresher = we_refresh
        if we_refresh:
            self._timers.append(self._after(interval / 2, self._refresh))
        self._timers.append(self._after(interval - min(32, interval / 3), self._expired))

    def stop(self) -> None:
        """Stop both timers (the session timer is off)."""
        timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self.interval = None
        self.refresher = False

    def _after(self, delay: float, action: Callable[[], object]) -> TimerLike:
        when = delay if delay < _RELATIVE_LIMIT else self._loop.looptime + delay
        return self._loop.add_timer(when, partial(self._fire, action))

    def _fire(self, action: Callable[[], object], timer: object) -> None:
        self._timers = [t for t in self._timers if t is not timer]
        action()
