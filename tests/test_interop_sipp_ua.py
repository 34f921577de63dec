"""sipp against netsip's user agent: ``netsip answer`` and ``netsip call`` (live-peer interop).

* sipp's built-in UAC (``-sn uac``) with RTP echo (``-rtp_echo``) calls
  ``netsip answer --play FILE --record OUT`` over UDP (``-t u1``) and TCP
  (``-t t1``): several calls, none failed (sipp's exit status and its
  ``-trace_stat`` counts), netsip answered each and saw each end with sipp's
  BYE, and what netsip recorded of each call is what it played, as far as
  sipp echoed it: the G.711 payloads bit for bit, frame-aligned, one
  unbroken run of the played stream (only frames at its edges may be missing).
* sipp's UAS answers ``netsip call --play FILE --record OUT``: the built-in
  scenario (``-sn uas``) over UDP, ``tests/sipp/uas_tcp.xml`` (the same
  without the final timewait, see there) over TCP. The call is established,
  ended with our BYE, ``netsip call`` exits 0, sipp counts the call
  successful; sipp echoes our audio (``-rtp_echo``) and the recording holds it.

The played audio is pseudo-random PCMU (raw, not WAV: every byte value is
sent as is), so that each 20 ms frame is unique and the position of a
recorded frame in the played stream is known. sipp's media port is on
127.0.0.1 (``-mi``), its SIP port free (``-p``); every wait is bounded by
sipp's ``-timeout``, ``netsip call --timeout`` and the subprocess timeouts.
Skipped without sipp unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from netsip.util import Addr
from tests.support import (
    LISTEN_TIMEOUT,
    Listen,
    check_all_successful,
    free_udp_tcp_port,
    netsip_command,
    require_sipp,
    run_cli,
    run_sipp,
    sipp_errors,
    sipp_stats,
    start_sipp,
    stop_process,
)

pytestmark = pytest.mark.interop

SCENARIOS = Path(__file__).resolve().parent / "sipp"
FRAME = 160  # bytes of PCMU per 20 ms RTP packet
SILENCE = b"\xff" * FRAME
CALLS = 5  # calls per sipp UAC run
CALL_MS = 1000  # how long sipp's UAC holds each call (its -d)
TIMEOUT = 25.0  # upper bound for a subprocess wait


def noise(seconds: float, seed: int) -> bytes:
    """Pseudo-random PCMU, a whole number of frames: every frame is unique."""
    rng = random.Random(seed)
    return rng.randbytes(int(8000 * seconds) // FRAME * FRAME)


def free_media_port() -> int:
    """A UDP port on 127.0.0.1 free together with port + 2 (sipp's echo binds both)."""
    for _ in range(50):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
        ):
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 2))
            except OSError:
                continue
            return port
    raise AssertionError("no free media port on 127.0.0.1")


def check_echo(played: bytes, recorded: bytes, min_frames: int) -> int:
    """``recorded`` is one frame-aligned run of ``played`` (then silence), bit for bit.

    Frames at the start may be missing (sent before sipp's echo reached us),
    as may those at the end (after the BYE); nothing in between. Returns the
    number of frames missing at the start.
    """
    assert len(recorded) % FRAME == 0, len(recorded)
    frames = len(recorded) // FRAME
    assert frames >= min_frames, f"only {frames} frames echoed"
    stream = played + SILENCE * (frames + 1)
    start = stream.find(recorded[:FRAME])
    assert start >= 0, "the first recorded frame was never played"
    assert start % FRAME == 0, f"the first recorded frame is not aligned: byte {start}"
    for i in range(frames):
        got = recorded[i * FRAME : (i + 1) * FRAME]
        want = stream[start + i * FRAME : start + (i + 1) * FRAME]
        assert got == want, f"recorded frame {i} is not played frame {start // FRAME + i}"
    return start // FRAME


