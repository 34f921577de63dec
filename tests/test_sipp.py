"""sipp against the ``netsip`` command, in both directions (live-peer interop).

* sipp as client (UAC) against ``netsip listen``: the OPTIONS scenario of
  ``tests/sipp/options_uac.xml`` and sipp's built-in INVITE/ACK/BYE scenario
  (``-sn uac``) over UDP (``-t u1``), TCP on one connection (``t1``), TCP with
  a connection per call (``tn``) and TLS (``l1``, where this sipp build has
  TLS): thousands of calls, and sipp must report every one successful.
* sipp as server (``-sn uas``) driven by ``netsip bench`` (whole calls) and
  ``netsip options`` over UDP and TCP.

sipp's exit status is 0 only when every call succeeded; its statistics file
(``-trace_stat``) gives the counts. Everything runs on loopback and is bounded
by sipp's ``-timeout`` and the subprocess timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from netsip import cli
from tests.support import (
    SIPP_TIMEOUT,
    SIPP_WAIT,
    Listen,
    check_all_successful,
    listen_summary_only,
    require_sipp,
    require_tls,
    run_sipp,
    sipp_stats,
    summary_counts,
    write_certs,
)
from tests.support import run_cli as run

pytestmark = pytest.mark.interop

SCENARIOS = Path(__file__).resolve().parent / "sipp"
CALLS = 2000  # per run: "thousands of calls", ~2 s at the rate below
RATE = 1000  # new calls per second
LIMIT = 500  # calls in flight at most


def _sipp_has_tls(sipp: str, cwd: Path) -> bool:
    res = subprocess.run(
        [sipp, "127.0.0.1:9", "-sn", "uac", "-t", "l1", "-m", "1", "-nostdin", "-timeout", "1s"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=SIPP_WAIT,
        check=False,
    )
    return b"compile SIPp with OpenSSL" not in res.stdout + res.stderr


# ------------------------------------------------- sipp as client (UAC)


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_scenario(
    transport: str, listen_factory: list[Listen], tmp_path: Path
) -> None:
    sipp = require_sipp()
    srv, port = listen_summary_only(listen_factory, tmp_path, "--listen", "127.0.0.1:0")
    rc, stats, errors = run_sipp(
        sipp,
        [
            f"127.0.0.1:{port}",
            "-sf",
            str(SCENARIOS / "options_uac.xml"),
            "-t",
            transport,
            "-m",
            str(CALLS),
            "-r",
            str(RATE),
            "-rp",
            "1000",
            "-l",
            str(LIMIT),
        ],
        tmp_path,
    )
    check_all_successful(rc, stats, errors, CALLS)
    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"OPTIONS": CALLS}


@pytest.mark.parametrize(
    ("transport", "extra"),
    [
        pytest.param("u1", [], id="u1"),
        pytest.param("t1", [], id="t1"),
        # sipp spreads calls over its open sockets once -max_socket is reached and
        # closes a socket when the call that opened it ends, breaking the calls
        # still using it ("Broken pipe", also against sipp's own uas): so the
        # limit stays above the number of calls in flight
        pytest.param("tn", ["-max_socket", str(2 * LIMIT)], id="tn"),
    ],
)
def test_sipp_uac_invite_bye(
    transport: str, extra: list[str], listen_factory: list[Listen], tmp_path: Path
) -> None:
    sipp = require_sipp()
    srv, port = listen_summary_only(listen_factory, tmp_path, "--listen", "127.0.0.1:0")
    rc, stats, errors = run_sipp(
        sipp,
        [
            f"127.0.0.1:{port}",
            "-sn",
            "uac",
            "-t",
            transport,
            *extra,
            "-m",
            str(CALLS),
            "-r",
            str(RATE),
            "-rp",
            "1000",
            "-l",
            str(LIMIT),
        ],
        tmp_path,
    )
    check_all_successful(rc, stats, errors, CALLS)
    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"INVITE": CALLS, "ACK": CALLS, "BYE": CALLS}
    assert f"answered {2 * CALLS} with 200 OK, 0 failed to send" in stdout


def test_sipp_uac_invite_bye_tls(listen_factory: list[Listen], tmp_path: Path) -> None:
    sipp = require_sipp()
    if not _sipp_has_tls(sipp, tmp_path):
        pytest.skip("this sipp build has no TLS (-t l1 needs sipp compiled with OpenSSL)")
    certs = write_certs(tmp_path)
    require_tls(certs)
    srv, port = listen_summary_only(
        listen_factory, tmp_path, "--listen", "tls:127.0.0.1:0", "--tls-cert", str(certs["server"])
    )
    calls = CALLS // 2
    rc, stats, errors = run_sipp(
        sipp,
        [
            f"127.0.0.1:{port}",
            "-sn",
            "uac",
            "-t",
            "l1",
            "-m",
            str(calls),
            "-r",
            str(RATE // 2),
            "-l",
            str(LIMIT),
            "-tls_cert",
            str(certs["client"]),
            "-tls_key",
            str(certs["client"]),
        ],
        tmp_path,
    )
    check_all_successful(rc, stats, errors, calls)
    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"INVITE": calls, "ACK": calls, "BYE": calls}


# ------------------------------------------------- sipp as server (UAS)


def _free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 right now."""
    sets = cli.open_listen_sockets(cli.parse_listen_spec("127.0.0.1:0"))
    for _, sock in sets[0]:
        sock.close()
    return sets[0][0][0].port


