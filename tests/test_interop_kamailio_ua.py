"""Two netsip user agents call each other through Kamailio (live-peer interop).

Kamailio runs ``tests/kamailio/registrar_auth.cfg`` (digest with
``qop=auth``): REGISTER is challenged with 401, a new call with 407, then
record-routed and relayed to the callee's registered Contact. Alice and bob
are :class:`netsip.simple.Simple` user agents on one event loop, each with
one leg (UDP or TCP) on the loopback:

- both register with digest, alice calls ``sip:bob@`` Kamailio (answering
  its 407), bob's ``listen`` answers; the BYE goes along the route set;
- DTMF ``0123456789*#`` sent by alice (:meth:`Call.dtmf`) arrives at bob's
  ``cb_dtmf`` in order, once as RFC 4733 telephone events (bob's audio then
  holds no tone: only silence was played) and once as in-band tones (bob's
  audio holds them);
- audio: alice plays a 16-bit WAV file, bob a mu-law WAV file; each records
  the other to a WAV file (:mod:`netsip._wav`), and each recording holds
  exactly the G.711 payload of what the other played;
- the commands: ``netsip answer --register`` (alice, echoing, ``--record``)
  gets two calls of ``netsip call --proxy`` (bob): one plays a WAV file
  (both recordings hold it sample for sample), one sends ``--dtmf 0-9*#``
  (printed by ``answer`` in order).

Every wait drives the loop with a bound (:data:`WAIT`), the commands'
``--timeout``/``--calls`` and the subprocess timeouts; Kamailio's log and
the user agents' outcomes are printed for a failed test. Skipped without
``kamailio`` unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import math
import random
import re
import struct
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netsip._g711 import ulaw_decode, ulaw_encode
from netsip._wav import read_media
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Request
from netsip.simple import Call, Simple
from netsip.util import Addr
from tests.support import (
    AuthKamailio,
    Listen,
    drive,
    netsip_command,
    require_kamailio,
    run_cli,
)

pytestmark = pytest.mark.interop

WAIT = 15.0  # seconds for one step (Kamailio's fr_inv_timer is 5 s)
FRAME = 160  # bytes of PCMU per 20 ms RTP packet
SILENCE = b"\xff" * FRAME
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
DIGITS = "0123456789*#"


@dataclass
class Phone:
    """A user agent for ``user`` and what happened to it."""

    user: str
    ua: Simple
    registered: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    dtmf: list[tuple[str, int]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    bye: list[str] = field(default_factory=list)
    invites: list[tuple[Request, Addr]] = field(default_factory=list)

    def on_dtmf(self, event: str, duration: int) -> None:
        self.dtmf.append((event, duration))

    def record(self, payload: bytes, *_args: object) -> None:
        self.audio.append(bytes(payload))


@dataclass
class Rig:
    """Kamailio and the user agents of one test."""

    loop: EventLoop
    tmp: Path
    kam: AuthKamailio | None = None
    phones: list[Phone] = field(default_factory=list)

    def phone(self, user: str, proto: str) -> Phone:
        """A registered user agent for ``user`` with one ``proto`` leg."""
        assert self.kam is not None
        ua = Simple(
            from_=f"<sip:{user}@127.0.0.1:{self.kam.port}>",
            leg=Leg(addr="127.0.0.1", port=0, proto="tcp" if proto == "tcp" else "udp"),
            loop=self.loop,
            auth=(user, PASSWORDS[user]),
        )
        p = Phone(user, ua)
        self.phones.append(p)
        ua.register(
            registrar=self.kam.uri(proto),
            expires=600,
            cb_final=lambda status, *_info: p.registered.append(status),
        )
        self.until(lambda: p.registered, f"{user} registered")
        assert p.registered == ["OK"], p.registered
        return p

    def until(self, cond: Callable[[], object], what: str) -> None:
        """Drive the loop until ``cond()`` (TimeoutError after :data:`WAIT` seconds)."""
        drive(self.loop, cond, WAIT, what)

    def why(self) -> str:
        lines = [
            f"{p.user}: registered={p.registered} final={p.final} dtmf={p.dtmf} "
            f"frames={len(p.audio)} bye={p.bye}"
            for p in self.phones
        ]
        if self.kam is not None:
            lines.append("==== kamailio log\n" + self.kam.log.read_text(errors="replace")[-3000:])
        return "\n".join(lines)


@pytest.fixture
def rig(loop: EventLoop, tmp_path: Path) -> Iterator[Rig]:
    require_kamailio()
    r = Rig(loop, tmp_path)
    try:
        r.kam = AuthKamailio(tmp_path, "QOP")
        yield r
    finally:
        print(r.why())  # (shown by pytest for a failed test only)
        for p in r.phones:
            p.ua.cleanup()
        if r.kam is not None:
            r.kam.close()


def listen(bob: Phone, **params: Any) -> None:
    """Bob answers every call; his calls, DTMF and the caller's BYE are kept."""

    def created(call: Call, request: Request, _leg: Leg, from_: Addr) -> bool:
        bob.calls.append(call)
        bob.invites.append((request, from_))
        return True

    bob.ua.listen(
        cb_create=created,
        cb_dtmf=bob.on_dtmf,
        recv_bye=lambda *_a: bob.bye.append("peer"),
        **params,
    )


