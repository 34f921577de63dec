"""G.711 mu-law and A-law, pure Python (part of Perl's ``Net::SIP::DTMF``).

Net::SIP::DTMF builds its own approximate mu-law/A-law tables from the
logarithmic formulas in ``_init_audio_processing``; Python up to 3.12 had
``audioop.lin2ulaw`` and friends, but ``audioop`` is gone in 3.13.  This module
implements ITU-T G.711 exactly as the classic Sun Microsystems reference
``g711.c`` does (the same bit-exact results as ``audioop``): the RTP media
code (PCMU = payload type 0, PCMA = 8, RFC 3551 4.5.14) and the in-band DTMF
generator and detector of :mod:`netsip.dtmf` use it.

Linear audio is 16-bit signed little-endian PCM (what WAV files and
``audioop`` use); one G.711 byte is one sample.

Performance plan
----------------
Operations: decode and encode 20 ms frames (160 samples) and whole files.
Goal: far faster than real time in CPython without C code.

* decode: two 256-byte ``bytes.translate`` tables give the low and the high
  byte of every linear sample; an extended slice assignment interleaves them.
  Everything runs in C, so decoding costs a few copies of the data.
* encode: a 65536-entry table indexed by the sample's 16-bit pattern (read as
  unsigned through ``memoryview.cast("H")``), looked up in one list
  comprehension: the fastest pure-Python 16-bit lookup measured (map with
  ``__getitem__`` and ``operator.itemgetter`` are slower).
* all tables are computed once at import from the reference algorithm (about
  20 ms), so the tables and the algorithm cannot disagree.

Differences from Net::SIP:

* Net::SIP's tables come from the continuous mu-law/A-law curves and are
  not bit-exact G.711 (its mu-law decoder, for example, maps code 0x00 to
  -32767 instead of -32124); this module is bit-exact with ITU-T G.711.
* Net::SIP's codec is internal to DTMF; here it is a module of its own, used
  by :mod:`netsip.rtp` as well.
"""

from __future__ import annotations

import sys
from typing import Final

__all__ = ["BytesLike", "alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

# Sun g711.c: segment end points of the 14-bit (mu-law) and 13-bit (A-law)
# magnitudes, and the mu-law bias (0x84 on the 16-bit scale).
#: what the functions accept: any contiguous bytes object
BytesLike = bytes | bytearray | memoryview

_SEG_UEND: Final = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND: Final = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 8159


def _segment(value: int, ends: tuple[int, ...]) -> int:
    """The segment (0-7) whose end point is >= ``value``, 8 if beyond the last."""
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def _linear2ulaw(sample: int) -> int:
    """One 16-bit sample to mu-law (G.711 table 2a; Sun g711.c linear2ulaw)."""
    value = sample >> 2  # mu-law works on 14 bits; >> floors like C on negatives
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(value, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def _ulaw2linear(code: int) -> int:
    """One mu-law byte to a 16-bit sample (Sun g711.c ulaw2linear)."""
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return _ULAW_BIAS - t if code & 0x80 else t - _ULAW_BIAS


def _linear2alaw(sample: int) -> int:
    """One 16-bit sample to A-law (G.711 table 1a; Sun g711.c linear2alaw)."""
    value = sample >> 3  # A-law works on 13 bits
    if value >= 0:
        mask = 0xD5  # sign bit set, even bits inverted
    else:
        mask = 0x55
        value = -value - 1
    seg = _segment(value, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    quant = (value >> 1) if seg < 2 else (value >> seg)
    return ((seg << 4) | (quant & 0x0F)) ^ mask


def _alaw2linear(code: int) -> int:
    """One A-law byte to a 16-bit sample (Sun g711.c alaw2linear)."""
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


def _decode_tables(to_linear: dict[int, int]) -> tuple[bytes, bytes]:
    """The ``bytes.translate`` tables giving the low and the high byte of each code."""
    raw = [(to_linear[c] & 0xFFFF).to_bytes(2, "little") for c in range(256)]
    return bytes(r[0] for r in raw), bytes(r[1] for r in raw)


_ULAW_LO, _ULAW_HI = _decode_tables({c: _ulaw2linear(c) for c in range(256)})
_ALAW_LO, _ALAW_HI = _decode_tables({c: _alaw2linear(c) for c in range(256)})


def _ulaw_table() -> list[int]:
    # mu-law depends only on sample >> 2: compute 16384 codes, repeat each 4 times
    codes = [_linear2ulaw(v << 2) for v in range(-0x2000, 0x2000)]
    return _reindex(codes, 2)


def _alaw_table() -> list[int]:
    codes = [_linear2alaw(v << 3) for v in range(-0x1000, 0x1000)]
    return _reindex(codes, 3)


def _reindex(codes: list[int], shift: int) -> list[int]:
    """Expand codes of ``sample >> shift`` (from the most negative up) to all 16-bit patterns."""
    half = len(codes) // 2  # codes[half] is the code of 0
    return [codes[half + ((u - 0x10000 if u & 0x8000 else u) >> shift)] for u in range(0x10000)]


_ULAW_ENC: Final = _ulaw_table()
_ALAW_ENC: Final = _alaw_table()
_BIG_ENDIAN: Final = sys.byteorder == "big"


def _check_pcm(pcm: BytesLike) -> memoryview:
    """``pcm`` as unsigned 16-bit native integers holding the little-endian samples."""
    if len(pcm) % 2:
        raise ValueError(f"16-bit linear PCM must have an even length, got {len(pcm)} bytes")
    if _BIG_ENDIAN:  # pragma: no cover - the samples are little-endian on the wire
        swapped = bytearray(len(pcm))
        swapped[0::2] = pcm[1::2]
        swapped[1::2] = pcm[0::2]
        pcm = bytes(swapped)
    return memoryview(pcm).cast("B").cast("H")


def _as_bytes(data: BytesLike) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def _decode(data: bytes, lo: bytes, hi: bytes) -> bytes:
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(lo)
    out[1::2] = data.translate(hi)
    return bytes(out)


def ulaw_encode(pcm: BytesLike) -> bytes:
    """Encode 16-bit signed little-endian linear PCM as G.711 mu-law (PCMU).

    Raises:
        ValueError: ``pcm`` has an odd length.
    """
    table = _ULAW_ENC
    return bytes([table[u] for u in _check_pcm(pcm)])


def ulaw_decode(data: BytesLike) -> bytes:
    """Decode G.711 mu-law (PCMU) to 16-bit signed little-endian linear PCM."""
    return _decode(_as_bytes(data), _ULAW_LO, _ULAW_HI)


def alaw_encode(pcm: BytesLike) -> bytes:
    """Encode 16-bit signed little-endian linear PCM as G.711 A-law (PCMA).

    Raises:
        ValueError: ``pcm`` has an odd length.
    """
    table = _ALAW_ENC
    return bytes([table[u] for u in _check_pcm(pcm)])


def alaw_decode(data: BytesLike) -> bytes:
    """Decode G.711 A-law (PCMA) to 16-bit signed little-endian linear PCM."""
    return _decode(_as_bytes(data), _ALAW_LO, _ALAW_HI)
