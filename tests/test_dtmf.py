"""DTMF over RTP (netsip.dtmf): RFC 4733 events and in-band tones, both ways."""

from __future__ import annotations

import struct

import pytest

from netsip._g711 import ulaw_encode
from netsip.dtmf import EVENTS, DTMFExtractor, DTMFResult, dtmf_extractor, dtmf_generator

EVENT_PT = 101
SSRC = 0x1234ABCD
METHODS = [
    pytest.param({"rfc2833_type": EVENT_PT}, "rfc2833", id="rfc4733"),
    pytest.param({"audio_type": 0}, "audio", id="pcmu"),
    pytest.param({"audio_type": 8}, "audio", id="pcma"),
]
HEADER = struct.Struct("!BBHII")


class Stream:
    """An RTP sender: one slot every 20 ms, sequence and timestamp advancing per slot."""

    def __init__(self, seq: int = 65530, timestamp: int = 0xFFFFF000, ssrc: int = SSRC) -> None:
        # start near the wrap of both counters, so every test crosses it
        self.seq, self.timestamp, self.ssrc = seq, timestamp, ssrc

    def slot(self) -> tuple[int, int, int]:
        current = (self.seq, self.timestamp, self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 160) & 0xFFFFFFFF
        return current

    def audio(self, pt: int, payload: bytes) -> bytes:
        seq, ts, ssrc = self.slot()
        return HEADER.pack(0x80, pt, seq, ts, ssrc) + payload

    def play(self, event: str, duration: int, **kw: int) -> list[bytes]:
        """The packets of one event; RFC 4733 pause slots get a packet of silence.

        An RTP sender sends its usual media in a slot where the generator has
        no DTMF data; here that is PCMU silence.
        """
        gen = dtmf_generator(event, duration, **kw)
        packets: list[bytes] = []
        for _ in range(duration // 20 + 10):  # bounded: the slots the event can take
            seq, ts, ssrc = self.slot()
            slot = gen(seq, ts, ssrc)
            if not slot:
                return packets
            packets += [p or HEADER.pack(0x80, 0, seq, ts, ssrc) + SILENCE for p in slot]
        raise AssertionError("the generator did not end")


SILENCE = ulaw_encode(bytes(320))


def play_digits(
    digits: str, kw: dict[str, int], duration: int = 100, pause: int = 60
) -> list[bytes]:
    """The packets of ``digits``, each followed by a pause (Net::SIP's ``dtmf`` pattern)."""
    stream = Stream()
    packets: list[bytes] = []
    for digit in digits:
        packets += stream.play(digit, duration, **kw)
        packets += stream.play("", pause, **kw)
    return packets


def extract(x: DTMFExtractor, packets: list[bytes]) -> list[DTMFResult]:
    results = [x(packet, None) for packet in packets]
    return [r for r in results if r is not None]


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize(("kw", "method"), METHODS)
@pytest.mark.parametrize("digit", list(EVENTS))
def test_every_digit_round_trips(kw: dict[str, int], method: str, digit: str) -> None:
    got = extract(dtmf_extractor(**kw), play_digits(digit, kw))
    assert [(r.event, r.method) for r in got] == [(digit, method)]
    assert got[0].duration == 100


@pytest.mark.parametrize(("kw", "method"), METHODS)
def test_a_sequence_comes_out_in_order_once_each(kw: dict[str, int], method: str) -> None:
    digits = "0123456789*#ABCD1155"
    got = extract(dtmf_extractor(**kw), play_digits(digits, kw))
    assert "".join(r.event for r in got) == digits
    assert {r.method for r in got} == {method}
