"""Helpers for netsip's own tests: live peers, source checks, TLS files, subprocess output.

The general helpers (loopback sockets, the fake clock, the loop drivers, the
packet collector, fd counting) live in the public :mod:`netsip.testing`;
they are re-exported here so that the tests import everything from one place.
What stays here is specific to this project's test suite: finding the Perl
and sipp peers (skipped, or failed under ``NETSIP_REQUIRE_PEERS=1``), the
pytest parametrisation over the loopbacks, TLS files in pytest's temporary
directories, and reading a peer subprocess's output; and the helpers that
several test modules share: the round-trip checks of parsed packets, hostile
peers (resets, fd limits, garbage datagrams), hypothesis strategies for
header values, the ``netsip`` command as a subprocess and sipp runs.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import csv
import glob
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from hypothesis import strategies as st

from netsip import cli
from netsip.aio import AsyncioEventLoop, new_asyncio_loop
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EV_READ, EventLoop
from netsip.framing import Message, frame
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.socketpool import SocketPool
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
from netsip.util import Addr, Var

if TYPE_CHECKING:
    import redis

__all__ = [
    "LISTEN_TIMEOUT",
    "LOOPBACKS",
    "PEER",
    "REQUIRE_PEERS",
    "ROOT",
    "SIPP_TIMEOUT",
    "SIPP_WAIT",
    "FakeClock",
    "LineReader",
    "Listen",
    "PipeReader",
    "Received",
    "TlsFiles",
    "addr_of",
    "address",
    "answering",
    "asyncio_loop",
    "at_least",
    "big_rcvbuf",
    "call_request",
    "check_all_successful",
    "check_parsed",
    "collector",
    "connect",
    "datagrams",
    "drive",
    "family",
    "fd_limit",
    "free_port",
    "garbage",
    "have_ipv6",
    "imported_modules",
    "is_eof",
    "is_uvloop",
    "junk_request",
    "length_is",
    "listen_summary_only",
    "make_tls_files",
    "missing_peer",
    "nasty_text",
    "netsip_command",
    "open_fds",
    "options",
    "peer_closed",
    "perl_has",
    "pkt",
    "poll",
    "python_env",
    "rebuilt",
    "require_perl_netsip",
    "require_sipp",
    "require_tls",
    "reset",
    "roundtrip",
    "run_cli",
    "run_sipp",
    "same_content",
    "sip_request",
    "sipp_stats",
    "skip_unless_native",
    "spin",
    "start_perl_peer",
    "summary_counts",
    "tcp_listener",
    "udp_socket",
    "write_certs",
]

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "perl" / "netsip_peer.pl"

REQUIRE_PEERS = os.environ.get("NETSIP_REQUIRE_PEERS", "") not in ("", "0")


def is_uvloop(loop: EventLoop) -> bool:
    """True if ``loop`` is an :class:`AsyncioEventLoop` on uvloop."""
    return isinstance(loop, AsyncioEventLoop) and type(loop.aloop).__module__.startswith("uvloop")


def skip_unless_native(loop: EventLoop, why: str) -> None:
    """Skip the test unless ``loop`` is netsip's own :class:`EventLoop` (``--loop``)."""
    if isinstance(loop, AsyncioEventLoop):
        pytest.skip(f"native loop only: {why}")


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose time follows a :class:`FakeClock`, for fake-clock
    tests on :class:`AsyncioEventLoop` (build that with ``clock=aloop.time``).

    Its time is the fake clock plus the real time since the test last moved
    the clock: a test that moves the clock fires the timers that came due, and
    a real-time bound (``drive``'s, ``STOPVAR_POLL_INTERVAL``) still ends
    while the clock stands still. Between two moves of the clock the time runs
    ahead of it by that real time (milliseconds, in the tests that use it).
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._fake = clock
        self._seen = clock.now
        self._since = time.monotonic()

    def time(self) -> float:
        now, real = self._fake.now, time.monotonic()
        if now != self._seen:
            self._seen, self._since = now, real
        return now + (real - self._since)


@contextlib.contextmanager
def asyncio_loop(
    kind: str = "asyncio", clock: FakeClock | None = None
) -> Iterator[tuple[AsyncioEventLoop, list[object]]]:
    """An :class:`AsyncioEventLoop` on a new (not running) asyncio loop or uvloop,
    and the list of the exceptions its callbacks raised; both closed after.

    With ``clock``, the asyncio loop is a :class:`FakeTimeLoop` on it.
    Skips the test for ``"uvloop"`` when uvloop is not installed, or with a
    ``clock`` (uvloop's time cannot be replaced).
    """
    if kind == "uvloop":
        if clock is not None:
            pytest.skip("uvloop's time cannot follow a fake clock")
        pytest.importorskip("uvloop")
    aloop = new_asyncio_loop(kind) if clock is None else FakeTimeLoop(clock)
    errors: list[object] = []
    aloop.set_exception_handler(lambda _l, ctx: errors.append(ctx.get("exception", ctx)))
    lp = AsyncioEventLoop(aloop) if clock is None else AsyncioEventLoop(aloop, clock=aloop.time)
    try:
        yield lp, errors
    finally:
        lp.close()
        aloop.run_until_complete(aloop.shutdown_asyncgens())
        aloop.close()


def missing_peer(what: str, how: str) -> None:
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
        missing_peer("Perl's Net::SIP", "apt-get install libnet-sip-perl")
    if tls and not perl_has("IO::Socket::SSL"):
        missing_peer("Perl's IO::Socket::SSL", "apt-get install libio-socket-ssl-perl")
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
        missing_peer("sipp", "apt-get install sip-tester")
        raise AssertionError("unreachable")
    return sipp


def require_kamailio() -> tuple[str, str]:
    """The kamailio binary and its module directory, or skip/fail."""
    binary = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
    )
    mods = sorted(glob.glob("/usr/lib/*/kamailio/modules")) + sorted(
        glob.glob("/usr/lib/kamailio/modules")
    )
    if binary is None or not mods:
        missing_peer("Kamailio", "apt-get install kamailio")
        raise AssertionError("unreachable")
    return binary, mods[0]


