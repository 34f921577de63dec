"""DTMF over RTP (netsip.dtmf): RFC 4733 events and in-band tones, both ways."""

from __future__ import annotations

import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsip import dtmf
from netsip._g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from netsip.dtmf import (
    EVENTS,
    DTMFExtractor,
    DTMFGenerator,
    DTMFResult,
    dtmf_extractor,
    dtmf_generator,
)

EVENT_PT = 101
SSRC = 0x1234ABCD
METHODS = [
    pytest.param({"rfc2833_type": EVENT_PT}, "rfc2833", id="rfc4733"),
    pytest.param({"audio_type": 0}, "audio", id="pcmu"),
    pytest.param({"audio_type": 8}, "audio", id="pcma"),
]
HEADER = struct.Struct("!BBHII")


class Stream:
    """An RTP sender: one slot every 20 ms, sequence and timestamp advancing per slot.

    Like Net::SIP's sender, a slot in which the generator says "over" goes to
    the next event, so the stream has no gaps.
    """

    def __init__(self, seq: int = 65530, timestamp: int = 0xFFFFF000, ssrc: int = SSRC) -> None:
        # start near the wrap of both counters, so every test crosses them
        self.seq, self.timestamp, self.ssrc = seq, timestamp, ssrc

    def advance(self) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 160) & 0xFFFFFFFF

    def audio(self, payload: bytes, pt: int = 0) -> bytes:
        """A packet of ``payload`` (160 samples) in the next slot."""
        packet = HEADER.pack(0x80, pt, self.seq, self.timestamp, self.ssrc) + payload
        self.advance()
        return packet

    def play(self, event: str, duration: int, **kw: int) -> list[bytes]:
        """The packets of one event; RFC 4733 pause slots get a packet of silence.

        An RTP sender sends its usual media in a slot where the generator has
        no DTMF data; here that is PCMU silence.
        """
        gen = dtmf_generator(event, duration, **kw)
        packets: list[bytes] = []
        for _ in range(duration // 20 + 10):  # bounded: the slots the event can take
            slot = gen(self.seq, self.timestamp, self.ssrc)
            if not slot:
                return packets
            if slot == [b""]:
                packets.append(self.audio(SILENCE))
            else:
                packets += slot
                self.advance()
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
    # RFC 4733 carries the duration; in-band it is measured to 10 ms windows
    tolerance = 0 if method == "rfc2833" else 20
    assert abs(got[0].duration - 100) <= tolerance


@pytest.mark.parametrize(("kw", "method"), METHODS)
def test_a_sequence_comes_out_in_order_once_each(kw: dict[str, int], method: str) -> None:
    digits = "0123456789*#ABCD1155"
    got = extract(dtmf_extractor(**kw), play_digits(digits, kw))
    assert "".join(r.event for r in got) == digits
    assert {r.method for r in got} == {method}


@pytest.mark.parametrize(("kw", "method"), METHODS)
def test_net_sip_call_dtmf_timing(kw: dict[str, int], method: str) -> None:
    # Net::SIP::Simple::Call::dtmf: 100 ms digits, 50 ms between different
    # digits, 100 ms between equal ones
    stream, packets = Stream(), []
    digits = "1223"
    for i, digit in enumerate(digits):
        if i:
            packets += stream.play("", 100 if digits[i - 1] == digit else 50, **kw)
        packets += stream.play(digit, 100, **kw)
    packets += stream.play("", 200, **kw)
    got = extract(dtmf_extractor(**kw), packets)
    assert "".join(r.event for r in got) == digits


@pytest.mark.parametrize("kw", [{"audio_type": 0}, {"audio_type": 8}])
@pytest.mark.parametrize("duration", [40, 60, 250, 2000])
def test_inband_durations(kw: dict[str, int], duration: int) -> None:
    stream = Stream()
    packets = stream.play("7", duration, **kw) + stream.play("", 100, **kw)
    got = extract(dtmf_extractor(**kw), packets)
    assert [r.event for r in got] == ["7"]
    assert abs(got[0].duration - duration) <= 20


def test_both_types_in_one_extractor() -> None:
    # Net::SIP::Simple::Call builds one extractor for both payload types
    x = dtmf_extractor(rfc2833_type=EVENT_PT, audio_type=0)
    got = extract(x, play_digits("12", {"audio_type": 0}))
    assert [(r.event, r.method) for r in got] == [("1", "audio"), ("2", "audio")]
    stream = Stream(seq=100, timestamp=10**6)
    packets = stream.play("3", 100, rfc2833_type=EVENT_PT) + stream.play(
        "", 60, rfc2833_type=EVENT_PT
    )
    assert [(r.event, r.method) for r in extract(x, packets)] == [("3", "rfc2833")]


def test_inband_detection_stops_once_rfc4733_events_arrive() -> None:
    # a peer that sends both would otherwise get every digit twice
    x = dtmf_extractor(rfc2833_type=EVENT_PT, audio_type=0)
    stream, packets = Stream(), []
    for digit in "45":
        events = stream.play(digit, 100, rfc2833_type=EVENT_PT)
        packets += events
        # the same digit in-band right after (a gateway passing the audio on)
        packets += stream.play(digit, 100, audio_type=0)
        packets += stream.play("", 60, audio_type=0)
    got = extract(x, packets)
    assert [(r.event, r.method) for r in got] == [("4", "rfc2833"), ("5", "rfc2833")]


# ------------------------------------------------------------ the RFC 4733 generator


def run_generator(gen: DTMFGenerator, seq: int, ts: int, ssrc: int) -> list[list[bytes]]:
    slots: list[list[bytes]] = []
    for i in range(1000):  # bounded
        slot = gen((seq + i) & 0xFFFF, (ts + 160 * i) & 0xFFFFFFFF, ssrc)
        if not slot:
            return slots
        slots.append(slot)
    raise AssertionError("the generator did not end")


def test_rfc4733_packets_byte_by_byte() -> None:
    # RFC 4733 2.3: |event|E|R|volume|duration|; 2.5.1: the timestamp of the
    # event's start in every packet, marker on the first, E on the last, the
    # last sent three times with the same duration (2.5.1.4)
    gen = dtmf_generator("#", 60, rfc2833_type=101)
    slots = run_generator(gen, 7, 1000, 0xDEADBEEF)
    header = "80{pt:02x}{seq:04x}000003e8deadbeef"
    expected = [
        header.format(pt=0x80 | 101, seq=7) + "0b0a00a0",  # marker; 160 units so far
        header.format(pt=101, seq=8) + "0b0a0140",
        header.format(pt=101, seq=9) + "0b8a01e0",  # E bit; 480 units = 60 ms
        header.format(pt=101, seq=10) + "0b8a01e0",
        header.format(pt=101, seq=11) + "0b8a01e0",
    ]
    assert [[p.hex() for p in slot] for slot in slots] == [[e] for e in expected]


@pytest.mark.parametrize(("event", "code"), [(e, i) for i, e in enumerate(EVENTS)])
def test_rfc4733_event_codes(event: str, code: int) -> None:
    # RFC 4733 3.2: 0-9 are 0-9, * is 10, # is 11, A-D are 12-15
    for spelling in {event, event.lower()}:
        (first,), *_ = run_generator(dtmf_generator(spelling, 100, rfc2833_type=96), 1, 0, 1)
        assert first[12] == code


def test_rfc4733_volume_and_payload_type() -> None:
    (first,), *_ = run_generator(dtmf_generator("1", 100, rfc2833_type=127, volume=0), 1, 0, 1)
    assert first[1] == 0x80 | 127
    assert first[13] == 0  # 0 dBm0, not replaced by 10 as in Net::SIP
    (first,), *_ = run_generator(dtmf_generator("1", 100, rfc2833_type=96, volume=63), 1, 0, 1)
    assert first[13] == 63


def test_rfc4733_short_event_is_one_packet_with_marker_and_end() -> None:
    slots = run_generator(dtmf_generator("5", 0, rfc2833_type=101), 1, 0, 1)
    assert len(slots) == 3
    assert {slot[0][1] for slot in slots[1:]} == {101}
    first = slots[0][0]
    assert first[1] == 0x80 | 101
    assert first[12:] == bytes([5, 0x80 | 10, 0, 160])
    x = dtmf_extractor(rfc2833_type=101)
    assert extract(x, [s[0] for s in slots]) == [DTMFResult("5", 20, "rfc2833")]


def test_rfc4733_duration_not_a_multiple_of_the_slot() -> None:
    slots = run_generator(dtmf_generator("9", 90, rfc2833_type=101), 1, 0, 1)
    durations = [int.from_bytes(s[0][14:16], "big") for s in slots]
    assert durations == [160, 320, 480, 640, 720, 720, 720]


def test_rfc4733_timestamp_wraps() -> None:
    slots = run_generator(dtmf_generator("1", 100, rfc2833_type=101), 0xFFFE, 0xFFFFFF00, 9)
    assert {s[0][4:8] for s in slots} == {bytes.fromhex("ffffff00")}
    assert [int.from_bytes(s[0][2:4], "big") for s in slots] == [0xFFFE, 0xFFFF, 0, 1, 2, 3, 4]
    assert [int.from_bytes(s[0][14:16], "big") for s in slots][-1] == 800


def test_rfc4733_long_event_is_split_into_segments() -> None:
    # 2.5.1.3: the duration field holds 0xFFFF units at most (8.19 s); a
    # longer event goes on in a new segment with the timestamp 0xFFFF later
    gen = dtmf_generator("D", 10_000, rfc2833_type=101)
    slots = run_generator(gen, 0, 0, 1)
    stamps = [int.from_bytes(s[0][4:8], "big") for s in slots]
    durations = [int.from_bytes(s[0][14:16], "big") for s in slots]
    assert sorted(set(stamps)) == [0, 0xFFFF]
    assert max(durations) == 0xFFFF
    assert durations[stamps.index(0xFFFF) - 1] == 0xFFFF
    assert durations[-1] == 80_000 - 0xFFFF
    assert sum(s[0][1] >> 7 for s in slots) == 1  # one marker, on the first
    x = dtmf_extractor(rfc2833_type=101)
    assert extract(x, [s[0] for s in slots]) == [DTMFResult("D", 10_000, "rfc2833")]


@pytest.mark.parametrize("event", ["", " ", "x", "12", "E", ","])
def test_pause_has_no_data(event: str) -> None:
    slots = run_generator(dtmf_generator(event, 100, rfc2833_type=101), 1, 0, 1)
    assert slots == [[b""]] * 5


@pytest.mark.parametrize("pt", [0, 8])
def test_inband_pause_is_silence(pt: int) -> None:
    slots = run_generator(dtmf_generator("", 100, audio_type=pt), 1, 0, 1)
    assert len(slots) == 5
    silence = bytes([0xFF if pt == 0 else 0xD5]) * 160
    assert {s[0][12:] for s in slots} == {silence}
    assert {s[0][1] for s in slots} == {pt}


@pytest.mark.parametrize("pt", [0, 8])
def test_inband_packets(pt: int) -> None:
    slots = run_generator(dtmf_generator("1", 100, audio_type=pt), 3, 5000, 77)
    assert len(slots) == 5
    for i, (packet,) in enumerate(slots):
        seq, ts = struct.unpack("!HI", packet[2:8])
        assert (packet[0], packet[1], seq, ts) == (0x80, pt, 3 + i, 5000 + 160 * i)
        assert len(packet) == 12 + 160


def test_inband_volume_sets_the_tone_level() -> None:
    def level(volume: int) -> float:
        (packet,), *_ = run_generator(dtmf_generator("5", 20, audio_type=0, volume=volume), 1, 0, 1)
        pcm = struct.unpack("<160h", ulaw_decode(packet[12:]))
        return 10 * math.log10(sum(v * v for v in pcm) / 160)

    # two tones of -v dBm0 each: the power drops 10 dB with volume 10 -> 20
    assert level(10) - level(20) == pytest.approx(10, abs=0.3)
    assert level(20) - level(30) == pytest.approx(10, abs=0.3)
    # 0 dBm0 per tone overloads the sum of both: clipped, still the loudest
    assert level(0) > level(10)


def test_generator_ends_by_timestamp_or_by_slots() -> None:
    # a timestamp jump ends the event early; a stuck timestamp cannot make it
    # last forever
    gen = dtmf_generator("1", 100, rfc2833_type=101)
    assert len(gen(1, 0, 1)) == 1
    assert gen(2, 10_000, 1)[0][13] & 0x80  # E bit: the event is over
    gen = dtmf_generator("1", 100, audio_type=0)
    assert len(run_generator(lambda seq, ts, ssrc: gen(seq, 0, ssrc), 1, 0, 1)) == 5


def test_generator_argument_errors() -> None:
    with pytest.raises(ValueError, match="neither"):
        dtmf_generator("1", 100)
    with pytest.raises(ValueError, match="volume"):
        dtmf_generator("1", 100, rfc2833_type=101, volume=64)
    with pytest.raises(ValueError, match="volume"):
        dtmf_generator("1", 100, audio_type=0, volume=-1)
    with pytest.raises(ValueError, match="payload type"):
        dtmf_generator("1", 100, rfc2833_type=128)
    with pytest.raises(ValueError, match="negative"):
        dtmf_generator("1", -1, audio_type=0)
    with pytest.raises(ValueError, match="neither"):
        dtmf_extractor()
    with pytest.raises(ValueError, match="both"):
        dtmf_extractor(rfc2833_type=8, audio_type=8)
    with pytest.raises(ValueError, match="payload type"):
        dtmf_extractor(audio_type=-1)


# ------------------------------------------------------------ the extractor on bad input


def event_packet(
    seq: int, ts: int, code: int, end: bool, duration: int, *, marker: bool = False
) -> bytes:
    pt = 101 | (0x80 if marker else 0)
    return HEADER.pack(0x80, pt, seq, ts, SSRC) + struct.pack(
        "!BBH", code, (0x80 if end else 0) | 10, duration
    )


def test_end_triple_and_retransmissions_report_once() -> None:
    x = dtmf_extractor(rfc2833_type=101)
    packets = [
        event_packet(1, 800, 3, False, 160, marker=True),
        event_packet(2, 800, 3, False, 320),
    ]
    packets += [event_packet(3 + i, 800, 3, True, 480) for i in range(3)]
    packets += [event_packet(6, 800, 3, False, 320), event_packet(7, 800, 3, True, 480)]
    packets.append(event_packet(3, 800, 3, True, 480))  # late duplicate seq
    assert extract(x, packets) == [DTMFResult("3", 60, "rfc2833")]
    # the same digit again is a new digit (new timestamp)
    again = [event_packet(8, 2000, 3, False, 160, marker=True), event_packet(9, 2000, 3, True, 320)]
    assert extract(x, again) == [DTMFResult("3", 40, "rfc2833")]


def test_lost_end_packets_end_the_event_with_the_stream() -> None:
    x = dtmf_extractor(rfc2833_type=101)
    got = extract(
        x, [event_packet(1, 800, 7, False, 160, marker=True), event_packet(2, 800, 7, False, 320)]
    )
    assert got == []
    later = [HEADER.pack(0x80, 0, 3 + i, 1120 + 160 * i, SSRC) + SILENCE for i in range(10)]
    assert extract(x, later) == [DTMFResult("7", 40, "rfc2833")]


def test_another_event_ends_the_current_one() -> None:
    x = dtmf_extractor(rfc2833_type=101)
    packets = [
        event_packet(1, 0, 1, False, 160, marker=True),
        event_packet(2, 480, 2, False, 160, marker=True),
    ]
    packets += [event_packet(3, 480, 2, True, 320)]
    assert [r.event for r in extract(x, packets)] == ["1", "2"]


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80",
        b"\x80\x65\x00\x01",
        bytes(12),
        HEADER.pack(0x40, 101, 1, 0, 1) + bytes(4),  # RTP version 1
        HEADER.pack(0x80, 101, 1, 0, 1) + b"\x01",  # short event payload
        HEADER.pack(0x8F, 101, 1, 0, 1) + bytes(4),  # 15 CSRCs announced, none there
        HEADER.pack(0x90, 101, 1, 0, 1) + b"\x00\x00\xff\xff",  # extension beyond the end
        HEADER.pack(0xA0, 101, 1, 0, 1) + b"\x01\x00\x00\xff",  # padding beyond the end
        HEADER.pack(0x80, 101, 1, 0, 1) + bytes([200, 0x80, 0, 160]),  # event 200
        HEADER.pack(0x80, 55, 1, 0, 1) + bytes(160),  # unknown payload type
    ],
)
def test_bad_packets_are_dropped(packet: bytes) -> None:
    x = dtmf_extractor(rfc2833_type=101, audio_type=0)
    assert x(packet) is None
    # and the stream still works afterwards
    got = extract(x, play_digits("9", {"rfc2833_type": 101}))
    assert [r.event for r in got] == ["9"]


