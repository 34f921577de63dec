"""Retransmission schedules of RFC 3261 section 17.1 (part of Perl's ``Net::SIP::Dispatcher``).

Perl's ``Net::SIP::Dispatcher::Packet::prepare_retransmits`` precomputes a list
of retransmission time stamps for every queued packet, and a once-a-second
timer scans the whole queue for due entries.  netsip keeps the same timer
values but turns them into a small pure unit: a :class:`RetransmitSchedule`
knows when the next retransmission is due and when the transaction times out,
so the dispatcher can arm exactly one event-loop timer per queued delivery.

Timer values (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1 and 13.3.1.4):

* INVITE request: first retransmission after T1, interval doubling without a
  cap (Timer A), transaction timeout after 64*T1 (Timer B).
* non-INVITE request: interval doubling from T1 up to T2 (Timer E), timeout
  after 64*T1 (Timer F).
* final (2xx-6xx) response to INVITE: doubling from T1 up to T2 (Timer G and
  the 2xx rule of 13.3.1.4), given up after 64*T1 (Timer H).
* ACK, provisional responses and responses to non-INVITE requests are never
  retransmitted by the sender itself.

Unlike Perl (which gives up at the last precomputed retransmission time and
only notices it within a second) the transaction times out exactly at
``start + 64*T1``; every retransmission due strictly before that is sent.
This module has no I/O and reads no clock: the caller passes ``now``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "T1",
    "T2",
    "T4",
    "Action",
    "RetransmitSchedule",
    "retransmit_timers",
]

#: RFC 3261 17.1.1.1: RTT estimate, default 500 ms.
T1: Final = 0.5
#: RFC 3261 17.1.1.1: maximum retransmit interval for non-INVITE requests and INVITE responses.
T2 = 4.0
#: RFC 3261 17.1.2.2: maximum duration a message will remain in the network.
T4 = 5.0

# tolerance when comparing a timer's firing time with the time it was armed for
_SLOP = 1e-6


class Action(enum.Enum):
    """What a due timer of a :class:`RetransmitSchedule` asks the caller to do."""

    #: nothing is due yet (a timer fired early or was already handled)
    WAIT = 0
    #: send the packet again
    RETRANSMIT = 1
    #: the transaction timed out (64*T1 elapsed): report ``ETIMEDOUT``
    TIMEOUT = 2


def retransmit_timers(
    is_request: bool, method: str, code: int | None = None, t1: float = T1, t2: float = T2
) -> tuple[float, float | None] | None:
    """The retransmission timers RFC 3261 prescribes for a packet.

    Args:
        is_request: True for a request, False for a response.
        method: the request method, or for a response the method of its CSeq.
        code: the response code (ignored for requests).
        t1: the value of T1 to use.
        t2: the value of T2 to use.

    Returns:
        ``(t1, cap)`` where ``cap`` limits the doubling interval (None: no cap,
        as for INVITE requests), or None if the packet is never retransmitted.
    """
    method = method.upper()
    if is_request:
        if method == "INVITE":
            return (t1, None)  # Timer A: doubling, no cap (17.1.1.2)
        if method == "ACK":
            return None  # ACK is never retransmitted on its own (17.1.1.3)
        return (t1, t2)  # Timer E (17.1.2.2)
    # Only final responses to INVITE are retransmitted by their sender (17.2.1 Timer G,
    # 13.3.1.4 for 2xx); Perl also retransmits 101-199, which RFC 3261 does not ask for
    # (the INVITE retransmissions are answered from the response cache instead).
    if code is not None and code >= 200 and method == "INVITE":
        return (t1, t2)
    return None


@dataclass(slots=True)
class RetransmitSchedule:
    """When to retransmit one packet and when to give up.

    Retransmission times are absolute and computed from ``start`` (not from the
    time a timer actually fired), so a late event loop does not stretch the
    schedule.  If several retransmission times passed unnoticed, one
    retransmission is sent and the missed ones are skipped, as in Perl.

    Args:
        start: time of the first transmission.
        t1: the first interval.
        cap: upper limit of the doubling interval (None: no limit).
        timeout: seconds after ``start`` after which the delivery fails;
            defaults to ``64 * t1``.
    """

    start: float
    t1: float = T1
    cap: float | None = T2
    timeout: float | None = None
    #: absolute time of the next retransmission (may be >= ``expire``: then none is left)
    next_retransmit: float = field(init=False)
    #: absolute time when the delivery fails with ETIMEDOUT
    expire: float = field(init=False)
    #: retransmissions handed out by :meth:`due` so far
    count: int = field(init=False, default=0)
    _interval: float = field(init=False)

    def __post_init__(self) -> None:
        if self.t1 <= 0:
            raise ValueError(f"t1 must be positive, got {self.t1!r}")
        if self.cap is not None and self.cap <= 0:
            raise ValueError(f"cap must be positive, got {self.cap!r}")
        if self.timeout is None:
            self.timeout = 64 * self.t1
        self.expire = self.start + self.timeout
        self._interval = self.t1
        self.next_retransmit = self.start + self.t1

    @property
    def next_time(self) -> float:
        """The absolute time of the next event: a retransmission or the timeout."""
        return min(self.next_retransmit, self.expire)

    def _advance(self) -> None:
        self._interval *= 2
        if self.cap is not None and self._interval > self.cap:
            self._interval = self.cap
        self.next_retransmit += self._interval

    def due(self, now: float) -> Action:
        """Tell what is due at ``now`` and move the schedule on.

        Args:
            now: the current time (same clock as ``start``).

        Returns:
            :attr:`Action.TIMEOUT` once ``now >= expire``;
            :attr:`Action.RETRANSMIT` if a retransmission time was reached
            (the schedule then points at the next one);
            :attr:`Action.WAIT` otherwise.
        """
        # a timer armed for exactly ``next_time`` may see a clock a rounding error short of it
        now += _SLOP
        if now >= self.expire:
            return Action.TIMEOUT
        if now < self.next_retransmit:
            return Action.WAIT
        while self.next_retransmit <= now:
            self._advance()
        self.count += 1
        return Action.RETRANSMIT

    def times(self) -> list[float]:
        """All retransmission times of a fresh schedule (for logs and tests)."""
        out: list[float] = []
        t, interval = self.start + self.t1, self.t1
        while t < self.expire:
            out.append(t)
            interval *= 2
            if self.cap is not None and interval > self.cap:
                interval = self.cap
            t += interval
        return out
