"""Audio files of ``netsip call`` and ``netsip answer``: ``--play`` and ``--record``.

The media sessions of :mod:`netsip.rtp` send and receive G.711 payloads,
20 ms (160 bytes of PCMU/8000, RFC 3551 4.5.14) per RTP packet; their input
and output may be callables. These are the callables for files:

- :func:`read_audio` reads a WAV file (8000 Hz, mono, 16-bit PCM, encoded
  here to mu-law) or, as Perl's ``media_send_recv`` does, a file of raw PCMU
  bytes (anything that is not RIFF/WAVE);
- :class:`Player` hands them out frame by frame (then silence, or the end);
- :class:`Recorder` keeps what the peer sent and writes it at the end of the
  call: a WAV file (16-bit PCM, decoded from mu-law) when the name ends with
  ``.wav``, else the raw payloads (Perl's format).

Net::SIP's ``Net::SIP::Simple::RTP`` reads and writes raw PCMU only.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from netsip._g711 import ulaw_decode, ulaw_encode
from netsip.cli._common import CliError

__all__ = ["FRAME", "SILENCE", "Player", "Recorder", "read_audio"]

#: bytes of PCMU per 20 ms RTP packet (8000 samples/s, one byte each)
FRAME: Final = 160
#: a frame of mu-law silence (0xFF encodes the linear value 0)
SILENCE: Final = b"\xff" * FRAME
_RATE: Final = 8000


def read_audio(path: str, option: str = "--play") -> bytes:
    """The PCMU bytes of ``path``: a WAV file encoded to mu-law, or raw PCMU.

    Raises:
        CliError: the file cannot be read, or is a WAV file of another
            format than 8000 Hz mono 16-bit PCM (status 2).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if not (data[:4] == b"RIFF" and data[8:12] == b"WAVE"):
        return data
    try:
        with wave.open(path, "rb") as wav:
            shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise CliError(f"{option}: {path}: not a WAV file we can read: {exc}") from None
    if shape != (_RATE, 1, 2):
        rate, channels, width = shape
        raise CliError(
            f"{option}: {path}: {rate} Hz, {channels} channel(s), {8 * width}-bit: "
            f"use 8000 Hz mono 16-bit PCM (e.g. sox IN -r 8000 -c 1 -b 16 OUT.wav)"
        )
    encoded: bytes = ulaw_encode(pcm[: len(pcm) - len(pcm) % 2])
    return encoded


@dataclass(slots=True)
class Player:
    """The input of a media session: ``audio`` in frames of 160 bytes.

    After the last frame (padded with silence) it returns ``None`` (the end:
    the session calls ``cb_rtp_done``), or silence for ever with ``then_silence``.
    """

    audio: bytes
    then_silence: bool = False
    sent: int = 0  # frames handed out

    def __call__(self, *_args: object) -> bytes | None:
        start = self.sent * FRAME
        if start >= len(self.audio):
            if not self.then_silence:
                return None
            self.sent += 1
            return SILENCE
        self.sent += 1
        chunk = self.audio[start : start + FRAME]
        return chunk + SILENCE[len(chunk) :]

    @property
    def done(self) -> bool:
        """Every frame of ``audio`` went out."""
        return self.sent * FRAME >= len(self.audio)


@dataclass(slots=True)
class Recorder:
    """The output of a media session: keeps the payloads; :meth:`save` writes them."""

    path: str
    payloads: list[bytes] = field(default_factory=list)

    def __call__(self, payload: bytes, *_args: object) -> None:
        self.payloads.append(bytes(payload))

    @property
    def size(self) -> int:
        """Bytes (= samples) received."""
        return sum(map(len, self.payloads))

    def save(self) -> None:
        """Write the file: WAV for ``*.wav``, else the raw payloads.

        Raises:
            OSError: the file cannot be written.
        """
        data = b"".join(self.payloads)
        if not self.path.lower().endswith(".wav"):
            Path(self.path).write_bytes(data)
            return
        with wave.open(self.path, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(_RATE)
            wav.writeframes(ulaw_decode(data))
