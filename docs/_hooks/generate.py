"""The MkDocs hook of netsip's site: the pages that are generated, not written twice.

- ``cli.md``: the command reference, from ``netsip.cli.build_parser()`` (the
  parser the command itself runs);
- ``api/*.md``: one ``::: netsip.module`` page per public module (every
  ``netsip/**.py`` whose dotted path has no part starting with ``_``), and
  ``api/index.md``, the overview, from README.md's module map; the nav's
  "API reference" entry is filled with them;
- in pages, ``<!-- generated: NAME -->`` markers are replaced: ``layers``
  (a Mermaid diagram of the public modules and their imports, from the
  code), ``module-map`` (Net::SIP's packages and the netsip modules that
  port them, from README.md's module map), ``differences`` (the
  "Differences from Net::SIP" paragraphs of every module docstring),
  ``rfc-tables`` (the RFC tables of the tutorials, see ``RFC_SECTIONS``),
  ``rfc-citations`` (which module cites which RFC);
- the docstring check: a public name (module, class, function, method,
  property) without a docstring is a warning, so ``mkdocs build --strict``
  fails on it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PACKAGE = ROOT / "netsip"
log = get_plugin_logger("netsip-site")

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from sphinx_roles import SphinxRoles, convert  # noqa: E402

API_NAV_PAGE = "api/index.md"


# ------------------------------------------------------------ modules


def module_name(path: Path) -> str:
    """``netsip/cli/listen.py`` -> ``netsip.cli.listen``; packages by their ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def public_modules() -> list[str]:
    """Every public module of netsip, the package first, then sorted."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.endswith("__main__") or any(p.startswith("_") for p in name.split(".")):
            continue
        names.append(name)
    return sorted(names, key=lambda n: (n != "netsip", n))


@dataclass(frozen=True)
class MapRow:
    """One row of README.md's module map."""

    paths: tuple[str, ...]
    ports: str
    what: str


def module_map() -> list[MapRow]:
    """The rows of the table under ``## Module map`` in README.md, bottom layer first."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Module map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `netsip/"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        paths = tuple(re.findall(r"`(netsip/[^`]*)`", cells[0]))
        rows.append(MapRow(paths, cells[1], cells[2] if len(cells) > 2 else ""))
    return rows


def path_module(path: str) -> str:
    """``netsip/leg.py`` -> ``netsip.leg``; ``netsip/cli/`` -> ``netsip.cli``."""
    return path.removesuffix("/").removesuffix(".py").replace("/", ".")


# ------------------------------------------------------------ griffe


_PKG: Any = None


def package() -> Any:
    """netsip loaded by griffe, its Sphinx roles converted (loaded once per process)."""
    global _PKG
    if _PKG is None:
        _PKG = griffe.load(
            "netsip",
            search_paths=[str(ROOT)],
            extensions=griffe.load_extensions(SphinxRoles()),
            resolve_aliases=True,
            resolve_external=False,
            # the sources, also beside the compiled build's extension modules
            allow_inspection=False,
        )
    return _PKG


def undocumented(pkg: Any) -> list[str]:
    """The public modules, classes, functions, methods and properties without a docstring.

    Public: in a public module, a name not starting with ``_`` that griffe
    counts public (``__all__`` where the module has one); for a name
    re-exported from elsewhere, the object it names, checked once. A class's
    own public methods and properties count; attributes (constants, fields)
    do not.
    """
    missing: list[str] = []
    seen: set[str] = set()

    def check(obj: Any) -> None:
        if obj.path in seen or (obj.is_attribute and "property" not in obj.labels):
            return
        seen.add(obj.path)
        if not obj.docstring or not obj.docstring.value.strip():
            missing.append(obj.path)
        if obj.is_class:
            for name, member in obj.members.items():
                if not name.startswith("_") and not member.is_alias:
                    check(member)

    def walk_module(mod: Any) -> None:
        if not mod.docstring:
            missing.append(mod.path)
        for name, member in mod.members.items():
            if name.startswith("_"):
                continue
            if not member.is_alias and member.is_module:
                walk_module(member)
                continue
            if not member.is_public:
                continue
            if member.is_alias:
                try:
                    target = member.final_target
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue  # outside netsip
                if not target.path.startswith("netsip."):
                    continue
                check(target)
            else:
                check(member)

    walk_module(pkg)
    return missing


# ------------------------------------------------------------ the command


def _expand_help(action: argparse.Action) -> str:
    """An action's help with ``%(default)s`` and the like filled in, as argparse does."""
    text = action.help or ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    for key, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[key] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return text % params if "%" in text else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("[", "\\[").replace("\n", " ")


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
        ]
        if not actions:
            continue
        lines += [
            "",
            f"**{group.title}**",
            "",
            "| option | value | description |",
            "| --- | --- | --- |",
        ]
        for action in actions:
            names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
            if action.nargs == 0 or not action.option_strings:
                value = ""
            elif action.choices is not None:
                value = " \\| ".join(f"`{c}`" for c in action.choices)
            else:
                metavar = action.metavar or (
                    action.dest.upper() if action.option_strings else action.dest
                )
                value = f"`{metavar if isinstance(metavar, str) else ' '.join(metavar)}`"
            lines.append(f"| {names} | {value} | {_cell(_expand_help(action))} |")
    return lines


