"""DTMF over RTP: RFC 4733 telephone events and in-band tones (Perl's ``Net::SIP::DTMF``).

Two factories, as in Net::SIP:

* :func:`dtmf_generator` returns a callable that the RTP sender calls once per
  20 ms slot with ``(seq, timestamp, ssrc)``; it answers with the complete RTP
  packets to send in that slot: RFC 4733 telephone-event packets
  (``rfc2833_type``) or the two tones of the digit (ITU-T Q.23 frequencies)
  encoded as G.711 PCMU or PCMA (``audio_type`` 0 or 8), through
  :mod:`netsip._g711`.  ``[]`` says that the event is over, ``[b""]`` that
  this slot carries no DTMF data (a pause with RFC 4733: the sender sends its
  usual media).
* :func:`dtmf_extractor` returns a callable fed with every received RTP
  packet; it answers ``(event, duration_ms, "rfc2833" | "audio")`` once per
  digit, when the digit has ended, and None otherwise.

How it works:

* Time comes from the RTP timestamps (8000 Hz for telephone-event/8000, PCMU
  and PCMA), never from a clock: the generator ends an event when the
  timestamp passed its duration, the extractor measures durations in
  timestamp units.  This module does no I/O and reads no clock.
* RFC 4733 sending (section 2.5.1): every packet of an event carries the RTP
  timestamp of the event's start and a growing duration; the first has the
  marker bit; the last has the E bit and is sent three times, in three
  consecutive slots, with the same duration (2.5.1.4).  Events longer than
  the 16-bit duration field are split into segments (2.5.1.3).
* RFC 4733 receiving (2.5.2): an event ends with its E bit, with a packet of
  another event (an implicit end, as in Net::SIP), or when a later packet of
  the stream shows that its end packets were lost.  An event is identified by
  its digit and RTP timestamp, so the three end packets and retransmissions
  report it once, and the same digit pressed again (a new timestamp) is a new
  digit.
* In-band detection: the G.711 payload is analysed in 20 ms windows (160
  samples) every 10 ms.  For each window the power at the eight DTMF
  frequencies is what the Goertzel algorithm computes (a single-frequency
  DFT), evaluated as Hann-windowed dot products at the exact frequencies in
  integer arithmetic that CPython runs in C (see the in-band section below);
  windows that cannot hold a digit (too weak, or mostly DC) are rejected
  first, at a few bytes.translate of the G.711 codes, so silence costs about
  what RFC 4733 detection costs.  A window shows a digit when the strongest
  row and column tone are each above a minimum level, within the allowed
  twist of each other, clearly above the other tones of their group, and
  together hold most of the window's energy (this rejects speech, noise and
  single tones).
  A digit needs three consecutive windows (40 ms; a 20 ms tone never
  passes); it ends after three windows without it (two are bridged) or at
  another digit, and is then reported.
* Bad input never raises: short or malformed packets, other RTP versions and
  unknown payload types are dropped (logged at DEBUG); duplicate and
  out-of-order packets are dropped by sequence number as Net::SIP does.

Differences from Net::SIP:

* The generator measures the event by RTP timestamps instead of the wall
  clock, and its first call already sends the first packet (Net::SIP spends
  the first slot on noting the timestamp).  Net::SIP's generator sends the
  end packet once although its documentation says three times; netsip sends
  it three times (RFC 4733 2.5.1.4).
* ``volume`` is the RFC 4733 power level, 0 to 63 (-dBm0), and ValueError
  outside; Net::SIP turns 0 into 10.  It also sets the level of each in-band
  tone (default -10 dBm0 per tone), where Net::SIP always uses a fixed, very
  loud level.
* Net::SIP computes its own approximate mu-law/A-law tables; netsip uses the
  bit-exact G.711 codec of :mod:`netsip._g711`.
* In-band detection works on 20 ms blocks of any packet size (Net::SIP needs
  exactly 160 samples per packet and a 60 ms Blackman window) and checks
  twist, relative peaks and the share of the energy; lost packets and
  timestamp jumps count as silence.
* Durations come from RTP timestamps (RFC 4733: the duration field) instead
  of arrival times, so jitter does not change them; the ``time`` argument of
  the extractor is accepted for compatibility and not needed.
* An event only seen through its end packet (a lost start, or an event of a
  single packet) is reported; Net::SIP drops it.  An event with volume 0
  (0 dBm0, the loudest) ended by another event is reported; Net::SIP drops it.
* Once RFC 4733 events arrived, in-band detection stops for that stream
  (the peer uses RFC 4733; a digit also played in-band would come twice):
  the FIXME of Net::SIP's ``dtmf_extractor``.
* Out-of-order detection resynchronises after a big backwards jump of the
  sequence number (RFC 3550 A.1: two consecutive packets), and a new SSRC
  starts a new sequence; Net::SIP would drop such a stream for good.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import mul
from typing import Final, Literal, NamedTuple, Protocol
from zlib import adler32

from netsip._g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from netsip._log import get_logger

__all__ = [
    "EVENTS",
    "DTMFExtractor",
    "DTMFGenerator",
    "DTMFResult",
    "dtmf_extractor",
    "dtmf_generator",
]

log = get_logger(__name__)

#: The DTMF events in the order of their RFC 4733 event codes (section 3.2):
#: ``EVENTS[code]`` is the digit, ``EVENTS.index(digit)`` its code.
EVENTS: Final = "0123456789*#ABCD"

#: What :func:`dtmf_generator` returns: ``gen(seq, timestamp, ssrc) -> packets``.
DTMFGenerator = Callable[[int, int, int], list[bytes]]

Method = Literal["rfc2833", "audio"]


class DTMFResult(NamedTuple):
    """A detected digit: the event (``EVENTS``), its duration in ms, how it came."""

    event: str
    duration: int
    method: Method


class DTMFExtractor(Protocol):
    """What :func:`dtmf_extractor` returns: ``x(rtp_packet, time=None) -> DTMFResult | None``."""

    def __call__(self, packet: bytes, time: float | None = None, /) -> DTMFResult | None: ...


# RTP clock of telephone-event/8000, PCMU and PCMA, and the 20 ms slot
_RATE: Final = 8000
_FRAME: Final = 160
_MASK32: Final = 0xFFFFFFFF
_HALF32: Final = 0x80000000
_PCMA: Final = 8
_RTP_HEADER: Final = struct.Struct("!BBHII")
_EVENT_PAYLOAD: Final = struct.Struct("!BBH")
_EVENT_CODES: Final = {e: i for i, e in enumerate(EVENTS)}
# RFC 4733 2.3: the E bit and the 6-bit volume share one byte
_E_BIT: Final = 0x80
_VOLUME_MASK: Final = 0x3F
_MAX_DURATION: Final = 0xFFFF
# RFC 4733 2.5.1.4: the final packet is sent three times
_END_REPEATS: Final = 3

# ITU-T Q.23 frequencies: rows (low group) and columns (high group) of the keypad
_ROWS: Final = (697, 770, 852, 941)
_COLS: Final = (1209, 1336, 1477, 1633)
_KEYPAD: Final = ("123A", "456B", "789C", "*0#D")
_TONES: Final = {
    key: (_ROWS[r], _COLS[c]) for r, keys in enumerate(_KEYPAD) for c, key in enumerate(keys)
}
# the peak of a 0 dBm0 sine: G.711's overload point is +3.17 dBm0 (G.711 table 5)
_PEAK_0DBM0: Final = 32767 * 10 ** (-3.17 / 20)


# ----------------------------------------------------------------- generator


def dtmf_generator(
    event: str,
    duration: int,
    *,
    rfc2833_type: int | None = None,
    audio_type: int | None = None,
    volume: int = 10,
) -> DTMFGenerator:
    """A generator of the RTP packets for one DTMF event or pause.

    Args:
        event: one of ``EVENTS`` (``a``-``d`` too); anything else is a pause.
        duration: the length of the event in ms (at least one 20 ms slot).
        rfc2833_type: the payload type of telephone-event/8000: send RFC 4733
            events.  Takes precedence over ``audio_type``.
        audio_type: the payload type for in-band tones, 8 for PCMA, anything
            else PCMU (as Net::SIP).
        volume: RFC 4733 power level, 0 to 63 (meaning -dBm0); with
            ``audio_type`` the level of each of the two tones.

    Returns:
        ``gen(seq, timestamp, ssrc) -> list[bytes]``, to be called once per
        20 ms slot with the slot's RTP sequence number and timestamp: ``[]``
        once the event is over; ``[b""]`` for an RFC 4733 pause slot (no DTMF
        data: send the usual media); otherwise the packet(s) for this slot
        (one; for an in-band pause, a packet of silence).

    Raises:
        ValueError: neither payload type given, a payload type outside 0-127,
            a negative duration or a volume outside 0-63.
    """
    if duration < 0:
        raise ValueError(f"DTMF duration must not be negative, got {duration}")
    if not 0 <= volume <= _VOLUME_MASK:
        raise ValueError(f"DTMF volume must be 0-63 (-dBm0), got {volume}")
    digit = _normalise(event)
    # at least one slot, even for a zero duration
    samples = max(duration * _RATE // 1000, _FRAME if digit else 0)
    if rfc2833_type is not None:
        return _EventGenerator(_check_type(rfc2833_type), digit, samples, volume)
    if audio_type is not None:
        return _ToneGenerator(_check_type(audio_type), digit, samples, volume)
    raise ValueError("neither rfc2833 nor audio RTP type defined")


def _normalise(event: str | None) -> str:
    """The DTMF event ``event`` names, or "" for a pause."""
    if event and len(event) == 1 and event.upper() in _EVENT_CODES:
        return event.upper()
    return ""


def _check_type(payload_type: int) -> int:
    if not 0 <= payload_type <= 0x7F:
        raise ValueError(f"RTP payload type must be 0-127, got {payload_type}")
    return payload_type


@dataclass(slots=True)
class _Slots:
    """Where a generator is in its event, measured in RTP timestamp units."""

    samples: int  # length of the event
    start: int | None = None  # timestamp of the first slot
    calls: int = 0

    def elapsed(self, timestamp: int) -> int:
        """Samples from the event's start to this slot (never less than the slots counted)."""
        if self.start is None:
            self.start = timestamp & _MASK32
        elapsed = max((timestamp - self.start) & _MASK32, self.calls * _FRAME)
        self.calls += 1
        return elapsed


