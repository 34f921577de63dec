"""sipp against the awaitable user agent on asyncio (live-peer interop).

* sipp's built-in UAC (``-sn uac``) calls a ``netsip.aioua.UserAgent``
  listening in this process over UDP and TCP: every call established
  (``incoming()``) and ended by sipp's BYE, sipp counts them successful.
* sipp's UAS (``-sn uas`` over UDP, ``tests/sipp/uas_tcp.xml`` over TCP)
  answers ``await ua.invite(...)``; ``await call.bye()`` ends the call.

sipp runs as a subprocess; the coroutine waits for it in a thread
(``asyncio.to_thread``), so the asyncio loop keeps serving SIP meanwhile.
Skipped without sipp unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from netsip.aioua import AsyncCall, UserAgent
from netsip.testing import open_fds
from tests.support import (
    check_all_successful,
    free_udp_tcp_port,
    require_sipp,
    sipp_errors,
    sipp_stats,
    start_sipp,
    stop_process,
)
from tests.test_aio import run
from tests.test_interop_sipp_ua import SCENARIOS, TIMEOUT, free_media_port, wait_bound

pytestmark = pytest.mark.interop

CALLS = 3


@pytest.mark.parametrize(("transport", "proto"), [("u1", "udp"), ("t1", "tcp")])
def test_sipp_uac_calls_the_asyncio_user_agent(transport: str, proto: str, tmp_path: Path) -> None:
    sipp = require_sipp()
    fds = open_fds()

    async def main() -> tuple[int, list[AsyncCall]]:
        async with UserAgent(from_="sip:bob@127.0.0.1", leg=f"{proto}:127.0.0.1:0") as ua:
            ua.listen()
            port = ua.simple.default_leg().src.port
            proc, stf = start_sipp(
                sipp,
                [f"127.0.0.1:{port}", "-sn", "uac", "-t", transport,
                 "-p", str(free_udp_tcp_port()), "-mi", "127.0.0.1",
                 "-mp", str(free_media_port()), "-m", str(CALLS), "-r", "10", "-d", "300"],
                tmp_path,
            )  # fmt: skip
            calls: list[AsyncCall] = []
            try:
                async with asyncio.timeout(TIMEOUT):
                    async for call in ua.incoming():
                        calls.append(call)
                        if len(calls) == CALLS:
                            break
                    for call in calls:
                        await call.wait_closed()  # sipp's BYE
                rc = await asyncio.to_thread(proc.wait, TIMEOUT)
            finally:
                stop_process(proc)
            check_all_successful(rc, sipp_stats(stf), sipp_errors(tmp_path), CALLS)
            assert len(ua.simple.endpoint) == 0
            return rc, calls

    rc, calls = run("asyncio", main())
    assert rc == 0
    assert all(c.closed for c in calls)
    assert open_fds() == fds


@pytest.mark.parametrize(
    ("transport", "proto", "scenario"),
    [
        pytest.param("u1", "udp", ["-sn", "uas"], id="udp"),
        pytest.param("t1", "tcp", ["-sf", str(SCENARIOS / "uas_tcp.xml")], id="tcp"),
    ],
)
def test_asyncio_user_agent_calls_sipp_uas(
    transport: str, proto: str, scenario: list[str], tmp_path: Path
) -> None:
    sipp = require_sipp()
    port = free_udp_tcp_port()
    proc, stf = start_sipp(
        sipp,
        [*scenario, "-t", transport, "-p", str(port), "-mi", "127.0.0.1",
         "-mp", str(free_media_port()), "-m", "1"],
        tmp_path,
    )  # fmt: skip
    try:
        wait_bound(proc, port, proto, tmp_path)

        async def main() -> None:
            async with UserAgent(from_="sip:alice@127.0.0.1", leg=f"{proto}:127.0.0.1:0") as ua:
                call = await ua.invite(f"sip:sipp@127.0.0.1:{port};transport={proto}")
                await call.bye()
                assert call.closed
                assert len(ua.simple.endpoint) == 0

        run("asyncio", main())
        rc = proc.wait(timeout=TIMEOUT)  # -m 1: sipp ends after the call
    finally:
        stop_process(proc)
    check_all_successful(rc, sipp_stats(stf), sipp_errors(tmp_path), 1)
