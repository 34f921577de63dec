"""sipp and Perl's Net::SIP against the awaitable user agent on asyncio (live-peer interop).

* sipp's built-in UAC (``-sn uac``) calls a ``netsip.aioua.UserAgent``
  listening in this process over UDP and TCP: every call established
  (``incoming()``) and ended by sipp's BYE, sipp counts them successful.
* sipp's UAS (``-sn uas`` over UDP, ``tests/sipp/uas_tcp.xml`` over TCP)
  answers ``await ua.invite(...)``; ``await call.bye()`` ends the call.
* Perl's Net::SIP::Simple calls the asyncio user agent, sends RFC 4733
  DTMF and hangs up: ``async for digit in call.dtmf_digits()`` gets the digits
  and ends with Perl's BYE.

sipp runs as a subprocess; the coroutine waits for it in a thread
(``asyncio.to_thread``), so the asyncio loop keeps serving SIP meanwhile.
Skipped without sipp (Perl's Net::SIP) unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from netsip.aioua import AsyncCall, UserAgent
from netsip.testing import open_fds
from tests.support import (
    check_all_successful,
    free_udp_tcp_port,
    require_perl_netsip,
    require_sipp,
    sipp_errors,
    sipp_stats,
    start_sipp,
    stop_process,
)
from tests.test_aio import run, until
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


# Net::SIP::Simple calls, sends RFC 4733 DTMF while echoing our audio, and hangs up.
PERL_CALLER = r"""
use strict; use warnings; use Net::SIP;
$| = 1;
my ($to, $port) = @ARGV;
my $ua = Net::SIP::Simple->new(from => 'sip:perl@127.0.0.1', leg => "127.0.0.1:$port");
my $peer_hangup;
my $call = $ua->invite($to, init_media => $ua->rtp('recv_echo', undef, 0),
    recv_bye => \$peer_hangup) || die "invite failed: " . $ua->error;
die "invite failed(call): " . $call->error if $call->error;
print "established\n";
my ($dtmf_done, $stop);
$call->dtmf('123#', methods => 'rfc2833', cb_final => \$dtmf_done);
$ua->add_timer(15, \$stop);
$ua->loop(\$stop, \$peer_hangup, \$dtmf_done);
die "DTMF not sent" unless $dtmf_done;
$stop = undef;
$call->bye(cb_final => \$stop);
$ua->loop(10, \$stop);
print "done\n";
"""


def test_perl_netsip_calls_the_asyncio_user_agent(tmp_path: Path) -> None:
    perl = require_perl_netsip()
    script = tmp_path / "caller.pl"
    script.write_text(PERL_CALLER)

    async def main() -> tuple[list[str], str]:
        async with UserAgent(from_="sip:bob@127.0.0.1", leg="udp:127.0.0.1:0") as ua:
            # we send audio (silence) so that Perl's echo carries its DTMF packets
            ua.listen(init_media=ua.simple.rtp("send_recv", lambda _s, _c: b"\xff" * 160))
            port = ua.simple.default_leg().src.port
            proc = subprocess.Popen(
                [perl, str(script), f"sip:bob@127.0.0.1:{port}", str(free_udp_tcp_port())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            digits: list[str] = []
            try:
                async with asyncio.timeout(TIMEOUT):
                    async for call in ua.incoming():
                        async for digit in call.dtmf_digits():  # until Perl's BYE
                            digits.append(digit)
                        break
                    out, _ = await asyncio.to_thread(proc.communicate, None, TIMEOUT)
            finally:
                stop_process(proc)
            assert proc.returncode == 0, out
            await until(lambda: len(ua.simple.endpoint) == 0)
            return digits, out.decode(errors="replace")

    digits, out = run("asyncio", main())
    assert "done" in out, out
    assert digits == ["1", "2", "3", "#"], out
