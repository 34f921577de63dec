"""pytest configuration for netsip's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from netsip._log import FILTER
from netsip._native import compiled_modules
from netsip.eventloop import EventLoop
from netsip.socketpool import get_settings, import_settings
from tests.support import FakeClock, Listen, asyncio_loop, compiled_configured

# CI machines are small and noisy: no deadline, fixed example budget.
settings.register_profile(
    "netsip",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("netsip")


#: the kinds of loop the ``loop`` fixture can be (``--loop``, ``both_loops``)
LOOP_KINDS = ("native", "asyncio", "uvloop")


def pytest_report_header() -> str:
    """Which netsip runs: this tree's sources, and whether its call path is compiled."""
    import netsip  # noqa: PLC0415

    compiled = compiled_modules()
    kind = f"compiled ({len(compiled)} modules)" if compiled else "pure Python"
    return f"netsip: {Path(netsip.__file__ or '?').parent}, {kind}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """``NETSIP_EXPECT_COMPILED=1`` (CI's run of the compiled build): refuse a pure netsip; ``=0``
    (CI's pure run) refuses a compiled one.

    Otherwise a build that did not land, or a netsip imported from elsewhere,
    would pass the run as if it were the compiled build.
    """
    expect = os.environ.get("NETSIP_EXPECT_COMPILED", "")
    if expect == "0" and compiled_modules():
        # (a checkout once installed with NETSIP_COMPILE=1 keeps its extensions)
        pytest.exit(f"NETSIP_EXPECT_COMPILED=0, but these run compiled: {compiled_modules()}", 3)
    if expect in ("", "0"):
        return
    wanted = set(compiled_configured())
    missing = sorted(wanted - set(compiled_modules()))
    if missing:
        pytest.exit(f"NETSIP_EXPECT_COMPILED is set, but these run interpreted: {missing}", 3)
    # ... and the processes the tests start (the CLI) import the same netsip
    probe = "import json, netsip, netsip._native as n; "
    probe += "print(json.dumps([netsip.__file__, n.compiled_modules()]))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=False
    ).stdout
    import netsip  # noqa: PLC0415

    if out.strip() != json.dumps([netsip.__file__, compiled_modules()]):
        pytest.exit(f"NETSIP_EXPECT_COMPILED: a child process imports another netsip: {out}", 3)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--loop",
        choices=(*LOOP_KINDS, "all"),
        default=None,
        help="run every test that takes the `loop` (or `clock_loop`) fixture on this loop "
        "(default: native, and native + asyncio in modules marked both_loops)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the ``loop`` and ``clock_loop`` fixtures over the loop kinds asked for."""
    for name in ("loop", "clock_loop"):
        if name in metafunc.fixturenames:
            _parametrize_loop(metafunc, name)


def _parametrize_loop(metafunc: pytest.Metafunc, name: str) -> None:
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(name)
    if defs and getattr(defs[-1].func, "__module__", __name__) != __name__:
        return  # the module has a fixture of that name: it decides the loop
    option = metafunc.config.getoption("--loop")
    if option == "all":
        kinds: tuple[str, ...] = LOOP_KINDS
    elif option:
        kinds = (option,)
    elif metafunc.definition.get_closest_marker("both_loops"):
        kinds = ("native", "asyncio")
    else:
        return
    metafunc.parametrize(name, kinds, indirect=True)


@pytest.fixture
def loop(request: pytest.FixtureRequest) -> Iterator[EventLoop]:
    """A fresh event loop, closed after the test (modules may override it).

    The native :class:`EventLoop`, or (parametrised, see ``--loop``) an
    :class:`~netsip.aio.AsyncioEventLoop` on a new asyncio loop or uvloop;
    an exception a callback raised there fails the test at teardown.
    """
    kind = getattr(request, "param", "native")
    if kind == "native":
        with EventLoop() as lp:
            yield lp
        return
    with asyncio_loop(kind) as (alp, errors):
        yield alp
    if errors:
        pytest.fail(f"exceptions in callbacks on the {kind} loop: {errors!r}")


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`FakeClock` at an epoch-like time, for ``clock_loop``."""
    return FakeClock(1_000_000.0)


@pytest.fixture
def clock_loop(request: pytest.FixtureRequest, fake_clock: FakeClock) -> Iterator[EventLoop]:
    """A fresh event loop on ``fake_clock``, closed after the test.

    Parametrised as ``loop`` is: ``EventLoop(clock=fake_clock)``, or an
    :class:`~netsip.aio.AsyncioEventLoop` on a
    :class:`~tests.support.FakeTimeLoop` (uvloop: skipped).
    """
    kind = getattr(request, "param", "native")
    if kind == "native":
        with EventLoop(clock=fake_clock) as lp:
            yield lp
        return
    with asyncio_loop(kind, fake_clock) as (alp, errors):
        yield alp
    if errors:
        pytest.fail(f"exceptions in callbacks on the {kind} loop: {errors!r}")


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