def wait_bound(proc: subprocess.Popen[bytes], port: int, kind: str, cwd: Path) -> None:
    """Return once ``proc`` has a ``kind`` ("udp"/"tcp") socket on ``port`` (psutil)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            conns = psutil.Process(proc.pid).net_connections(kind=kind)
        except psutil.NoSuchProcess:
            conns = []
        if any(c.laddr and c.laddr.port == port for c in conns):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"sipp did not start: {sipp_errors(cwd)}")
        time.sleep(0.02)  # waiting for another program to bind: nothing to drive


# ------------------------------------------------- sipp's UAC calls netsip answer


def start_answer(tmp: Path, proto: str, *args: str) -> tuple[Listen, Addr]:
    """``netsip answer --listen PROTO:127.0.0.1:0 ARGS``; it and its address."""
    srv = Listen(
        [],
        tmp,
        command=[*netsip_command(), "answer", "--listen", f"{proto}:127.0.0.1:0", *args],
    )
    return srv, srv.addresses(1)[proto]


@pytest.mark.parametrize(("transport", "proto"), [("u1", "udp"), ("t1", "tcp")])
def test_sipp_uac_with_rtp_echo_calls_netsip_answer(
    transport: str, proto: str, listen_factory: list[Listen], tmp_path: Path
) -> None:
    sipp = require_sipp()
    played = noise(3 * CALL_MS / 1000, seed=1)  # longer than a call: no silence echoed
    (tmp_path / "play.pcmu").write_bytes(played)
    record = tmp_path / "heard.pcmu"
    srv, addr = start_answer(
        tmp_path, proto, "--play", str(tmp_path / "play.pcmu"), "--record", str(record),
        "--calls", str(CALLS),
    )  # fmt: skip
    listen_factory.append(srv)
    rc, stats, errors = run_sipp(
        sipp,
        [
            f"127.0.0.1:{addr.port}", "-sn", "uac", "-t", transport,
            "-p", str(free_udp_tcp_port()), "-rtp_echo", "-mi", "127.0.0.1",
            "-mp", str(free_media_port()), "-m", str(CALLS), "-r", "10", "-d", str(CALL_MS),
        ],
        tmp_path,
    )  # fmt: skip
    check_all_successful(rc, stats, errors, CALLS)

    srv.returncode = srv.proc.wait(timeout=LISTEN_TIMEOUT)  # (--calls: it stops by itself)
    srv.err.drain()
    out = srv.stdout_path.read_text()
    assert srv.returncode == 0, (out, srv.err.lines)
    assert f"{CALLS} established, {CALLS} ended ({CALLS} by the caller's BYE, 0 by ours)" in out
    for n in range(1, CALLS + 1):
        assert f"call {n}: BYE from the caller" in out, out
    # each call's recording: what sipp echoed of the frames netsip played
    for n in range(1, CALLS + 1):
        path = record if n == 1 else record.with_name(f"heard-{n}.pcmu")
        m = re.search(rf"^call {n}: ended after .*, recorded [\d.]+ s to (\S+)$", out, re.M)
        assert m is not None and m.group(1) == str(path), out
        # (a call of CALL_MS: at least half of it echoed on a loaded machine)
        missing = check_echo(played, path.read_bytes(), min_frames=CALL_MS // 40)
        assert missing <= 25, f"call {n}: the first {missing} frames were not echoed"


# ------------------------------------------------- netsip call to sipp's UAS


@pytest.mark.parametrize(
    ("transport", "proto", "scenario"),
    [
        pytest.param("u1", "udp", ["-sn", "uas"], id="udp"),
        pytest.param("t1", "tcp", ["-sf", str(SCENARIOS / "uas_tcp.xml")], id="tcp"),
    ],
)
def test_netsip_call_to_sipp_uas_with_rtp_echo(
    transport: str,
    proto: str,
    scenario: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sipp = require_sipp()
    played = noise(1.0, seed=2)
    (tmp_path / "play.pcmu").write_bytes(played)
    port = free_udp_tcp_port()
    proc, stf = start_sipp(
        sipp,
        [*scenario, "-t", transport, "-p", str(port), "-rtp_echo", "-mi", "127.0.0.1",
         "-mp", str(free_media_port()), "-m", "1"],
        tmp_path,
    )  # fmt: skip
    try:
        wait_bound(proc, port, proto, tmp_path)
        status, out, err = run_cli(
            ["call", f"sip:sipp@127.0.0.1:{port};transport={proto}",
             "--play", str(tmp_path / "play.pcmu"), "--record", str(tmp_path / "echo.pcmu"),
             "--timeout", "5"],
            capsys,
        )  # fmt: skip
        assert status == 0, (out, err, sipp_errors(tmp_path))
        rc = proc.wait(timeout=TIMEOUT)  # -m 1: sipp ends after the call
    finally:
        stop_process(proc)
    assert err == ""
    assert re.search(r"^<<< 180 Ringing \(", out, re.M), out
    assert re.search(r"^<<< 200 OK \(.*\): established$", out, re.M), out
    assert ">>> BYE (done)" in out and "ended by us (BYE)" in out, out
    stats = sipp_stats(stf)
    check_all_successful(rc, stats, sipp_errors(tmp_path), 1)
    # sipp echoed the file, and the silence after it until our BYE
    missing = check_echo(played, (tmp_path / "echo.pcmu").read_bytes(), min_frames=25)
    assert missing <= 25, f"the first {missing} frames were not echoed"
