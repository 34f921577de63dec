"""G.711 mu-law and A-law (netsip._g711) against the ITU-T / Sun g711.c reference."""

from __future__ import annotations

import bisect
import importlib
import itertools
import struct
import warnings
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsip._g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

Codec = Callable[[bytes], bytes]

ALL_SAMPLES = struct.pack("<65536h", *range(-32768, 32768))
ALL_CODES = bytes(range(256))


def linear(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def audioop_module() -> ModuleType | None:
    """The stdlib reference, present up to Python 3.12."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


# ------------------------------------------------------------ reference values

# (code, linear) pairs from the classic Sun g711.c (ulaw2linear / alaw2linear),
# which G.711's tables define: the ends of the range, both zeros, segment edges.
ULAW_DECODED = [
    (0x00, -32124),
    (0x7F, 0),
    (0x80, 32124),
    (0xFF, 0),
    (0xFE, 8),
    (0x7E, -8),
    (0xF0, 120),
    (0xEF, 132),
    (0x8F, 16764),
    (0x0F, -16764),
    (0x70, -120),
]
ALAW_DECODED = [
    (0xD5, 8),
    (0x55, -8),
    (0xAA, 32256),
    (0x2A, -32256),
    (0xD4, 24),
    (0xC5, 264),
    (0xA5, 16896),
    (0x80, 5504),
    (0x00, -5504),
]


@pytest.mark.parametrize(("code", "value"), ULAW_DECODED)
def test_ulaw_decode_reference(code: int, value: int) -> None:
    assert samples(ulaw_decode(bytes([code]))) == [value]


@pytest.mark.parametrize(("code", "value"), ALAW_DECODED)
def test_alaw_decode_reference(code: int, value: int) -> None:
    assert samples(alaw_decode(bytes([code]))) == [value]


def test_encode_reference_values() -> None:
    # zero is 0xFF in mu-law (positive zero) and 0xD5 in A-law; the ends clip;
    # -1 is the smallest negative level (mu-law works on sample >> 2, A-law on >> 3)
    pcm = linear(0, -1, 32767, -32768, 8, -8, 16)
    assert ulaw_encode(pcm) == bytes([0xFF, 0x7E, 0x80, 0x00, 0xFE, 0x7E, 0xFD])
    assert alaw_encode(pcm) == bytes([0xD5, 0x55, 0xAA, 0x2A, 0xD5, 0x55, 0xD4])


# ------------------------------------------------------------ round trips


def test_alaw_every_code_round_trips() -> None:
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


def test_ulaw_every_code_round_trips_but_negative_zero() -> None:
    # mu-law has two zeros: 0xFF (+0) and 0x7F (-0) both decode to 0, and 0
    # encodes to 0xFF; every other code survives decode + encode
    back = ulaw_encode(ulaw_decode(ALL_CODES))
    assert [c for c in range(256) if back[c] != c] == [0x7F]
    assert back[0x7F] == 0xFF


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_every_sample_comes_back_as_a_neighbouring_level(encode: Codec, decode: Codec) -> None:
    # quantisation: a sample comes back as one of the two levels around it
    # (beyond the outermost levels: clipped to them)
    levels = sorted(set(samples(decode(ALL_CODES))))
    back = samples(decode(encode(ALL_SAMPLES)))
    for value, got in zip(range(-32768, 32768), back, strict=True):
        i = bisect.bisect_left(levels, value)
        around = levels[max(i - 1, 0) : i + 1]
        assert got in around, (value, got, around)


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_decoded_level_grows_with_the_sample(encode: Codec) -> None:
    decode = ulaw_decode if encode is ulaw_encode else alaw_decode
    back = samples(decode(encode(ALL_SAMPLES)))
    assert all(a <= b for a, b in itertools.pairwise(back))
    assert back[0] < 0 < back[-1]


@pytest.mark.parametrize("decode", [ulaw_decode, alaw_decode])
def test_decode_is_odd_symmetric(decode: Codec) -> None:
    # the sign bit flips the sign of the level and nothing else
    values = samples(decode(ALL_CODES))
    assert sorted(values) == sorted(-v for v in values)


# ------------------------------------------------------------ input checks


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_odd_length_linear_input_raises(encode: Codec) -> None:
    with pytest.raises(ValueError, match="even length"):
        encode(b"\x00\x01\x02")


@pytest.mark.parametrize("codec", [ulaw_encode, alaw_encode, ulaw_decode, alaw_decode])
def test_empty_input_gives_empty_output(codec: Codec) -> None:
    assert codec(b"") == b""


def test_bytes_like_input() -> None:
    pcm = linear(1000, -1000)
    assert ulaw_encode(bytearray(pcm)) == ulaw_encode(pcm)
    assert alaw_encode(memoryview(pcm)) == alaw_encode(pcm)
    assert ulaw_decode(bytearray(b"\x00\xff")) == ulaw_decode(b"\x00\xff")
    assert alaw_decode(memoryview(b"\x55\xd5")) == alaw_decode(b"\x55\xd5")


def test_lengths() -> None:
    assert len(ulaw_encode(bytes(320))) == 160
    assert len(alaw_decode(bytes(160))) == 320


# ------------------------------------------------------------ against audioop


@pytest.mark.skipif(audioop_module() is None, reason="audioop is gone (Python 3.13+)")
def test_bit_exact_with_audioop() -> None:
    audioop = audioop_module()
    assert audioop is not None
    assert ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)
    assert alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)
    assert ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


@given(st.binary(max_size=400))
def test_decode_then_encode_is_stable(data: bytes) -> None:
    # encode(decode(x)) is a fixed point after one step (only -0 moves to +0)
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        once = encode(decode(data))
        assert encode(decode(once)) == once
        assert len(once) == len(data)