def test_rtp_header_extension_csrc_and_padding_are_skipped() -> None:
    x = dtmf_extractor(rfc2833_type=101)
    payload = struct.pack("!BBH", 4, 0x8A, 800)
    packet = (
        HEADER.pack(0xB1, 0x80 | 101, 1, 0, 1)
        + b"\x00\x00\x00\x01"  # one CSRC
        + b"\xbe\xde\x00\x01\x00\x00\x00\x00"  # extension of one word
        + payload
        + b"\x00\x00\x03"  # three octets of padding
    )
    assert x(packet) == DTMFResult("4", 100, "rfc2833")


def test_sequence_jumps() -> None:
    x = dtmf_extractor(rfc2833_type=101)
    assert extract(x, [event_packet(100, 0, 1, False, 160, marker=True)]) == []
    # out of order (behind): dropped, as Net::SIP does
    assert extract(x, [event_packet(90, 0, 1, True, 800)]) == []
    # forward jump: accepted (lost packets)
    assert extract(x, [event_packet(5000, 0, 1, True, 800)]) == [DTMFResult("1", 100, "rfc2833")]
    # a restarted sender far behind: accepted after two packets in sequence
    restart = [
        event_packet(10, 9000, 2, False, 160, marker=True),
        event_packet(11, 9000, 2, True, 320),
    ]
    restart.append(event_packet(12, 9000, 2, True, 320))
    assert extract(x, restart) == [DTMFResult("2", 40, "rfc2833")]