@dataclass(slots=True)
class _EventGenerator:
    """RFC 4733 2.5.1: the telephone-event packets of one event."""

    payload_type: int
    digit: str
    samples: int
    volume: int
    slots: _Slots = field(init=False)
    segment: int = 0  # samples of the segments already closed (2.5.1.3)
    marker: bool = True
    ends_sent: int = 0
    final: int = 0  # the duration field of the end packets

    def __post_init__(self) -> None:
        self.slots = _Slots(self.samples)

    def __call__(self, seq: int, timestamp: int, ssrc: int) -> list[bytes]:
        elapsed = self.slots.elapsed(timestamp)
        if not self.digit:
            return [b""] if elapsed < self.samples else []
        if self.ends_sent:
            if self.ends_sent >= _END_REPEATS:
                return []
            self.ends_sent += 1
            return [self._packet(seq, ssrc, self.final, end=True)]
        covered = min(elapsed + _FRAME, self.samples)
        if covered - self.segment > _MAX_DURATION:
            # 2.5.1.3: a segment ends at the largest duration; the next one
            # starts 0xFFFF units later with its own timestamp
            packet = self._packet(seq, ssrc, _MAX_DURATION, end=False)
            self.segment += _MAX_DURATION
            return [packet]
        if covered < self.samples:
            return [self._packet(seq, ssrc, covered - self.segment, end=False)]
        self.final = covered - self.segment
        self.ends_sent = 1
        return [self._packet(seq, ssrc, self.final, end=True)]

    def _packet(self, seq: int, ssrc: int, duration: int, *, end: bool) -> bytes:
        # RFC 4733 2.3 payload: event, E|R|volume, duration; RTP timestamp = the
        # (segment's) start; marker on the first packet of the event (2.5.1.1)
        assert self.slots.start is not None
        pt = self.payload_type | (0x80 if self.marker else 0)
        self.marker = False
        return _RTP_HEADER.pack(
            0x80, pt, seq & 0xFFFF, (self.slots.start + self.segment) & _MASK32, ssrc & _MASK32
        ) + _EVENT_PAYLOAD.pack(
            _EVENT_CODES[self.digit], (_E_BIT if end else 0) | self.volume, duration
        )


