"""The tutorials' snippets run: every code block marked runnable in the pages under docs/.

A block (```python or ```sh) is runnable when the line just before its
opening fence is a marker::

    <!-- snippet: NAME [background [interrupt]] [ready="TEXT"] [expect="TEXT" ...] [exit=N] -->

The snippets of one page run in order, as separate processes (Python, or
``bash -e`` for a shell block, with ``netsip`` on the PATH running this
tree's command), in one temporary directory (a file one writes, the next
reads). A ``background``
snippet (an answering phone, a registrar) keeps running while the next
foreground snippet runs; once that is done it is given a bounded time to end
on its own, and is interrupted (SIGINT to its process group, a user's
Ctrl-C) after that; with
``interrupt`` (a server that runs until stopped) it is interrupted at once. ``ready`` is a line it
prints when it serves; the next snippet starts only then. ``expect`` texts
must appear in the snippet's output; ``exit`` is the exit status it must
return (0 for a foreground snippet unless given).

The pages use the well-known ports 5060, 5070, 5080 and 5090 so they read
naturally; the runner maps each of them to a free loopback port, the same
one throughout the page.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT, free_udp_tcp_port, python_env

DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!-- snippet: (.*?) -->\s*\n```(python|sh)\n(.*?)^```", re.M | re.S)
PORTS = re.compile(r"\b(5060|5070|5080|5090)\b")
RUN_TIMEOUT = 60.0  # one foreground snippet, on a loaded machine
END_TIMEOUT = 20.0  # a background snippet ending on its own afterwards
READY_TIMEOUT = 20.0


@dataclass
class Snippet:
    """One runnable block of a page."""

    name: str
    code: str
    lang: str = "python"
    background: bool = False
    interrupt: bool = False
    ready: str | None = None
    expect: list[str] = field(default_factory=list)
    exit: int | None = None


def parse_marker(text: str, code: str, lang: str = "python") -> Snippet:
    """The snippet of marker ``text`` and its ``code`` (a ``python`` or ``sh`` block)."""
    words = shlex.split(text)
    snippet = Snippet(name=words[0], code=code, lang=lang)
    for word in words[1:]:
        key, _, value = word.partition("=")
        if key == "background":
            snippet.background = True
        elif key == "interrupt":
            snippet.interrupt = True
        elif key == "ready":
            snippet.ready = value
        elif key == "expect":
            snippet.expect.append(value)
        elif key == "exit":
            snippet.exit = int(value)
        else:
            raise AssertionError(f"snippet {words[0]}: unknown marker word {word!r}")
    return snippet


def snippets(page: Path) -> list[Snippet]:
    """The runnable snippets of ``page``, in order."""
    return [
        parse_marker(m.group(1), m.group(3), m.group(2)) for m in MARKER.finditer(page.read_text())
    ]


def pages() -> list[Path]:
    """The pages under docs/ (subdirectories too) with runnable snippets."""
    return sorted(p for p in DOCS.rglob("*.md") if snippets(p))


def test_marker_parsing() -> None:
    page = (
        "text\n"
        '<!-- snippet: a.py background interrupt ready="up" expect="x y" expect=z -->\n'
        "```python\nprint(5080)\n```\n"
        "```python\nnot marked\n```\n"
        "<!-- snippet: b.py exit=3 -->\n```python\npass\n```\n"
        "<!-- snippet: c.sh -->\n```sh\nnetsip --version\n```\n"
        "<!-- snippet: d.sh -->\n```text\nnot a language that runs\n```\n"
    )
    found = [parse_marker(m.group(1), m.group(3), m.group(2)) for m in MARKER.finditer(page)]
    assert found == [
        Snippet("a.py", "print(5080)\n", "python", True, True, "up", ["x y", "z"]),
        Snippet("b.py", "pass\n", exit=3),
        Snippet("c.sh", "netsip --version\n", "sh"),
    ]
    with pytest.raises(AssertionError, match="unknown marker word"):
        parse_marker("c.py fast", "")


def test_there_are_snippets() -> None:
    assert DOCS / "ua.md" in pages()
    assert DOCS / "getting-started.md" in pages()
    assert any(s.lang == "sh" for s in snippets(DOCS / "getting-started.md"))


class Running:
    """A snippet's process, its output collected in a file (no pipe to fill up)."""

    def __init__(self, snippet: Snippet, path: Path) -> None:
        self.snippet = snippet
        self.out = path.with_suffix(".out")
        env = python_env()
        if snippet.lang == "sh":
            argv = ["bash", "-e", path.name]
            env["PATH"] = os.pathsep.join([str(netsip_command(path.parent)), env["PATH"]])
        else:
            argv = [sys.executable, "-u", path.name]
        with self.out.open("wb") as out:
            # its own process group: Ctrl-C reaches a shell snippet's command too
            self.proc = subprocess.Popen(
                argv,
                cwd=path.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self) -> None:
        ready = self.snippet.ready
        deadline = time.monotonic() + READY_TIMEOUT
        while ready is not None and ready not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.snippet.name} never printed {ready!r}:\n{self.output()}"
                )
            time.sleep(0.05)  # polling a child process's output file, not the loop

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait(10)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the snippet's process group (what a terminal's Ctrl-C does)."""
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(self.proc.pid, sig)

    def check(self, code: int) -> None:
        out = self.output()
        want = self.snippet.exit if self.snippet.exit is not None else 0
        if not self.snippet.background or self.snippet.exit is not None:
            assert code == want, f"{self.snippet.name} exited {code}, not {want}:\n{out}"
        for text in self.snippet.expect:
            assert text in out, f"{self.snippet.name} did not print {text!r}:\n{out}"


def netsip_command(where: Path) -> Path:
    """A directory with a ``netsip`` command that runs this tree's CLI on this interpreter."""
    bindir = where / ".bin"
    bindir.mkdir(exist_ok=True)
    command = bindir / "netsip"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m netsip "$@"\n')
    command.chmod(0o755)
    return bindir


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run(page: Path, tmp_path: Path) -> None:
    ports: dict[str, str] = {}

    def free(m: re.Match[str]) -> str:
        return ports.setdefault(m.group(1), str(free_udp_tcp_port()))

    background: list[Running] = []
    try:
        for snippet in snippets(page):
            path = tmp_path / snippet.name
            path.write_text(PORTS.sub(free, snippet.code))
            running = Running(snippet, path)
            if snippet.background:
                running.wait_ready()
                background.append(running)
                continue
            running.check(running.finish(RUN_TIMEOUT))
            for bg in background:
                bg.check(bg.finish(0 if bg.snippet.interrupt else END_TIMEOUT))
            background.clear()
    finally:
        for bg in background:
            bg.finish(0)
