"""Tests for netsip.eventloop (port of Net::SIP::Dispatcher::Eventloop).

Timing-dependent behaviour is driven with a fake clock and ``loop(0)`` (one
poll, no real waiting); only the tests about real waiting (``loop(t)``, EINTR,
idle stop variables) use the real clock, with small bounded times.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import resource
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsip._native import compiled_modules
from netsip.eventloop import (
    EV_READ,
    EV_WRITE,
    MIN_REPEAT,
    RELATIVE_LIMIT,
    EventLoop,
    EventLoopLike,
    TimerEvent,
)
from netsip.util import Var
from tests.support import FakeClock, open_fds

EPOCH = 1_700_000_000.0


SELECTORS: list[Callable[[], selectors.BaseSelector]] = [
    getattr(selectors, name)
    for name in ("EpollSelector", "PollSelector", "SelectSelector")
    if hasattr(selectors, name)
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(EPOCH)


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    with EventLoop(clock=clock) as ev:
        yield ev


@contextlib.contextmanager
def socketpairs(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(n):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            pairs.append((a, b))
        yield pairs
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@contextlib.contextmanager
def fd_limit(needed: int) -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (within the hard limit), then restore."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def recorder(log: list[Any], tag: object) -> Callable[[Any], None]:
    def cb(arg: Any) -> None:
        log.append((tag, arg))

    return cb


# --------------------------------------------------------------------------- basics


def test_constants_and_protocol(loop: EventLoop) -> None:
    assert (EV_READ, EV_WRITE) == (0, 1)
    assert RELATIVE_LIMIT == 3600 * 24 * 365
    ev: EventLoopLike = loop  # EventLoop satisfies the protocol (checked by mypy)
    assert ev.looptime == EPOCH


def test_looptime_set_at_construction_and_after_select(loop: EventLoop, clock: FakeClock) -> None:
    assert loop.looptime == EPOCH
    clock.advance(2.5)
    assert loop.looptime == EPOCH  # only the loop moves it
    loop.loop(0)
    assert loop.looptime == EPOCH + 2.5


def test_bad_arguments(loop: EventLoop) -> None:
    with socketpairs(1) as [(a, _b)]:
        with pytest.raises(ValueError):
            loop.add_fd(a, 2, print)
        with pytest.raises(ValueError):
            loop.del_fd(a, 5)
        with pytest.raises(TypeError):
            loop.add_fd("x", EV_READ, print)  # type: ignore[arg-type]  # misuse on purpose
    with pytest.raises(ValueError):
        loop.add_timer(float("nan"), print)
    with pytest.raises(ValueError):
        loop.add_timer(1, print, repeat=-1)
    with pytest.raises(TypeError):
        loop.loop(0, 42)  # type: ignore[arg-type]  # misuse on purpose


def _refused_as(value: float, what: str) -> tuple[type[Exception], str]:
    """The exception and message ``add_timer`` refuses ``value`` with.

    ValueError; but the compiled build converts a ``float`` argument on the
    way in, and an int too large for a float is a TypeError there.
    """
    if isinstance(value, int) and "eventloop" in compiled_modules():
        return TypeError, "float object expected"
    return ValueError, what


@pytest.mark.parametrize("when", [10**400, float("inf"), -float("inf"), float("nan")])
def test_add_timer_refuses_a_time_that_is_not_finite(loop: EventLoop, when: float) -> None:
    exc, match = _refused_as(when, "finite")
    with pytest.raises(exc, match=match):
        loop.add_timer(when, print)
    assert loop.timer_count() == 0


@pytest.mark.parametrize("repeat", [5e-324, 1e-300, 0.0009, -1, float("inf"), 10**400])
def test_add_timer_refuses_a_busy_or_broken_repeat(loop: EventLoop, repeat: float) -> None:
    """A repeat below MIN_REPEAT would spin the loop; a subnormal one overflowed in loop()."""
    exc, match = _refused_as(repeat, "repeat") if repeat == 10**400 else (ValueError, "repeat")
    with pytest.raises(exc, match=match):
        loop.add_timer(1, print, repeat=repeat)
    assert loop.timer_count() == 0


def test_repeat_changed_later_is_checked_too(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[float] = []
    t = loop.add_timer(1, lambda timer: fired.append(loop.looptime), repeat=1)
    with pytest.raises(ValueError, match="repeat"):
        t.repeat = 1e-300
    t.repeat = MIN_REPEAT  # the smallest one allowed works
    assert t.repeat == MIN_REPEAT
    t.repeat = 0  # as in add_timer: once
    assert t.repeat is None
    clock.advance(5)
    loop.loop(0)
    loop.loop(0)
    assert fired == [EPOCH + 5]


def test_repr(loop: EventLoop) -> None:
    t = loop.add_timer(1, print, repeat=2, name="tick")
    assert "fds=0" in repr(loop) and "timers=1" in repr(loop)
    assert "tick" in repr(t) and "repeat=2" in repr(t)
    t.cancel()
    assert "cancelled" in repr(t)
    loop.close()
    assert "closed" in repr(loop)


# --------------------------------------------------------------------------- timers


def test_timers_fire_in_deadline_order(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    for delay in (3, 1, 2):
        loop.add_timer(delay, recorder(fired, delay))
    loop.loop(0)
    assert fired == []
    clock.advance(1.5)
    loop.loop(0)
    assert [tag for tag, _ in fired] == [1]
    clock.advance(10)
    loop.loop(0)
    assert [tag for tag, _ in fired] == [1, 2, 3]
    assert loop.timer_count() == 0


def test_equal_deadlines_fire_in_insertion_order(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    for i in range(50):
        loop.add_timer(5, recorder(fired, i))
    clock.advance(5)
    loop.loop(0)
    assert [tag for tag, _ in fired] == list(range(50))


def test_timer_callback_gets_timer_event(loop: EventLoop, clock: FakeClock) -> None:
    got: list[Any] = []
    t1 = loop.add_timer(0, recorder(got, "plain"))
    t2 = loop.add_timer(0, (lambda tag, timer: got.append((tag, timer)), "bound"))
    var: Var[TimerEvent] = Var()
    t3 = loop.add_timer(0, var)
    loop.loop(0)
    assert got == [("plain", t1), ("bound", t2)]
    assert var.value is t3
    assert isinstance(t1, TimerEvent)
    assert t1.when == EPOCH and t1.repeat is None and not t1.cancelled


def test_relative_and_absolute_when(loop: EventLoop, clock: FakeClock) -> None:
    rel = loop.add_timer(10, print)
    absolute = loop.add_timer(EPOCH + 20, print)
    just_below = loop.add_timer(RELATIVE_LIMIT - 1, print)
    at_limit = loop.add_timer(RELATIVE_LIMIT, print)
    past = loop.add_timer(-3, print)
    assert rel.when == EPOCH + 10
    assert absolute.when == EPOCH + 20
    assert just_below.when == EPOCH + RELATIVE_LIMIT - 1
    assert at_limit.when == RELATIVE_LIMIT  # absolute: far in the past, due now
    assert past.when == EPOCH - 3


def test_relative_when_is_relative_to_looptime(loop: EventLoop, clock: FakeClock) -> None:
    clock.advance(100)  # looptime does not move until the loop runs
    assert loop.add_timer(1, print).when == EPOCH + 1
    loop.loop(0)
    assert loop.add_timer(1, print).when == EPOCH + 101


def test_past_absolute_timer_fires_at_once(loop: EventLoop) -> None:
    fired: list[Any] = []
    loop.add_timer(EPOCH - 1000, recorder(fired, "old"))
    loop.loop(0)
    assert [tag for tag, _ in fired] == ["old"]


def test_repeat_rearms_without_drift(loop: EventLoop, clock: FakeClock) -> None:
    times: list[float] = []
    t = loop.add_timer(1, lambda timer: times.append(loop.looptime), repeat=1)
    clock.advance(1.25)  # fires late: the next run stays on the grid
    loop.loop(0)
    assert times == [EPOCH + 1.25]
    assert t.when == EPOCH + 2
    clock.advance(0.75)
    loop.loop(0)
    assert t.when == EPOCH + 3
    assert len(times) == 2
    loop.loop(0)  # not due again yet
    assert len(times) == 2


def test_repeat_far_behind_skips_missed_runs(loop: EventLoop, clock: FakeClock) -> None:
    count = 0

    def cb(timer: TimerEvent) -> None:
        nonlocal count
        count += 1

    t = loop.add_timer(1, cb, repeat=1)
    clock.advance(10.5)  # 10 runs missed
    loop.loop(0)
    assert count == 1  # no burst
    assert t.when == EPOCH + 11  # phase kept, next slot after now
    loop.loop(0)
    assert count == 1
    clock.advance(0.5)
    loop.loop(0)
    assert count == 2


def test_repeat_zero_means_once(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    t = loop.add_timer(1, recorder(fired, 0), repeat=0)
    assert t.repeat is None
    clock.advance(5)
    loop.loop(0)
    clock.advance(5)
    loop.loop(0)
    assert len(fired) == 1


def test_repeat_can_be_changed_from_callback(loop: EventLoop, clock: FakeClock) -> None:
    def cb(timer: TimerEvent) -> None:
        timer.repeat = None

    t = loop.add_timer(1, cb, repeat=1)
    clock.advance(1)
    loop.loop(0)
    assert loop.timer_count() == 0
    assert not t.cancelled


def test_cancel_before_due(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    t = loop.add_timer(1, recorder(fired, "x"))
    keep = loop.add_timer(1, recorder(fired, "keep"))
    assert loop.timer_count() == 2
    t.cancel()
    t.cancel()  # idempotent
    assert t.cancelled and t.callback is None
    assert loop.timer_count() == 1
    clock.advance(2)
    loop.loop(0)
    assert fired == [("keep", keep)]
    assert loop.timer_count() == 0
    assert loop._heap == []  # the cancelled entry was dropped lazily


def test_cancel_from_own_callback_stops_repeat(loop: EventLoop, clock: FakeClock) -> None:
    count = 0

    def cb(timer: TimerEvent) -> None:
        nonlocal count
        count += 1
        if count == 3:
            timer.cancel()

    loop.add_timer(1, cb, repeat=1)
    for _ in range(10):
        clock.advance(1)
        loop.loop(0)
    assert count == 3
    assert loop.timer_count() == 0
    assert loop._heap == []


def test_cancel_other_due_timer_from_callback(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    victims: list[TimerEvent] = []

    def killer(timer: TimerEvent) -> None:
        fired.append("killer")
        victims[0].cancel()

    loop.add_timer(1, killer)
    victims.append(loop.add_timer(1, recorder(fired, "victim")))
    clock.advance(1)
    loop.loop(0)
    assert fired == ["killer"]


def test_timer_added_by_timer_fires_next_cycle(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[str] = []

    def first(timer: TimerEvent) -> None:
        fired.append("first")
        loop.add_timer(0, lambda t: fired.append("second"))

    loop.add_timer(0, first)
    loop.loop(0)
    assert fired == ["first"]  # a timer cannot starve the fds by re-adding itself
    loop.loop(0)
    assert fired == ["first", "second"]


def test_heap_compaction(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    timers = [loop.add_timer(1 + i / 1000, recorder(fired, i)) for i in range(1000)]
    assert len(loop._heap) == 1000
    for t in timers[:600]:
        t.cancel()
    assert loop.timer_count() == 400
    assert len(loop._heap) < 1000  # rebuilt once more than half was cancelled
    assert len(loop._heap) <= 500
    clock.advance(10)
    loop.loop(0)
    assert [tag for tag, _ in fired] == list(range(600, 1000))
    assert loop._heap == [] and loop.timer_count() == 0


def test_ten_thousand_timers_fire_in_order(loop: EventLoop, clock: FakeClock) -> None:
    rng = random.Random(4711)
    fired: list[int] = []
    delays = [rng.randrange(0, 2000) / 100 for _ in range(10_000)]  # many equal deadlines
    for i, d in enumerate(delays):
        loop.add_timer(d, (lambda idx, timer: fired.append(idx), i))
    # advance in steps, so timers fire across several cycles
    for _ in range(25):
        clock.advance(1)
        loop.loop(0)
    expected = sorted(range(10_000), key=lambda i: (delays[i], i))
    assert fired == expected
    assert loop.timer_count() == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 20)),
            st.tuples(st.just("cancel"), st.integers(0, 1000)),
            st.tuples(st.just("advance"), st.integers(0, 10)),
        ),
        max_size=60,
    )
)
def test_timers_match_model(ops: list[tuple[str, int]]) -> None:
    """Random add/cancel/advance sequences fire like a sorted-list model."""
    clock = FakeClock(EPOCH)
    fired: list[int] = []
    timers: list[TimerEvent] = []
    model: dict[int, float] = {}  # timer index -> due time, live timers only
    expected: list[int] = []
    with EventLoop(clock=clock) as ev:
        for op, arg in ops:
            if op == "add":
                idx = len(timers)
                timers.append(ev.add_timer(arg, (lambda i, timer: fired.append(i), idx)))
                model[idx] = ev.looptime + arg
            elif op == "cancel" and timers:
                idx = arg % len(timers)
                timers[idx].cancel()
                model.pop(idx, None)
            elif op == "advance":
                clock.advance(arg)
                ev.loop(0)
                due = sorted((w, i) for i, w in model.items() if w <= ev.looptime)
                expected.extend(i for _, i in due)
                for _, i in due:
                    del model[i]
            assert ev.timer_count() == len(model)
        assert fired == expected


# --------------------------------------------------------------------------- fds


@pytest.mark.parametrize("sel", SELECTORS, ids=lambda s: getattr(s, "__name__", "?"))
def test_read_callback_gets_fd_as_given(
    clock: FakeClock, sel: Callable[[], selectors.BaseSelector]
) -> None:
    got: list[Any] = []
    with EventLoop(clock=clock, selector=sel) as ev, socketpairs(2) as [(a, b), (c, d)]:
        ev.add_fd(b, EV_READ, recorder(got, "obj"), "b")
        ev.add_fd(d.fileno(), EV_READ, recorder(got, "int"), "d")
        ev.loop(0)
        assert got == []
        a.send(b"x")
        c.send(b"y")
        ev.loop(0)
        assert sorted(got, key=lambda x: str(x[0])) == [("int", d.fileno()), ("obj", b)]
        assert got[0][1] is b or got[1][1] is b  # the very object, not a copy
        ev.del_fd(b)
        ev.del_fd(d.fileno())
        assert ev.fd_count() == 0


@pytest.mark.parametrize("sel", SELECTORS, ids=lambda s: getattr(s, "__name__", "?"))
def test_level_triggered(clock: FakeClock, sel: Callable[[], selectors.BaseSelector]) -> None:
    calls = 0

    def cb(s: socket.socket) -> None:
        nonlocal calls
        calls += 1

    with EventLoop(clock=clock, selector=sel) as ev, socketpairs(1) as [(a, b)]:
        ev.add_fd(b, EV_READ, cb)
        a.send(b"data")
        ev.loop(0)
        ev.loop(0)  # not read: reported again
        assert calls == 2
        assert b.recv(100) == b"data"
        ev.loop(0)
        assert calls == 2


def test_write_callback_and_one_registration(loop: EventLoop) -> None:
    got: list[str] = []
    with socketpairs(1) as [(a, b)]:
        loop.add_fd(a, EV_READ, lambda s: got.append("r"))
        loop.add_fd(a, EV_WRITE, lambda s: got.append("w"))
        assert loop.fd_count() == 1
        sel = loop._selector
        assert sel is not None
        assert len(sel.get_map()) == 1
        assert sel.get_key(a.fileno()).events == selectors.EVENT_READ | selectors.EVENT_WRITE
        loop.loop(0)
        assert got == ["w"]  # writable, nothing to read
        b.send(b"x")
        loop.loop(0)
        assert sorted(got[1:]) == ["r", "w"]
        loop.del_fd(a, EV_WRITE)
        assert sel.get_key(a.fileno()).events == selectors.EVENT_READ
        got.clear()
        loop.loop(0)
        assert got == ["r"]
        loop.del_fd(a, EV_READ)
        assert loop.fd_count() == 0 and len(sel.get_map()) == 0
        loop.del_fd(a)  # unknown: ignored
        loop.del_fd(a, EV_READ)


def test_replace_callback(loop: EventLoop) -> None:
    got: list[str] = []
    with socketpairs(1) as [(a, b)]:
        loop.add_fd(b, EV_READ, lambda s: got.append("old"))
        loop.add_fd(b, EV_READ, lambda s: got.append("new"), "new")
        assert loop.fd_count() == 1
        a.send(b"x")
        loop.loop(0)
        assert got == ["new"]
        loop.del_fd(b)


def test_replace_callback_during_dispatch_uses_new(loop: EventLoop) -> None:
    # As in Perl (which looks the callback up at dispatch): replacing without
    # removing hands an already reported event to the new callback.
    got: list[str] = []
    with socketpairs(2) as [(a, b), (c, d)]:

        def first(s: socket.socket) -> None:
            got.append("first")
            other = d if s is b else b
            loop.add_fd(other, EV_READ, lambda s: got.append("replaced"))

        loop.add_fd(b, EV_READ, first)
        loop.add_fd(d, EV_READ, first)
        a.send(b"x")
        c.send(b"x")
        loop.loop(0)
        assert got == ["first", "replaced"]
        loop.reset()


def test_del_fd_of_other_ready_fd_during_dispatch(loop: EventLoop) -> None:
    called: list[socket.socket] = []
    with socketpairs(2) as [(a, b), (c, d)]:

        def cb(s: socket.socket) -> None:
            called.append(s)
            loop.del_fd(d if s is b else b)

        loop.add_fd(b, EV_READ, cb)
        loop.add_fd(d, EV_READ, cb)
        a.send(b"x")
        c.send(b"x")
        loop.loop(0)
        assert len(called) == 1  # the other one was ready too, but dropped
        loop.loop(0)
        assert len(called) == 2  # the survivor is level-triggered
        assert loop.fd_count() == 1
        loop.reset()


def test_del_and_readd_during_dispatch_is_not_called(loop: EventLoop) -> None:
    """A handler removed in this cycle is never called, even if re-added at once."""
    got: list[str] = []
    readded: list[int] = []
    with socketpairs(2) as [(a, b), (c, d)]:

        def cb(s: socket.socket) -> None:
            got.append("cb")
            if len(got) > 1:
                return
            other = d if s is b else b
            loop.del_fd(other)
            readded.append(other.fileno())
            # re-added with a different object for the same fd number
            loop.add_fd(other.fileno(), EV_READ, lambda fd: got.append(f"new {fd}"))

        loop.add_fd(b, EV_READ, cb)
        loop.add_fd(d, EV_READ, cb)
        a.send(b"x")
        c.send(b"x")
        loop.loop(0)
        assert got == ["cb"]
        loop.loop(0)  # the re-added handler fires in the next cycle
        assert sorted(got[1:]) == ["cb", f"new {readded[0]}"]
        loop.reset()


def test_del_one_direction_of_ready_fd_during_dispatch(loop: EventLoop) -> None:
    got: list[str] = []
    with socketpairs(1) as [(a, b)]:
        a.send(b"x")

        def on_read(s: socket.socket) -> None:
            got.append("r")
            loop.del_fd(b, EV_WRITE)

        def on_write(s: socket.socket) -> None:
            got.append("w")
            loop.del_fd(b, EV_READ)

        loop.add_fd(b, EV_READ, on_read)
        loop.add_fd(b, EV_WRITE, on_write)
        loop.loop(0)
        assert got in (["r"], ["w"])
        loop.reset()


def test_add_closed_fd_is_ignored(loop: EventLoop, caplog: pytest.LogCaptureFixture) -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()
    with caplog.at_level(logging.WARNING, logger="netsip.eventloop"):
        loop.add_fd(a, EV_READ, print)
    assert loop.fd_count() == 0
    assert "closed" in caplog.text


def test_del_fd_after_close_finds_socket_by_identity(loop: EventLoop) -> None:
    a, b = socket.socketpair()
    try:
        loop.add_fd(b, EV_READ, print)
        loop.add_fd(b, EV_WRITE, print)
    finally:
        a.close()
        b.close()  # wrong order, but it happens: fileno() is -1 now
    loop.del_fd(b)
    assert loop.fd_count() == 0
    sel = loop._selector
    assert sel is not None and len(sel.get_map()) == 0


@pytest.mark.parametrize("sel", SELECTORS, ids=lambda s: getattr(s, "__name__", "?"))
def test_fd_number_reused_after_close_without_del(
    clock: FakeClock, sel: Callable[[], selectors.BaseSelector]
) -> None:
    """Closing a watched socket without del_fd, then watching a new socket that got
    the same number: the new one must be watched (epoll forgot the old one)."""
    got: list[Any] = []
    with EventLoop(clock=clock, selector=sel) as ev:
        a, b = socket.socketpair()
        ev.add_fd(b, EV_READ, recorder(got, "old"))
        number = b.fileno()
        a.close()
        b.close()  # no del_fd
        with socketpairs(1) as [(c, d)]:
            reader = d if d.fileno() == number else c if c.fileno() == number else None
            if reader is None:
                pytest.skip("the fd number was not reused")
            writer = c if reader is d else d
            ev.add_fd(reader, EV_READ, recorder(got, "new"))
            writer.send(b"x")
            ev.loop(0)
            assert got == [("new", reader)]
            ev.del_fd(reader)


def test_select_ebadf_drops_closed_fd(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """select(2) fails with EBADF on a closed fd: the loop drops it and goes on."""
    got: list[str] = []
    with (
        EventLoop(clock=clock, selector=selectors.SelectSelector) as ev,
        socketpairs(1) as [(c, d)],
    ):
        a, b = socket.socketpair()
        ev.add_fd(b, EV_READ, lambda s: got.append("closed"))
        ev.add_fd(d, EV_READ, lambda s: got.append("alive"))
        number = b.fileno()
        a.close()
        b.close()  # no del_fd
        with caplog.at_level(logging.WARNING, logger="netsip.eventloop"):
            ev.loop(0)
        assert f"fd={number}" in caplog.text
        assert ev.fd_count() == 1
        c.send(b"x")
        ev.loop(0)
        assert got == ["alive"]
        ev.del_fd(d)


def test_select_error_other_than_ebadf_propagates(clock: FakeClock) -> None:
    class Broken(selectors.SelectSelector):
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            raise OSError(errno.EIO, "boom")

    with EventLoop(clock=clock, selector=Broken) as ev, pytest.raises(OSError, match="boom"):
        ev.loop(0)


def test_thousand_socketpairs() -> None:
    n = 1000
    base = open_fds()
    with fd_limit(base + 2 * n + 64), EventLoop() as ev, socketpairs(n) as pairs:
        received: dict[int, bytes] = {}

        def on_read(s: socket.socket, idx: int) -> None:
            received[idx] = s.recv(100)
            ev.del_fd(s)

        for idx, (_a, b) in enumerate(pairs):
            ev.add_fd(b, EV_READ, (lambda i, s: on_read(s, i), idx))
        assert ev.fd_count() == n
        for idx, (a, _b) in enumerate(pairs):
            a.send(str(idx).encode())
        for _ in range(100):  # bounded; normally done in one cycle
            ev.loop(0)
            if len(received) == n:
                break
        assert received == {i: str(i).encode() for i in range(n)}
        assert ev.fd_count() == 0
    assert open_fds() == base


# --------------------------------------------------------------------------- loop()


def test_loop_zero_polls_once(loop: EventLoop) -> None:
    calls = 0

    def cb(s: socket.socket) -> None:
        nonlocal calls
        calls += 1

    with socketpairs(1) as [(a, _b)]:
        loop.add_fd(a, EV_WRITE, cb)  # always ready
        loop.loop(0)
        assert calls == 1
        loop.loop(-1)  # negative: like 0
        assert calls == 2
        loop.del_fd(a)


def test_loop_timeout_real_clock() -> None:
    fired: list[Any] = []
    with EventLoop() as ev:
        ev.add_timer(0.01, recorder(fired, "t"))
        start = time.monotonic()
        ev.loop(0.1)
        elapsed = time.monotonic() - start
    assert [tag for tag, _ in fired] == ["t"]
    assert elapsed < 0.1 + 2  # loose: machines are noisy


def test_loop_timeout_with_fake_clock_returns_when_time_is_up(clock: FakeClock) -> None:
    cycles = 0

    def tick(s: socket.socket) -> None:
        nonlocal cycles
        cycles += 1
        clock.advance(1)  # time passes only when the (always ready) fd fires

    with EventLoop(clock=clock) as ev, socketpairs(1) as [(a, _b)]:
        ev.add_fd(a, EV_WRITE, tick)
        ev.loop(5)
        # select returns at EPOCH, EPOCH+1, ... EPOCH+5 (the callback moves time)
        assert cycles == 6
        assert ev.looptime == EPOCH + 5
        ev.del_fd(a)


def test_stopvar_var(loop: EventLoop) -> None:
    stop: Var[bool] = Var()
    loop.add_timer(0, stop)  # invoke_callback sets the Var
    loop.loop(None, stop)
    assert stop


def test_stopvar_callable_set_by_fd_callback(loop: EventLoop) -> None:
    done: list[bytes] = []
    with socketpairs(1) as [(a, b)]:
        loop.add_fd(b, EV_READ, lambda s: done.append(s.recv(10)))
        a.send(b"hi")
        loop.loop(None, lambda: bool(done))
        assert done == [b"hi"]
        loop.del_fd(b)


def test_stopvar_set_by_timer_stops_before_select() -> None:
    """A stop variable set by a timer must not leave the loop blocked in select."""
    with EventLoop() as ev:
        stop: Var[bool] = Var()
        ev.add_timer(0, stop)
        ev.add_timer(30, lambda t: pytest.fail("loop blocked after stopvar was set"))
        start = time.monotonic()
        ev.loop(None, stop)
        assert time.monotonic() - start < 2


def test_stopvar_already_true_returns_at_once(loop: EventLoop) -> None:
    fired: list[Any] = []
    loop.add_timer(0, recorder(fired, "t"))
    loop.loop(None, Var(True))
    loop.loop(0, lambda: True)
    assert fired == []  # documented: nothing runs
    loop.loop(0, Var(False), lambda: False)
    assert len(fired) == 1


def test_idle_loop_does_not_spin() -> None:
    selects = 0

    class Counting(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            nonlocal selects
            selects += 1
            result: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
            return result

    with EventLoop(selector=Counting) as ev:
        ev.loop(0.3)  # nothing to do: one long select
        assert selects <= 3
        selects = 0
        deadline = time.monotonic() + 0.3
        ev.loop(None, lambda: time.monotonic() > deadline)  # only stop variables
        assert 1 <= selects <= 10


def test_reentrant_loop_from_callback(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[str] = []

    def outer(timer: TimerEvent) -> None:
        fired.append("outer")
        loop.loop(0)  # nested poll (Net::SIP::Simple does this)
        fired.append("outer done")

    loop.add_timer(0, outer)
    loop.add_timer(0, lambda t: fired.append("sibling"))
    loop.loop(0)
    assert fired == ["outer", "outer done", "sibling"]


# --------------------------------------------------------------------------- errors


class BoomError(Exception):
    """Raised by test callbacks."""


def test_timer_exception_propagates_and_loop_continues(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[str] = []

    def bad(timer: TimerEvent) -> None:
        fired.append("bad")
        raise BoomError

    loop.add_timer(1, lambda t: fired.append("before"))
    loop.add_timer(1, bad, repeat=1)
    loop.add_timer(1, lambda t: fired.append("after"))
    loop.add_timer(1.5, lambda t: fired.append("later"))
    clock.advance(1)
    with pytest.raises(BoomError):
        loop.loop(0)
    assert fired == ["before", "bad"]
    assert loop.timer_count() == 3  # "after", "later", and the re-armed "bad"
    loop.loop(0)
    assert fired == ["before", "bad", "after"]
    clock.advance(0.5)
    loop.loop(0)
    assert fired[-1] == "later"
    clock.advance(0.5)
    with pytest.raises(BoomError):
        loop.loop(0)  # the repeating timer survived its exception


def test_fd_exception_propagates_and_loop_continues(loop: EventLoop) -> None:
    calls = 0

    def bad(s: socket.socket) -> None:
        nonlocal calls
        calls += 1
        raise BoomError

    with socketpairs(1) as [(a, b)]:
        loop.add_fd(b, EV_READ, bad)
        a.send(b"x")
        with pytest.raises(BoomError):
            loop.loop(0)
        with pytest.raises(BoomError):
            loop.loop(0)  # still watched, still ready
        assert calls == 2
        loop.del_fd(b)
        loop.loop(0)
        assert calls == 2


@contextlib.contextmanager
def sigalrm(handler: Callable[[int, FrameType | None], None], interval: float) -> Iterator[None]:
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_eintr_does_not_break_the_loop() -> None:
    signals = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1

    fired: list[Any] = []
    with EventLoop() as ev, socketpairs(1) as [(_a, b)]:
        ev.add_fd(b, EV_READ, recorder(fired, "fd"))  # never ready
        ev.add_timer(0.3, recorder(fired, "timer"))
        with sigalrm(handler, 0.02):
            ev.loop(0.5)
        ev.del_fd(b)
    assert signals >= 2
    assert [tag for tag, _ in fired] == ["timer"]


def test_stopvar_set_by_signal_handler() -> None:
    stop: Var[bool] = Var()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.value = True

    with EventLoop() as ev:
        ev.add_timer(10, lambda t: pytest.fail("stop variable set by signal not noticed"))
        with sigalrm(handler, 0.05):
            start = time.monotonic()
            ev.loop(None, stop)
            assert time.monotonic() - start < 5


def test_signal_handler_exception_propagates_state_intact() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise BoomError

    fired: list[Any] = []
    with EventLoop() as ev:
        ev.add_timer(0.3, recorder(fired, "t"))
        with sigalrm(handler, 0.05), pytest.raises(BoomError):
            ev.loop(None)
        assert fired == [] and ev.timer_count() == 1
        ev.loop(None, lambda: bool(fired))
        assert [tag for tag, _ in fired] == ["t"]


# --------------------------------------------------------------------------- lifecycle


def test_reset(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[Any] = []
    with socketpairs(1) as [(a, b)]:
        loop.add_fd(b, EV_READ, recorder(fired, "fd"))
        t = loop.add_timer(1, recorder(fired, "t"), repeat=1)
        a.send(b"x")
        loop.reset()
        assert loop.fd_count() == 0 and loop.timer_count() == 0
        assert t.cancelled
        assert b.fileno() >= 0  # not closed
        clock.advance(5)
        loop.loop(0)
        assert fired == []
        loop.add_fd(b, EV_READ, recorder(fired, "again"))  # usable afterwards
        loop.loop(0)
        assert fired == [("again", b)]
        loop.del_fd(b)


def test_reset_from_callback_drops_rest_of_cycle(loop: EventLoop, clock: FakeClock) -> None:
    fired: list[str] = []
    with socketpairs(1) as [(a, b)]:
        a.send(b"x")
        loop.add_fd(b, EV_READ, lambda s: fired.append("fd"))

        def resetter(t: TimerEvent) -> None:
            fired.append("reset")
            loop.reset()

        loop.add_timer(1, resetter, repeat=1)
        t2 = loop.add_timer(1, lambda t: fired.append("t2"))
        clock.advance(1)
        loop.loop(0)
        assert fired == ["reset"]
        assert t2.cancelled
        assert loop.timer_count() == 0 and loop.fd_count() == 0


def test_close(clock: FakeClock) -> None:
    ev = EventLoop(clock=clock)
    with socketpairs(1) as [(a, _b)]:
        ev.add_fd(a, EV_READ, print)
        t = ev.add_timer(1, print)
        ev.close()
        ev.close()  # idempotent
        assert ev.closed and t.cancelled
        assert ev.fd_count() == 0 and ev.timer_count() == 0
        ev.del_fd(a)  # cleanup after close is harmless
        with pytest.raises(RuntimeError):
            ev.add_fd(a, EV_READ, print)
        with pytest.raises(RuntimeError):
            ev.add_timer(1, print)
        with pytest.raises(RuntimeError):
            ev.loop(0)


def test_close_from_callback_ends_loop(clock: FakeClock) -> None:
    with EventLoop(clock=clock) as ev:
        ev.add_timer(0, lambda t: ev.close())
        ev.loop(None)  # returns: nothing left to wait for
        assert ev.closed


def test_context_manager_releases_selector(clock: FakeClock) -> None:
    base = open_fds()
    with EventLoop(clock=clock) as ev:
        assert not ev.closed
    assert ev.closed
    assert open_fds() == base


@pytest.mark.skipif(not hasattr(selectors, "EpollSelector"), reason="no epoll")
def test_epoll_fast_path_reports_like_selectors(clock: FakeClock) -> None:
    """The default loop polls the epoll object itself; a subclass of the selector
    goes through ``select()``: both report readable, writable and hang-up alike."""

    class Plain(selectors.EpollSelector):  # not the exact type: the generic path
        pass

    outcomes: list[tuple[list[str], list[str]]] = []
    for factory in (selectors.EpollSelector, Plain):
        got: list[Any] = []
        with EventLoop(clock=clock, selector=factory) as ev, socketpairs(2) as pairs:
            assert (ev._epoll is not None) == (factory is selectors.EpollSelector)
            (a, b), (c, d) = pairs
            ev.add_fd(a, EV_READ, recorder(got, "a-r"))
            ev.add_fd(a, EV_WRITE, recorder(got, "a-w"))
            ev.add_fd(c, EV_READ, recorder(got, "c-r"))
            ev.loop(0)
            round1 = sorted(tag for tag, _ in got)
            got.clear()
            b.send(b"x")
            d.close()  # hang-up on c: reported as readable (EOF)
            ev.loop(0)
            round2 = sorted(tag for tag, _ in got)
            ev.del_fd(a)
            ev.del_fd(c)
        outcomes.append((round1, round2))
    expected = (["a-w"], ["a-r", "a-w", "c-r"])
    assert outcomes == [expected, expected]
