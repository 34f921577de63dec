"""The compiled build: what the sources need for it, and what users keep with it.

The whole suite runs against both builds (``.ci/run``); this file pins what
is particular to the compiled one. On a pure-Python checkout every test here
runs too, and checks the same contract.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

from netsip import _native
from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import Callback, EventLoop, TimerEvent
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.testing import drive
from netsip.util import Addr
from tests.support import compiled_configured, options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str, path: str) -> Any:
    """A fresh copy of the module at ``path`` (from the checkout's root), as ``name``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configured_modules_exist_and_none_is_compiled_alone() -> None:
    """Every module the build compiles has a source; a checkout is pure or wholly compiled."""
    configured = compiled_configured()
    for name in configured:
        assert os.path.isfile(os.path.join(ROOT, "netsip", f"{name}.py")), name
    assert len(set(configured)) == len(configured)
    assert _native.compiled_modules() in ([], sorted(configured))


def test_mypyc_attr_without_mypy_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    """At run time netsip needs no package: without mypy_extensions the decorator does nothing."""
    monkeypatch.setitem(sys.modules, "mypy_extensions", None)  # (import fails)
    copy = _load("netsip_native_copy", "netsip/_native.py")

    class Plain:
        pass

    decorated: Callable[[Any], Any] = copy.mypyc_attr(allow_interpreted_subclasses=True)
    assert decorated(Plain) is Plain
    assert copy.mypyc_attr.__module__ == "netsip_native_copy"  # the fallback, not mypy's


@pytest.mark.parametrize(
    ("env", "settings", "compiling"),
    [
        (None, None, False),
        ("0", None, False),
        ("1", None, True),
        (None, {"compile": "1"}, True),
        (None, {"compile": "0"}, False),
    ],
)
def test_build_backend_asks_for_mypy_only_for_the_compiled_build(
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    settings: dict[str, str] | None,
    compiling: bool,
) -> None:
    """``NETSIP_COMPILE=1`` or ``--config-settings compile=1`` adds mypy to the build's needs,
    and setup.py, asked by setuptools what it needs, does not compile then."""
    backend = _load("netsip_build_copy", "_build/netsip_build.py")
    monkeypatch.setenv("NETSIP_COMPILE", "0")  # (so that the end of the test restores it)
    if env is None:
        monkeypatch.delenv("NETSIP_COMPILE")
    else:
        monkeypatch.setenv("NETSIP_COMPILE", env)
    seen: list[str | None] = []

    def setuptools_requires(_settings: dict[str, Any] | None) -> list[str]:
        seen.append(os.environ.get("NETSIP_COMPILE"))
        return ["wheel"]

    got = backend._requires(setuptools_requires, settings)
    assert got == (["wheel", *backend.COMPILE_REQUIRES] if compiling else ["wheel"])
    assert seen == ["0"]  # setup.py, asked, never compiles
    # ... but the build itself does (setup.py reads the environment)
    assert (os.environ.get("NETSIP_COMPILE") == "1") == compiling


def test_classes_users_subclass() -> None:
    """Python subclasses of EventLoop, Leg, Dispatcher, Endpoint and TimerEvent work, and
    netsip's own (maybe compiled) code calls their overrides."""
    seen: list[str] = []

    class MyTimer(TimerEvent):
        pass

    class MyLoop(EventLoop):
        def add_timer(
            self,
            when: float,
            callback: Callback,
            repeat: float | None = None,
            name: str | None = None,
        ) -> TimerEvent:
            seen.append("add_timer")
            return super().add_timer(when, callback, repeat, name)

    class MyLeg(Leg):
        def deliver(self, packet: Packet, dst: object, callback: object = None) -> None:
            seen.append(f"leg deliver {packet.method()}")
            super().deliver(packet, dst, callback)

    class MyEndpoint(Endpoint):
        def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
            seen.append(f"receive {packet.method()}")
            super().receive(packet, leg, from_)

    class MyDispatcher(Dispatcher):
        def deliver(self, packet: Packet, **kw: Any) -> None:
            seen.append(f"dispatcher deliver {packet.method()}")
            super().deliver(packet, **kw)

    def answer(ep: Endpoint, ctx: Context, request: Request, leg: Leg, from_: Addr) -> None:
        ep.new_response(ctx, request.create_response(200), leg, from_)

    with MyLoop() as loop:
        timer = MyTimer(loop.looptime + 60, print, None, None)
        assert isinstance(timer, TimerEvent) and timer.when == loop.looptime + 60
        leg = MyLeg(addr="127.0.0.1", port=0, proto="udp")
        disp = MyDispatcher([leg], loop)
        ep = MyEndpoint(disp)
        ep.set_application(answer)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.bind(("127.0.0.1", 0))
                peer.settimeout(0)
                via = f"127.0.0.1:{peer.getsockname()[1]}".encode()
                request = options(1).replace(b"127.0.0.1:5070", via)
                peer.sendto(request, ("127.0.0.1", leg.src.port))
                got: list[bytes] = []

                def answered() -> bool:
                    with contextlib.suppress(BlockingIOError):
                        got.append(peer.recv(65536))
                    return bool(got)

                drive(loop, answered, 5.0, "the answer to OPTIONS")
            assert got[0].startswith(b"SIP/2.0 200 ")
            # the endpoint got the request, answered through the dispatcher and the leg;
            # something on the way set a timer on our loop
            at = seen.index("receive OPTIONS")
            assert seen[at + 1 :].index("dispatcher deliver OPTIONS") < seen[at + 1 :].index(
                "leg deliver OPTIONS"
            )
            assert "add_timer" in seen
        finally:
            ep.close()
            disp.close()
