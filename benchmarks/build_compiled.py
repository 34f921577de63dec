"""A copy of this checkout with netsip's compiled build, for benchmarks and CI.

``NETSIP_COMPILE=1 pip install -e .`` compiles the call path in place (the
modules listed under ``[tool.netsip] compiled`` in pyproject.toml; see
``setup.py``). This builds the same in a copy of the checkout, so that the
pure and the compiled netsip can run side by side: the call benchmark's
``compiled`` UAS imports the copy (``bench_calls --compiled DIR``), and CI
runs the whole test suite in it (``.ci/run``). It builds the way a user's
install does: a wheel through pip and the build backend
(``--config-settings compile=1``, mypy fetched into pip's build
environment), whose extension modules it puts beside the sources::

    python -m benchmarks.build_compiled /tmp/netsip-compiled    # about a minute
    python -m benchmarks.bench_calls --compiled /tmp/netsip-compiled
    python -m benchmarks.count_calls --netsip-path /tmp/netsip-compiled
    cd /tmp/netsip-compiled && NETSIP_EXPECT_COMPILED=1 python -m pytest

Needs a C compiler and the Python headers, as the compiled build does.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from benchmarks.load import REPO
from netsip._native import compiled_modules

#: what is not copied: the virtualenv, git's data, built files and caches
_IGNORED = shutil.ignore_patterns(
    ".venv", ".git", "build", "site", "*.so", "__pycache__", ".*_cache", ".hypothesis", ".tox"
)


class BuildError(Exception):
    """The compiled build failed (mypyc's or the compiler's output is in the message)."""


def build(out: str) -> list[str]:
    """Copy this checkout to ``out`` (replacing it) and compile netsip there; the extensions."""
    out = os.path.abspath(out)
    if os.path.commonpath([out, REPO]) == REPO:
        raise BuildError(f"{out} is inside the checkout it copies")
    if os.path.exists(out):
        shutil.rmtree(out)
    shutil.copytree(REPO, out, ignore=_IGNORED)
    with tempfile.TemporaryDirectory(prefix="netsip-wheel-") as wheels:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels]
        cmd += ["--config-settings", "compile=1", "."]
        proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, check=False)
        found = glob.glob(os.path.join(wheels, "netsip-*.whl"))
        if proc.returncode or len(found) != 1:
            raise BuildError(f"the compiled build failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        with zipfile.ZipFile(found[0]) as whl:
            for name in whl.namelist():
                if name.endswith(".so"):  # netsip/*.so and the shared one at the top
                    whl.extract(name, out)
    built = compiled_modules(os.path.join(out, "netsip"))
    if not built:
        raise BuildError(f"the wheel {os.path.basename(found[0])} has no extension modules")
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.build_compiled",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("out", help="directory for the copy (replaced)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        built = build(os.path.abspath(args.out))
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{len(built)} modules compiled in {time.monotonic() - t0:.0f} s into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