def _start_uas(
    sipp: str, transport: str, cwd: Path, *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    """sipp's uas on a free port; returns once its socket is bound (seen via psutil)."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sipp,
            "-sn",
            "uas",
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-nostdin",
            "-timeout",
            f"{SIPP_TIMEOUT}s",
            *args,
        ],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kind = "udp" if transport.startswith("u") else "tcp"
    deadline = time.monotonic() + SIPP_WAIT
    while True:
        try:
            conns = psutil.Process(proc.pid).net_connections(kind=kind)
        except psutil.NoSuchProcess:
            conns = []
        if any(c.laddr and c.laddr.port == port for c in conns):
            return proc, port
        if proc.poll() is not None or time.monotonic() > deadline:
            _, err = proc.communicate(timeout=SIPP_WAIT)
            raise AssertionError(f"sipp uas did not start: {err!r}")
        time.sleep(0.02)  # waiting for another program to bind: nothing to drive


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=SIPP_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(("transport", "proto"), [("u1", "udp"), ("t1", "tcp")])
def test_netsip_bench_calls_sipp_uas(
    transport: str, proto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`netsip bench -m INVITE` makes whole calls to sipp's uas; both sides count no failure."""
    sipp = require_sipp()
    calls = 500
    stf = tmp_path / "uas.csv"
    proc, port = _start_uas(
        sipp, transport, tmp_path, "-m", str(calls), "-trace_stat", "-stf", str(stf)
    )
    try:
        status, out, err = run(
            [
                "bench",
                f"sip:127.0.0.1:{port}",
                "-t",
                proto,
                "-m",
                "INVITE",
                "-n",
                str(calls),
                "-c",
                "20",
                "--json",
            ],
            capsys,
        )
        assert status == 0, (out, err)
        res = json.loads(out)
        assert res["completed"] == calls and res["failed"] == 0, res
        assert proc.wait(timeout=SIPP_WAIT) == 0  # sipp: every call successful
        stats = sipp_stats(stf)
        assert stats["SuccessfulCall(C)"] == str(calls) and stats["FailedCall(C)"] == "0"
    finally:
        _stop(proc)


@pytest.mark.parametrize(("transport", "proto"), [("u1", "udp"), ("t1", "tcp")])
def test_netsip_options_and_bench_against_sipp_uas(
    transport: str, proto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`netsip options` and `netsip bench` (OPTIONS) get 200s from sipp (``-aa`` answers them)."""
    sipp = require_sipp()
    proc, port = _start_uas(sipp, transport, tmp_path, "-aa")
    try:
        uri = f"sip:127.0.0.1:{port}"
        status, out, _ = run(["options", uri, "-t", proto, "-n", "5", "-i", "0.01"], capsys)
        assert status == 0, out
        assert "5 requests sent, 5 responses received, 5 ok, 0% loss" in out, out
        assert out.count(f"200 OK from {proto}:127.0.0.1:{port}: seq=") == 5
        status, out, _ = run(["bench", uri, "-t", proto, "-n", "300", "-c", "10", "--json"], capsys)
        assert status == 0, out
        res = json.loads(out)
        assert res["completed"] == 300 and res["failed"] == 0, res
    finally:
        _stop(proc)
