"""Helpers shared by the tests: live peers, fds, sockets, loop driving, subprocess output."""

from __future__ import annotations

import ast
import os
import re
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netsip.eventloop import EV_READ, EventLoop
from netsip.packet import Packet
from netsip.util import Addr, Var

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


def have_ipv6(kind: int = socket.SOCK_DGRAM) -> bool:
    """True if a socket of ``kind`` can bind to the IPv6 loopback ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, kind) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


#: The loopback addresses to parametrise over; ::1 only where IPv6 UDP and TCP bind.
LOOPBACKS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(
            not (have_ipv6() and have_ipv6(socket.SOCK_STREAM)), reason="no IPv6 loopback"
        ),
    ),
]


def family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class FakeClock:
    """A clock the tests move by hand (``EventLoop(clock=...)``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


# ------------------------------------------------------------ plain sockets


def tcp_listener(ip: str = "127.0.0.1", backlog: int = 128, rcvbuf: int = 0) -> socket.socket:
    """A listening TCP socket on ``ip`` (any port); ``rcvbuf`` set before listen()."""
    s = socket.socket(family(ip), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        # before listen(): accepted sockets inherit it and the window stays small
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((ip, 0))
    s.listen(backlog)
    return s


def udp_socket(ip: str = "127.0.0.1") -> socket.socket:
    """A UDP socket bound to ``ip`` (any port)."""
    s = socket.socket(family(ip), socket.SOCK_DGRAM)
    s.bind((ip, 0))
    return s


def addr_of(s: socket.socket) -> Addr:
    """The local address of ``s``."""
    return Addr.parse(s.getsockname()[:2])


def connect(dst: Addr) -> socket.socket:
    """A blocking client connected to ``dst`` (completes via the backlog, no accept needed)."""
    c = socket.create_connection(dst.sockaddr()[:2], timeout=5)
    c.settimeout(None)
    return c


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


# ------------------------------------------------------------ SIP messages, TLS files


def sip_request(
    n: int = 1, body: bytes = b"", callid: str = "c1", method: str = "OPTIONS", proto: str = "TCP"
) -> bytes:
    """A raw SIP request from 127.0.0.1:5060, number ``n`` of dialog ``callid``."""
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto} 127.0.0.1:5060;branch=z9hG4bK-{callid}-{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {n} {method}\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"\r\n"
    ).encode() + body


def pkt(data: bytes) -> Packet:
    return Packet.new_from_string(data)


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


# ------------------------------------------------------------ driving a loop

Received = list[tuple[Packet, Addr]]


def collector() -> tuple[Received, Callable[[Packet, Addr], None]]:
    """A receive callback and the list it appends ``(packet, from)`` to."""
    got: Received = []

    def cb(packet: Packet, from_: Addr) -> None:
        got.append((packet, from_))

    return got, cb


def drive(loop: EventLoop, cond: Callable[[], object], seconds: float = 5.0) -> None:
    """Run the loop until ``cond()`` is true; fail after ``seconds`` (real time)."""
    deadline = time.monotonic() + seconds
    loop.loop(None, lambda: bool(cond()) or time.monotonic() > deadline)
    assert cond(), "condition not reached in time"


def length_is(items: list[Any], n: int) -> Callable[[], bool]:
    """A stop condition: ``items`` has ``n`` elements."""
    return lambda: len(items) == n


def spin(loop: EventLoop, seconds: float = 0.2) -> None:
    """Run the loop for a short while (to show that nothing more happens)."""
    deadline = time.monotonic() + seconds
    loop.loop(None, lambda: time.monotonic() > deadline)


def datagrams(s: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``s``, in order; never blocks."""
    out: list[bytes] = []
    while True:
        try:
            out.append(s.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def is_eof(s: socket.socket) -> bool:
    """True if the peer closed ``s`` (EOF or reset); never blocks."""
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


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