# ------------------------------------------------------------ source checks


def compiled_configured() -> list[str]:
    """The modules the compiled build compiles (``[tool.netsip] compiled`` in pyproject.toml)."""
    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["netsip"]["compiled"]
    return modules


def source_path(module: ModuleType) -> Path:
    """The Python source of ``module``, also when it runs compiled (its ``__file__`` a ``.so``)."""
    assert module.__file__ is not None
    return Path(module.__file__).with_name(module.__name__.rpartition(".")[2] + ".py")


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


# ------------------------------------------------------------ packet checks


def rebuilt(p: Request | Response) -> bytes:
    """The wire form after a modification that leaves the content as it was."""
    q = p.clone()
    q.add_header("X-Netsip-Test", "1")
    q.del_header("x-netsip-test")
    return q.as_bytes()


def same_content(a: Packet, b: Packet, ignore: tuple[str, ...] = ()) -> None:
    assert a.as_parts()[:2] == b.as_parts()[:2]
    assert [h for h in a.header_items() if h[0] not in ignore] == [
        h for h in b.header_items() if h[0] not in ignore
    ]
    assert a.body() == b.body()


def check_parsed(p: Request | Response) -> None:
    """What parsed serialises and re-parses to the same packet, rebuilt or not."""
    wire = p.as_bytes()
    again = Packet.new_from_string(wire)
    assert again == p
    # the wire form has a Content-Length even if the parsed message had none
    same_content(again, p, ignore=("content-length",))
    # Content-Length is 1*DIGIT (RFC 3261 20.14): "0009" is kept verbatim, and means 9
    assert int(p.get_header("content-length") or len(p.body())) == len(p.body())
    # rebuilt from the parsed parts (original lines kept, Content-Length added)
    q = Packet.new_from_string(rebuilt(p))
    same_content(q, p, ignore=("content-length",))
    # rebuilt from scratch (every header written anew)
    fresh: Request | Response
    if isinstance(p, Request):
        fresh = Request(p.method(), p.uri(), p.header_items(), p.body())
    else:
        fresh = Response(p.code(), p.msg(), p.header_items(), p.body())
    fq = Packet.new_from_string(fresh.as_bytes())
    same_content(fq, fresh, ignore=("content-length",))
    assert p.headers() == {k: p.get_headers(k) for k, _ in p.header_items()}