@dataclass(slots=True)
class _ToneGenerator:
    """In-band DTMF: the two tones of a digit (or silence) as 20 ms of G.711."""

    payload_type: int
    digit: str
    samples: int
    volume: int
    slots: _Slots = field(init=False)
    sent: int = 0  # samples generated so far (keeps the phase continuous)

    def __post_init__(self) -> None:
        self.slots = _Slots(self.samples)

    def __call__(self, seq: int, timestamp: int, ssrc: int) -> list[bytes]:
        if self.slots.elapsed(timestamp) >= self.samples:
            return []
        linear = self._tones() if self.digit else bytes(2 * _FRAME)
        encode = alaw_encode if self.payload_type == _PCMA else ulaw_encode
        header = _RTP_HEADER.pack(
            0x80, self.payload_type, seq & 0xFFFF, timestamp & _MASK32, ssrc & _MASK32
        )
        return [header + encode(linear)]

    def _tones(self) -> bytes:
        low, high = _TONES[self.digit]
        amplitude = _PEAK_0DBM0 * 10 ** (-self.volume / 20)
        w1, w2 = 2 * math.pi * low / _RATE, 2 * math.pi * high / _RATE
        start, end = self.sent, min(self.sent + _FRAME, self.samples)
        self.sent += _FRAME
        values = [
            round(amplitude * (math.sin(w1 * n) + math.sin(w2 * n))) for n in range(start, end)
        ]
        # two tones above -3 dBm0 each can exceed the 16-bit range: clip, as
        # G.711 does at its overload point anyway
        if amplitude * 2 > 32767:
            values = [max(-32768, min(32767, v)) for v in values]
        # the event may end inside the last slot: silence for the rest of it
        values += [0] * (_FRAME - len(values))
        return struct.pack(f"<{_FRAME}h", *values)