def call(rig: Rig, alice: Phone, bob: Phone, proto: str, **params: Any) -> Call:
    """Alice calls bob at Kamailio; returns once the call is established."""
    assert rig.kam is not None
    c = alice.ua.invite(
        rig.kam.uri(proto, bob.user),
        cb_final=lambda status, *_info: alice.final.append(status),
        recv_bye=lambda *_a: alice.bye.append("peer"),
        **params,
    )
    rig.until(lambda: alice.final, "alice's call answered")
    assert alice.final == ["OK"], alice.final
    # the INVITE came from Kamailio, which record-routed it (12.1.1): the
    # call is through the proxy, and alice's credentials were accepted
    assert len(bob.calls) == 1
    ((invite, src),) = bob.invites
    # (over TCP Kamailio connects from another port; its Via names its own)
    assert src.port == rig.kam.port or proto == "tcp", src
    assert f"127.0.0.1:{rig.kam.port}" in invite.get_headers("via")[0]
    (rr,) = invite.get_headers("record-route")
    assert f"127.0.0.1:{rig.kam.port}" in rr, rr
    assert "bob" in (invite.get_header("to") or "") and "alice" in (invite.get_header("from") or "")
    return c


def hang_up(rig: Rig, alice: Phone, bob: Phone, c: Call) -> None:
    """Alice's BYE reaches bob (through Kamailio) and is answered: both calls are over."""
    done: list[object] = []
    c.bye(cb_final=done.append)
    rig.until(lambda: done and bob.bye, "the BYE answered")
    assert bob.bye == ["peer"] and alice.bye == []
    assert c.closed and bob.calls[0].closed


def frames(audio: list[bytes]) -> list[bytes]:
    """The received payloads as 20 ms frames."""
    data = b"".join(audio)
    assert len(data) % FRAME == 0, len(data)
    return [data[i : i + FRAME] for i in range(0, len(data), FRAME)]


# ---------------------------------------------------------------------- DTMF


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("method", ["rfc2833", "audio"])
def test_dtmf_through_kamailio(rig: Rig, method: str, proto: str) -> None:
    bob = rig.phone("bob", proto)
    alice = rig.phone("alice", proto)
    listen(bob, init_media=bob.ua.rtp("recv_echo", bob.record, -1))  # receive only
    c = call(rig, alice, bob, proto, init_media=alice.ua.rtp("send_recv", lambda *_a: SILENCE))

    rig.until(lambda: len(bob.audio) >= 10, "bob hears alice")  # (silence, 200 ms)
    sent: list[str] = []
    c.dtmf(DIGITS, methods=method, duration=100, cb_final=sent.append)
    rig.until(lambda: sent and len(bob.dtmf) >= len(DIGITS), "the digits sent and received")
    assert sent == ["OK"]
    assert "".join(e for e, _ in bob.dtmf) == DIGITS, bob.dtmf
    # (RFC 4733 durations are exact; tones are measured in 20 ms windows)
    assert all(80 <= ms <= 140 for _, ms in bob.dtmf), bob.dtmf
    hang_up(rig, alice, bob, c)

    # how the digits came: alice sent silence, so tones in bob's audio are in-band DTMF
    toned = [f for f in frames(bob.audio) if f != SILENCE]
    if method == "rfc2833":
        assert toned == [], f"{len(toned)} frames of tones with RFC 4733 events"
    else:
        assert len(toned) >= 4 * len(DIGITS), f"only {len(toned)} frames of tones"


# ---------------------------------------------------------------------- audio


def pcm_wav(path: Path, seconds: float, seed: int) -> None:
    """A 16-bit PCM WAV file (8 kHz mono): a rising tone with some noise."""
    rng = random.Random(seed)
    n = int(8000 * seconds) // FRAME * FRAME
    pcm = b"".join(
        struct.pack(
            "<h",
            int(6000 * math.sin(2 * math.pi * (300 + i / 8) * i / 8000)) + rng.randrange(-500, 500),
        )
        for i in range(n)
    )
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(pcm)


