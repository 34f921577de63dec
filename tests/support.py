"""Helpers shared by the tests: live-peer discovery and fd accounting."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REQUIRE_PEERS = os.environ.get("NETSIP_REQUIRE_PEERS", "") not in ("", "0")


def _missing(what: str, how: str) -> None:
    """Skip (on a user's machine) or fail (in CI) because a live peer is absent."""
    msg = f"{what} is not available ({how})"
    if REQUIRE_PEERS:
        pytest.fail(f"NETSIP_REQUIRE_PEERS=1 but {msg}", pytrace=False)
    pytest.skip(msg)


def perl_has(module: str) -> bool:
    """True if ``perl -M<module>`` loads."""
    perl = shutil.which("perl")
    if perl is None:
        return False
    res = subprocess.run(
        [perl, f"-M{module}", "-e", "1"], capture_output=True, timeout=30, check=False
    )
    return res.returncode == 0


def require_perl_netsip(tls: bool = False) -> str:
    """Return the perl binary if Net::SIP (and IO::Socket::SSL for TLS) loads."""
    if not perl_has("Net::SIP"):
        _missing("Perl's Net::SIP", "apt-get install libnet-sip-perl")
    if tls and not perl_has("IO::Socket::SSL"):
        _missing("Perl's IO::Socket::SSL", "apt-get install libio-socket-ssl-perl")
    perl = shutil.which("perl")
    assert perl is not None
    return perl


def require_sipp() -> str:
    """Return the path of sipp, or skip/fail."""
    sipp = shutil.which("sipp")
    if sipp is None:
        _missing("sipp", "apt-get install sip-tester")
        raise AssertionError("unreachable")
    return sipp


def open_fds() -> int:
    """Number of file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))