# ----------------------------------------------------------------- extractor


def dtmf_extractor(
    *, rfc2833_type: int | None = None, audio_type: int | None = None
) -> DTMFExtractor:
    """An extractor of DTMF digits from a received RTP stream.

    Args:
        rfc2833_type: the payload type of telephone-event/8000 (RFC 4733 events).
        audio_type: the payload type of the G.711 audio to search for in-band
            tones: 8 for PCMA, anything else PCMU (as Net::SIP).  Both can be
            given; in-band detection stops once RFC 4733 events arrive.

    Returns:
        ``x(rtp_packet, time=None)``, to be called with every received RTP
        packet of the stream; it returns ``DTMFResult(event, duration_ms,
        method)`` when a digit ended, else None.  ``time`` is accepted for
        Net::SIP compatibility; durations come from RTP timestamps.

    Raises:
        ValueError: neither payload type given, both the same, or one
            outside 0-127.
    """
    if rfc2833_type is None and audio_type is None:
        raise ValueError("neither rfc2833 nor audio RTP type defined")
    if rfc2833_type is not None and rfc2833_type == audio_type:
        raise ValueError(f"rfc2833_type and audio_type are both {rfc2833_type}")
    return _Extractor(
        None if rfc2833_type is None else _check_type(rfc2833_type),
        None if audio_type is None else _AudioDetector(_check_type(audio_type)),
    )


class _RTP(NamedTuple):
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def _parse_rtp(packet: bytes) -> _RTP | None:
    """The fields of an RTP packet (RFC 3550 5.1), None if it is not one."""
    if len(packet) < _RTP_HEADER.size:
        return None
    first, second, seq, timestamp, ssrc = _RTP_HEADER.unpack_from(packet)
    if first >> 6 != 2:
        return None
    start = _RTP_HEADER.size + 4 * (first & 0x0F)  # CSRC list
    if first & 0x10:  # 5.3.1 header extension: 16-bit profile, 16-bit length in words
        if len(packet) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    end = len(packet)
    if first & 0x20:  # padding: the last octet counts the padding octets
        end -= packet[-1]
    if start > end or end > len(packet):
        return None
    return _RTP(second & 0x7F, bool(second & 0x80), seq, timestamp, ssrc, packet[start:end])


# RFC 3550 A.1: a jump further back than this is a restart, not reordering
_MAX_MISORDER: Final = 100
# results held for later calls (one packet can end two digits)
_MAX_PENDING: Final = 16
# RFC 4733 2.5.2.3: an event whose end packets were lost is over once the
# stream is this far (100 ms) past its last known duration
_EVENT_TIMEOUT: Final = 800


@dataclass(slots=True)
class _Event:
    """An RFC 4733 event being received."""

    digit: str
    timestamp: int  # of its current segment
    duration: int  # duration field of its latest packet
    earlier: int = 0  # samples of its closed segments (2.5.1.3)


