"""examples/: every user-agent example documents itself and runs `--help` without a peer.

The examples' calls against live peers are in tests/test_interop_simple.py; here
examples/3pcc.py (third party call control, RFC 3725 4.1) connects two
``netsip answer`` processes on loopback: each plays its own file to the other and
records what it gets, so the audio each one recorded proves that its SDP reached
the other party (FROM's offer in TO's INVITE, TO's answer in FROM's ACK). FROM
hangs up (``--duration``): its BYE is relayed to TO and the controller ends.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Listen, free_port, netsip_command, python_env, summary_counts

#: the ports of Net::SIP's Simple examples (examples/responder.py is tests/test_examples.py's)
UA_EXAMPLES = (
    "invite_and_recv.py",
    "invite_and_send.py",
    "dtmf.py",
    "bench/listen.py",
    "bench/call.py",
    "3pcc.py",
)
EXAMPLES = [ROOT / "examples" / name for name in UA_EXAMPLES]


def test_examples_found() -> None:
    assert [p for p in EXAMPLES if not p.is_file()] == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_help(path: object) -> None:
    res = subprocess.run(
        [sys.executable, str(path), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: "), res.stdout
    assert "Net::SIP" in res.stdout  # the first docstring line names the Perl original


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_bad_option(path: object) -> None:
    res = subprocess.run(
        [sys.executable, str(path), "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "unrecognized arguments" in res.stderr or "required" in res.stderr


RUN = 20.0  # upper bound for a process started here to finish
FRAME = 160  # PCMU bytes per 20 ms packet


def _pcmu(frames: int, step: int) -> bytes:
    """Raw PCMU that differs from frame to frame and holds no 0xFF (mu-law silence)."""
    return bytes((i * step + i // FRAME) % 255 for i in range(frames * FRAME))


def _party(tmp_path: Path, name: str, audio: bytes, *args: str) -> tuple[Listen, int]:
    """``netsip answer`` playing ``audio`` and recording to NAME.rec; its UDP port."""
    (tmp_path / f"{name}.pcmu").write_bytes(audio)
    proc = Listen(
        [],
        tmp_path,
        command=[
            *netsip_command(), "answer", "-l", "udp:127.0.0.1:0", "--calls", "1",
            "--play", str(tmp_path / f"{name}.pcmu"), "--record", str(tmp_path / f"{name}.rec"),
            *args,
        ],
    )  # fmt: skip
    return proc, proc.addresses(1)["udp"].port


def _party_output(proc: Listen) -> str:
    proc.returncode = proc.proc.wait(timeout=RUN)
    proc.err.drain()
    return proc.stdout_path.read_text()


def test_3pcc_connects_two_netsip_parties(listen_factory: list[Listen], tmp_path: Path) -> None:
    pytest.importorskip("netsip.simple")
    a_audio, b_audio = _pcmu(25, 7), _pcmu(25, 13)
    a, a_port = _party(tmp_path, "a", a_audio, "--duration", "1.5")
    listen_factory.append(a)
    b, b_port = _party(tmp_path, "b", b_audio)
    listen_factory.append(b)
    laddr = f"127.0.0.1:{free_port()}"
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "3pcc.py"), laddr,
         f"sip:a@127.0.0.1:{a_port}", f"sip:b@127.0.0.1:{b_port}"],
        capture_output=True, text=True, timeout=RUN, env=python_env(), check=False,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == [
        f"INVITE sip:a@127.0.0.1:{a_port} without SDP",
        f"sip:a@127.0.0.1:{a_port} answered 200: its offer goes to sip:b@127.0.0.1:{b_port}",
        f"INVITE sip:b@127.0.0.1:{b_port} with the offer",
        f"sip:b@127.0.0.1:{b_port} answered 200: its answer went to sip:a@127.0.0.1:{a_port}",
        "connected",
        f"BYE from sip:a@127.0.0.1:{a_port} relayed to sip:b@127.0.0.1:{b_port}",
        f"BYE answered 200 by sip:b@127.0.0.1:{b_port}: call ended",
    ]
    a_out, b_out = _party_output(a), _party_output(b)
    assert a.returncode == 0 and b.returncode == 0, (a_out, b_out)
    # each party was called by the controller, posing as the other one
    assert re.search(
        rf"^call 1 from <sip:b@127.0.0.1:{b_port}>;tag=\S+ \(udp:{laddr}\)$", a_out, re.M
    )
    assert re.search(
        rf"^call 1 from <sip:a@127.0.0.1:{a_port}>;tag=\S+ \(udp:{laddr}\)$", b_out, re.M
    )
    assert "call 1: BYE (--duration)" in a_out
    assert "call 1: BYE from the caller" in b_out
    # media flowed directly, both ways: each recorded the other's file, byte for byte
    a_got = (tmp_path / "a.rec").read_bytes()
    b_got = (tmp_path / "b.rec").read_bytes()
    assert a_got[: len(b_audio)] == b_audio
    assert b_got[: len(a_audio)] == a_audio


def test_3pcc_refused_by_to_ends_the_call_with_from(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    """TO answers 486: the controller ACKs it, ends FROM's call (ACK and BYE), exits 1."""
    pytest.importorskip("netsip.simple")
    a, a_port = _party(tmp_path, "a", _pcmu(5, 7))
    listen_factory.append(a)
    busy = Listen(["--listen", "udp:127.0.0.1:0", "--code", "486"], tmp_path)
    listen_factory.append(busy)
    b_port = busy.addresses(1)["udp"].port
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "3pcc.py"), f"127.0.0.1:{free_port()}",
         f"sip:a@127.0.0.1:{a_port}", f"sip:b@127.0.0.1:{b_port}"],
        capture_output=True, text=True, timeout=RUN, env=python_env(), check=False,
    )  # fmt: skip
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert f"failed: sip:b@127.0.0.1:{b_port} answered 486 Busy Here" in res.stdout.splitlines()
    a_out = _party_output(a)  # (--calls 1: it exits once its call ended)
    assert a.returncode == 0, a_out
    assert " 1 ended (" in a_out, a_out  # (not established: the ACK had no answer)
    busy_out = busy.stop()
    assert summary_counts(busy_out).get("ACK") == 1, busy_out  # the 486 was acknowledged
