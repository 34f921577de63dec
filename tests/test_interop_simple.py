"""The user agent (Simple) against live peers: Perl's bench examples, both directions.

Perl's ``bench/listen.pl`` answers and echoes RTP for ``examples/bench/call.py``; Perl's
``bench/call.pl`` calls ``examples/bench/listen.py``. Each peer runs on a free loopback
port and is stopped after the test; a missing peer skips (fails under
NETSIP_REQUIRE_PEERS=1). Subprocesses are bounded by timeouts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import (
    ROOT,
    LineReader,
    free_port,
    missing_peer,
    python_env,
    require_perl_netsip,
    stop_process,
)

pytestmark = [pytest.mark.interop]

PERL_BENCH = Path("/usr/share/doc/libnet-sip-perl/examples/bench")
EXAMPLES = ROOT / "examples"
WAIT = 30.0  # upper bound for a peer to bind or a run to end
BENCH = ("-N", "3", "-S", "1", "--duration", "3")  # 3 calls, 3 s, statistics every second

#: Perl's bench/call.pl, fixed to keep its calls and given -L (see its header)
PERL_BENCH_CALL = ROOT / "tests" / "perl" / "bench_call.pl"


def _require_simple() -> None:
    pytest.importorskip("netsip.simple", reason="netsip.simple is not there yet")


def _perl_unbuffered() -> list[str]:
    """perl running the script named next with stdout unbuffered (lines arrive as printed)."""
    return [require_perl_netsip(), "-e", "$| = 1; $0 = shift; do $0; die $@ if $@"]


def _perl_bench(name: str) -> list[str]:
    script = PERL_BENCH / name
    command = _perl_unbuffered()
    if not script.exists():
        missing_peer(f"Net::SIP's {script}", "apt-get install libnet-sip-perl")
    return [*command, str(script)]


def _wait_bound(proc: subprocess.Popen[bytes], port: int) -> None:
    """Wait until ``proc`` has bound UDP ``port`` (seen with psutil): nothing to drive here."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="udp")
        except psutil.NoSuchProcess:
            conns = []
        if any(c.laddr and c.laddr.port == port for c in conns):
            return
        assert proc.poll() is None, f"exited with {proc.returncode} before binding {port}"
        assert time.monotonic() < deadline, f"did not bind {port} within {WAIT} s"
        time.sleep(0.02)


def test_perl_listen_echoes_netsip_bench_call() -> None:
    _require_simple()
    listen = _perl_bench("listen.pl")
    port = free_port()
    peer = subprocess.Popen(
        [*listen, "-L", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_bound(peer, port)
        res = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "bench" / "call.py"),
                "-P",
                f"127.0.0.1:{port}",
                *BENCH,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=python_env(),
            check=False,
        )
    finally:
        stop_process(peer, WAIT)
    m = re.search(r"total\s+\d+ pkt=(\d+)/(\d+)/(\d+)", res.stdout)
    assert m, (res.returncode, res.stdout, res.stderr)
    ok, lost = int(m.group(1)), int(m.group(2))
    assert ok > 0 and lost == 0, res.stdout
    assert res.returncode == 0, res.stderr


def test_perl_bench_call_against_netsip_listen() -> None:
    """Perl's bench/call.pl (tests/perl/bench_call.pl: its calls kept alive, -L) calls
    examples/bench/listen.py: 3 calls connect and call.pl's statistics count echoed packets."""
    _require_simple()
    call = [*_perl_unbuffered(), str(PERL_BENCH_CALL)]
    port = free_port()
    netsip = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "bench" / "listen.py"), "-L", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=python_env(),
    )
    caller: subprocess.Popen[bytes] | None = None
    try:
        assert netsip.stdout is not None
        LineReader(netsip.stdout.fileno(), WAIT).wait_for("^Listening")
        caller = subprocess.Popen(
            [*call, "-L", f"127.0.0.1:{free_port()}", "-P", f"127.0.0.1:{port}", "-N", "3",
             "-S", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert caller.stdout is not None
        reader = LineReader(caller.stdout.fileno(), WAIT)
        reader.wait_for("^All 3 calls connected")
        # call.pl runs until stopped; its statistics: seconds pkt=good/lost/ignored delay(ms)=...
        (m,) = reader.wait_for(r"^\s*\d+ pkt=([1-9]\d*)/(\d+)/(\d+) delay\(ms\)=[\d.]+/")
    finally:
        if caller is not None:
            stop_process(caller, WAIT)
        stop_process(netsip, WAIT)
    good, lost, ignored = map(int, m.groups())
    assert good > 0 and lost == 0 and ignored == 0, m.group(0)