@dataclass(slots=True)
class _Extractor:
    """The state of one received stream (see :func:`dtmf_extractor`)."""

    event_type: int | None
    audio: _AudioDetector | None
    ssrc: int | None = None
    last_seq: int | None = None
    probation: int | None = None  # RFC 3550 A.1: the seq that confirms a restart
    current: _Event | None = None
    done: tuple[str, int] | None = None  # (digit, timestamp) of the last event reported
    pending: deque[DTMFResult] = field(default_factory=lambda: deque(maxlen=_MAX_PENDING))

    def __call__(self, packet: bytes, time: float | None = None, /) -> DTMFResult | None:
        if type(packet) is not bytes:
            packet = bytes(packet)
        if len(packet) >= _RTP_HEADER.size and packet[0] == 0x80:
            # the usual packet (no padding, extension or CSRC), the next of
            # the stream, audio, no event running: what the general path
            # below does for it, without its objects and calls
            _, second, seq, timestamp, ssrc = _RTP_HEADER.unpack_from(packet)
            last, pt = self.last_seq, second & 0x7F
            if (
                ssrc == self.ssrc
                and last is not None
                and seq == (last + 1) & 0xFFFF
                and pt != self.event_type
                and self.current is None
            ):
                self.last_seq, self.probation = seq, None
                audio = self.audio
                if audio is not None and pt == audio.payload_type:
                    found = audio.feed(packet[_RTP_HEADER.size :], timestamp)
                    if found:
                        self.pending.extend(DTMFResult(d, ms, "audio") for d, ms in found)
                return self.pending.popleft() if self.pending else None
        rtp = _parse_rtp(packet)
        if rtp is None:
            log.debug("dropping a packet that is not RTP version 2 (%d bytes)", len(packet))
        elif self._in_sequence(rtp):
            if rtp.payload_type == self.event_type:
                self._event(rtp)
            else:
                self._event_timeout(rtp.timestamp)
                audio = self.audio
                if audio is not None and rtp.payload_type == audio.payload_type:
                    found = audio.feed(rtp.payload, rtp.timestamp)
                    if found:
                        self.pending.extend(DTMFResult(d, ms, "audio") for d, ms in found)
        return self.pending.popleft() if self.pending else None

    def _in_sequence(self, rtp: _RTP) -> bool:
        """Whether to use the packet: drop duplicates and late packets as Net::SIP does."""
        if rtp.ssrc != self.ssrc:
            # a new stream (RFC 3550 8.2): its own sequence and timestamps
            self.ssrc, self.last_seq, self.probation = rtp.ssrc, None, None
            if self.audio is not None:
                self.audio.discontinuity()
        if self.last_seq is not None:
            diff = (rtp.seq - self.last_seq) & 0xFFFF
            if diff == 0:
                log.debug("dropping duplicate RTP (seq %d)", rtp.seq)
                return False
            if diff > 0x8000:
                if 0x10000 - diff <= _MAX_MISORDER or rtp.seq != self.probation:
                    self.probation = (rtp.seq + 1) & 0xFFFF
                    log.debug("dropping out of order RTP (seq %d after %d)", rtp.seq, self.last_seq)
                    return False
                log.debug("RTP sequence restarted at %d", rtp.seq)
                if self.audio is not None:
                    self.audio.discontinuity()
            elif diff > 1:
                log.debug("lost %d RTP packets before seq %d", diff - 1, rtp.seq)
        self.last_seq, self.probation = rtp.seq, None
        return True

    def _event(self, rtp: _RTP) -> None:
        """One RFC 4733 telephone-event packet (2.5.2)."""
        if self.audio is not None and self.audio.enabled:
            log.debug("RFC 4733 events received: in-band DTMF detection off")
            self.audio.enabled = False
        if len(rtp.payload) < _EVENT_PAYLOAD.size:
            log.debug("dropping a telephone-event of %d bytes", len(rtp.payload))
            return
        code, flags, duration = _EVENT_PAYLOAD.unpack_from(rtp.payload)
        if code >= len(EVENTS):
            log.debug("ignoring telephone-event %d (not DTMF)", code)
            return
        digit, end, ts = EVENTS[code], bool(flags & _E_BIT), rtp.timestamp
        if (digit, ts) == self.done:
            return  # a repeated end packet or a retransmission of a reported event
        cur = self.current
        if cur is not None:
            if cur.digit == digit and cur.timestamp == ts:
                cur.duration = max(cur.duration, duration)
                if end:
                    self._report(cur)
                return
            if cur.digit == digit and not rtp.marker and self._next_segment(cur, ts):
                cur.earlier += (ts - cur.timestamp) & _MASK32
                cur.timestamp, cur.duration = ts, duration
                if end:
                    self._report(cur)
                return
            # another event: the current one ended implicitly
            self._report(cur)
        self.current = _Event(digit, ts, duration)
        if end:  # its only packet we got is its end
            self._report(self.current)

    @staticmethod
    def _next_segment(cur: _Event, ts: int) -> bool:
        # 2.5.1.3: the next segment starts where the last one reached 0xFFFF
        return cur.duration >= _MAX_DURATION - _FRAME and (ts - cur.timestamp) & _MASK32 == (
            _MAX_DURATION
        )

    def _event_timeout(self, timestamp: int) -> None:
        """End the current event when the stream has clearly moved past it."""
        cur = self.current
        if cur is None:
            return
        beyond = (timestamp - cur.timestamp - cur.duration) & _MASK32
        if _EVENT_TIMEOUT <= beyond < _HALF32:
            log.debug("end of DTMF event %s lost", cur.digit)
            self._report(cur)

    def _report(self, event: _Event) -> None:
        self.current = None
        self.done = (event.digit, event.timestamp)
        ms = (event.earlier + event.duration) * 1000 // _RATE
        self.pending.append(DTMFResult(event.digit, ms, "rfc2833"))


