"""The extension modules of the compiled build (everything else is in pyproject.toml).

``NETSIP_COMPILE=1 pip install .`` compiles the modules listed under
``[tool.netsip] compiled`` in pyproject.toml with mypyc; without it, netsip
is pure Python. See ``_build/netsip_build.py``.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from setuptools import setup


def compiled_extensions() -> list[Any]:
    """The mypyc extensions when ``NETSIP_COMPILE`` is set, else none."""
    if os.environ.get("NETSIP_COMPILE", "") in ("", "0"):
        return []
    from mypyc.build import mypycify  # noqa: PLC0415  (only the compiled build needs mypy)

    with open("pyproject.toml", "rb") as f:
        modules = tomllib.load(f)["tool"]["netsip"]["compiled"]
    # mypy's own settings for the build, not the project's strict ones (CI
    # checks those): the optional extras may be missing where it runs
    options = ["--config-file=", "--ignore-missing-imports"]
    return mypycify([*options, *(f"netsip/{name}.py" for name in modules)], opt_level="3")


setup(ext_modules=compiled_extensions())