def ulaw_wav(path: Path, seconds: float, seed: int) -> None:
    """A mu-law WAV file (format 7, 8 kHz mono) of pseudo-random bytes."""
    data = random.Random(seed).randbytes(int(8000 * seconds) // FRAME * FRAME)
    path.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 7, 1, 8000, 8000, 1, 8)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def g711_of(path: Path) -> bytes:
    """The PCMU payload bytes of a WAV file (16-bit PCM encoded, mu-law as is)."""
    return read_media(path.read_bytes(), str(path), 0, lambda _pt, pcm: ulaw_encode(pcm))


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_recorded_wav_is_the_played_wav_through_kamailio(rig: Rig, proto: str) -> None:
    tmp = rig.tmp
    pcm_wav(tmp / "alice.wav", 1.2, seed=3)
    ulaw_wav(tmp / "bob.wav", 0.6, seed=4)
    bob = rig.phone("bob", proto)
    alice = rig.phone("alice", proto)
    # bob plays his (shorter) file once and then stays quiet (no BYE when it ends)
    listen(
        bob,
        init_media=bob.ua.rtp("send_recv", str(tmp / "bob.wav"), 1, str(tmp / "bob-heard.wav")),
        cb_rtp_done=lambda *_a: None,
    )
    played: list[str] = []
    alice_media = alice.ua.rtp("send_recv", str(tmp / "alice.wav"), 1, str(tmp / "alice-heard.wav"))
    c = call(
        rig,
        alice,
        bob,
        proto,
        init_media=alice_media,
        cb_rtp_done=lambda *_a: played.append("done"),
    )
    rig.until(lambda: played, "alice's file played")
    hang_up(rig, alice, bob, c)  # (the BYE through Kamailio: the last RTP is in by then)

    assert g711_of(tmp / "bob-heard.wav") == g711_of(tmp / "alice.wav")
    assert g711_of(tmp / "alice-heard.wav") == g711_of(tmp / "bob.wav")
    # the recordings are mu-law WAV files (format 7), 8 kHz mono
    for name in ("bob-heard.wav", "alice-heard.wav"):
        head = (tmp / name).read_bytes()[:36]
        assert struct.unpack_from("<HHI", head, 20) == (7, 1, 8000), name


# ------------------------------------------------- the commands, through Kamailio


def tone_wav(path: Path, seconds: float) -> bytes:
    """A 16-bit PCM WAV file (a rising tone with noise); its samples as G.711 keeps them."""
    pcm_wav(path, seconds, seed=5)
    with wave.open(str(path), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    return ulaw_decode(ulaw_encode(pcm))


def wav_samples(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        return wav.readframes(wav.getnframes())


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_netsip_call_and_answer_through_kamailio(
    proto: str, listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``netsip answer --register`` (alice, echo) gets two calls of ``netsip call --proxy``
    (bob): a WAV file played and both recordings, then DTMF ``0-9*#``."""
    require_kamailio()
    kam = AuthKamailio(tmp_path, "QOP")
    try:
        registrar = kam.uri(proto)
        srv = Listen(
            [],
            tmp_path,
            command=[
                *netsip_command(), "answer", "--listen", f"{proto}:127.0.0.1:0",
                "--register", registrar, "--user", "alice", "--password", PASSWORDS["alice"],
                "--record", str(tmp_path / "heard.wav"), "--calls", "2",
            ],
        )  # fmt: skip
        listen_factory.append(srv)
        srv.addresses(1)  # (printed once registered)
        expected = tone_wav(tmp_path / "tone.wav", 0.6)
        bob = [f"sip:alice@127.0.0.1:{kam.port}", "--proxy", registrar, "--user", "bob",
               "--password", PASSWORDS["bob"], "--timeout", "10"]  # fmt: skip
        status, out, err = run_cli(
            ["call", *bob, "--play", str(tmp_path / "tone.wav"),
             "--record", str(tmp_path / "echo.wav")],
            capsys,
        )  # fmt: skip
        assert status == 0, (out, err)
        assert ">>> BYE (done)" in out and "ended by us (BYE)" in out, out
        status, out, err = run_cli(["call", *bob, "--dtmf", DIGITS], capsys)
        assert status == 0, (out, err)
        assert f"DTMF sent: {DIGITS}" in out, out
        srv.returncode = srv.proc.wait(timeout=WAIT)  # (--calls 2: it stops by itself)
        srv.err.drain()
        answered = srv.stdout_path.read_text()
    finally:
        kam.close()
    assert srv.returncode == 0, (answered, srv.err.lines)
    assert re.search(r"^registered at .*: expires \d+$", answered, re.M), answered
    assert "2 established, 2 ended (2 by the caller's BYE, 0 by ours)" in answered, answered
    # the file reached alice whole, and came back to bob sample for sample
    assert wav_samples(tmp_path / "heard.wav") == expected
    assert wav_samples(tmp_path / "echo.wav") == expected
    # the digits, in order (RFC 4733: both offered telephone-event)
    digits = re.findall(r"^call 2: DTMF (\S) \(\d+ ms\)$", answered, re.M)
    assert "".join(digits) == DIGITS, answered