def test_random_bytes_never_raise() -> None:
    rng = random.Random(4733)
    x = dtmf_extractor(rfc2833_type=101, audio_type=0)
    burst = rng.randbytes(64 * 1024)
    results = [x(burst[i : i + n]) for i, n in zip(range(0, 65536, 172), [172] * 400, strict=False)]
    results.append(x(burst))
    # random headers with a valid version and our payload types
    for _ in range(2000):
        pt = rng.choice([0, 101, 8, 101 | 0x80])
        results.append(x(bytes([0x80, pt]) + rng.randbytes(rng.randrange(0, 200))))
    assert all(r is None or r.event in EVENTS for r in results)


def test_64k_burst_of_events() -> None:
    # 16384 random telephone-events (64 KiB of payload): sensible digits, at
    # most one per packet, bounded pending results
    rng = random.Random(2833)
    x = dtmf_extractor(rfc2833_type=101)
    results = []
    for seq in range(16384):
        payload = rng.randbytes(4)
        results.append(x(HEADER.pack(0x80, 101, seq & 0xFFFF, rng.randrange(4) * 160, 1) + payload))
    got = [r for r in results if r is not None]
    assert got and all(r.event in EVENTS and r.method == "rfc2833" for r in got)
    assert all(0 <= r.duration <= 0x1FFFE * 1000 // 8000 for r in got)


def test_64k_inband_burst() -> None:
    x = dtmf_extractor(audio_type=0)
    tone = b"".join(p[12:] for p in Stream().play("6", 8300, audio_type=0))[: 64 * 1024]
    assert x(HEADER.pack(0x80, 0, 1, 0, 1) + tone) is None
    got = x(HEADER.pack(0x80, 0, 2, len(tone), 1) + SILENCE * 3)
    assert got is not None and got.event == "6"
    assert abs(got.duration - 8192) <= 20


# ------------------------------------------------------------ in-band robustness


def pcm_packets(samples: list[float], pt: int = 0) -> list[bytes]:
    encode = alaw_encode if pt == 8 else ulaw_encode
    stream, packets = Stream(), []
    for k in range(0, len(samples) - 159, 160):
        block = [max(-32768, min(32767, round(v))) for v in samples[k : k + 160]]
        packets.append(stream.audio(encode(struct.pack("<160h", *block)), pt))
    return packets


def tones(digit: str, ms: int, dbm0: float) -> list[float]:
    low, high = TONES[digit]
    a = PEAK_0DBM0 * 10 ** (dbm0 / 20)
    return [
        a * (math.sin(2 * math.pi * low * n / 8000) + math.sin(2 * math.pi * high * n / 8000))
        for n in range(ms * 8)
    ]


def noise(ms: int, dbm0: float, rng: random.Random) -> list[float]:
    sigma = PEAK_0DBM0 / math.sqrt(2) * 10 ** (dbm0 / 20)
    return [rng.gauss(0, sigma) for _ in range(ms * 8)]


@pytest.mark.parametrize("pt", [0, 8])
@pytest.mark.parametrize("snr", [20, 10, 6])
def test_inband_with_noise(pt: int, snr: int) -> None:
    rng = random.Random(snr)
    signal: list[float] = noise(200, -15 - snr, rng)
    for digit in "159#":
        t = tones(digit, 80, -15)
        signal += [s + n for s, n in zip(t, noise(80, -15 - snr + 3, rng), strict=True)]
        signal += noise(80, -15 - snr, rng)
    got = extract(dtmf_extractor(audio_type=pt), pcm_packets(signal, pt))
    assert "".join(r.event for r in got) == "159#"


@pytest.mark.parametrize("dbm0", [-3, -20, -30])
def test_inband_levels(dbm0: int) -> None:
    signal = [0.0] * 800 + tones("0", 100, dbm0) + [0.0] * 800
    assert [r.event for r in extract(dtmf_extractor(audio_type=0), pcm_packets(signal))] == ["0"]


def test_inband_no_false_digits() -> None:
    rng = random.Random(7)
    x = dtmf_extractor(audio_type=0)
    silence = [0.0] * 8000
    one_khz = [20000 * math.sin(2 * math.pi * 1000 * n / 8000) for n in range(16000)]
    white = noise(2000, -10, rng)
    # speech-like: harmonic series on a wandering pitch, formant-ish weights, breath
    speech: list[float] = []
    phase = 0.0
    for _ in range(100):  # 100 syllables of 40 ms
        f0 = rng.uniform(80, 300)
        weights = [rng.uniform(0, 1) / (h**0.7) for h in range(1, 30)]
        for _n in range(320):
            phase += 2 * math.pi * f0 / 8000
            v = sum(w * math.sin(h * phase) for h, w in enumerate(weights, 1) if h * f0 < 3800)
            speech.append(3000 * v + rng.gauss(0, 300))
    for signal in (silence, one_khz, white, speech):
        assert extract(x, pcm_packets(signal)) == []


def test_inband_lost_packet_inside_a_digit_is_bridged() -> None:
    packets = pcm_packets([0.0] * 800 + tones("8", 200, -10) + [0.0] * 1600)
    del packets[10]  # 20 ms lost in the middle of the tone
    got = extract(dtmf_extractor(audio_type=0), packets)
    assert [r.event for r in got] == ["8"]


@pytest.mark.parametrize("size", [80, 240, 400])
def test_inband_any_packet_size(size: int) -> None:
    samples = [0.0] * 800 + tones("*", 100, -10) + [0.0] * 1600
    x = dtmf_extractor(audio_type=0)
    got = []
    for seq, k in enumerate(range(0, len(samples) - size + 1, size)):
        block = struct.pack(f"<{size}h", *[round(v) for v in samples[k : k + size]])
        r = x(HEADER.pack(0x80, 0, seq, k, 1) + ulaw_encode(block))
        if r is not None:
            got.append(r)
    assert [r.event for r in got] == ["*"]


def test_inband_20ms_tone_is_not_a_digit() -> None:
    signal = [0.0] * 800 + tones("3", 20, -10) + [0.0] * 800
    assert extract(dtmf_extractor(audio_type=0), pcm_packets(signal)) == []


TONES = {
    d: (r, c)
    for r, keys in zip((697, 770, 852, 941), ("123A", "456B", "789C", "*0#D"), strict=True)
    for d, c in zip(keys, (1209, 1336, 1477, 1633), strict=True)
}
PEAK_0DBM0 = 32767 * 10 ** (-3.17 / 20)


def test_inband_with_dc_offset() -> None:
    # a tone on an offset (within the share the tones must hold) is still a digit
    a = PEAK_0DBM0 * 10 ** (-10 / 20)
    signal = [0.0] * 800 + [v + 0.7 * a for v in tones("5", 100, -10)] + [0.0] * 800
    assert [r.event for r in extract(dtmf_extractor(audio_type=0), pcm_packets(signal))] == ["5"]


@pytest.mark.parametrize("pt", [0, 8])
def test_inband_loud_constant_payload_is_not_a_digit(pt: int) -> None:
    # the UA benchmark's payload: a 16-byte head, then zero bytes (the loudest
    # negative sample in PCMU): loud, but DC
    x = dtmf_extractor(audio_type=pt)
    stream = Stream()
    packets = [
        stream.audio(struct.pack("!IiQ", 7, 3, 1_234_567_890_123 + i * 20_000_000) + bytes(144), pt)
        for i in range(100)
    ]
    assert extract(x, packets) == []


# --------------------------------------------- the classifier against plain floats


def reference_classify(linear: list[int]) -> str | None:
    """The decision of a window as a textbook Goertzel would make it, in floats.

    The same thresholds as netsip.dtmf: a digit needs both tones above -36
    dBm0, the twist within +8/-6 dB, each tone 6 dB above the others of its
    group and the two tones at least half of the window's power.
    """
    n = len(linear)
    hann = [0.5 - 0.5 * math.cos(2 * math.pi * (k + 0.5) / n) for k in range(n)]
    scale = 2 / sum(hann) ** 2
    power = sum(v * v for v in linear) / n
    min_tone = PEAK_0DBM0**2 / 2 * 10 ** (-3.6)

    def bin_power(f: int) -> float:
        c = sum(
            v * w * math.cos(2 * math.pi * f * k / 8000)
            for k, (v, w) in enumerate(zip(linear, hann, strict=True))
        )
        s = sum(
            v * w * math.sin(2 * math.pi * f * k / 8000)
            for k, (v, w) in enumerate(zip(linear, hann, strict=True))
        )
        return (c * c + s * s) * scale

    rows = [bin_power(f) for f in (697, 770, 852, 941)]
    cols = [bin_power(f) for f in (1209, 1336, 1477, 1633)]
    row, col = rows.index(max(rows)), cols.index(max(cols))
    low, high = rows[row], cols[col]
    if power < 2 * min_tone or low < min_tone or high < min_tone:
        return None
    if low > high * 10**0.8 or high > low * 10**0.6:
        return None
    if any(p * 10**0.6 > low for i, p in enumerate(rows) if i != row):
        return None
    if any(p * 10**0.6 > high for i, p in enumerate(cols) if i != col):
        return None
    if low + high < 0.5 * power:
        return None
    return "123A456B789C*0#D"[4 * row + col]


@settings(max_examples=300, deadline=None)
@given(
    pt=st.sampled_from([0, 8]),
    digit=st.sampled_from("0123456789*#ABCD"),
    # around the limits: the level, the twist, the detuning, the part of the
    # window the tones fill, the offset and the noise (mostly near a digit)
    level=st.floats(-40, 3),
    twist=st.floats(-8, 10),
    detune=st.floats(-0.025, 0.025),
    span=st.one_of(st.just((0, 160)), st.tuples(st.integers(0, 159), st.integers(1, 160))),
    dc=st.one_of(st.just(0.0), st.floats(-0.8, 0.8)),
    noise_db=st.one_of(st.none(), st.floats(0, 40)),
    seed=st.integers(0, 2**16),
)
def test_inband_windows_decided_as_by_plain_floats(
    *,
    pt: int,
    digit: str,
    level: float,
    twist: float,
    detune: float,
    span: tuple[int, int],
    dc: float,
    noise_db: float | None,
    seed: int,
) -> None:
    # the detector's integer arithmetic, packed dot products and early
    # rejections decide every 20 ms window as the float Goertzel does:
    # tones with twist, detuned, in part of the window, on an offset, in noise
    rng = random.Random(seed)
    low, high = TONES[digit]
    a_low = PEAK_0DBM0 * 10 ** (level / 20)
    a_high = a_low * 10 ** (-twist / 20)
    rms = math.sqrt((a_low**2 + a_high**2) / 2)
    sigma = 0.0 if noise_db is None else rms * 10 ** (-noise_db / 20)
    values = []
    for k in range(160):
        v = dc * (a_low + a_high)
        if span[0] <= k < span[1]:
            v += a_low * math.sin(2 * math.pi * low * (1 + detune) * k / 8000)
            v += a_high * math.sin(2 * math.pi * high * (1 - detune) * k / 8000 + 1)
            v += rng.gauss(0, sigma) if sigma else 0.0
        values.append(max(-32768, min(32767, round(v))))
    encode, decode = (alaw_encode, alaw_decode) if pt == 8 else (ulaw_encode, ulaw_decode)
    window = encode(struct.pack("<160h", *values))
    linear = list(struct.unpack("<160h", decode(window)))
    law = dtmf._ALAW if pt == 8 else dtmf._ULAW
    assert dtmf._classify(window, law) == reference_classify(linear)
