"""Smoke test of the user agent's media benchmark (benchmarks/bench_ua.py, ua_caller.py).

A short ramp of the benchmark's caller against netsip's
``examples/bench/listen.py`` (a real process on a loopback port): every call
is set up, its RTP echo comes back and is counted, every call is hung up.
Outcomes only; the figures (loss, delay, CPU) are the benchmark's business.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import bench_ua
from benchmarks.ua_caller import ramp


def test_ua_caller_ramp_sets_up_echoes_and_hangs_up(tmp_path: Path) -> None:
    with bench_ua.answerer("listen.py", str(tmp_path)) as (proc, addr):
        res = ramp(
            argparse.Namespace(
                target=f"{addr[0]}:{addr[1]}",
                pid=proc.pid,
                steps=[1, 5],
                measure=0.5,
                settle=0.2,
                grace=1.0,
                setup_rate=100.0,
                # (no limit that a loaded machine could hit: a step fails only
                # when its calls fail or nothing at all comes back)
                max_loss=100.0,
                max_delay=1e9,
                no_mmsg=False,
            )
        )
        assert proc.poll() is None  # the answerer survived the ramp
    assert [s["calls"] for s in res["steps"]] == [1, 5]
    for step in res["steps"]:
        assert step["setup_failed"] == 0
        assert 0 < step["received"] <= step["sent"]
        assert step["rtt_ms"]["mean"] > 0
    assert res["stopped"] == ""
    assert res["bye_unanswered"] == 0
