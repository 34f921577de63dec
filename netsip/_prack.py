"""Reliable provisional responses (RFC 3262, ``100rel``) for :mod:`netsip._call`.

Net::SIP has no PRACK; this module is new. It holds the two halves of the
extension, both small and free of SIP dialog logic:

- :class:`ReliableSender` (UAS): numbers the reliable provisional responses
  of one INVITE (``RSeq``, ``Require: 100rel``), retransmits the one in
  flight with an interval that starts at T1 and doubles (RFC 3262 3, no T2
  cap) until its PRACK arrives, gives up after 64*T1, queues the next one
  while one is unacknowledged ("MUST NOT send a second reliable provisional
  response until the first is acknowledged"), and matches a PRACK's
  ``RAck`` (200, 481 for no match, 400 for a malformed one).
- :class:`ReliableReceiver` (UAC): decides whether a reliable provisional
  response is new (its ``RSeq`` is the first one, or one higher than the
  last: RFC 3262 4) and builds the ``RAck`` of its PRACK; retransmissions
  and out-of-order responses are ignored.

The call chooses the mode with its ``prack`` parameter (see
:func:`prack_mode`): ``"off"`` (neither offered nor used), ``"supported"``
(``Supported: 100rel``; provisional responses are sent reliably when the
caller supports or requires it), ``"required"`` (``Require: 100rel``; a
caller without it gets 421).

Differences from Net::SIP: all of it (Net::SIP sends every provisional
response unreliably and never sends PRACK).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final, Literal

from netsip.eventloop import EventLoop, TimerLike
from netsip.packet import Packet, Request, Response
from netsip.retransmit import T1

__all__ = [
    "PRACK_MODES",
    "PrackMode",
    "ReliableReceiver",
    "ReliableSender",
    "has_option",
    "header_value",
    "is_reliable",
    "option_tags",
    "parse_rack",
    "parse_rseq",
    "prack_mode",
]

log = logging.getLogger(__name__)

PrackMode = Literal["off", "supported", "required"]
PRACK_MODES: Final[tuple[PrackMode, ...]] = ("off", "supported", "required")
#: RFC 3262 7.1: "response-num = 1*DIGIT", a 32-bit number (like CSeq)
MAX_RSEQ: Final = 2**32 - 1


def prack_mode(value: object) -> PrackMode:
    """The ``prack`` call parameter as a mode.

    ``None``/``False`` mean ``"off"``, ``True`` means ``"supported"``.

    Raises:
        ValueError: anything else than the three modes and booleans.
    """
    if value is None or value is False:
        return "off"
    if value is True:
        return "supported"
    for mode in PRACK_MODES:
        if value == mode:
            return mode
    raise ValueError(f"prack must be one of {', '.join(PRACK_MODES)}, not {value!r}")


def has_option(packet: Packet, header: str, option: str) -> bool:
    """Whether the option tag ``option`` is in the ``header`` (Require,
    Supported, Unsupported) of ``packet`` (RFC 3261 19.2: case-insensitive)."""
    option = option.lower()
    for value in packet.get_headers(header):
        if any(tag.strip().lower() == option for tag in value.split(",")):
            return True
    return False


def option_tags(packet: Packet, header: str) -> list[str]:
    """The option tags of all ``header`` values of ``packet``, lower case."""
    tags: list[str] = []
    for value in packet.get_headers(header):
        tags.extend(t.strip().lower() for t in value.split(",") if t.strip())
    return tags


def header_value(packet: Packet, name: str) -> str | None:
    """The value of a single-valued header, None when absent, ``""`` (which
    no parser here accepts) when it has several different values."""
    try:
        return packet.get_header(name)
    except ValueError:
        return ""


def parse_rseq(value: str | None) -> int | None:
    """The number of an ``RSeq`` header (RFC 3262 7.1), None if malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if 1 <= number <= MAX_RSEQ else None


def parse_rack(value: str | None) -> tuple[int, int, str] | None:
    """``RAck: response-num CSeq-num Method`` (RFC 3262 7.2), None if malformed."""
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts[:2]):
        return None
    rseq, cseq = int(parts[0]), int(parts[1])
    if not (1 <= rseq <= MAX_RSEQ and cseq <= MAX_RSEQ) or not parts[2].isalpha():
        return None
    return rseq, cseq, parts[2].upper()


@dataclass(slots=True, eq=False)
class _InFlight:
    """The reliable provisional response waiting for its PRACK."""

    response: Response
    rseq: int
    started: float
    interval: float
    timer: TimerLike | None = None


