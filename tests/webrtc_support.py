"""The WebRTC peers of the tests: JsSIP and SIP.js in Node, JsSIP in headless Chromium.

The JavaScript lives in ``tests/webrtc/`` with a ``package.json`` of pinned
versions and its ``package-lock.json``. :func:`install_packages` copies both
and the scripts into a temporary folder and runs ``npm ci`` there (once per
test run: the tests take it from a session fixture); nothing is installed
anywhere else (npm's cache is in that folder too). Without Node, npm or the
registry the tests are skipped, and fail under ``NETSIP_REQUIRE_PEERS=1``.

Each peer reports what happens as JSON lines, ``{"event": NAME, ...}``:

- :class:`NodePeer`: a script run by ``node``, its stdout read inside the
  netsip event loop (so the test's own user agent keeps running meanwhile);
- :class:`PageServer`: a tiny HTTP server (a thread) that serves the page,
  its script and the JsSIP bundle to the browser and collects the events the
  page POSTs to ``/event``;
- :class:`Chromium`: headless Chromium on that page, in its own process
  group, killed as a whole afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Final

from netsip.eventloop import EventLoop
from netsip.testing import drive
from tests.support import ROOT, PipeReader, missing_peer, require_chromium, require_node

WEBRTC: Final = ROOT / "tests" / "webrtc"
#: the files copied next to the installed packages
SOURCES: Final = (
    "package.json",
    "package-lock.json",
    "node_env.js",
    "jssip_peer.js",
    "sipjs_peer.mjs",
    "page.html",
    "page.js",
    "pair.html",
    "pair.js",
)
WHAT: Final = "an npm install of tests/webrtc/package.json"
NPM_TIMEOUT: Final = 240.0  # npm ci, from the registry, on a slow CI network
BUILD_TIMEOUT: Final = 60.0  # esbuild bundling JsSIP
PEER_TIMEOUT: Final = 30.0  # one peer's whole run (register, call, hang up, unregister)
STOP_TIMEOUT: Final = 10.0

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodePackages:
    """The installed packages: ``dir`` holds ``node_modules`` and the scripts."""

    dir: Path
    node: str
    seconds: float  # how long ``npm ci`` took


def install_packages(tmp: Path) -> NodePackages:
    """``npm ci`` of ``tests/webrtc`` into ``tmp``; skip/fail when it cannot be done."""
    node, npm = require_node()
    for name in SOURCES:
        shutil.copy2(WEBRTC / name, tmp / name)
    env = dict(os.environ)
    env.update(
        npm_config_cache=str(tmp / ".npm-cache"),
        npm_config_update_notifier="false",
        npm_config_fund="false",
        npm_config_audit="false",
        # a registry that cannot be reached fails in seconds, not minutes of retries
        npm_config_fetch_retries="1",
        npm_config_fetch_retry_mintimeout="1000",
        npm_config_fetch_retry_maxtimeout="3000",
        npm_config_fetch_timeout="60000",
    )
    # --ignore-scripts: no package needs its install script (esbuild finds its
    # binary in the optional @esbuild/<platform> package without it)
    argv = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    start = time.monotonic()
    try:
        res = subprocess.run(
            argv,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        missing_peer(WHAT, f"npm ci took over {NPM_TIMEOUT:.0f} s")
        raise AssertionError("unreachable") from None
    if res.returncode != 0:
        head = " ".join((res.stderr or res.stdout).splitlines()[:3])[:300]
        missing_peer(WHAT, f"npm ci failed with {res.returncode}: {head}")
    return NodePackages(tmp, node, time.monotonic() - start)


def build_bundle(packages: NodePackages) -> Path:
    """JsSIP for the browser, built with esbuild from npm: ``jssip.js``, global ``JsSIP``.

    (The npm package ships CommonJS only, no browser build.)
    """
    out = packages.dir / "jssip.js"
    esbuild = packages.dir / "node_modules" / ".bin" / "esbuild"
    subprocess.run(
        [
            str(esbuild),
            "node_modules/jssip/lib/JsSIP.js",
            "--bundle",
            "--format=iife",
            "--global-name=JsSIP",
            f"--outfile={out.name}",
            "--log-level=warning",
        ],
        cwd=packages.dir,
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=BUILD_TIMEOUT,
    )
    return out


def parse_events(lines: list[str]) -> list[Event]:
    """The JSON event lines among ``lines`` (anything else a peer prints is skipped)."""
    events: list[Event] = []
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            events.append(obj)
    return events


class NodePeer:
    """A peer script run by ``node`` with its JSON config; events read in ``loop``.

    Args:
        packages: the installed packages (the script runs in their folder).
        script: ``jssip_peer.js`` or ``sipjs_peer.mjs``.
        loop: the netsip event loop that reads the peer's stdout.
        config: the peer's config (``ws``, ``uri``, ``password``, ``mode`` ...).
        ca: a CA file the peer trusts besides the system's (``NODE_EXTRA_CA_CERTS``).
    """

    def __init__(
        self,
        packages: NodePackages,
        script: str,
        loop: EventLoop,
        config: Mapping[str, object],
        ca: str | None = None,
    ) -> None:
        self.loop = loop
        self.script = script
        self.config = {"timeout": PEER_TIMEOUT - 5, **config}
        env = dict(os.environ)
        env.pop("NODE_OPTIONS", None)
        env.pop("NODE_EXTRA_CA_CERTS", None)  # (only the CA given here)
        if ca is not None:
            env["NODE_EXTRA_CA_CERTS"] = ca
        self.stderr_path = packages.dir / f"{script}-{time.monotonic_ns()}.err"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [packages.node, script, json.dumps(self.config)],
                cwd=packages.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        self.reader = PipeReader(loop, self.proc.stdout.fileno())

    def events(self) -> list[Event]:
        return parse_events(self.reader.lines() if self.reader.has_line() else [])

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def event(self, name: str) -> Event:
        """The first event ``name`` (AssertionError with what happened if none)."""
        for e in self.events():
            if e["event"] == name:
                return e
        raise AssertionError(f"no {name!r} from the peer: {self.describe()}")

    def describe(self) -> str:
        err = self.stderr_path.read_text(errors="replace")[-2000:]
        return f"events {self.events()}, stderr {err!r}"

    def wait_for(self, name: str, seconds: float = PEER_TIMEOUT) -> Event:
        """Run the loop until the peer reports ``name`` (or fails, or ends)."""
        stop = {name, "failed", "timeout"}
        drive(
            self.loop,
            lambda: bool(stop & set(self.names())) or bool(self.reader.eof),
            seconds,
            what=f"{name!r} from {self.script}",
        )
        return self.event(name)

    def finish(self, seconds: float = PEER_TIMEOUT) -> int:
        """Run the loop until the peer has exited; its exit status."""
        drive(self.loop, lambda: bool(self.reader.eof), seconds, what="the peer's exit")
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        if not self.reader.eof:
            self.loop.del_fd(self.reader.fd)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class _Handler(BaseHTTPRequestHandler):
    """GET of the page's files, POST of its events (to ``server.events``)."""

    server: PageServer
    TYPES: ClassVar[dict[str, str]] = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
    }

    def do_GET(self) -> None:
        name = self.path.split("?")[0].split("#")[0].lstrip("/")
        if name not in self.server.files:
            self.send_error(404)
            return
        body = (self.server.root / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", self.TYPES[Path(name).suffix])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 65536))
        if self.path == "/event":
            self.server.add(body.decode("utf-8", "replace"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # (the events are what matters; no request log on stderr)


class PageServer(ThreadingHTTPServer):
    """The browser's web server on 127.0.0.1 (a thread); ``events`` are the page's."""

    daemon_threads = True

    def __init__(self, root: Path, files: tuple[str, ...]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.files = files
        self.lock = threading.Lock()
        self._events: list[Event] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def add(self, line: str) -> None:
        with self.lock:
            self._events += parse_events([line])

    def events(self) -> list[Event]:
        with self.lock:
            return list(self._events)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def event(self, name: str) -> Event:
        for e in self.events():
            if e["event"] == name:
                return e
        raise AssertionError(f"no {name!r} from the page: {self.events()}")

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=STOP_TIMEOUT)


#: Chromium's switches: headless, nothing of its own on the network (this one
#: refuses Google's hosts), a fresh profile, fake camera and microphone that
#: need no permission prompt.
CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--mute-audio",
    "--disable-dev-shm-usage",  # (containers have a small /dev/shm)
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)


@dataclass
class Chromium:
    """Headless Chromium on ``url`` in its own session (process group).

    ``ignore_certificate_errors`` is for the test only: the page's ``wss://``
    goes to netsip with a certificate of a test CA the browser does not know.
    """

    url: str
    profile: Path
    ignore_certificate_errors: bool = True
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        binary = require_chromium()
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]
        if self.ignore_certificate_errors:
            flags.append("--ignore-certificate-errors")
        self.log_path = self.profile.with_suffix(".log")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, *flags, self.url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its helpers are in the group killed in close()
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        # helpers that outlived the main process (same group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def page_server(root: Path, files: tuple[str, ...]) -> Iterator[PageServer]:
    server = PageServer(root, files)
    try:
        yield server
    finally:
        server.close()