# ----------------------------------------------------------------- in-band detection
#
# Windows of 20 ms (160 samples) every 10 ms: a 40 ms tone then always fills
# two whole windows, however it is aligned to the packets, and a 20 ms tone
# never does (ITU-T Q.24: accept 40 ms, reject about 20 ms).  Thresholds are
# powers (mean squares) on the 16-bit scale.  Q.24 asks for operation down to
# about -25 dBm0 per tone and for +-1.5 % frequency tolerance; twist and
# relative-peak limits as in common detectors.
_WINDOW: Final = 160
_HOP: Final = 80
_POWER_0DBM0: Final = _PEAK_0DBM0**2 / 2
_MIN_TONE: Final = _POWER_0DBM0 * 10 ** (-36 / 10)  # -36 dBm0 per tone
_MIN_POWER: Final = 2 * _MIN_TONE  # of a window with a digit
_NORMAL_TWIST: Final = 10 ** (8 / 10)  # row (low group) stronger than column
_REVERSE_TWIST: Final = 10 ** (6 / 10)  # column stronger than row
_RELATIVE_PEAK: Final = 10 ** (6 / 10)  # over the other tones of the group
_TONE_SHARE: Final = 0.5  # of the window's power in the two tones
_MIN_WINDOWS: Final = 3  # consecutive windows (40 ms) to accept a digit
_MAX_GAP: Final = 2  # windows of dropout bridged inside a digit
# A window whose mean (DC) holds more than this share of its power has no
# digit: the tones must hold half of the power (_TONE_SHARE), and a Hann
# window overstates a tone that fills part of the window by at most 2x, so
# mean^2 <= power - (low + high) / 2 <= 3/4 of the power.  (Over 10^5 random
# accepted windows, with DC offsets, noise and partial tones: at most 0.54.)
_MAX_DC: Final = 0.75

# The work per window, cheapest first (all but the last step at C speed):
# 1. a window whose every sample is below the level of the minimum power
#    (the G.711 codes of ``quiet`` deleted with bytes.translate leave
#    nothing) has no digit: silence and comfort noise end here;
# 2. bounds of the sum and of the sum of squares of the samples, from the
#    codes translated into coarse values (the sample / 256, the square /
#    2^22, rounded so that they bound) and summed by zlib.adler32 (its low
#    16 bits are 1 + the sum of the bytes, exact for 160 bytes): a window
#    surely mostly DC ends here, like the UA benchmark's payload;
# 3. one pass over a per-code table gives the exact sum and sum of squares
#    (two integer fields of one int): power and mean as the decision needs;
# 4. the Goertzel bins (a single-frequency DFT each, Hann windowed) as dot
#    products with cos and sin, four frequencies in one pass: each sample
#    (biased to be >= 0) multiplies a Python int that packs the eight basis
#    values (scaled to integers, biased to be >= 0) in 64-bit fields, and
#    the sum of the products carries the eight sums in the same fields,
#    read out with one struct.unpack.  Integer arithmetic, so exact but for
#    the basis rounded to 1/2^15.  The columns only when the rows allow a
#    digit.
_BIAS: Final = 32768  # sample + _BIAS >= 0
_SQUARES: Final = 32  # bit offset of the sum of squares (the sum of samples is < 2^24)
_COARSE_SQUARE: Final = 22  # the square's coarse value: ceil(square / 2^22) <= 249
_Q: Final = 1 << 15  # scale of the basis values
_FIELDS: Final = struct.Struct("<8Q")  # 160 * 65535 * 2^16 < 2^64: no carries