class ReliableSender:
    """The UAS side: the reliable provisional responses of one INVITE.

    Args:
        loop: the event loop (timers, ``looptime``).
        transmit: sends a response (the first time and each retransmission).
        timed_out: called with the response when 64*T1 passed without its
            PRACK (RFC 3262 3: the UAS "SHOULD reject the original request
            with a 5xx response").
        t1: the T1 of the retransmission schedule.
    """

    def __init__(
        self,
        loop: EventLoop,
        transmit: Callable[[Response], object],
        timed_out: Callable[[Response], object],
        t1: float = T1,
    ) -> None:
        self._loop = loop
        self._transmit = transmit
        self._timed_out = timed_out
        self._t1 = t1
        # 3: "the initial value ... MUST be chosen uniformly between 1 and 2**31 - 1"
        self._next_rseq = secrets.randbelow(2**31 - 1) + 1
        self._in_flight: _InFlight | None = None
        self._queue: deque[Response] = deque()
        self.acknowledged = 0

    @property
    def busy(self) -> bool:
        """A reliable provisional response is unacknowledged (or queued)."""
        return self._in_flight is not None or bool(self._queue)

    def send(self, response: Response) -> None:
        """Send ``response`` (a 101-199) reliably: now, or after the PRACK of
        the one in flight."""
        response.set_header("require", "100rel")
        if self._in_flight is not None:
            self._queue.append(response)
            return
        rseq = self._next_rseq
        self._next_rseq = rseq + 1 if rseq < MAX_RSEQ else 1
        response.set_header("rseq", str(rseq))
        flight = _InFlight(response, rseq, self._loop.looptime, self._t1)
        self._in_flight = flight
        flight.timer = self._loop.add_timer(flight.interval, partial(self._retransmit, flight))
        self._transmit(response)

    def _retransmit(self, flight: _InFlight, _timer: object) -> None:
        flight.timer = None
        if self._in_flight is not flight:
            return
        now = self._loop.looptime
        if now - flight.started >= 64 * self._t1:
            log.info("no PRACK for %s within 64*T1", flight.response)
            self.close()
            self._timed_out(flight.response)
            return
        self._transmit(flight.response)
        flight.interval *= 2
        # (the last wait ends at 64*T1 sharp: the time-out is not a doubling late)
        delay = min(flight.interval, flight.started + 64 * self._t1 - now)
        flight.timer = self._loop.add_timer(delay, partial(self._retransmit, flight))

    def prack(self, request: Request) -> int:
        """Match a PRACK to the response in flight.

        Returns:
            The status for the PRACK's response: 200 (it acknowledged the
            response in flight: the next queued one goes out), 481 (no
            unacknowledged response matches, RFC 3262 3), 400 (no or a
            malformed ``RAck``).
        """
        rack = parse_rack(header_value(request, "rack"))
        if rack is None:
            return 400
        flight = self._in_flight
        if flight is None:
            return 481
        response = flight.response
        if rack != (flight.rseq, response.cseq_number(), (response.method() or "").upper()):
            return 481
        if flight.timer is not None:
            flight.timer.cancel()
        self._in_flight = None
        self.acknowledged += 1
        if self._queue:
            self.send(self._queue.popleft())
        return 200

    def close(self) -> None:
        """Stop retransmitting and drop the queue."""
        flight, self._in_flight = self._in_flight, None
        if flight is not None and flight.timer is not None:
            flight.timer.cancel()
        self._queue.clear()


class ReliableReceiver:
    """The UAC side: which reliable provisional responses to PRACK (RFC 3262 4)."""

    def __init__(self) -> None:
        self.last_rseq: int | None = None

    def accept(self, response: Response) -> bool:
        """True if ``response`` is the next reliable provisional response (to
        PRACK and process); False for a retransmission, one out of order, or
        one without a usable ``RSeq`` (not processed further)."""
        rseq = parse_rseq(header_value(response, "rseq"))
        if rseq is None:
            log.info("reliable %s without a valid RSeq: ignored", response)
            return False
        last = self.last_rseq
        if last is not None and rseq != last + 1:
            log.debug("RSeq %d after %d: not PRACKed", rseq, last)
            return False
        self.last_rseq = rseq
        return True

    @staticmethod
    def rack(response: Response) -> str:
        """The ``RAck`` of the PRACK for ``response`` (RFC 3262 7.2)."""
        rseq = parse_rseq(header_value(response, "rseq"))
        return f"{rseq} {response.cseq_number()} {response.method()}"


def is_reliable(response: Response) -> bool:
    """A 101-199 response the UAS asks to PRACK (``Require: 100rel``)."""
    return 100 < response.code() < 200 and has_option(response, "require", "100rel")