_OPTIONS = (
    b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-%d\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=%d\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: %d@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"Supported: timer, replaces\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def options(n: int) -> bytes:
    """An OPTIONS from 127.0.0.1:5070; ``n`` is in its branch, From tag and Call-ID."""
    return _OPTIONS % (n, n, n)


# ------------------------------------------------------------ hostile peers


def call_request(
    n: int = 1, callid: str = "c1", body: bytes = b"", method: str = "OPTIONS", proto: str = "TCP"
) -> bytes:
    """:func:`sip_request` with the Call-ID second: request ``n`` of call ``callid``."""
    return sip_request(n, body, callid, method, proto)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that nobody listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def reset(s: socket.socket) -> None:
    """Close ``s`` with a RST instead of a FIN (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@contextlib.contextmanager
def fd_limit(spare: int) -> Iterator[None]:
    """Lower RLIMIT_NOFILE so that exactly ``spare`` more fds can be opened.

    The holes below the highest open fd are filled first (the kernel always
    hands out the lowest free number). Everything is restored on exit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd > highest:
                os.close(fd)
                break
            fillers.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + spare, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        for fd in fillers:
            os.close(fd)


def poll(loop: EventLoop, times: int = 3) -> None:
    """A few non-blocking loop cycles: loopback delivers at once."""
    for _ in range(times):
        loop.loop(0)


def answering(pool: SocketPool, got: Received) -> Callable[[Packet, Addr], None]:
    """A receive callback that records packets and answers requests with 200."""

    def cb(packet: Packet, from_: Addr) -> None:
        got.append((packet, from_))
        if isinstance(packet, Request):
            pool.sendto(packet.create_response(200), from_)

    return cb


def peer_closed(s: socket.socket) -> bool:
    """True if the other end closed ``s`` (EOF after any pending data, or a reset)."""
    while True:
        try:
            data = s.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True


def roundtrip(
    loop: EventLoop, s: socket.socket, data: bytes, seconds: float = 5.0
) -> tuple[bytes, int]:
    """Send ``data`` over ``s`` and drive ``loop`` until a whole SIP message comes back.

    Returns:
        The message and the number of loop cycles it took.
    """
    s.sendall(data)
    buf = bytearray()
    deadline = time.monotonic() + seconds
    cycles = 0
    while time.monotonic() < deadline:
        loop.loop(0)
        cycles += 1
        try:
            chunk = s.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            select.select([s], [], [], 0.001)
            continue
        assert chunk, "connection closed instead of an answer"
        buf += chunk
        r = frame(buf, 2**14, 2**16)
        if isinstance(r, Message):
            return bytes(buf[r.start : r.end]), cycles
    raise AssertionError("no answer in time")


def junk_request(rng: random.Random, n: int) -> bytes:
    """A well-formed request whose Call-ID marks it as junk (not counted as valid)."""
    return call_request(n, f"junk-{n}", proto="UDP")


def garbage(rng: random.Random, n: int) -> bytes:
    """One hostile datagram (kind chosen by ``rng``); may occasionally parse."""
    kind = rng.randrange(12)
    base = junk_request(rng, n)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(13, 1400))
    if kind == 1:  # truncated anywhere
        return base[: rng.randrange(1, len(base))]
    if kind == 2:  # a few bytes flipped, inserted or deleted
        b = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                b.insert(i, rng.choice(b'\r\n\0:;,<>" \t'))
            elif len(b) > 20:
                del b[i]
        return bytes(b)
    if kind == 3:  # header bomb: many tiny headers
        return base.replace(b"\r\n\r\n", b"\r\n" + b"X: a\r\n" * 300 + b"\r\n")
    if kind == 4:  # keep-alives and runts (< 13 bytes)
        return rng.choice([b"\r\n\r\n", b"\r\n", b"\0" * 4, b"jaK", b"OPTIONS sip"])
    if kind == 5:  # NULs
        return b"\0" * rng.randrange(13, 2000)
    if kind == 6:  # Content-Length beyond the datagram
        return base.replace(b"Content-Length: 0", b"Content-Length: 99999")
    if kind == 7:  # bad status lines
        return rng.choice(
            [b"SIP/2.0 999 Nope\r\n\r\n", b"SIP/2.0 20 OK\r\n\r\n", b"SIP/3.0 200 OK\r\n\r\n"]
        )
    if kind == 8:  # non-UTF-8 header names and values
        return base.replace(b"Max-Forwards", b"\xff\xfe\x80Max").replace(b"alice", b"\xc3\x28")
    if kind == 9:  # a huge value in one header (stays below the UDP maximum)
        return base.replace(b"To: <", b"To: " + b"x" * rng.randrange(1000, 60000) + b" <")
    if kind == 10:  # conflicting single-valued headers
        return base.replace(b"Call-ID: junk", b"Call-ID: a\r\nCall-ID: junk")
    # big random datagrams, rarely (they take much receive buffer)
    if rng.randrange(20) == 0:
        return rng.randbytes(rng.randrange(20000, 65000))
    return rng.randbytes(rng.randrange(13, 200))


