"""Smoke test of benchmarks/bench_servers.py: every server it loads answers every operation.

Not a benchmark (no figure is checked): a few registrations with digest
against ``netsip proxy --users`` and ``benchmarks/perl/servers.pl register``,
and a few calls through ``netsip proxy``, Perl's StatelessProxy
(``servers.pl proxy``) and Kamailio with ``benchmarks/kamailio_forward.cfg``,
each driven by sipp as the benchmark does it. A broken scenario, script or
config shows here as failed operations instead of in a 2-minute run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_servers
from tests.support import require_kamailio, require_perl_netsip, require_sipp

pytestmark = pytest.mark.interop


def test_register_with_digest_netsip_and_perl(tmp_path: Path) -> None:
    require_sipp()
    require_perl_netsip()
    log: list[str] = []
    rows = bench_servers.register_section(
        ["netsip", "perl"], 40, 3, 5, repeats=1, workdir=str(tmp_path), log=log
    )
    assert [r.server for r in rows] == ["netsip", "perl"]
    assert [(r.ok, r.failed, r.aors) for r in rows] == [(40, 0, 3), (10, 0, 3)], log
    assert all(r.cpu_us_per_op for r in rows), rows  # the server's CPU was read


def test_proxying_netsip_perl_kamailio(tmp_path: Path) -> None:
    require_sipp()
    require_perl_netsip()
    require_kamailio()
    log: list[str] = []
    rows = bench_servers.proxy_section(
        ["netsip", "perl", "kamailio"], 20, 5, repeats=1, workdir=str(tmp_path), log=log
    )
    assert [(r.server, r.ok, r.failed) for r in rows] == [
        ("netsip", 20, 0),
        ("perl", 5, 0),
        ("kamailio", 20, 0),
    ], log
    assert all(r.cpu_us_per_op for r in rows), rows
