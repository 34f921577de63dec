"""What the sources need for the compiled build, and which modules run compiled.

netsip is pure Python. ``NETSIP_COMPILE=1 pip install .`` compiles the
modules of the call path (``[tool.netsip] compiled`` in pyproject.toml) with
mypyc; everything else stays interpreted, and the sources are the same.
This module gives the sources :func:`mypyc_attr` (from mypy_extensions
when it is installed; otherwise a decorator that does nothing, since netsip
needs no package at run time), and tells programs which modules are
compiled (:func:`compiled_modules`).

Compiled classes differ from interpreted ones in ways a user can see, and
the sources are written for both:

- a class is subclassable from Python only with
  ``@mypyc_attr(allow_interpreted_subclasses=True)``: ``EventLoop``, ``Leg``,
  ``Dispatcher`` and ``Endpoint`` have it, since Net::SIP's users subclass
  them, and ``TimerEvent`` (``netsip.aio``'s timers are a subclass);
- a compiled class takes no weak references (so the settings of
  ``netsip._settings`` follow their owners through records of their own),
  and its methods cannot be replaced on the class or on an instance;
- declared types are checked at run time: a ``float`` parameter refuses a
  ``str``, and an int too large for a float is a ``TypeError`` there;
- a type checker's narrowing is enforced: an attribute read again after a
  callback that may have changed it is read through a method (see
  ``Context.answering``), since compiled code checks the narrowed type and
  raises ``TypeError`` where the interpreter would go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # the usual case at run time: mypyc reads the decorator, not Python

    def mypyc_attr(*_attrs: str, **_kw: object) -> Callable[[Any], Any]:  # type: ignore[misc]
        """mypyc's class attributes: no effect on an interpreted class."""
        return lambda cls: cls


__all__ = ["compiled_modules", "mypyc_attr"]


def compiled_modules(package: str | None = None) -> list[str]:
    """The modules of this netsip that run compiled (empty for pure Python).

    Read from the package directory (or ``package``, another netsip's),
    without importing: an extension module there is imported in place of
    the source beside it.
    """
    names = set()
    try:
        entries = os.listdir(package or os.path.dirname(os.path.abspath(__file__)))
    except OSError:  # (no such package)
        return []
    for entry in entries:
        for suffix in EXTENSION_SUFFIXES:  # this interpreter's
            name = entry[: -len(suffix)]
            # (one built for another Python, packet.cpython-312-...so, is no module here)
            if entry.endswith(suffix) and name.isidentifier():
                names.add(name)
    return sorted(names)