def cli_page() -> str:
    """The command reference, from the parser ``netsip`` itself runs."""
    os.environ["COLUMNS"] = "88"  # argparse wraps usage lines to this width
    from netsip.cli import build_parser  # noqa: PLC0415 (after COLUMNS is set)

    parser = build_parser()
    out = [
        "# Command reference",
        "",
        "<!-- generated by docs/_hooks/generate.py from netsip.cli.build_parser():"
        " edit the parser, not this page -->",
        "",
        "`netsip` (also `python -m netsip`) is installed with the package. "
        "Each subcommand below is one module of [netsip.cli][netsip.cli]; "
        "`netsip --help` and `netsip COMMAND --help` print the same text in the terminal.",
        "",
        "Exit status: 0 success; 1 the peer failed us (no 2xx, refused, unreachable, timeout); "
        "2 bad input (usage, unparsable URI, port in use, certificate problems),"
        " as one line on stderr.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        parser.description or "",
        *_options_table(parser),
    ]
    for name, sub in _subcommands(parser):
        out += [
            "",
            f"## netsip {name}",
            "",
            f"Module: [`netsip.cli.{name}`][netsip.cli.{name}]",
            "",
            sub.description or "",
            "",
            "```text",
            sub.format_usage().strip(),
            "```",
            *_options_table(sub),
        ]
        if sub.epilog:
            out += ["", sub.epilog]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------ API pages


def api_page(name: str) -> str:
    """The page of one public module."""
    if name == "netsip":
        return "\n".join(
            [
                "::: netsip",
                "    options:",
                "      members: false",
                "",
                "## Re-exported names",
                "",
                "`from netsip import NAME` gives these; each is documented in its module.",
                "",
                reexports_table(),
            ]
        )
    return f"::: {name}\n"


def reexports_table() -> str:
    """The names in ``netsip.__all__``, each linked to where it is documented."""
    pkg = package()
    lines = ["| name | documented in |", "| --- | --- |"]
    for name in pkg.exports or []:
        member = pkg.members.get(str(name))
        if member is None or not member.is_alias:
            continue
        try:
            target = member.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        where = public_home(member.target_path, target)
        link = f"[`{name}`][{where}]" if where else f"`{name}`"
        module = where.rsplit(".", 1)[0] if where else target.path.rsplit(".", 1)[0]
        lines.append(f"| {link} | `{module}` |")
    return "\n".join(lines)


def public_home(target_path: str, target: Any) -> str | None:
    """The public path documenting ``target`` (the module it is imported from, or its own)."""
    for path in (target_path, target.path):
        if not any(p.startswith("_") for p in path.split(".")[1:]):
            return path
    return None


def api_index() -> str:
    """The overview of the API pages, from README.md's module map."""
    rows = {path_module(p): row for row in module_map() for p in row.paths}
    lines = [
        "# API reference",
        "",
        "One page per public module, generated from the docstrings and type hints "
        "(mkdocstrings). Private modules (`_name.py`) are the insides of the public "
        "module they serve; what they define that users need is re-exported there. "
        "The table follows README.md's module map: bottom layer first.",
        "",
        "| module | ports | what it does |",
        "| --- | --- | --- |",
    ]
    pkg = package()
    order = [path_module(p) for row in module_map() for p in row.paths]

    def layer(name: str) -> tuple[int, str]:
        base = "netsip.cli" if name.startswith("netsip.cli") else name
        return (order.index(base) if base in order else -1, name)

    for name in sorted(public_modules(), key=layer):
        row = rows.get(name)
        ports, what = (row.ports, row.what) if row else ("", "")
        if not what:
            obj = pkg if name == "netsip" else pkg[name.removeprefix("netsip.")]
            doc = obj.docstring.value if obj.docstring else ""
            what = doc.strip().split("\n\n", 1)[0].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| [`{name}`]({name}.md) | {ports} | {what} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ generated sections