_HANN: Final = [0.5 - 0.5 * math.cos(2 * math.pi * (n + 0.5) / _WINDOW) for n in range(_WINDOW)]
# a sine of amplitude A gives |X|^2 = (A * sum(w) / 2)^2: scale that to A^2 / 2,
# and the basis from _Q to 1
_SCALE: Final = 2 / sum(_HANN) ** 2 / _Q**2


class _Basis(NamedTuple):
    packed: list[int]  # per sample: the eight basis values in 64-bit fields
    offsets: list[int]  # per field: _BIAS * the sum of its values


def _basis(freqs: tuple[int, ...]) -> _Basis:
    """cos and sin of each frequency, Hann windowed, packed per sample."""
    fields = [
        [round(_Q * _HANN[n] * trig(2 * math.pi * f * n / _RATE)) + _Q for n in range(_WINDOW)]
        for f in freqs
        for trig in (math.cos, math.sin)
    ]
    packed = [sum(v[n] << (64 * j) for j, v in enumerate(fields)) for n in range(_WINDOW)]
    return _Basis(packed, [_BIAS * sum(v) for v in fields])


_ROW_BASIS: Final = _basis(_ROWS)
_COL_BASIS: Final = _basis(_COLS)


@dataclass(frozen=True, slots=True)
class _Law:
    """Tables of one G.711 law, indexed by the code."""

    quiet: bytes  # codes too weak for a window with a digit
    dc_limit: float  # the |sum| of a window with a digit is below (see _classify)
    coarse: bytes  # (sample + _BIAS) // 256
    coarse_squares: bytes  # ceil(sample^2 / 2^_COARSE_SQUARE)
    sums: list[int]  # (sample + _BIAS) | sample^2 << _SQUARES
    biased: list[int]  # sample + _BIAS


def _law(decode: Callable[[bytes], bytes]) -> _Law:
    linear = array("h")
    linear.frombytes(decode(bytes(range(256))))
    if sys.byteorder == "big":  # pragma: no cover - the samples are little-endian
        linear.byteswap()
    return _Law(
        quiet=bytes(c for c, v in enumerate(linear) if v * v < _MIN_POWER),
        dc_limit=_WINDOW * math.sqrt(_MAX_DC) * max(map(abs, linear)),
        coarse=bytes((v + _BIAS) >> 8 for v in linear),
        coarse_squares=bytes(-(-v * v >> _COARSE_SQUARE) for v in linear),
        sums=[(v + _BIAS) | (v * v) << _SQUARES for v in linear],
        biased=[v + _BIAS for v in linear],
    )


_ULAW: Final = _law(ulaw_decode)
_ALAW: Final = _law(alaw_decode)
# step 2: the sum of the samples is 256 * coarse - _SHIFT + 0 .. _SLACK
_SHIFT: Final = _BIAS * _WINDOW
_SLACK: Final = 255 * _WINDOW


def _bins(biased: Iterator[int], basis: _Basis, dc: int) -> list[float]:
    """The power at each of the basis' four frequencies (``dc``: _Q * the sum of samples)."""
    packed = sum(map(mul, biased, basis.packed))
    # a field is sum((s + _BIAS) * (b + _Q)) = sum(s * b) + _Q * sum(s) + its offset
    fields = _FIELDS.unpack(packed.to_bytes(64, "little"))
    dots = [f - o - dc for f, o in zip(fields, basis.offsets, strict=True)]
    return [(c * c + s * s) * _SCALE for c, s in zip(dots[0::2], dots[1::2], strict=True)]


