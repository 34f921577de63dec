"""benchmarks/mypyc_probe.py still fits the tree: every edit finds its text.

The probe copies netsip, edits it for mypyc and compiles it for the call
benchmark. Compiling takes about a minute and needs a C compiler, so these
tests only apply the edits to the tree's sources (pure text work): a change
to the package that the probe's edits no longer match shows here, not in a
benchmark run.
"""

from __future__ import annotations

import os

import pytest

from benchmarks import mypyc_probe
from benchmarks.load import REPO


def _sources() -> dict[str, str]:
    return mypyc_probe.read_sources(os.path.join(REPO, "netsip"))


def test_every_edit_matches_the_tree() -> None:
    sources = _sources()
    out = mypyc_probe.edited(sources)
    for module, text in out.items():
        assert text != sources[module], module
        compile(text, f"{module}.py", "exec")  # still Python
    assert "_parts: Parts | None = None" in out["packet"]
    assert "_new(Request)" not in out["packet"] and "_new(Response)" not in out["packet"]
    assert "slots=True" not in out["_dialog"] and "slots=True" not in out["_delivery"]
    assert "MODULE_WIDE &" not in out["socketpool"]


def test_an_edit_that_finds_nothing_stops_the_probe() -> None:
    sources = _sources()
    sources["packet"] = sources["packet"].replace("_own_copy(Packet._set)", "Packet._set")
    with pytest.raises(mypyc_probe.ProbeError, match=r"packet\.py: no match"):
        mypyc_probe.edited(sources)


def test_the_compiled_modules_exist() -> None:
    for module in mypyc_probe.MODULES:
        assert os.path.exists(os.path.join(REPO, "netsip", f"{module}.py")), module
