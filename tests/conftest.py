"""pytest configuration for netsip's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from netsip._log import FILTER
from netsip.eventloop import EventLoop
from netsip.socketpool import get_settings, import_settings
from tests.support import Listen

# CI machines are small and noisy: no deadline, fixed example budget.
settings.register_profile(
    "netsip",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("netsip")


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """A fresh event loop, closed after the test (modules may override it)."""
    with EventLoop() as lp:
        yield lp


@pytest.fixture
def restore_settings() -> Iterator[None]:
    """Put the SocketPool settings back as they were (use with ``usefixtures``)."""
    saved = get_settings()
    yield
    import_settings(**saved)


@pytest.fixture(autouse=True)
def fresh_log_limits() -> None:
    """Each test sees the first log line of every kind (the rate limit is per process)."""
    FILTER.reset()


@pytest.fixture
def listen_factory(tmp_path: Path) -> Iterator[list[Listen]]:
    """``netsip listen`` processes started by a test; each is killed and reaped afterwards."""
    started: list[Listen] = []
    yield started
    for proc in started:
        proc.close()
