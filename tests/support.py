"""Helpers for netsip's own tests: live peers, source checks, TLS files, subprocess output.

The general helpers (loopback sockets, the fake clock, the loop drivers, the
packet collector, fd counting) live in the public :mod:`netsip.testing`;
they are re-exported here so that the tests import everything from one place.
What stays here is specific to this project's test suite: finding the Perl
and sipp peers (skipped, or failed under ``NETSIP_REQUIRE_PEERS=1``), the
pytest parametrisation over the loopbacks, TLS files in pytest's temporary
directories, and reading a peer subprocess's output.
"""

from __future__ import annotations

import ast
import os
import re
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netsip.eventloop import EV_READ, EventLoop
from netsip.testing import (
    FakeClock,
    Received,
    addr_of,
    collector,
    connect,
    datagrams,
    drive,
    family,
    have_ipv6,
    is_eof,
    length_is,
    loopbacks,
    open_fds,
    pkt,
    sip_request,
    spin,
    tcp_listener,
    udp_socket,
)
from netsip.util import Var

__all__ = [
    "LOOPBACKS",
    "PEER",
    "REQUIRE_PEERS",
    "ROOT",
    "FakeClock",
    "LineReader",
    "PipeReader",
    "Received",
    "TlsFiles",
    "addr_of",
    "collector",
    "connect",
    "datagrams",
    "drive",
    "family",
    "have_ipv6",
    "imported_modules",
    "is_eof",
    "length_is",
    "make_tls_files",
    "open_fds",
    "perl_has",
    "pkt",
    "python_env",
    "require_perl_netsip",
    "require_sipp",
    "sip_request",
    "spin",
    "start_perl_peer",
    "tcp_listener",
    "udp_socket",
]

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "perl" / "netsip_peer.pl"

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


#: The loopback addresses to parametrise over; ::1 only where IPv6 UDP and TCP bind.
LOOPBACKS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif("::1" not in loopbacks(), reason="no IPv6 loopback"),
    ),
]


def require_sipp() -> str:
    """Return the path of sipp, or skip/fail."""
    sipp = shutil.which("sipp")
    if sipp is None:
        _missing("sipp", "apt-get install sip-tester")
        raise AssertionError("unreachable")
    return sipp


# ------------------------------------------------------------ source checks


def imported_modules(path: str | Path) -> set[str]:
    """The top-level names of all modules the Python file at ``path`` imports."""
    tree = ast.parse(Path(path).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported


# ------------------------------------------------------------ TLS files


@dataclass
class TlsFiles:
    """A test CA and a certificate (chain and key in separate files), as files (trustme)."""

    ca: str
    cert: str
    key: str


def make_tls_files(tmp_path_factory: pytest.TempPathFactory, *names: str) -> TlsFiles:
    """Write a fresh test CA and a certificate for ``names``; skip without trustme."""
    trustme = pytest.importorskip("trustme")
    d: Path = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    files = TlsFiles(str(d / "ca.pem"), str(d / "cert.pem"), str(d / "key.pem"))
    ca.cert_pem.write_to_path(files.ca)
    cert.cert_chain_pems[0].write_to_path(files.cert)
    cert.private_key_pem.write_to_path(files.key)
    return files


# ------------------------------------------------------------ subprocesses


def python_env() -> dict[str, str]:
    """The environment for a Python subprocess that imports netsip from this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_perl_peer(
    *args: str, perl: str | None = None, stderr: int = subprocess.STDOUT
) -> subprocess.Popen[bytes]:
    """Start ``tests/perl/netsip_peer.pl`` with stdout piped (stderr into it by default)."""
    if perl is None:
        perl = require_perl_netsip()
    return subprocess.Popen(
        [perl, str(PEER), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,  # default: one pipe, so neither can fill up unread
    )


@dataclass
class PipeReader:
    """Collects a subprocess's output inside the event loop; ``eof`` is set at EOF."""

    loop: EventLoop
    fd: int
    data: bytearray = field(default_factory=bytearray)
    eof: Var[bool] = field(default_factory=Var)

    def __post_init__(self) -> None:
        os.set_blocking(self.fd, False)
        self.loop.add_fd(self.fd, EV_READ, self._readable, name="perl-stdout")

    def _readable(self, fd: object) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            self.data += chunk
        else:
            self.loop.del_fd(self.fd)
            self.eof.value = True

    def lines(self) -> list[str]:
        return self.data.decode("utf-8", "replace").splitlines()

    def has_line(self) -> bool:
        return b"\n" in self.data or bool(self.eof)


class LineReader:
    """Lines of a subprocess pipe, read with a deadline (no blocking reads)."""

    def __init__(self, pipe: int, timeout: float = 20.0) -> None:
        self.fd = pipe
        self.timeout = timeout
        self.buf = b""
        self.lines: list[str] = []
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        """Read what is there within the deadline; False on timeout or EOF."""
        left = deadline - time.monotonic()
        if self.eof or left <= 0:
            return False
        ready, _, _ = select.select([self.fd], [], [], left)
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [line.decode("utf-8", "replace") for line in done]
        return True

    def wait_for(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """Read until ``count`` lines match ``pattern``; return the matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + self.timeout
        while True:
            found = [m for m in map(rx.search, self.lines) if m]
            if len(found) >= count:
                return found
            if not self._fill(deadline):
                raise AssertionError(f"no {count}x {pattern!r} in output: {self.lines}")

    def drain(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self._fill(deadline):
            pass
