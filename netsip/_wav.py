"""WAV (RIFF) reading and writing for G.711 media in :mod:`netsip.rtp`.

Differences from Net::SIP:
- Net::SIP reads and writes raw G.711 only. Here input may also be a WAV file:
  PCM 16-bit 8 kHz mono (encoded to G.711 by the ``encode`` passed in) or WAV
  format 7 (mu-law) / 6 (A-law) passed through; output ending in ``.wav`` is
  written as a format 7/6 WAV whose sizes are fixed up on close.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import IO

__all__ = ["WavWriter", "read_media"]

PCM, ALAW, ULAW = 1, 6, 7


#: G.711 encoder for PCM16 WAV input: (payload type, pcm) -> G.711 bytes
Encoder = Callable[[int, bytes], bytes]


def read_media(data: bytes, name: str, payload_type: int, encode: Encoder | None = None) -> bytes:
    """The G.711 bytes to send from file contents ``data`` (raw or WAV).

    ``encode`` converts PCM16 WAV data (``netsip._g711``); without it such a
    file is rejected.

    Raises:
        ValueError: a WAV file that is not 8 kHz mono PCM16 / mu-law / A-law.
    """
    if not data.startswith(b"RIFF"):
        return data  # raw G.711, as Net::SIP
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise ValueError(f"media input {name!r}: RIFF but not WAVE")
    off, fmt, body = 12, None, None
    while off + 8 <= len(data):
        cid, size = data[off : off + 4], struct.unpack_from("<I", data, off + 4)[0]
        chunk = data[off + 8 : off + 8 + size]
        if cid == b"fmt " and len(chunk) >= 16:
            fmt = struct.unpack_from("<HHIIHH", chunk)
        elif cid == b"data":
            body = chunk
        off += 8 + size + (size & 1)
    if fmt is None or body is None:
        raise ValueError(f"media input {name!r}: WAV without fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if channels != 1 or rate != 8000:
        raise ValueError(f"media input {name!r}: need 8 kHz mono, got {rate} Hz x {channels}")
    if tag == PCM and bits == 16:
        if encode is None:
            raise ValueError(f"media input {name!r}: PCM WAV needs the G.711 encoder")
        return encode(payload_type, body)
    if tag in {ULAW, ALAW}:
        return body
    raise ValueError(f"media input {name!r}: unsupported WAV format {tag}/{bits} bit")


class WavWriter:
    """Write G.711 payloads as a WAV file (format 7 mu-law, 6 A-law)."""

    def __init__(self, path: str, payload_type: int) -> None:
        self._f: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._tag = ALAW if payload_type == 8 else ULAW
        self._size = 0
        self._header()

    def _header(self) -> None:
        self._f.write(
            b"RIFF"
            + struct.pack("<I", 36 + self._size)
            + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, self._tag, 1, 8000, 8000, 1, 8)
            + b"data"
            + struct.pack("<I", self._size)
        )

    def write(self, payload: bytes) -> None:
        self._f.write(payload)
        self._size += len(payload)

    def close(self) -> None:
        """Fix the sizes in the header up and close."""
        if self._f.closed:
            return
        self._f.seek(0)
        self._header()
        self._f.close()