def _classify(window: bytes, law: _Law) -> str | None:
    """The digit a 20 ms window of G.711 codes holds, or None."""
    # 1: the power cannot reach _MIN_POWER when every sample is below it
    if not window.translate(None, law.quiet):
        return None
    # 2: surely mostly DC: the least |sum| possible squared is above the share
    # of the largest sum of squares possible (first of the largest there is:
    # the power is at most the loudest sample squared)
    low_sum = 256 * ((adler32(window.translate(law.coarse)) & 0xFFFF) - 1) - _SHIFT
    least = low_sum if low_sum > 0 else max(0, -low_sum - _SLACK)
    if least > law.dc_limit:
        return None
    squares = ((adler32(window.translate(law.coarse_squares)) & 0xFFFF) - 1) << _COARSE_SQUARE
    if least * least > _MAX_DC * _WINDOW * squares:
        return None
    # 3: power and mean
    sums = sum(map(law.sums.__getitem__, window))
    total = (sums & 0xFFFFFFFF) - _SHIFT
    energy = sums >> _SQUARES
    power = energy / _WINDOW
    if power < _MIN_POWER or total * total > _MAX_DC * _WINDOW * energy:
        return None
    # 4: the rows; the row tone alone must be able to make the share (high <=
    # low * reverse twist): most windows without a digit end here, before the
    # columns
    dc = _Q * total
    rows = _bins(map(law.biased.__getitem__, window), _ROW_BASIS, dc)
    row = max(range(4), key=rows.__getitem__)
    low = rows[row]
    if low < _MIN_TONE or low * (1 + _REVERSE_TWIST) < _TONE_SHARE * power:
        return None
    if any(p * _RELATIVE_PEAK > low for i, p in enumerate(rows) if i != row):
        return None
    cols = _bins(map(law.biased.__getitem__, window), _COL_BASIS, dc)
    col = max(range(4), key=cols.__getitem__)
    high = cols[col]
    if high < _MIN_TONE:
        return None
    if low > high * _NORMAL_TWIST or high > low * _REVERSE_TWIST:
        return None
    if any(p * _RELATIVE_PEAK > high for i, p in enumerate(cols) if i != col):
        return None
    if low + high < _TONE_SHARE * power:
        return None
    return _KEYPAD[row][col]


@dataclass(slots=True)
class _AudioDetector:
    """In-band DTMF in one G.711 stream: windows, their digits, digits with durations."""

    payload_type: int
    enabled: bool = True
    buffer: bytes = b""  # G.711 codes of the next window
    next_ts: int | None = None  # the timestamp that continues the stream
    candidate: str | None = None  # (None: candidate_windows is 0)
    candidate_windows: int = 0
    active: str | None = None
    active_windows: int = 0
    misses: int = 0
    law: _Law = field(init=False)

    def __post_init__(self) -> None:
        self.law = _ALAW if self.payload_type == _PCMA else _ULAW

    def discontinuity(self) -> None:
        """The stream jumped: the samples before and after do not form one window."""
        self.buffer = b""
        self.next_ts = None

    def feed(self, payload: bytes, timestamp: int) -> list[tuple[str, int]]:
        """Add a packet's audio; the digits (with ms) that ended in it."""
        found: list[tuple[str, int]] = []
        if not self.enabled:
            return found
        if self.next_ts is not None and timestamp != self.next_ts:
            gap = (timestamp - self.next_ts) & _MASK32
            lost = gap // _HOP if gap < _HALF32 else _MAX_GAP + 1
            self.buffer = b""
            # lost packets are silence, as far as a digit can tell
            for _ in range(min(lost, _MAX_GAP + 1)):
                self._window(None, found)
        self.next_ts = (timestamp + len(payload)) & _MASK32
        buffer = self.buffer + payload
        law, start, last = self.law, 0, len(buffer) - _WINDOW
        quiet, coarse, dc_limit = law.quiet, law.coarse, law.dc_limit
        while start <= last:
            window = buffer[start : start + _WINDOW]
            # steps 1 and 2's first test of _classify, inline: most windows
            # of a stream without digits end here, without a call
            if not window.translate(None, quiet):
                digit = None
            else:
                low_sum = 256 * ((adler32(window.translate(coarse)) & 0xFFFF) - 1) - _SHIFT
                if low_sum > dc_limit or -low_sum - _SLACK > dc_limit:
                    digit = None
                else:
                    digit = _classify(window, law)
            # (no digit, none active and no candidate: nothing changes)
            if digit is not None or self.active is not None or self.candidate is not None:
                self._window(digit, found)
            start += _HOP
        self.buffer = buffer[start:]
        return found

    def _window(self, digit: str | None, found: list[tuple[str, int]]) -> None:
        """Advance the digit state by one window showing ``digit`` (None: none)."""
        if self.active is not None:
            if digit == self.active:
                self.active_windows += 1 + self.misses
                self.misses = 0
                return
            self.misses += 1
            if digit is None and self.misses <= _MAX_GAP:
                return
            # n windows 10 ms apart span (n + 1) * 10 ms
            ms = (self.active_windows + 1) * _HOP * 1000 // _RATE
            found.append((self.active, ms))
            self.active, self.misses = None, 0
        if digit is None:
            self.candidate, self.candidate_windows = None, 0
            return
        if digit != self.candidate:
            self.candidate, self.candidate_windows = digit, 0
        self.candidate_windows += 1
        if self.candidate_windows >= _MIN_WINDOWS:
            self.active, self.active_windows = digit, self.candidate_windows
            self.candidate, self.candidate_windows = None, 0