def _imports(path: Path, name: str) -> set[str]:
    """The netsip modules ``path`` (module ``name``) imports, in any form."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("netsip"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(
                    base[: len(base) - node.level + 1] + ([node.module] if node.module else [])
                )
            else:
                mod = node.module or ""
            if mod.startswith("netsip"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
    return found


#: The colour of each public module in the layer diagram: the tutorial it belongs to.
DIAGRAM_GROUPS = {
    "transport": (
        "#dbeafe",
        "util eventloop packet framing socketpool leg retransmit respcache resolver dispatcher",
    ),
    "dialogs": ("#fef3c7", "digest transaction endpoint"),
    "media": ("#dcfce7", "sdp dtmf rtp simple"),
    "servers": (
        "#fce7f3",
        "chain blocker dropper registrar redirect authorize proxy stateful_proxy",
    ),
    "asyncio": ("#ede9fe", "aio aioua"),
    "tools": ("#f3f4f6", "cli testing"),
}


def _node_id(module: str) -> str:
    return module.removeprefix("netsip.").replace(".", "_")


def layers_diagram() -> str:
    """A Mermaid flowchart of the public modules, each pointing at the ones it builds on.

    The nodes are README.md's module map (public modules; ``netsip/cli/`` as
    one node); an edge A --> B says A imports B, directly or through private
    modules, and is drawn only when no longer path says the same
    (transitive reduction), so the picture shows the layers.
    """
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}

    def node_of(mod: str) -> str:
        return "netsip.cli" if mod.startswith("netsip.cli") else mod

    order = [path_module(p) for row in module_map() for p in row.paths]
    public = [m for m in order if not any(p.startswith("_") for p in m.split(".")[1:])]
    deps: dict[str, set[str]] = {}
    for mod, path in files.items():
        if mod == "netsip":
            continue
        deps.setdefault(node_of(mod), set()).update(
            node_of(i) for i in _imports(path, mod) if i in files and node_of(i) != node_of(mod)
        )

    def reach(start: str, via_private_only: bool) -> set[str]:
        seen: set[str] = set()
        stack = list(deps.get(start, ()))
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            if not via_private_only or m not in public:
                stack.extend(deps.get(m, ()))
        return seen

    # public -> public, through private modules only
    direct = {m: {d for d in reach(m, True) if d in public} for m in public}
    closure = {m: {d for d in reach(m, False) if d in public} for m in public}
    lines = ["```mermaid", "flowchart BT"]
    for m in public:
        lines.append(f'    {_node_id(m)}["{m.removeprefix("netsip.")}"]')
    for m in public:
        for d in sorted(direct[m], key=lambda d: (order.index(d) if d in order else -1, d)):
            if any(d in closure[o] for o in direct[m] if o != d):
                continue  # implied by a longer path
            lines.append(f"    {_node_id(d)} --> {_node_id(m)}")
    for group, (colour, members) in DIAGRAM_GROUPS.items():
        nodes = [m for m in members.split() if f"netsip.{m}" in public]
        if nodes:
            lines.append(f"    classDef {group} fill:{colour},stroke:#64748b")
            lines.append(f"    class {','.join(nodes)} {group}")
    lines.append("```")
    return "\n".join(lines)


def module_map_table() -> str:
    """Net::SIP's packages and the netsip modules that port them (README.md's module map)."""
    lines = ["| netsip module | ports (Net::SIP) | what it does |", "| --- | --- | --- |"]
    for row in module_map():
        mods = []
        for p in row.paths:
            name = path_module(p)
            private = any(part.startswith("_") for part in name.split(".")[1:])
            mods.append(f"`{name}`" if private else f"[`{name}`][{name}]")
        lines.append(f"| {', '.join(mods)} | {row.ports} | {row.what} |")
    return "\n".join(lines)


DIFF_HEAD = re.compile(r"^Differences from Net::SIP[^:\n]*:[ \t]*(.*)$", re.M)


def differences_of(doc: str) -> str | None:
    """The "Differences from Net::SIP" part of a module docstring, or None.

    It starts at a line ``Differences from Net::SIP...:`` and runs to the
    first blank line that is followed by neither a list item nor an indented
    line (or to the end of the docstring).
    """
    m = DIFF_HEAD.search(doc)
    if m is None:
        return None
    lines = [m.group(1)] if m.group(1) else []
    rest = doc[m.end() :].splitlines()[1:] if doc[m.end() :].startswith("\n") else []
    i = 0
    while i < len(rest):
        line = rest[i]
        if not line.strip():
            nxt = next((r for r in rest[i + 1 :] if r.strip()), None)
            if lines and (nxt is None or not re.match(r"^(\s+|[-*] )", nxt)):
                break
        lines.append(line)
        i += 1
    text = textwrap.dedent("\n".join(lines)).strip()
    return text or None


def differences_page() -> str:
    """Every module's "Differences from Net::SIP", in the module map's order."""
    pkg = package()
    out: list[str] = []
    for row in module_map():
        for p in row.paths:
            name = path_module(p)
            mods = [name]
            if p.endswith("/"):
                mods = [module_name(f) for f in sorted((ROOT / p).glob("*.py"))]
            for mod in mods:
                try:
                    obj = pkg[mod.removeprefix("netsip.")] if mod != "netsip" else pkg
                except KeyError:
                    continue
                doc = obj.docstring.value if obj.docstring else ""
                text = differences_of(doc)
                if text is None:
                    continue
                private = any(part.startswith("_") for part in mod.split(".")[1:])
                title = f"`{mod}`" if private else f"[`{mod}`][{mod}]"
                if row.ports.startswith("("):
                    title += f" {row.ports}"
                elif row.ports:
                    title += f" (ports {row.ports})"
                out += [f"### {mod}", "", title, "", text[:1].upper() + text[1:], ""]
    return "\n".join(out)


#: The sections of the tutorials gathered on the RFC compliance page:
#: (page, heading text), each taken down to the next heading of its level.
RFC_SECTIONS = (
    ("dialogs.md", "RFC rules implemented, and the tests that pin them"),
    ("ua.md", "What works, and the tests that pin it"),
    ("servers.md", "What works, and the tests that pin it"),
    ("webrtc.md", "The RFCs"),
)


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (its default slugify)."""
    text = re.sub(r"[`*_]", "", heading)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def section_of(page: str, heading: str) -> str:
    """The section ``heading`` of docs page ``page``, its headings two levels down.

    Raises:
        ValueError: no such heading (a renamed section fails the build).
    """
    lines = (ROOT / "docs" / page).read_text().splitlines()
    heads = [re.match(r"^(#+) (.*)$", line) for line in lines]
    start = next((i for i, m in enumerate(heads) if m and m.group(2).strip() == heading), None)
    if start is None:
        raise ValueError(f"docs/{page} has no heading {heading!r}")
    level = len(heads[start].group(1))  # type: ignore[union-attr]
    body: list[str] = []
    fence = False
    for line in lines[start + 1 :]:
        fence ^= line.startswith("```")
        m = re.match(r"^(#+) ", line)
        if m and not fence:
            if len(m.group(1)) <= level:
                break
            body.append("#" * min(6, len(m.group(1)) + 1) + line[len(m.group(1)) :])
        else:
            body.append(line)
    return "\n".join(body).strip()


