"""examples/: every user-agent example documents itself and runs `--help` without a peer.

The examples' calls against live peers are in tests/test_interop_simple.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT, python_env

#: the ports of Net::SIP's Simple examples (examples/responder.py is tests/test_examples.py's)
UA_EXAMPLES = (
    "invite_and_recv.py",
    "invite_and_send.py",
    "dtmf.py",
    "bench/listen.py",
    "bench/call.py",
)
EXAMPLES = [ROOT / "examples" / name for name in UA_EXAMPLES]


def test_examples_found() -> None:
    assert [p for p in EXAMPLES if not p.is_file()] == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_help(path: object) -> None:
    res = subprocess.run(
        [sys.executable, str(path), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: "), res.stdout
    assert "Net::SIP" in res.stdout  # the first docstring line names the Perl original


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_bad_option(path: object) -> None:
    res = subprocess.run(
        [sys.executable, str(path), "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "unrecognized arguments" in res.stderr or "required" in res.stderr
