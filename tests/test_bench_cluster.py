"""Smoke test of benchmarks/bench_cluster.py: its sections run and report (no timing asserted).

A tiny register run on real Redis with two ``netsip proxy`` workers and the
memory store, and a tiny proxy run through ``netsip proxy``: every
registration and call is answered, and the report gives both sides of every
figure it compares. The figures themselves are the benchmark's business.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from benchmarks import bench_cluster
from tests.support import require_redis, require_sipp


def test_quick_sections_answer_everything_and_report(tmp_path: Path) -> None:
    require_sipp()
    require_redis()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = bench_cluster.main([
            "--quick", "--proxies", "stateless", "--calls", "100", "--registrations", "150",
            "--workers", "2", "--repeats", "1", "--out", str(tmp_path),
        ])  # fmt: skip
    assert rc == 0, out.getvalue()[-2000:]
    res = json.loads((tmp_path / "performance-cluster.json").read_text())
    (proxy,) = res["proxy"]
    assert (proxy["proxy"], proxy["ok"], proxy["failed"]) == ("stateless", 100, 0)
    assert proxy["cpu_us_per_call"] > 0
    regs = {r["config"]: r for r in res["register"]}
    assert set(regs) == {"memory", "redis-2"}
    for r in regs.values():
        assert (r["ok"], r["failed"]) == (150, 0)
        assert r["reg_per_s"] > 0
    # both workers served (SO_REUSEPORT spread sipp's sockets over them)
    split = regs["redis-2"]["requests_per_worker"]
    assert len(split) == 2
    assert all(n > 0 for n in split)
    assert regs["redis-2"]["redis_us"] > 0
    page = (tmp_path / "performance-cluster.md").read_text()
    assert "| redis, 2 |" in page
    assert "| memory, 1 |" in page
    assert "`netsip proxy`" in page
