"""Smoke test of benchmarks/bench_ws.py: its load generator, responders and idle clients work.

Not a benchmark (no figure is checked): a few hundred OPTIONS per responder
and transport, and a few idle WebSocket connections, so that a broken
generator or responder shows here instead of in a minute-long run.
"""

from __future__ import annotations

from benchmarks import bench_ws


def test_cpu_section_runs() -> None:
    log: list[str] = []
    rows = bench_ws.measure_cpu(300, 10, 1, log)
    assert [(r["responder"], r["proto"]) for r in rows] == [
        ("pool", "tcp"),
        ("pool", "ws"),
        ("dispatcher", "tcp"),
        ("dispatcher", "ws"),
    ]
    assert all(r["failed"] == 0 and r["cpu_us_per_tx"] > 0 for r in rows), log
    assert rows[0]["ratio_to_tcp"] == 1.0


def test_idle_section_runs() -> None:
    log: list[str] = []
    res = bench_ws.measure_idle(50, log)
    assert res["conns"] == 50, log
    assert res["rss_after"] > 0 and res["rss_before"] > 0
    lines = bench_ws.report([], res, "x", calls=1, conc=1, repeats=1)
    assert any("50 idle WebSocket connections" in line for line in lines)
