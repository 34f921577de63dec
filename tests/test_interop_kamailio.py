"""netsip behind Kamailio, a record-routing proxy (live-peer interop).

Kamailio (``tm`` + ``rr``: ``record_route(); t_relay();``) sits in front of a
``netsip listen`` that has only one transport. sipp calls through Kamailio
and sends its ACK and BYE along the route set to the remote target, the
Contact of netsip's 200 (``tests/sipp/uac_route_set.xml``). Kamailio then
forwards the in-dialog requests to that Contact: they reach netsip only if
the Contact says how (``;transport=tcp``; RFC 3261 19.1.4). Every call must
end with a 200 to its BYE.

Kamailio is started by the test on a free loopback port with the config in
``tests/kamailio/``, in the foreground, and stopped afterwards (its process
group: it forks workers). Skipped without ``kamailio`` unless
``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import (
    Listen,
    check_all_successful,
    listen_summary_only,
    require_kamailio,
    require_sipp,
    run_sipp,
    summary_counts,
)
from tests.support import run_cli as run

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
CALLS = 20
START_TIMEOUT = 15.0  # seconds for Kamailio to open its ports


def _free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP at the time of asking."""
    for _ in range(50):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
        ):
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no free port on 127.0.0.1")


class Kamailio:
    """A Kamailio process with a config from ``tests/kamailio/``."""

    def __init__(self, config: str, tmp: Path, netsip_uri: str) -> None:
        binary, mpath = require_kamailio()
        self.port = _free_port()
        text = (HERE / "kamailio" / config).read_text()
        text = text.replace("@KPORT@", str(self.port)).replace("@MPATH@", mpath)
        text = text.replace("@NETSIP@", netsip_uri)
        cfg = tmp / "kamailio.cfg"
        cfg.write_text(text)
        rundir = tmp / "kamailio-run"
        rundir.mkdir()
        self.log = tmp / "kamailio.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                # -DD: stay in the foreground (workers are still forked),
                # -E: log to stderr; small shared/private memory
                [binary, "-f", str(cfg), "-DD", "-E", "-m", "32", "-M", "8", "-Y", str(rundir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kamailio exited: {self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                # the process is starting: poll its port (no loop to drive here)
                time.sleep(0.05)
        raise AssertionError(f"kamailio did not listen: {self.log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # workers left behind by a crash of the main process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_calls_through_record_routing_kamailio(
    proto: str, listen_factory: list[Listen], tmp_path: Path
) -> None:
    """ACK and BYE reach a single-transport netsip through Kamailio's route set."""
    sipp = require_sipp()
    require_kamailio()
    srv, port = listen_summary_only(listen_factory, tmp_path, "--listen", f"{proto}:127.0.0.1:0")
    kam = Kamailio("record_route.cfg", tmp_path, f"sip:127.0.0.1:{port};transport={proto}")
    try:
        rc, stats, errors = run_sipp(
            sipp,
            [
                f"127.0.0.1:{kam.port}",
                "-sf",
                str(HERE / "sipp" / "uac_route_set.xml"),
                "-t",
                "t1" if proto == "tcp" else "u1",
                "-m",
                str(CALLS),
                "-r",
                "20",
                "-l",
                "10",
            ],
            tmp_path,
        )
        check_all_successful(rc, stats, errors + kam.log.read_text()[-2000:], CALLS)
    finally:
        kam.close()
    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"INVITE": CALLS, "ACK": CALLS, "BYE": CALLS}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_netsip_calls_through_record_routing_kamailio(
    proto: str, listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``netsip send`` and ``bench -m INVITE`` send ACK and BYE along the route set.

    Through a record-routing proxy the in-dialog requests must carry the
    Route of the reversed Record-Route and the Contact as Request-URI
    (RFC 3261 12.2.1.1); sent to the first hop without Route, Kamailio
    answers the BYE with 404 and drops the ACK, so the UAS retransmits its 200.
    """
    require_kamailio()
    srv, port = listen_summary_only(listen_factory, tmp_path, "--listen", f"{proto}:127.0.0.1:0")
    kam = Kamailio("record_route.cfg", tmp_path, f"sip:127.0.0.1:{port};transport={proto}")
    calls = 20
    try:
        uri = f"sip:svc@127.0.0.1:{kam.port};transport={proto}"
        status, out, _ = run(["send", uri, "-m", "INVITE", "--timeout", "10"], capsys)
        assert status == 0, out
        assert "\nCSeq: 2 BYE" in out, out
        status, out, _ = run(
            ["bench", uri, "-m", "INVITE", "-n", str(calls), "-c", "4", "--json"], capsys
        )
        assert status == 0, out
        res = json.loads(out)
        assert (res["completed"], res["failed"]) == (calls, 0), res
    finally:
        kam.close()
    stdout = srv.stop()
    assert srv.returncode == 0
    n = calls + 1
    assert summary_counts(stdout) == {"INVITE": n, "ACK": n, "BYE": n}