def at_least(count: Callable[[], int], n: int) -> Callable[[], bool]:
    """A stop condition: ``count()`` reached ``n``."""
    return lambda: count() >= n


def big_rcvbuf(s: socket.socket) -> socket.socket:
    # 4 MiB (net.core.rmem_max on most systems) holds a whole batch
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    return s


# ------------------------------------------------------------ header values

# Hypothesis strategies for From/To/Contact values, shared by the property
# tests that hold a shortcut (the response cache key, the Leg's Contact) to
# the general code: the characters that matter to tags, name-addrs, quoting
# and folding, and addresses made of them.
_NASTY = '<>;=, \t"\\@:tagTAGsipSIP.1x\u0130\u017f\n\r'
nasty_text = st.text(alphabet=_NASTY, max_size=40)

_tag_name = st.sampled_from(["tag", "TAG", "Tag", "tAg", "tags", "xtag", "ta g"])
_param_value = st.text(alphabet="abc12-.>;, \t", max_size=8)
_param = st.one_of(
    st.builds(lambda n, v: f";{n}={v}", _tag_name, _param_value),
    st.builds(lambda n, v: f" ; {n} = {v}", _tag_name, _param_value),
    st.sampled_from([";lr", ";transport=udp", ";x=tag", ";", ";user=phone"]),
)
_uri = st.sampled_from(["sip:bob@127.0.0.1", "sip:bob@[::1]:5062", "sips:b@x;tag=u", "tel:+1"])
_display = st.sampled_from(["", '"Bob" ', "Bob ", '"a<b>;tag=x" ', '"Q\\"x" '])
_params = st.lists(_param, max_size=3)
#: a From/To value: a name-addr or addr-spec with tag-like parameters, or nasty text
address = st.one_of(
    st.builds(lambda d, u, ps: f"{d}<{u}>{''.join(ps)}", _display, _uri, _params),
    st.builds(lambda u, ps: u + "".join(ps), _uri, _params),
    nasty_text,
)


# ------------------------------------------------------------ the netsip command

LISTEN_TIMEOUT = 20.0  # upper bound for any single wait on a ``netsip listen``


def netsip_command() -> list[str]:
    """How a user starts netsip: the console script of this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("netsip")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "netsip"]


class Listen:
    """``netsip listen`` as a subprocess; stdout goes to a file, stderr is read live.

    Args:
        args: the arguments after ``listen``.
        tmp: directory for the stdout file.
        command: the command line instead of ``netsip listen ARGS``.
    """

    def __init__(
        self, args: Sequence[str], tmp: Path, command: Sequence[str] | None = None
    ) -> None:
        self.stdout_path = tmp / f"listen-{time.monotonic_ns()}.out"
        with self.stdout_path.open("wb") as out:
            self.proc = subprocess.Popen(
                list(command) if command else [*netsip_command(), "listen", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                env=python_env(),
            )
        assert self.proc.stderr is not None
        self.err = LineReader(self.proc.stderr.fileno())
        self.returncode: int | None = None

    def addresses(self, count: int) -> dict[str, Addr]:
        """Wait for ``count`` "listening on" lines; proto -> address."""
        found = self.err.wait_for(r"listening on (udp|tcp|tls|ws|wss):(\S+)$", count)
        return {m.group(1): Addr.parse(m.group(2)) for m in found}

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Signal, wait for the exit status, return stdout."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.returncode = self.proc.wait(timeout=LISTEN_TIMEOUT)
        self.err.drain()
        return self.stdout_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=LISTEN_TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def summary_counts(stdout: str) -> dict[str, int]:
    """Method counts from the summary line of ``netsip listen``."""
    m = re.search(r"methods: (.*)$", stdout, re.M)
    assert m is not None, stdout
    return {k: int(v) for k, v in (x.rsplit(" ", 1) for x in m.group(1).split(", "))}


def write_certs(tmp: Path) -> dict[str, Path]:
    """Write a CA, a server certificate for 127.0.0.1/::1/localhost and a client
    certificate as PEM files into ``tmp``; name -> path."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    client = ca.issue_cert("client.netsip.test")
    paths = {
        "ca": tmp / "ca.pem",
        "server": tmp / "server.pem",
        "server_cert": tmp / "server-cert.pem",
        "server_key": tmp / "server-key.pem",
        "client": tmp / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(paths["server_cert"]), append=i > 0)
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


