"""Layers only import downwards, in the order of README.md's module map.

The table under ``## Module map`` in README.md is the one place where the
order of netsip's layers is written down: its rows, top to bottom, are the
layers, bottom to top. The first cell of a row names the module (in
backticks: ``netsip/util.py``), or a package directory (``netsip/cli/``,
covering every module in it); a cell may name several paths, which then form
one layer.

The rules checked here:

- every ``.py`` file under ``netsip/`` (subpackages and private ``_name.py``
  modules included) is in the map. Exempt: ``netsip/__init__.py`` (it
  re-exports the public API, so it stands above what it imports),
  ``netsip/__main__.py`` (it only calls the cli) and ``netsip/py.typed``;
- every import of a netsip module goes to the same row or a lower one. This
  counts every form: module level, function-local, under ``if
  TYPE_CHECKING:``, relative (``from . import x``) and
  ``importlib.import_module("netsip.x")`` with a literal name. Modules of one
  row (a package's modules, or paths listed together) may import each other,
  but not in a cycle; importing the package ``netsip`` itself is allowed only
  above every layer its ``__init__`` imports;
- there are no import cycles at all, not even inside one row.

Importing ``netsip.x`` also runs ``netsip/__init__.py`` first; that implicit
import of a parent package is not an edge here (Python always runs it, and
``__init__`` is checked on its own).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = "README.md"
PACKAGE = "netsip"

#: Files that are not layers: nothing places them in the map.
EXEMPT = frozenset({"netsip/__init__.py", "netsip/__main__.py", "netsip/py.typed"})

#: Upward imports that exist today and are being removed, each with the reason.
#: Keyed by (importing file, imported file); an entry that no longer matches an
#: upward import fails test_known_upward_imports_still_exist, so it is removed
#: as soon as the import is gone.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


# ------------------------------------------------------------ the map


@dataclass(frozen=True)
class Row:
    """One layer of the module map: its number (1 = the bottom) and its paths."""

    number: int
    paths: tuple[str, ...]

    def covers(self, path: str) -> bool:
        """Whether the file ``path`` (``netsip/x.py``) belongs to this layer."""
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.paths)

    def __str__(self) -> str:
        return f"row {self.number} ({', '.join(self.paths)})"


def parse_module_map(readme: str) -> list[Row]:
    """The rows of the table under ``## Module map``, bottom layer first.

    Raises:
        ValueError: no such section or table, a row without a ``netsip/``
            path in its first cell, or a path listed twice.
    """
    lines = readme.splitlines()
    try:
        start = lines.index("## Module map")
    except ValueError:
        raise ValueError(f"{README} has no '## Module map' section") from None
    rows: list[Row] = []
    seen: set[str] = set()
    header = True
    in_table = False
    for lineno, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            if in_table:
                break  # the table ended
            continue
        in_table = True
        first = line.strip().strip("|").split("|")[0]
        if header or set(first.strip()) <= set("-: "):
            header = False  # the header line, then the separator line
            continue
        paths = tuple(re.findall(rf"`({PACKAGE}/[^`]*)`", first))
        if not paths:
            raise ValueError(f"{README}:{lineno}: module map row names no `{PACKAGE}/...` path")
        for p in paths:
            if p in seen:
                raise ValueError(f"{README}:{lineno}: {p} is in the module map twice")
            seen.add(p)
        rows.append(Row(len(rows) + 1, paths))
    if not rows:
        raise ValueError(f"{README}: no table under '## Module map'")
    return rows


def layer_of(path: str, rows: Iterable[Row]) -> Row | None:
    """The row that covers the file ``path``, or None."""
    return next((r for r in rows if r.covers(path)), None)


# ------------------------------------------------------------ the imports


@dataclass(frozen=True)
class Import:
    """``file`` imports ``module`` (which is the file ``target``) at ``line``."""

    file: str
    line: int
    module: str
    target: str


def module_file(module: str, root: Path) -> str | None:
    """The file (relative to ``root``) of a dotted module name, if it exists."""
    rel = module.replace(".", "/")
    for cand in (f"{rel}.py", f"{rel}/__init__.py"):
        if (root / cand).is_file():
            return cand
    return None


def _resolve(module: str, root: Path) -> tuple[str, str]:
    """``(module, file)`` for an imported module name.

    A name that is no module keeps the file path it would have, so it shows
    up as missing from the map (Python would raise ImportError anyway).
    """
    found = module_file(module, root)
    return module, found if found is not None else module.replace(".", "/") + ".py"


def _is_ours(module: str | None) -> bool:
    return module is not None and (module == PACKAGE or module.startswith(PACKAGE + "."))


def _import_module_arg(node: ast.Call) -> str | None:
    """The literal name in ``importlib.import_module("x")`` / ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def imports_in(path: Path, root: Path) -> list[Import]:
    """Every import of a netsip module in one file, wherever it is in the file."""
    rel = path.relative_to(root).as_posix()
    own = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    package = own if rel.endswith("/__init__.py") else own.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=rel)
    found: list[Import] = []

    def add(node: ast.AST, module: str) -> None:
        name, target = _resolve(module, root)
        found.append(Import(rel, getattr(node, "lineno", 0), name, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_ours(alias.name):
                    add(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")
                if node.level - 1 >= len(up):
                    raise ValueError(f"{rel}:{node.lineno}: relative import beyond {PACKAGE}")
                base = ".".join(up[: len(up) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            if not _is_ours(base):
                continue
            for alias in node.names:
                # ``from netsip.cli import listen`` imports the module netsip.cli.listen
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and module_file(sub, root) is not None:
                    add(node, sub)
                else:
                    add(node, base)
        elif isinstance(node, ast.Call):
            name = _import_module_arg(node)
            if _is_ours(name):
                assert name is not None
                add(node, name)
    # one entry per (line, module); ast.walk is breadth first, so sort by line
    return sorted(dict.fromkeys(found), key=lambda i: i.line)


def source_files(root: Path) -> list[str]:
    """Every ``.py`` file of the package, relative to ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob("*.py"))


def all_imports(root: Path) -> list[Import]:
    return [imp for f in source_files(root) for imp in imports_in(root / f, root)]


# ------------------------------------------------------------ the checks


def unlisted(rows: list[Row], files: Iterable[str]) -> list[str]:
    """A message for each file (not exempt) that no row of the map covers."""
    return [
        f"{f} is not in {README}'s module map: add a row for it under '## Module map'"
        " (rows are layers, bottom first; a private module goes just below the public"
        " module it serves; a row `netsip/name/` covers a whole package)"
        for f in files
        if f not in EXEMPT and layer_of(f, rows) is None
    ]


def stale_rows(rows: list[Row], root: Path) -> list[str]:
    """A message for each path in the map that does not exist."""
    return [
        f"{README}'s module map lists {p}, which does not exist"
        for r in rows
        for p in r.paths
        if not (root / p).exists()
    ]


def upward_imports(
    rows: list[Row], imports: Iterable[Import], allowed: Mapping[tuple[str, str], str] | None = None
) -> list[str]:
    """A message for each import of a layer above the importing file's own.

    ``allowed`` holds known exceptions, keyed by (importing file, imported file).
    Files not in the map are left to :func:`unlisted`, except as the target
    of an import (their layer is unknown, so the import cannot be checked).
    """
    imports = list(imports)
    allowed = allowed or {}
    # The package netsip itself (its __init__) stands just above every layer it
    # re-exports: importing it pulls all of them in.
    reexported = [layer_of(i.target, rows) for i in imports if i.file == "netsip/__init__.py"]
    top = max((r.number for r in reexported if r is not None), default=0)
    errors: list[str] = []
    for imp in imports:
        if imp.file in EXEMPT or (imp.file, imp.target) in allowed:
            continue
        src = layer_of(imp.file, rows)
        if src is None:
            continue
        where = f"{imp.file}:{imp.line} imports {imp.module}"
        if imp.target == "netsip/__init__.py":
            if src.number <= top:
                errors.append(
                    f"{where}, the package, which re-exports layers up to {rows[top - 1]};"
                    f" {imp.file} is in {src}: import from the module that defines the name"
                )
            continue
        if imp.target in EXEMPT:
            errors.append(f"{where}: {imp.target} is not a layer, nothing may import it")
            continue
        dst = layer_of(imp.target, rows)
        if dst is None:
            errors.append(
                f"{where}: {imp.target} is not in {README}'s module map, so its layer is unknown"
            )
        elif dst.number > src.number:
            errors.append(
                f"{where}: layer {src} may not import layer {dst}, which is above it"
                f" in {README}'s module map"
            )
    return errors


def import_cycles(
    imports: Iterable[Import], allowed: Mapping[tuple[str, str], str] | None = None
) -> list[list[str]]:
    """The import cycles among the files (strongly connected components, Tarjan).

    An import of a file by itself is not a cycle; ``allowed`` edges are left out.
    """
    allowed = allowed or {}
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.file != imp.target and (imp.file, imp.target) not in allowed:
            graph.setdefault(imp.file, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# ------------------------------------------------------------ the real tree


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return parse_module_map((ROOT / README).read_text())


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return all_imports(ROOT)


def test_every_module_is_in_the_map(rows: list[Row]) -> None:
    errors = unlisted(rows, source_files(ROOT))
    assert not errors, "\n".join(errors)


def test_the_map_names_only_existing_modules(rows: list[Row]) -> None:
    errors = stale_rows(rows, ROOT)
    assert not errors, "\n".join(errors)


def test_layers_only_import_downwards(rows: list[Row], imports: list[Import]) -> None:
    assert imports, "no netsip imports found: the scan is broken"
    errors = upward_imports(rows, imports, KNOWN_UPWARD)
    assert not errors, "\n".join(errors)


def test_no_import_cycles(imports: list[Import]) -> None:
    cycles = import_cycles(imports, KNOWN_UPWARD)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_known_upward_imports_still_exist(rows: list[Row], imports: list[Import]) -> None:
    """An exception nobody needs any more is removed, so it cannot hide a new one."""
    present = {(i.file, i.target) for i in imports}
    for (src, dst), why in KNOWN_UPWARD.items():
        assert (src, dst) in present, f"{src} no longer imports {dst}: remove it from KNOWN_UPWARD"
        assert upward_imports(rows, [i for i in imports if (i.file, i.target) == (src, dst)]), (
            f"{src} importing {dst} is no longer upward: remove it from KNOWN_UPWARD ({why})"
        )


def test_the_scan_sees_the_tree(imports: list[Import]) -> None:
    """A spot check that the scan reads the real files (its forms: the fake trees below)."""
    assert ("netsip/leg.py", "netsip/socketpool.py") in {(i.file, i.target) for i in imports}


# ------------------------------------------------------------ the checker itself

FAKE_README = """\
# fake

## Module map

| module | ports | what it does |
| --- | --- | --- |
| `netsip/util.py` | x | bottom |
| `netsip/_grammar.py` | x | below packet |
| `netsip/packet.py`, `netsip/_wire.py` | x | one layer, two modules |
| `netsip/cli/` | x | a package |

Some text.

| `netsip/notamodule.py` | a later table is not the map |
"""


def test_parse_module_map() -> None:
    rows = parse_module_map(FAKE_README)
    assert [r.paths for r in rows] == [
        ("netsip/util.py",),
        ("netsip/_grammar.py",),
        ("netsip/packet.py", "netsip/_wire.py"),
        ("netsip/cli/",),
    ]
    assert [r.number for r in rows] == [1, 2, 3, 4]
    assert layer_of("netsip/cli/listen.py", rows) == rows[3]
    assert layer_of("netsip/cli/__init__.py", rows) == rows[3]
    assert layer_of("netsip/_wire.py", rows) == rows[2]
    assert layer_of("netsip/clix.py", rows) is None


@pytest.mark.parametrize(
    ("readme", "error"),
    [
        ("# x\n\nno map\n", "no '## Module map' section"),
        ("## Module map\n\ntext only\n", "no table"),
        ("## Module map\n\n| m |\n| - |\n| util |\n", "names no `netsip/...` path"),
        (
            "## Module map\n\n| m |\n| - |\n| `netsip/a.py` |\n| `netsip/a.py` |\n",
            "netsip/a.py is in the module map twice",
        ),
    ],
)
def test_parse_module_map_errors(readme: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_module_map(readme)


def test_upward_import_is_reported_with_file_line_and_layers() -> None:
    rows = parse_module_map(FAKE_README)
    bad = Import("netsip/_grammar.py", 12, "netsip.packet", "netsip/packet.py")
    assert upward_imports(rows, [bad]) == [
        "netsip/_grammar.py:12 imports netsip.packet: layer row 2 (netsip/_grammar.py)"
        " may not import layer row 3 (netsip/packet.py, netsip/_wire.py), which is above"
        " it in README.md's module map"
    ]
    # the same import, as a known exception, is not reported
    assert upward_imports(rows, [bad], {("netsip/_grammar.py", "netsip/packet.py"): "why"}) == []


def test_downward_and_same_row_imports_are_fine() -> None:
    rows = parse_module_map(FAKE_README)
    ok = [
        Import("netsip/packet.py", 1, "netsip._grammar", "netsip/_grammar.py"),
        Import("netsip/packet.py", 2, "netsip._wire", "netsip/_wire.py"),
        Import("netsip/_wire.py", 3, "netsip.packet", "netsip/packet.py"),
        Import("netsip/cli/listen.py", 4, "netsip.cli._common", "netsip/cli/_common.py"),
        Import("netsip/cli/__init__.py", 5, "netsip.util", "netsip/util.py"),
    ]
    assert upward_imports(rows, ok) == []


def test_package_import_is_placed_above_what_init_reexports() -> None:
    rows = parse_module_map(FAKE_README)
    init = Import("netsip/__init__.py", 3, "netsip.packet", "netsip/packet.py")
    from_cli = Import("netsip/cli/main.py", 7, "netsip", "netsip/__init__.py")
    from_packet = Import("netsip/_wire.py", 9, "netsip", "netsip/__init__.py")
    errors = upward_imports(rows, [init, from_cli, from_packet])
    assert len(errors) == 1
    assert errors[0].startswith("netsip/_wire.py:9 imports netsip, the package")
    assert "row 3 (netsip/packet.py, netsip/_wire.py)" in errors[0]


def test_unmapped_and_exempt_targets_are_reported() -> None:
    rows = parse_module_map(FAKE_README)
    errors = upward_imports(
        rows,
        [
            Import("netsip/cli/x.py", 4, "netsip.__main__", "netsip/__main__.py"),
            Import("netsip/packet.py", 5, "netsip._new", "netsip/_new.py"),
        ],
    )
    assert errors == [
        "netsip/cli/x.py:4 imports netsip.__main__: netsip/__main__.py is not a layer,"
        " nothing may import it",
        "netsip/packet.py:5 imports netsip._new: netsip/_new.py is not in README.md's"
        " module map, so its layer is unknown",
    ]


def test_unlisted_module_is_reported() -> None:
    rows = parse_module_map(FAKE_README)
    files = ["netsip/__init__.py", "netsip/__main__.py", "netsip/util.py"]
    files += ["netsip/cli/deep/x.py", "netsip/_abnf.py"]
    errors = unlisted(rows, files)
    assert len(errors) == 1
    assert errors[0].startswith("netsip/_abnf.py is not in README.md's module map: add a row")


def test_cycles_are_found_even_inside_one_row() -> None:
    imports = [
        Import("netsip/packet.py", 1, "netsip._wire", "netsip/_wire.py"),
        Import("netsip/_wire.py", 1, "netsip.packet", "netsip/packet.py"),
        Import("netsip/_wire.py", 2, "netsip.util", "netsip/util.py"),
        Import("netsip/util.py", 2, "netsip.util", "netsip/util.py"),  # itself: no cycle
    ]
    assert import_cycles(imports) == [["netsip/_wire.py", "netsip/packet.py"]]
    allowed = {("netsip/_wire.py", "netsip/packet.py"): "why"}
    assert import_cycles(imports, allowed) == []


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_scan_finds_every_form_of_import(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "netsip/__init__.py": "",
            "netsip/util.py": "",
            "netsip/packet.py": "",
            "netsip/leg.py": "",
            "netsip/cli/__init__.py": "",
            "netsip/cli/_common.py": "",
            "netsip/cli/listen.py": """\
from __future__ import annotations
import os
from typing import TYPE_CHECKING
import netsip.util
from netsip import packet, __version__
from . import _common
from .. import leg as _leg
from ..util import thing
from .._missing import nothing
if TYPE_CHECKING:
    from netsip.socketpool import SocketPool
def run() -> None:
    from netsip.dispatcher import Dispatcher
    import importlib
    importlib.import_module("netsip.resolver")
    from netsip.cli import *
""",
        },
    )
    found = [
        (i.line, i.module, i.target)
        for i in imports_in(tmp_path / "netsip/cli/listen.py", tmp_path)
    ]
    assert found == [
        (4, "netsip.util", "netsip/util.py"),
        (5, "netsip.packet", "netsip/packet.py"),
        (5, "netsip", "netsip/__init__.py"),
        (6, "netsip.cli._common", "netsip/cli/_common.py"),
        (7, "netsip.leg", "netsip/leg.py"),
        (8, "netsip.util", "netsip/util.py"),
        (9, "netsip._missing", "netsip/_missing.py"),
        (11, "netsip.socketpool", "netsip/socketpool.py"),
        (13, "netsip.dispatcher", "netsip/dispatcher.py"),
        (15, "netsip.resolver", "netsip/resolver.py"),
        (16, "netsip.cli", "netsip/cli/__init__.py"),
    ]
    assert source_files(tmp_path) == [
        "netsip/__init__.py",
        "netsip/cli/__init__.py",
        "netsip/cli/_common.py",
        "netsip/cli/listen.py",
        "netsip/leg.py",
        "netsip/packet.py",
        "netsip/util.py",
    ]


def test_relative_import_in_package_init(tmp_path: Path) -> None:
    _tree(
        tmp_path, {"netsip/cli/__init__.py": "from . import listen\n", "netsip/cli/listen.py": ""}
    )
    [imp] = imports_in(tmp_path / "netsip/cli/__init__.py", tmp_path)
    assert imp.target == "netsip/cli/listen.py"


def test_upward_import_in_a_fake_tree_fails_end_to_end(tmp_path: Path) -> None:
    """README, files and checks together, as the real tests run them."""
    _tree(
        tmp_path,
        {
            "README.md": FAKE_README,
            "netsip/__init__.py": "from netsip.packet import x\n",
            "netsip/util.py": "def f() -> None:\n    from netsip.cli import main\n",
            "netsip/_grammar.py": "",
            "netsip/packet.py": "",
            "netsip/_wire.py": "",
            "netsip/cli/__init__.py": "",
            "netsip/cli/main.py": "",
        },
    )
    rows = parse_module_map((tmp_path / "README.md").read_text())
    assert unlisted(rows, source_files(tmp_path)) == []
    assert stale_rows(rows, tmp_path) == []
    errors = upward_imports(rows, all_imports(tmp_path))
    assert errors == [
        "netsip/util.py:2 imports netsip.cli.main: layer row 1 (netsip/util.py) may not"
        " import layer row 4 (netsip/cli/), which is above it in README.md's module map"
    ]
    (tmp_path / "netsip/_wire.py").unlink()
    assert stale_rows(rows, tmp_path) == [
        "README.md's module map lists netsip/_wire.py, which does not exist"
    ]
