"""RTCP receiver reports and BYE (RFC 3550 6), pure build/parse for :mod:`netsip.rtp`.

Differences from Net::SIP:
- Net::SIP sends and reads no RTCP at all; here a receiver report (RFC 3550
  6.4.2) goes out on the RTCP port every few seconds and a BYE (6.6) on close.
  Incoming RTCP is only parsed tolerantly (for the log), never acted upon.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ReceptionStats", "build_bye", "build_rr", "parse_rtcp"]

RR = 201
BYE = 203
SDES = 202


@dataclass(slots=True)
class ReceptionStats:
    """What a receiver tracks about one source (RFC 3550 A.1, A.3, A.8)."""

    ssrc: int = 0
    base_seq: int | None = None
    max_seq: int = 0
    cycles: int = 0
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    jitter: float = 0.0
    transit: float | None = None

    def update(self, seq: int, timestamp: int, ssrc: int, arrival: float, rate: int = 8000) -> None:
        """Account one packet (sequence wrap, RFC 3550 A.1; interarrival jitter A.8)."""
        if self.base_seq is None:
            self.base_seq = self.max_seq = seq
            self.ssrc = ssrc
        elif seq < self.max_seq and self.max_seq - seq > 0x8000:
            self.cycles += 0x10000  # wrapped
            self.max_seq = seq
        elif seq > self.max_seq:
            self.max_seq = seq
        self.received += 1
        transit = arrival * rate - timestamp
        if self.transit is not None:
            d = abs(transit - self.transit)
            if d < 0x7FFFFFFF:  # ignore timestamp jumps
                self.jitter += (d - self.jitter) / 16
        self.transit = transit

    def report_block(self) -> bytes:
        """A report block (RFC 3550 6.4.1): fraction lost, cumulative lost, highest seq, jitter."""
        base = self.base_seq or 0
        extended_max = self.cycles + self.max_seq
        expected = extended_max - base + 1
        lost = max(min(expected - self.received, 0x7FFFFF), -0x800000)
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else (lost_int << 8) // exp_int
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (min(fraction, 255) << 24) | (lost & 0xFFFFFF),
            extended_max & 0xFFFFFFFF,
            int(self.jitter) & 0xFFFFFFFF,
            0,  # LSR: we do not parse sender reports
            0,  # DLSR
        )


def build_rr(ssrc: int, source: ReceptionStats | None) -> bytes:
    """A receiver report (RFC 3550 6.4.2) with one block if we heard ``source``."""
    block = source.report_block() if source is not None and source.base_seq is not None else b""
    count = 1 if block else 0
    length = (8 + len(block)) // 4 - 1
    return struct.pack("!BBHI", 0x80 | count, RR, length, ssrc & 0xFFFFFFFF) + block


def build_bye(ssrc: int) -> bytes:
    """An RR without blocks followed by a BYE (RFC 3550 6.1: compound starts with a report)."""
    bye = struct.pack("!BBHI", 0x81, BYE, 1, ssrc & 0xFFFFFFFF)
    return build_rr(ssrc, None) + bye


def parse_rtcp(data: bytes) -> list[tuple[int, int]] | None:
    """The (packet type, ssrc) of each packet of a compound RTCP packet; None if invalid.

    Tolerant: never raises (RFC 3550 A.2 validity checks, simplified).
    """
    out: list[tuple[int, int]] = []
    off = 0
    while off + 4 <= len(data):
        b0, pt, length = struct.unpack_from("!BBH", data, off)
        if b0 >> 6 != 2 or not 192 <= pt <= 223:
            return None
        size = 4 * (length + 1)
        if off + size > len(data):
            return None
        ssrc = struct.unpack_from("!I", data, off + 4)[0] if size >= 8 else 0
        out.append((pt, ssrc))
        off += size
    if off != len(data) or not out:
        return None
    return out
