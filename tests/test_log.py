"""netsip._log: repeated log lines are rate-limited per logger and template."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from netsip._log import BURST, FILTER, RateLimitFilter, get_logger
from netsip.eventloop import EventLoop
from netsip.socketpool import SocketPool
from netsip.testing import FakeClock, collector, drive, length_is, sip_request, udp_socket


@pytest.fixture
def limited(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[logging.Logger, FakeClock]]:
    clock = FakeClock(100.0)
    logger = logging.getLogger("netsip.test-log")
    flt = RateLimitFilter(interval=1.0, burst=2, clock=clock)
    logger.addFilter(flt)
    caplog.set_level(logging.DEBUG, logger="netsip.test-log")
    yield logger, clock
    logger.removeFilter(flt)


def test_a_burst_per_kind_and_window_then_a_count(
    limited: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    logger, clock = limited
    for n in range(1000):
        logger.warning("dropping packet from %s: %s", f"peer{n}", "junk")
        logger.info("another kind %d", n)
    assert [r.getMessage() for r in caplog.records] == [
        "dropping packet from peer0: junk",
        "another kind 0",
        "dropping packet from peer1: junk",
        "another kind 1",
    ]
    clock.advance(1.0)
    logger.warning("dropping packet from %s: %s", "peerX", "junk")
    assert caplog.records[-1].getMessage() == (
        "dropping packet from peerX: junk [998 more like this suppressed]"
    )
    # the count starts again
    clock.advance(1.0)
    logger.warning("dropping packet from %s: %s", "peerY", "junk")
    assert caplog.records[-1].getMessage() == "dropping packet from peerY: junk"


def test_debug_is_never_held_back(
    limited: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    logger, _ = limited
    for n in range(50):
        logger.debug("trace %d", n)
    assert len(caplog.records) == 50


def test_kinds_are_bounded() -> None:
    clock = FakeClock(0.0)
    flt = RateLimitFilter(clock=clock)
    for n in range(5000):
        rec = logging.LogRecord("netsip.x", logging.WARNING, __file__, 1, f"msg {n}", None, None)
        assert flt.filter(rec)
        clock.advance(0.01)
    assert len(flt._state) <= 1024


def test_netsip_loggers_carry_the_filter() -> None:
    assert FILTER in get_logger("netsip.dispatcher").filters
    assert get_logger("netsip.dispatcher").filters.count(FILTER) == 1


def test_a_garbage_flood_logs_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    """500 unparsable datagrams: a few lines, not 500 (the pool keeps serving)."""
    caplog.set_level(logging.INFO, logger="netsip")
    got, collect = collector()
    with EventLoop() as loop, udp_socket() as master, udp_socket() as sender:
        pool = SocketPool("udp", master)
        pool.attach_eventloop(loop, collect)
        dst = master.getsockname()
        for n in range(500):
            sender.sendto(b"GARBAGE %d\r\n\r\n" % n, dst)
            if n % 50 == 49:
                loop.loop(0)  # (the socket buffer holds far fewer than 500)
        sender.sendto(sip_request(proto="UDP"), dst)
        drive(loop, length_is(got, 1))
        pool.close()
    lines = [r for r in caplog.records if r.msg.startswith("drop invalid packet")]
    assert len(lines) <= 2 * BURST, [r.getMessage() for r in lines]
    assert lines or FILTER.suppressed() > 0
