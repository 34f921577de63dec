"""examples/web_call.py: the aiohttp app places a SIP call when its URL is hit.

The app runs in-process (aiohttp's TestServer and TestClient, on a free
loopback port) on the test's asyncio loop, beside a netsip
:class:`~netsip.aioua.UserAgent` that answers on loopback: the JSON says the
call was established and ended, and the answering side saw it begin and end.
A refusing callee, one that never answers and bad query parameters give a
JSON error, and the app goes on serving.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any

import pytest

from netsip.aioua import AsyncCall, UserAgent
from netsip.testing import udp_socket
from tests.support import ROOT, python_env

pytest.importorskip("aiohttp", reason="pip install 'netsip[web]'")

from aiohttp.test_utils import TestClient, TestServer

EXAMPLE = ROOT / "examples" / "web_call.py"
BOUND = 30.0  # seconds: the whole test


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_call", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(BOUND):
            await coro

    asyncio.run(bounded())


async def until(cond: Callable[[], object], seconds: float = 5.0) -> None:
    """Yield to the loop until ``cond()`` is true (bounded)."""
    async with asyncio.timeout(seconds):
        while not cond():
            await asyncio.sleep(0.005)


def agent(name: str) -> UserAgent:
    return UserAgent(from_=f"sip:{name}@127.0.0.1", leg="udp:127.0.0.1:0")


def uri_of(ua: UserAgent, name: str) -> str:
    _, _, rest = ua.simple.default_leg().contact.partition(":")
    return f"sip:{name}@{rest}"


def test_help() -> None:
    res = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: "), res.stdout
    assert "--ring-time" in res.stdout


def test_url_places_a_call_and_failures_answer_json() -> None:
    web_call = load_example()

    async def main() -> None:
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        async with agent("bob") as bob, agent("carol") as carol:
            answered: list[AsyncCall] = []
            ended: list[AsyncCall] = []

            async def answer() -> None:
                async for call in bob.incoming():
                    answered.append(call)
                    await call.wait_closed()
                    ended.append(call)

            bob.listen()
            answering = asyncio.create_task(answer())
            carol.listen(filter=lambda *_: False)  # refuses every call: 403
            settings = web_call.Settings(ring_time=10.0)
            web = agent("web")
            app = web_call.make_app(web, settings)
            async with TestClient(TestServer(app)) as client:
                to = uri_of(bob, "bob")
                resp = await client.get("/call", params={"to": to, "seconds": "0.5"})
                assert resp.status == 200
                data = await resp.json()
                assert data["established"] is True and data["ended_by"] == "us"
                assert data["to"] == to and data["seconds"] >= 0.45
                await until(lambda: len(ended) == 1)
                assert answered == ended and answered[0].closed  # bob saw it begin and end

                resp = await client.get("/call", params={"to": uri_of(carol, "carol")})
                assert resp.status == 502
                data = await resp.json()
                assert data["established"] is False and data["code"] == 403

                with udp_socket() as silent:  # a callee that never answers
                    settings.ring_time = 0.5
                    port = silent.getsockname()[1]
                    resp = await client.get("/call", params={"to": f"sip:x@127.0.0.1:{port}"})
                    assert resp.status == 504
                    assert (await resp.json())["established"] is False
                settings.ring_time = 10.0

                for params in ({}, {"to": to, "seconds": "x"}, {"to": to, "seconds": "-1"}):
                    resp = await client.get("/call", params=params)
                    assert resp.status == 400, params
                    assert "error" in await resp.json()

                # still serving: a second call goes through
                resp = await client.get("/call", params={"to": to, "seconds": "0"})
                assert resp.status == 200 and (await resp.json())["established"] is True
                await until(lambda: len(ended) == 2)
                await until(lambda: len(web.simple.endpoint) == 0)
        await answering  # bob's incoming() ended with bob
        assert errors == []

    run(main())
