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

import json
from pathlib import Path

import pytest

from tests.support import (
    Kamailio,
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
