"""Tests for netsip.retransmit: RFC 3261 17.1 timer values and schedules (no I/O)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsip.retransmit import T1, T2, Action, RetransmitSchedule, retransmit_timers


def test_timer_values_by_packet_kind() -> None:
    # 17.1.1.2 Timer A: INVITE doubles without a cap
    assert retransmit_timers(True, "INVITE") == (T1, None)
    assert retransmit_timers(True, "invite") == (T1, None)
    # 17.1.2.2 Timer E: non-INVITE capped at T2
    assert retransmit_timers(True, "OPTIONS") == (T1, T2)
    assert retransmit_timers(True, "BYE") == (T1, T2)
    # ACK is never retransmitted by itself
    assert retransmit_timers(True, "ACK") is None
    # 17.2.1 Timer G / 13.3.1.4: final responses to INVITE, capped at T2
    assert retransmit_timers(False, "INVITE", 200) == (T1, T2)
    assert retransmit_timers(False, "INVITE", 486) == (T1, T2)
    # provisional responses and responses to non-INVITE are not retransmitted
    assert retransmit_timers(False, "INVITE", 180) is None
    assert retransmit_timers(False, "INVITE", 100) is None
    assert retransmit_timers(False, "OPTIONS", 200) is None
    assert retransmit_timers(False, "INVITE", None) is None
    assert retransmit_timers(True, "OPTIONS", t1=0.1, t2=1.0) == (0.1, 1.0)


def test_non_invite_schedule_times() -> None:
    s = RetransmitSchedule(start=100.0, t1=T1, cap=T2)
    assert s.expire == 100.0 + 64 * T1
    # intervals 0.5, 1, 2, 4, 4, 4, ... (Timer E), all before 64*T1 = 32 s
    assert [round(t - 100.0, 6) for t in s.times()] == [
        0.5,
        1.5,
        3.5,
        7.5,
        11.5,
        15.5,
        19.5,
        23.5,
        27.5,
        31.5,
    ]


def test_invite_schedule_times() -> None:
    s = RetransmitSchedule(start=0.0, t1=T1, cap=None)
    # Timer A: 0.5, 1, 2, 4, 8, 16 -> retransmissions at 0.5 .. 31.5, Timer B at 32
    assert s.times() == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert s.expire == 32.0


def test_due_walks_the_schedule_then_times_out() -> None:
    s = RetransmitSchedule(start=0.0, t1=T1, cap=T2)
    seen: list[float] = []
    for _ in range(100):
        when = s.next_time
        action = s.due(when)
        if action is Action.TIMEOUT:
            assert when == s.expire == 32.0
            break
        assert action is Action.RETRANSMIT
        seen.append(when)
    else:
        pytest.fail("schedule never timed out")
    assert seen == s.times()
    assert s.count == len(seen)


def test_due_before_time_waits() -> None:
    s = RetransmitSchedule(start=10.0)
    assert s.due(10.2) is Action.WAIT
    assert s.next_time == 10.5
    assert s.due(10.5) is Action.RETRANSMIT
    assert s.next_time == 11.5
    assert s.due(11.0) is Action.WAIT


def test_late_timer_skips_missed_retransmissions() -> None:
    s = RetransmitSchedule(start=0.0, cap=T2)
    # 0.5, 1.5 and 3.5 all passed: only one retransmission, schedule keeps its phase
    assert s.due(4.0) is Action.RETRANSMIT
    assert s.count == 1
    assert s.next_time == 7.5
    assert s.due(40.0) is Action.TIMEOUT


def test_rounding_slop_counts_as_due() -> None:
    s = RetransmitSchedule(start=0.1)
    assert s.due(s.next_time - 1e-9) is Action.RETRANSMIT


def test_custom_timeout_and_validation() -> None:
    s = RetransmitSchedule(start=0.0, t1=1.0, cap=None, timeout=5.0)
    assert s.times() == [1.0, 3.0]
    assert s.expire == 5.0
    with pytest.raises(ValueError):
        RetransmitSchedule(start=0.0, t1=0.0)
    with pytest.raises(ValueError):
        RetransmitSchedule(start=0.0, cap=-1.0)


@given(
    start=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    t1=st.sampled_from([0.05, 0.1, 0.5, 1.0]),
    capped=st.booleans(),
)
def test_schedule_properties(start: float, t1: float, capped: bool) -> None:
    cap = 8 * t1 if capped else None
    s = RetransmitSchedule(start=start, t1=t1, cap=cap)
    times = s.times()
    assert times, "at least one retransmission fits into 64*T1"
    assert all(t < s.expire for t in times)
    gaps = [b - a for a, b in itertools.pairwise([start, *times])]
    assert gaps[0] == pytest.approx(t1, abs=1e-5)
    for a, b in itertools.pairwise(gaps):
        # doubling, never above the cap (absolute tolerance: epoch-sized floats)
        want = min(2 * a, cap) if cap is not None else 2 * a
        assert b == pytest.approx(want, abs=1e-5)
