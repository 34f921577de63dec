"""The documentation site's generated parts: docs/_hooks/generate.py and sphinx_roles.py.

``mkdocs build --strict`` (CI) is the whole check; these tests pin the
pieces it relies on, so a failure says which one broke: every public name
has a docstring, every public module gets an API page, the command
reference covers every subcommand and option of the real parser, the
"Differences from Net::SIP" paragraphs are found in their two forms, the
Sphinx roles become links only where the site has an anchor, and the RFC
tables gathered from the tutorials exist. They need the ``docs`` extra
(``pip install -e '.[docs]'``), which CI installs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from netsip.cli import build_parser
from tests.support import ROOT

HOOKS = ROOT / "docs" / "_hooks"

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("griffe", reason="the docs extra is not installed: pip install -e '.[docs]'")


def load(name: str) -> ModuleType:
    """Import ``docs/_hooks/NAME.py`` (the hooks are files, not a package)."""
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", HOOKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    return load("generate")


def test_every_public_name_has_a_docstring(generate: ModuleType) -> None:
    assert generate.undocumented(generate.package()) == []


def test_every_public_module_has_an_api_page(generate: ModuleType) -> None:
    modules = set(generate.public_modules())
    for path in (ROOT / "netsip").rglob("*.py"):
        name = generate.module_name(path)
        parts = name.split(".")
        if name.endswith("__main__"):
            assert name not in modules
        elif any(p.startswith("_") for p in parts):
            assert name not in modules, name
        else:
            assert name in modules, name
    assert {"netsip", "netsip.leg", "netsip.cli", "netsip.cli.listen"} <= modules
    assert generate.api_page("netsip.leg") == "::: netsip.leg\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_command_reference_covers_the_parser(generate: ModuleType) -> None:
    page: str = generate.cli_page()
    for name, sub in _subcommands(build_parser()).items():
        assert f"\n## netsip {name}\n" in page
        for action in sub._actions:
            for option in action.option_strings:
                assert f"`{option}`" in page, (name, option)
    assert "%(default)s" not in page  # help texts expanded as argparse does


def test_differences_in_both_forms(generate: ModuleType) -> None:
    inline = "Port of X.\n\nDifferences from Net::SIP: it is\nfaster.\n\nPerformance plan.\n"
    assert generate.differences_of(inline) == "it is\nfaster."
    listed = (
        "Port.\n\nDifferences from Net::SIP 0.835:\n\n- one\n  continued\n\n- two\n\nOther text.\n"
    )
    assert generate.differences_of(listed) == "- one\n  continued\n\n- two"
    assert generate.differences_of("the differences from Net::SIP are listed there.") is None
    page: str = generate.differences_page()
    assert "### netsip.digest" in page and "### netsip._dialog" in page


def test_sphinx_roles_become_links_where_the_site_has_an_anchor(generate: ModuleType) -> None:
    roles = load("sphinx_roles")
    pkg = generate.package()
    leg = pkg["leg.Leg"]
    convert = roles.convert
    assert convert(":class:`~netsip.leg.Leg`", pkg, pkg) == "[`Leg`][netsip.leg.Leg]"
    assert convert(":meth:`add_via`", pkg, leg) == "[`add_via`][netsip.leg.Leg.add_via]"
    assert convert(":class:`ssl.SSLContext`", pkg, leg) == "`ssl.SSLContext`"
    assert convert(":mod:`netsip._abnf`", pkg, pkg) == "`netsip._abnf`"
    # a public path that names nothing stays a link: autorefs fails the build on it
    assert (
        convert(":func:`netsip.leg.nothing`", pkg, pkg)
        == "[`netsip.leg.nothing`][netsip.leg.nothing]"
    )


def test_rfc_tables_are_found(generate: ModuleType) -> None:
    tables: str = generate.rfc_tables()
    for page, _heading in generate.RFC_SECTIONS:
        assert f"]({page}#" in tables
    assert "| Rule | Section | Test |" in tables
    with pytest.raises(ValueError, match="no heading"):
        generate.section_of("dialogs.md", "No such heading")


def test_layer_diagram_has_every_public_module(generate: ModuleType) -> None:
    diagram: str = generate.layers_diagram()
    for name in generate.public_modules():
        if name == "netsip" or name.startswith("netsip.cli."):
            continue
        assert f'["{name.removeprefix("netsip.")}"]' in diagram, name
    assert "util --> eventloop" in diagram


def test_the_pages_of_the_nav_exist() -> None:
    text = (ROOT / "mkdocs.yml").read_text()
    generated = {"cli.md", "api/index.md"}
    for line in text.splitlines():
        page = line.rsplit(": ", 1)[-1].strip() if line.strip().startswith("- ") else ""
        if page.endswith(".md") and page not in generated:
            assert (ROOT / "docs" / page).is_file(), page
    assert Path(ROOT / "docs" / "_hooks" / "generate.py").is_file()
