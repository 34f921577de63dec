"""A probe: netsip's hot-path modules compiled with mypyc, for the call benchmark.

Not a supported build of netsip. It answers one question of the Endpoint
benchmark (:mod:`benchmarks.bench_calls`): how far is pure Python from the
CPU target, and would compiling the hot path close the gap? It copies this
tree's ``netsip`` package into ``OUT``, makes the few edits mypyc needs
(listed in :data:`EDITS`, each with the reason), and compiles the modules
of :data:`MODULES` there; the rest of the package stays interpreted. The
UASs of the call benchmark then import it::

    python -m benchmarks.mypyc_probe /tmp/netsip-mypyc        # about a minute
    python -m benchmarks.bench_calls --only closed,rate --mypyc /tmp/netsip-mypyc --no-write
    python -m benchmarks.count_calls --netsip-path /tmp/netsip-mypyc

What the edits give up, and why this is no more than a probe:

* mypyc's native classes take no weak references, so ``import_settings``
  no longer reaches the pools and dispatchers that exist already (their
  tracking is off);
* classes of the compiled modules cannot be subclassed by interpreted code,
  tests and users included;
* mypyc checks the declared types at run time, where the interpreter does
  not, and some idioms behave differently compiled. Against this probe,
  the tests of the packet, dispatcher, endpoint, leg, loop, response
  cache, retransmission, RFC 4475, fuzz and leak files gave 43 failures and
  72 errors out of 675 (2026-12-06). Their causes, by the exceptions
  reported: tests that subclass or patch compiled classes (75); a
  dataclass field with ``init=False`` and a default, which mypyc leaves
  unset (``RetransmitSchedule.count``, 24); tests that read a module's
  source through ``__file__`` (11); an int where a float is declared (2);
  and an ``is`` test of an optional attribute against a plain one, which
  mypyc unboxes (2). The whole suite of 2,559 tests: 135 failed, 304 errors,
  most because ``netsip.aio``'s asyncio loop subclasses the compiled
  ``EventLoop`` (``benchmarks/evidence/mypyc-probe.txt`` has the tally).

Shipping a compiled netsip means making these modules mypyc-clean in the
tree and running the whole suite against the compiled build in CI.

Needs mypy (the ``dev`` extra) and a C compiler. Every edit must find its
text: a probe that no longer fits the tree stops with the edit that failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Final

from benchmarks.load import REPO

#: the modules a call passes through (receive, parse, dispatch, the
#: endpoint's dialog and transaction state, respond, send), compiled
MODULES: Final = (
    "_parser",
    "_headers",
    "_fields",
    "packet",
    "_cache",
    "leg",
    "endpoint",
    "_dialog",
    "_delivery",
    "respcache",
    "_udp",
    "eventloop",
    "retransmit",
    "dispatcher",
    "socketpool",
)

_SLOTS = (r"slots=True, |, slots=True|\(slots=True\)", "")
# dataclass fields annotated ``object``: mypyc looks the name up in the module
_OBJECT = (r"(?m)^(    \w+): object\b", r"\1: Any")

#: (module, pattern, replacement, why): each pattern must match at least once
EDITS: Final[tuple[tuple[str, str, str, str], ...]] = (
    (
        "packet",
        r"\n    _method: str\n    _set = _own_copy\(Packet\._set\)\n",
        "\n",
        "a subclass may not narrow an attribute's type, and a method copied "
        "for CPython's specialisation is no method of a native class",
    ),
    ("packet", r"\n    _set = _own_copy\(Packet\._set\)\n", "\n", "(Response's copy)"),
    (
        "packet",
        r"(        return self\._method)\n(\n    def uri)",
        r"\1  # type: ignore[return-value]\n\2",
        "Request._method is no longer narrowed to str",
    ),
    (
        "packet",
        r"(        return self\._method, self\._text, self\.header_items\(\), self\._body)\n",
        r"\1  # type: ignore[return-value]\n",
        "(likewise)",
    ),
    (
        "packet",
        r'(        body: bytes \| str = b"",\n)(    \) -> None:\n)'
        r"(        (?:method = checked_method\(method\)|code = checked_code\(code\))\n)",
        r"\1        _parts: Parts | None = None,\n\2"
        r"        if _parts is not None:\n            self._set(_parts)\n            return\n\3",
        "a native class is made through its __init__ (object.__new__ refuses): "
        "the parser's packets pass their parts to it",
    ),
    (
        "packet",
        r"        new = _new\(type\(self\)\)  # .*\n        new\._set\(\n",
        '        new = type(self)("", "", None, b"",  # type: ignore[call-arg]\n',
        "(likewise: Packet.clone, which Leg.deliver uses)",
    ),
    (
        "packet",
        r"    pkt = _new\(Request\)\n    pkt\._set\(parts\)\n",
        '    pkt = Request("", "", None, b"", parts)\n',
        "(likewise)",
    ),
    (
        "packet",
        r"    pkt = _new\(Response\)\n    pkt\._set\(parts\)\n",
        '    pkt = Response(0, "", None, b"", parts)\n',
        "(likewise)",
    ),
    ("_delivery", *_SLOTS, "mypyc's dataclasses have slots of their own"),
    ("_dialog", *_SLOTS, "(likewise)"),
    ("eventloop", *_SLOTS, "(likewise)"),
    ("retransmit", *_SLOTS, "(likewise)"),
    ("_delivery", *_OBJECT, "mypyc resolves a dataclass field's type by name in the module"),
    ("_dialog", *_OBJECT, "(likewise)"),
    (
        "_delivery",
        r"from typing import Final, Protocol\n",
        "from typing import Any, Final, Protocol\n",
        "(for the Any above)",
    ),
    (
        "socketpool",
        r"MODULE_WIDE & (self\._overrides|checked)\.keys\(\)",
        r"not MODULE_WIDE.isdisjoint(\1)",
        "mypyc types frozenset & keys() as a frozenset, and it is a set",
    ),
    (
        "_settings",
        r'(    """Refresh ``pool`` .*"""\n)    _pools\.add\(pool\)\n',
        r"\1    return  # mypyc probe: native classes take no weak references\n",
        "native classes take no weak references (import_settings no longer reaches existing pools)",
    ),
    (
        "_settings",
        r'(    """Stop refreshing ``pool`` .*"""\n)    _pools\.discard\(pool\)\n',
        r"\1    return  # (likewise)\n",
        "(likewise)",
    ),
)


class ProbeError(Exception):
    """An edit found no text to change: the probe no longer fits the tree."""


def read_sources(pkg: str) -> dict[str, str]:
    """The text of each module :data:`EDITS` changes, from the package directory ``pkg``."""
    out = {}
    for module in {m for m, *_ in EDITS}:
        with open(os.path.join(pkg, f"{module}.py")) as f:
            out[module] = f.read()
    return out


def compiled_modules(path: str) -> list[str]:
    """The compiled extension modules of the ``netsip`` package in ``path``."""
    try:
        names = os.listdir(os.path.join(path, "netsip"))
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(".so"))


def edited(sources: dict[str, str]) -> dict[str, str]:
    """``sources`` (module name -> text) with :data:`EDITS` applied."""
    out = dict(sources)
    for module, pattern, repl, why in EDITS:
        text, n = re.subn(pattern, repl, out[module])
        if not n:
            raise ProbeError(f"{module}.py: no match for {pattern!r} ({why})")
        out[module] = text
    return out


def build(out: str) -> list[str]:
    """Copy netsip into ``out``, edit it, compile :data:`MODULES`; the built extensions."""
    src = os.path.join(REPO, "netsip")
    dst = os.path.join(out, "netsip")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name, text in edited(read_sources(dst)).items():
        with open(os.path.join(dst, f"{name}.py"), "w") as f:
            f.write(text)
    shutil.rmtree(os.path.join(out, "build"), ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mypyc", *(f"netsip/{m}.py" for m in MODULES)],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise ProbeError(f"mypyc failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return compiled_modules(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.mypyc_probe",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    ap.add_argument("out", help="directory for the compiled copy (its netsip/ is replaced)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    try:
        built = build(os.path.abspath(args.out))
    except ProbeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"{len(built)} of {len(MODULES)} modules compiled in {time.monotonic() - t0:.0f} s; "
        f"use bench_calls --mypyc {args.out} or count_calls --netsip-path {args.out}"
    )
    return 0 if len(built) == len(MODULES) else 1


if __name__ == "__main__":
    sys.exit(main())
