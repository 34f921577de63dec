"""``netsip call`` and ``netsip answer`` (netsip/cli/call.py, answer.py, _media.py).

``netsip answer`` runs as a subprocess (it serves until ``--calls`` calls
ended or a signal), ``netsip call`` in-process against it, over UDP and TCP
on loopback:

- audio: a WAV tone played by the caller comes back from ``answer --echo``
  sample for sample (G.711 is lossless once mu-law encoded), and both
  recordings (``--record`` on each side) hold it; the caller hangs up once
  the file is sent;
- DTMF: the digits of ``call --dtmf`` are printed by ``answer`` in order;
- BYE: ``call --duration`` ends the call with our BYE, ``answer
  --duration`` with its BYE (the caller then exits 0 too);
- failures: a rejected call (``netsip listen --code 486``) and unreachable
  callees (a closed TCP port: refused; a UDP port nobody answers: timeout)
  are exit 1 with the status on one line of stderr; bad arguments exit 2;
- live peers: Perl's ``examples/bench/listen.pl`` (``Simple->listen`` with
  ``recv_echo``) echoes ``netsip call``'s audio; Perl's
  ``examples/bench/call.pl`` (as ``tests/perl/bench_call.pl``) calls
  ``netsip answer --echo`` and counts the packets echoed; ``netsip answer
  --register`` at Kamailio (digest) is reached by ``netsip call --proxy``
  through Kamailio (407 proxy authentication, record-routing).

Every wait is bounded: the commands' own ``--timeout``/``--calls``, the
subprocess timeouts, :data:`TIMEOUT`.
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import socket
import struct
import subprocess
import wave
from pathlib import Path

import pytest

from netsip.cli._common import CliError
from netsip.cli._media import FRAME, SILENCE, Player, Recorder, read_audio
from netsip.cli.answer import record_path
from netsip.cli.call import check_dtmf
from netsip.util import Addr
from tests.support import (
    ROOT,
    AuthKamailio,
    LineReader,
    Listen,
    free_port,
    free_udp_tcp_port,
    missing_peer,
    netsip_command,
    require_kamailio,
    require_perl_netsip,
    run_cli,
    stop_process,
)


def ulaw_encode(pcm: bytes) -> bytes:
    encoded: bytes = pytest.importorskip("netsip._g711").ulaw_encode(pcm)
    return encoded


def ulaw_decode(data: bytes) -> bytes:
    decoded: bytes = pytest.importorskip("netsip._g711").ulaw_decode(data)
    return decoded


def needs_simple() -> None:
    """Skip until netsip.simple (and netsip.rtp) are there."""
    pytest.importorskip("netsip.simple")


TIMEOUT = 30.0  # upper bound for any single wait on a subprocess
BENCH = Path("/usr/share/doc/libnet-sip-perl/examples/bench")
#: Perl's bench/call.pl, fixed to keep its calls and given -L (see its header)
PERL_BENCH_CALL = ROOT / "tests" / "perl" / "bench_call.pl"


def write_tone(path: Path, seconds: float = 0.4, freq: float = 440.0) -> bytes:
    """A WAV file with a sine tone (8000 Hz mono 16-bit); its PCM samples."""
    n = int(8000 * seconds)
    pcm = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / 8000))) for i in range(n)
    )
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(pcm)
    return pcm


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        return wav.readframes(wav.getnframes())


def start_answer(factory: list[Listen], tmp: Path, *args: str) -> tuple[Listen, dict[str, Addr]]:
    """``netsip answer ARGS`` as a subprocess; its listening addresses by transport,
    once it is ready (registered, with ``--register``)."""
    proc = Listen([], tmp, command=[*netsip_command(), "answer", *args])
    factory.append(proc)
    specs = [v for k, v in itertools.pairwise(args) if k in ("-l", "--listen")]
    count = sum(1 if v.startswith(("udp:", "tcp:", "tls:")) else 2 for v in specs) or 2
    return proc, proc.addresses(count)


def answer_output(proc: Listen) -> str:
    """Wait for ``answer`` to exit by itself (``--calls``); its stdout."""
    proc.returncode = proc.proc.wait(timeout=TIMEOUT)
    proc.err.drain()
    return proc.stdout_path.read_text()


def callee(addr: Addr, proto: str, user: str = "answer") -> str:
    tail = ";transport=tcp" if proto == "tcp" else ""
    return f"sip:{user}@{addr}{tail}"


# ------------------------------------------------------------------ units


def test_read_audio_wav_and_raw(tmp_path: Path) -> None:
    pytest.importorskip("netsip._g711")
    pcm = write_tone(tmp_path / "tone.wav", 0.1)
    assert read_audio(str(tmp_path / "tone.wav")) == ulaw_encode(pcm)
    (tmp_path / "raw.pcmu").write_bytes(b"\x01\x02\x03")
    assert read_audio(str(tmp_path / "raw.pcmu")) == b"\x01\x02\x03"
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0" * 400)
    with pytest.raises(CliError, match="use 8000 Hz mono 16-bit"):
        read_audio(str(tmp_path / "stereo.wav"))
    (tmp_path / "bad.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk")
    with pytest.raises(CliError, match="not a WAV file"):
        read_audio(str(tmp_path / "bad.wav"))


def test_player_frames_then_end_or_silence() -> None:
    audio = bytes(range(200))
    once = Player(audio)
    assert once(1, 0) == audio[:FRAME]
    assert once(2, 0) == audio[FRAME:] + SILENCE[: 2 * FRAME - 200]
    assert once.done and once(3, 0) is None
    looped = Player(audio[:FRAME], then_silence=True)
    assert looped() == audio[:FRAME]
    assert looped() == SILENCE and looped() == SILENCE


def test_recorder_writes_wav_or_raw(tmp_path: Path) -> None:
    pytest.importorskip("netsip._g711")
    frames = [bytes([i]) * FRAME for i in (0x10, 0x90)]
    wav_rec = Recorder(str(tmp_path / "r.wav"))
    raw_rec = Recorder(str(tmp_path / "r.raw"))
    for f in frames:
        wav_rec(f, 1, 2)
        raw_rec(f)
    wav_rec.save()
    raw_rec.save()
    assert read_wav(tmp_path / "r.wav") == ulaw_decode(b"".join(frames))
    assert (tmp_path / "r.raw").read_bytes() == b"".join(frames)
    assert wav_rec.size == 2 * FRAME


def test_record_path_and_dtmf_digits() -> None:
    assert record_path("/t/in.wav", 1) == "/t/in.wav"
    assert record_path("/t/in.wav", 3) == "/t/in-3.wav"
    assert record_path("raw", 2) == "raw-2"
    assert check_dtmf("12#*a,D") == "12#*A,D"
    for bad in ("", "12x", "1 2", "E"):
        with pytest.raises(CliError):
            check_dtmf(bad)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["call"], "required: URI"),
        (["call", "http://example.com"], "unsupported URI scheme"),
        (["call", "sip:127.0.0.1", "--dtmf", "12x"], "invalid --dtmf"),
        (["call", "sip:127.0.0.1", "--password", "x"], "--password needs --user"),
        (["call", "sip:127.0.0.1", "--play", "/nonexistent.wav"], "cannot read"),
        (["call", "sip:127.0.0.1", "--duration", "-1"], "not a valid time"),
        (["call", "sip:127.0.0.1", "--from", "alice"], "invalid --from"),
        (["call", "sip:127.0.0.1", "--proxy", "sip:bad host"], "cannot parse URI"),
        (["call", "sips:127.0.0.1", "-t", "udp"], "contradicts"),
        (["answer", "--echo", "--play", "x.wav"], "not allowed with"),
        (["answer", "--play", "/nonexistent.wav"], "cannot read"),
        (["answer", "--listen", "foo:bar:baz"], "invalid --listen"),
        (["answer", "--register", "sip:127.0.0.1"], "--register needs --user"),
        (["answer", "--password", "x"], "--password needs --user"),
        (["answer", "--calls", "-1"], "must not be negative"),
        (["answer", "--record", "/nonexistent/dir/r.wav"], "no such directory"),
        (["answer", "--listen", "tls:127.0.0.1:0"], "needs --tls-cert"),
    ],
)
def test_call_answer_bad_arguments_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(argv, capsys)
    assert status == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"netsip {argv[0]}: error: "), err
    assert needle in lines[0], err
    assert out == ""


# ------------------------------------------------------------ call -> answer


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_call_plays_a_wav_file_to_answer_echo_and_records_the_echo(
    proto: str, listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_simple()
    pcm = write_tone(tmp_path / "tone.wav", 0.4)  # 20 frames
    expected = ulaw_decode(ulaw_encode(pcm))  # what survives G.711
    srv, addrs = start_answer(
        listen_factory, tmp_path, "--listen", f"{proto}:127.0.0.1:0", "--echo",
        "--record", str(tmp_path / "heard.wav"), "--calls", "1",
    )  # fmt: skip
    status, out, err = run_cli(
        ["call", callee(addrs[proto], proto), "--play", str(tmp_path / "tone.wav"),
         "--record", str(tmp_path / "echo.wav"), "--timeout", "5"],
        capsys,
    )  # fmt: skip
    assert status == 0, (out, err)
    assert err == ""
    assert re.search(r"^<<< 200 OK \(.*\): established$", out, re.M), out
    assert ">>> BYE (done)" in out and "ended by us (BYE)" in out, out
    answered = answer_output(srv)
    assert srv.returncode == 0, srv.err.lines
    assert "call 1: established" in answered
    assert "call 1: BYE from the caller" in answered
    assert "1 established, 1 ended (1 by the caller's BYE, 0 by ours)" in answered
    # the caller's audio arrived whole, and came back sample for sample
    assert read_wav(tmp_path / "heard.wav") == expected
    assert read_wav(tmp_path / "echo.wav") == expected


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_call_dtmf_is_printed_by_answer(
    proto: str, listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_simple()
    srv, addrs = start_answer(
        listen_factory, tmp_path, "--listen", f"{proto}:127.0.0.1:0", "--calls", "1"
    )
    status, out, err = run_cli(
        ["call", callee(addrs[proto], proto), "--dtmf", "12#9", "--dtmf-duration", "0.06"],
        capsys,
    )
    assert status == 0, (out, err)
    assert "DTMF 12#9 sent" in out and "DTMF sent: 12#9" in out, out
    answered = answer_output(srv)
    assert srv.returncode == 0, srv.err.lines
    digits = re.findall(r"^call 1: DTMF (\S) \(\d+ ms\)$", answered, re.M)
    assert digits == ["1", "2", "#", "9"], answered
    assert "DTMF received: 12#9" in answered


def test_call_duration_ends_with_our_bye(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_simple()
    srv, addrs = start_answer(listen_factory, tmp_path, "--listen", "udp:127.0.0.1:0", "-n", "1")
    status, out, err = run_cli(["call", callee(addrs["udp"], "udp"), "--duration", "0.3"], capsys)
    assert status == 0, (out, err)
    assert ">>> BYE (--duration)" in out
    m = re.search(r"lasted (\d+\.\d+) s, ended by us \(BYE\)", out)
    assert m is not None and float(m.group(1)) >= 0.3, out
    answer_output(srv)
    assert srv.returncode == 0


def test_answer_duration_hangs_up_and_the_caller_exits_0(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_simple()
    srv, addrs = start_answer(
        listen_factory, tmp_path, "--listen", "tcp:127.0.0.1:0", "--duration", "0.2", "-n", "1"
    )
    status, out, err = run_cli(["call", callee(addrs["tcp"], "tcp")], capsys)
    assert status == 0, (out, err)
    assert re.search(r"^<<< BYE$", out, re.M) and "ended by the peer (BYE)" in out, out
    answered = answer_output(srv)
    assert "call 1: BYE (--duration)" in answered
    assert "(0 by the caller's BYE, 1 by ours)" in answered


def test_answer_stops_on_sigterm_with_a_summary(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    needs_simple()
    srv, _ = start_answer(listen_factory, tmp_path, "--listen", "127.0.0.1:0")
    out = srv.stop(signal.SIGTERM)
    assert srv.returncode == 0
    assert "--- netsip answer: 0 calls in" in out
    assert not any("Traceback" in line for line in srv.err.lines)


# ---------------------------------------------------------------- failures


def test_call_rejected_exits_1_with_the_status(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_simple()
    srv = Listen(["--listen", "udp:127.0.0.1:0", "--code", "486"], tmp_path)
    listen_factory.append(srv)
    addr = srv.addresses(1)["udp"]
    status, out, err = run_cli(["call", f"sip:bob@{addr}"], capsys)
    assert status == 1, (out, err)
    assert err.splitlines() == [f"netsip call: error: INVITE sip:bob@{addr}: 486 Busy Here"]
    assert "not established: 486 Busy Here" in out


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_call_to_a_closed_port_exits_1(proto: str, capsys: pytest.CaptureFixture[str]) -> None:
    needs_simple()
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening or read
        port = closed.getsockname()[1]
        status, out, err = run_cli(
            ["call", f"sip:bob@127.0.0.1:{port};transport={proto}", "--timeout", "0.5"], capsys
        )
    assert status == 1, (out, err)
    (line,) = err.splitlines()
    assert line.endswith("Connection refused" if proto == "tcp" else "timeout"), line


# -------------------------------------------------------------- live peers


@pytest.mark.interop
def test_call_perl_bench_listen_echoes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Perl's examples/bench/listen.pl (Simple->listen, recv_echo) sends our audio back."""
    needs_simple()
    perl = require_perl_netsip()
    script = BENCH / "listen.pl"
    if not script.is_file():
        missing_peer("Net::SIP's examples/bench/listen.pl", "apt-get install libnet-sip-perl")
    port = free_udp_tcp_port()
    proc = subprocess.Popen(
        # (stdout unbuffered: Perl holds "Listening..." in its buffer on a pipe)
        [perl, "-e", "$| = 1; $0 = shift; do $0; die $@ if $@", str(script),
         "-L", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        LineReader(proc.stdout.fileno(), TIMEOUT).wait_for("^Listening")
        pcm = write_tone(tmp_path / "tone.wav", 0.4)
        status, out, err = run_cli(
            ["call", f"sip:me@127.0.0.1:{port}", "--play", str(tmp_path / "tone.wav"),
             "--record", str(tmp_path / "echo.wav")],
            capsys,
        )  # fmt: skip
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()
    assert status == 0, (out, err)
    assert read_wav(tmp_path / "echo.wav") == ulaw_decode(ulaw_encode(pcm))


@pytest.mark.interop
def test_perl_bench_call_to_netsip_answer(listen_factory: list[Listen], tmp_path: Path) -> None:
    """Perl's bench/call.pl (2 parallel calls, RTP both ways) against answer --echo.

    tests/perl/bench_call.pl is Net::SIP's examples/bench/call.pl with its Call
    objects kept alive (the original drops them, so it never sees its 2xx) and a
    -L option for its own address (see the script's header).
    """
    needs_simple()
    perl = require_perl_netsip()
    srv, addrs = start_answer(listen_factory, tmp_path, "--listen", "udp:127.0.0.1:0")
    leg = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        # (stdout unbuffered: the statistics lines arrive as printed)
        [perl, "-e", "$| = 1; $0 = shift; do $0; die $@ if $@", str(PERL_BENCH_CALL),
         "-L", leg, "-P", str(addrs["udp"]), "-T", f"sip:me@{addrs['udp']}",
         "-N", "2", "-S", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        reader = LineReader(proc.stdout.fileno(), TIMEOUT)
        reader.wait_for("^All 2 calls connected")
        # statistics: seconds pkt=good/lost/ignored delay(ms)=avg/min/max, here
        # the packets netsip echoed back to call.pl
        (m,) = reader.wait_for(r"^\s*\d+ pkt=([1-9]\d*)/(\d+)/(\d+) delay\(ms\)=[\d.]+/")
    finally:
        stop_process(proc, TIMEOUT)
    out = srv.stop()
    assert srv.returncode == 0
    # both calls came from the -L address and were answered
    assert re.findall(r"^call \d+ from .* \((.*)\)$", out, re.M) == [f"udp:{leg}"] * 2, out
    assert "--- netsip answer: 2 calls in" in out
    assert "2 established" in out
    good, lost, ignored = map(int, m.groups())
    assert good > 0 and lost == 0 and ignored == 0, m.group(0)


@pytest.mark.interop
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_answer_registered_at_kamailio_is_called_through_it(
    proto: str, listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """answer --register (401 digest) as alice; call --proxy as bob (407) reaches it."""
    needs_simple()
    require_kamailio()
    kam = AuthKamailio(tmp_path)
    try:
        registrar = kam.uri(proto)
        srv, _addrs = start_answer(
            listen_factory, tmp_path, "--listen", f"{proto}:127.0.0.1:0", "--register", registrar,
            "--user", "alice", "--password", "alice-secret", "--calls", "1",
        )  # fmt: skip
        status, out, err = run_cli(
            ["call", f"sip:alice@127.0.0.1:{kam.port}", "--proxy", registrar,
             "--user", "bob", "--password", "bob-secret", "--dtmf", "7", "--timeout", "10"],
            capsys,
        )  # fmt: skip
        assert status == 0, (out, err)
        answered = answer_output(srv)
    finally:
        kam.close()
    assert re.search(r"^registered at .*: expires \d+$", answered, re.M), answered
    assert "call 1 from " in answered and "bob" in answered
    assert "call 1: DTMF 7" in answered
    assert srv.returncode == 0