def require_tls(certs: dict[str, Path]) -> None:
    """Skip while SocketPool has no TLS transport (it raises NotImplementedError)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        SocketPool("tls", sock, tls={"certfile": str(certs["server"])}).close()
    except NotImplementedError as exc:
        pytest.skip(f"SocketPool has no TLS yet: {exc}")
    finally:
        sock.close()


# ------------------------------------------------------------ sipp runs

SIPP_TIMEOUT = 30  # sipp's own global timeout (s); -timeout_error makes it a failure
SIPP_WAIT = 60.0  # upper bound for a sipp run


def sipp_stats(path: Path) -> dict[str, str]:
    """The last row of sipp's ``-trace_stat`` CSV file as a dict."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert len(rows) >= 2, rows
    return dict(zip(rows[0], rows[-1], strict=False))


def run_sipp(
    sipp: str, args: list[str], cwd: Path, timeout: float = SIPP_WAIT
) -> tuple[int, dict[str, str], str]:
    """Run sipp to its end; (exit status, final statistics, stderr + error log).

    Without ``-p`` in ``args`` sipp gets a free local port (its default,
    5060, may be taken by another peer).
    """
    stf = cwd / f"stats-{time.monotonic_ns()}.csv"
    port = [] if "-p" in args else ["-p", str(free_udp_tcp_port())]
    cmd = [
        sipp,
        *args,
        *port,
        "-i",
        "127.0.0.1",
        "-nostdin",
        "-timeout",
        f"{SIPP_TIMEOUT}s",
        "-timeout_error",
        "-trace_stat",
        "-stf",
        str(stf),
        "-trace_err",
    ]
    res = subprocess.run(
        cmd,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    errors = res.stderr.decode("utf-8", "replace")
    for log in cwd.glob("*_errors.log"):
        errors += log.read_text(errors="replace")[-4000:]
    return res.returncode, sipp_stats(stf), errors


def listen_summary_only(started: list[Listen], tmp: Path, *args: str) -> tuple[Listen, int]:
    """Start ``netsip listen --summary-only ARGS`` (kept in ``started``); it and its port."""
    srv = Listen(["--summary-only", *args], tmp)
    started.append(srv)
    addrs = srv.addresses(1 if any(a.startswith(("udp:", "tcp:", "tls:")) for a in args) else 2)
    return srv, next(iter(addrs.values())).port


def check_all_successful(rc: int, stats: dict[str, str], errors: str, calls: int) -> None:
    """sipp reports ``calls`` successful calls, none failed, and exit status 0."""
    assert stats["SuccessfulCall(C)"] == str(calls), (stats, errors)
    assert stats["FailedCall(C)"] == "0", (stats, errors)
    assert rc == 0, (rc, errors)


# --- endpoint peers (sipp, perl) ---

ENDPOINT_PEER = ROOT / "tests" / "perl" / "endpoint_peer.pl"


def start_endpoint_peer(*args: str) -> subprocess.Popen[bytes]:
    """Start ``tests/perl/endpoint_peer.pl`` (Net::SIP::Simple); stdout and stderr on one pipe."""
    return subprocess.Popen(
        [require_perl_netsip(), str(ENDPOINT_PEER), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def start_sipp(sipp: str, args: Sequence[str], cwd: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """sipp in the background with :func:`run_sipp`'s options; (process, statistics file).

    Its stderr goes to ``sipp-stderr.log`` in ``cwd`` (read by :func:`sipp_errors`).
    """
    stf = cwd / f"stats-{time.monotonic_ns()}.csv"
    with (cwd / "sipp-stderr.log").open("ab") as err:
        proc = subprocess.Popen(
            [sipp, *args, "-i", "127.0.0.1", "-nostdin", "-timeout", f"{SIPP_TIMEOUT}s",
             "-timeout_error", "-trace_stat", "-stf", str(stf), "-trace_err"],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    return proc, stf


def sipp_errors(cwd: Path) -> str:
    """What sipp runs in ``cwd`` wrote to stderr and their error logs (the last 4000 chars each)."""
    logs = [cwd / "sipp-stderr.log", *sorted(cwd.glob("*_errors.log"))]
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in logs if p.exists())


def stop_process(proc: subprocess.Popen[bytes], timeout: float = SIPP_WAIT) -> int:
    """SIGTERM ``proc`` if it still runs (SIGKILL after ``timeout``), reap it, close its stdout."""
    if proc.poll() is None:
        proc.terminate()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(timeout=timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    return rc


__all__ += ["ENDPOINT_PEER", "sipp_errors", "start_endpoint_peer", "start_sipp", "stop_process"]


# --- what an Endpoint's context callback gets ---

# (appended here, below the helpers above, to keep this block in one place)


@dataclass(eq=False)
class EndpointEvent:
    """One call of an Endpoint context callback, with ``ctx.ack`` as it was during the call."""

    ep: Endpoint
    ctx: Context
    err: int
    code: int
    packet: Packet | None
    leg: Leg | None
    from_: Addr | None
    ack: Request | None


@dataclass(eq=False)
class EndpointEvents:
    """A context callback (``cb``) that records each call in ``events`` and hands it to ``then``.

    ``keep=False`` records nothing (many calls, only ``then`` wanted).
    """

    then: Callable[[EndpointEvent], object] | None = None
    keep: bool = True
    events: list[EndpointEvent] = field(default_factory=list)

    def cb(  # noqa: PLR0917  (the Endpoint's callback convention, Net::SIP's order)
        self,
        ep: Endpoint,
        ctx: Context,
        err: int,
        code: int,
        packet: Packet | None,
        leg: Leg | None,
        from_: Addr | None,
    ) -> None:
        event = EndpointEvent(ep, ctx, err, code, packet, leg, from_, ctx.ack)
        if self.keep:
            self.events.append(event)
        if self.then is not None:
            self.then(event)

    def codes(self) -> list[int]:
        """The response codes, in order (0 for a request or an error without a response)."""
        return [e.code for e in self.events]

    def outcomes(self) -> list[tuple[int, int | str]]:
        """(err, the method of a request or the code of a response), in order."""
        return [
            (e.err, e.packet.method() if isinstance(e.packet, Request) else e.code)
            for e in self.events
        ]

    @property
    def acked(self) -> bool:
        """A 200 came with its ACK already made (``ctx.ack`` set in the callback)."""
        return any(e.code == 200 and e.ack is not None for e in self.events)


__all__ += ["EndpointEvent", "EndpointEvents"]


# --- Kamailio (tests/kamailio/*.cfg) on free loopback ports ---

KAMAILIO_START_TIMEOUT = 15.0  # seconds for Kamailio to open its ports


def free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP at the time of asking."""
    for _ in range(50):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
        ):
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no free port on 127.0.0.1")


class Kamailio:
    """A Kamailio process with a config from ``tests/kamailio/``.

    Args:
        config: the file name in ``tests/kamailio/``; its ``@KPORT@``,
            ``@MPATH@`` and ``@NETSIP@`` are filled in.
        tmp: directory for the config, the run directory and the log.
        netsip_uri: what ``@NETSIP@`` stands for.
        defines: ``-A`` switches (``#!ifdef`` names of the config).
    """

    def __init__(
        self, config: str, tmp: Path, netsip_uri: str = "", defines: Sequence[str] = ()
    ) -> None:
        binary, mpath = require_kamailio()
        self.port = free_udp_tcp_port()
        text = (ROOT / "tests" / "kamailio" / config).read_text()
        text = text.replace("@KPORT@", str(self.port)).replace("@MPATH@", mpath)
        text = text.replace("@NETSIP@", netsip_uri)
        cfg = tmp / "kamailio.cfg"
        cfg.write_text(text)
        rundir = tmp / "kamailio-run"
        rundir.mkdir()
        self.log = tmp / "kamailio.log"
        # -DD: stay in the foreground (workers are still forked),
        # -E: log to stderr; small shared/private memory
        args = [binary, "-f", str(cfg), "-DD", "-E", "-m", "32", "-M", "8", "-Y", str(rundir)]
        for name in defines:
            args += ["-A", name]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + KAMAILIO_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kamailio exited: {self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                # the process is starting: poll its port (no loop to drive here)
                time.sleep(0.05)
        raise AssertionError(f"kamailio did not listen: {self.log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # workers left behind by a crash of the main process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class AuthKamailio(Kamailio):
    """Kamailio with ``registrar_auth.cfg``; ``defines`` are its ``-A`` switches.

    ``SHA256`` challenges with ``algorithm=SHA-256`` instead of MD5, ``QOP``
    with ``qop="auth"``.
    """

    def __init__(self, tmp: Path, *defines: str) -> None:
        super().__init__("registrar_auth.cfg", tmp, defines=defines)

    def uri(self, proto: str, user: str | None = None) -> str:
        """A SIP URI at Kamailio, reached over ``proto``."""
        user_part = f"{user}@" if user else ""
        transport = ";transport=tcp" if proto == "tcp" else ""
        return f"sip:{user_part}127.0.0.1:{self.port}{transport}"


__all__ += ["AuthKamailio", "Kamailio", "free_udp_tcp_port"]


# --- Redis (the registrar store on Redis) on a free loopback port ---

REDIS_START_TIMEOUT = 15.0  # seconds for redis-server to answer PING


def require_redis() -> str:
    """The redis-server binary, if it and redis-py are installed; else skip/fail."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if binary is None:
        missing_peer("redis-server", "apt-get install redis-server")
        raise AssertionError("unreachable")
    try:
        import redis  # noqa: F401, PLC0415  (optional: netsip[redis])
    except ImportError:
        missing_peer("redis-py", "pip install 'netsip[redis]'")
    return binary


class RedisServer:
    """A ``redis-server`` without persistence on a free 127.0.0.1 port.

    :meth:`kill` and :meth:`start` stop it and start it again on the same
    port (empty: nothing is saved). DEBUG commands are allowed from the
    loopback (``DEBUG SLEEP`` stalls it).
    """

    def __init__(self, tmp: Path) -> None:
        self.binary = require_redis()
        self.tmp = tmp
        self.port = free_port(socket.SOCK_STREAM)
        self.log = tmp / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again) and wait until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        args += ["--enable-debug-command", "local", "--daemonize", "no"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                # the process is starting: poll its port (no loop to drive here)
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not answer: {self.log.read_text()[-3000:]}")

    def client(self) -> redis.Redis:
        """A redis-py client of this server (for the test's own commands)."""
        import redis  # noqa: PLC0415  (optional: netsip[redis])

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=REDIS_START_TIMEOUT)

    def kill(self) -> None:
        """Kill it (SIGKILL: as a crash) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=REDIS_START_TIMEOUT)

    close = kill


__all__ += ["RedisServer", "require_redis"]


# --- Node.js (JsSIP, SIP.js) and Chromium: the WebRTC peers (tests/webrtc/) ---

NODE_MIN_MAJOR = 18  # esbuild and SIP.js need Node 18 or later


def require_node() -> tuple[str, str]:
    """The ``node`` and ``npm`` binaries (Node 18 or later), or skip/fail."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing_peer("Node.js with npm", "apt-get install nodejs npm")
        raise AssertionError("unreachable")
    res = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    m = re.match(r"v(\d+)\.", res.stdout.strip())
    if m is None or int(m.group(1)) < NODE_MIN_MAJOR:
        missing_peer(f"Node.js {NODE_MIN_MAJOR} or later", f"found {res.stdout.strip() or '?'}")
    return node, npm


def require_chromium() -> str:
    """The Chromium binary (Debian's ``chromium``, or ``chromium-browser``), or skip/fail."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found is not None:
            return found
    missing_peer("Chromium", "apt-get install chromium")
    raise AssertionError("unreachable")


__all__ += ["require_chromium", "require_node"]