def rfc_tables() -> str:
    """The RFC tables of the tutorials, each under a link to where it lives."""
    out: list[str] = []
    for page, heading in RFC_SECTIONS:
        title = (ROOT / "docs" / page).read_text().splitlines()[0].lstrip("# ").strip()
        out += [
            f"### {title}",
            "",
            f"From [{title}: {heading}]({page}#{_slug(heading)}).",
            "",
            section_of(page, heading),
            "",
        ]
    return "\n".join(out)


def rfc_citations() -> str:
    """Which modules cite which RFC (in docstrings and comments), from the code."""
    cited: dict[int, dict[str, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for number in re.findall(r"\bRFC ?(\d{4})\b", path.read_text()):
            per = cited.setdefault(int(number), {})
            per[name] = per.get(name, 0) + 1
    lines = ["| RFC | cited by (times) |", "| --- | --- |"]
    for number in sorted(cited):
        mods = sorted(cited[number].items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"`{m}` ({n})" for m, n in mods)
        lines.append(f"| [RFC {number}](https://www.rfc-editor.org/rfc/rfc{number}) | {text} |")
    return "\n".join(lines)


GENERATORS = {
    "layers": layers_diagram,
    "module-map": module_map_table,
    "differences": differences_page,
    "rfc-tables": rfc_tables,
    "rfc-citations": rfc_citations,
}
MARK = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


# ------------------------------------------------------------ MkDocs events


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Fill the nav's "API reference" with the module pages; check the docstrings."""
    pages: list[Any] = [{"Overview": API_NAV_PAGE}]
    pages += [{name: f"api/{name}.md"} for name in public_modules()]
    for i, entry in enumerate(config.nav or []):
        if isinstance(entry, dict) and API_NAV_PAGE in entry.values():
            (title,) = entry
            config.nav[i] = {title: pages}
    for path in undocumented(package()):
        log.warning("public name without a docstring: %s", path)
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pages: the command reference, the API pages."""
    files.append(File.generated(config, "cli.md", content=cli_page()))
    files.append(File.generated(config, API_NAV_PAGE, content=api_index()))
    for name in public_modules():
        files.append(File.generated(config, f"api/{name}.md", content=api_page(name)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace the ``<!-- generated: NAME -->`` markers of a page."""

    def one(m: re.Match[str]) -> str:
        gen = GENERATORS.get(m.group(1))
        if gen is None:
            log.warning("%s: unknown generated section %r", page.file.src_uri, m.group(1))
            return m.group(0)
        return gen()

    return MARK.sub(one, markdown)


__all__ = ["convert", "on_config", "on_files", "on_page_markdown"]
