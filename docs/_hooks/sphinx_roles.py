"""A griffe extension: netsip's docstrings cite with Sphinx roles, the site links with autorefs.

The docstrings say ``:class:`~netsip.leg.Leg```, ``:meth:`add_timer``` and
so on (readable in ``help()`` and in the source). mkdocstrings renders
Markdown, where a cross-reference is ``[Leg][netsip.leg.Leg]``. Once the
package is loaded this extension rewrites every role in every docstring:

- a name that resolves to a public object of netsip (a public module, a
  public name in it, a public member of a public class), looked up as a
  full path or from the docstring's own scope outwards (the object, its
  class, its module, the package), becomes an autorefs link. autorefs then
  fails a strict build if nothing on the site carries that anchor;
- a full ``netsip.`` path that resolves to nothing stays a link too, so the
  build fails on it (a broken cross-reference);
- anything else (the standard library, a private helper) becomes inline
  code: there is nothing on the site to link to.

``~`` shows only the last component, as in Sphinx; ``title <target>`` gives
the text. A reStructuredText literal block marker (a paragraph ending with
``::``) loses one colon (a ``::`` alone on its line goes): the indented
block after it is a code block in Markdown already.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|mod|func|meth|attr|data|exc|obj|const):`([^`]+)`")
EXPLICIT = re.compile(r"^(.*?)\s*<([^>]+)>$")


def _lookup(scope: Any, name: str) -> Any | None:
    try:
        return scope[name]
    except (
        KeyError,
        ValueError,
        AttributeError,
        griffe.AliasResolutionError,
        griffe.CyclicAliasError,
    ):
        return None


def _public_path(obj: Any) -> str | None:
    """The path under which ``obj`` is documented on the site, if it is."""
    candidates = [obj]
    if obj.is_alias:
        with contextlib.suppress(griffe.AliasResolutionError, griffe.CyclicAliasError):
            candidates.append(obj.final_target)
    for cand in candidates:
        try:
            if _documented(cand):
                return str(cand.path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return None


def _documented(obj: Any) -> bool:
    """Whether ``obj`` has its own entry on the site: it and every parent public."""
    if obj.path.split(".")[0] != "netsip":
        return False
    while obj.parent is not None:
        if obj.name.startswith("_"):
            return False
        if obj.parent.is_module and not obj.is_module and not obj.is_public:
            return False
        obj = obj.parent
    return True


def resolve(pkg: Any, scope: Any, target: str) -> str | None:
    """The site path of ``target`` cited in the docstring of ``scope``, or None."""
    target = target.lstrip(".")
    if target == "netsip":
        return "netsip"
    if target.startswith("netsip."):
        found = _lookup(pkg, target[len("netsip.") :])
        return _public_path(found) if found is not None else None
    while scope is not None:
        if not scope.is_function:
            found = _lookup(scope, target)
            if found is not None:
                return _public_path(found)
        scope = scope.parent
    return None


def convert(text: str, pkg: Any, scope: Any) -> str:
    """``text`` with its Sphinx roles as autorefs links or inline code."""

    def one(m: re.Match[str]) -> str:
        inner = m.group(1).strip()
        explicit = EXPLICIT.match(inner)
        if explicit:
            title, target = explicit.group(1), explicit.group(2)
        else:
            target = inner.lstrip("~")
            title = target.rsplit(".", 1)[-1] if inner.startswith("~") else target
        target = target.lstrip("~")
        path = resolve(pkg, scope, target)
        if (
            path is None
            and target.startswith("netsip.")
            and not any(p.startswith("_") for p in target.split(".")[1:])
        ):
            path = target  # a broken reference: let autorefs fail the build on it
        if path is None:
            return f"`{title}`"
        return f"[`{title}`][{path}]"

    return ROLE.sub(one, text)


LITERAL = re.compile(r"^([ \t]*)(.*?)::[ \t]*$", re.M)


def literal_blocks(text: str) -> str:
    """``text`` with reStructuredText's ``::`` markers as Markdown reads them."""
    return LITERAL.sub(lambda m: f"{m.group(1)}{m.group(2)}:" if m.group(2) else "", text)


def walk(obj: Any) -> Any:
    """Every object defined under ``obj`` (aliases skipped), ``obj`` first."""
    yield obj
    for member in list(obj.members.values()):
        if not member.is_alias:
            yield from walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the package, once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Convert the docstrings of every object of ``pkg``."""
        if pkg.path != "netsip":
            return
        for obj in walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = literal_blocks(convert(obj.docstring.value, pkg, obj))
