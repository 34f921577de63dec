"""netsip's build backend: setuptools', plus mypy when the compiled build is asked for.

``pip install .`` builds pure Python. The compiled build compiles the
modules of the call path (``[tool.netsip] compiled`` in ``pyproject.toml``)
with mypyc, for about half the CPU per call (``docs/performance.md``)::

    NETSIP_COMPILE=1 pip install .
    pip install . --config-settings compile=1

It needs a C compiler and the Python headers; mypy comes as a build
requirement. ``setup.py`` reads the same switch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import build_sdist, get_requires_for_build_sdist

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

#: what compiling needs besides setuptools
COMPILE_REQUIRES = ["mypy>=1.8"]


def _compiling(config_settings: dict[str, Any] | None) -> bool:
    """The compiled build was asked for; ``setup.py`` then sees ``NETSIP_COMPILE=1``."""
    if config_settings and str(config_settings.get("compile", "")) not in ("", "0"):
        os.environ["NETSIP_COMPILE"] = "1"
    return os.environ.get("NETSIP_COMPILE", "") not in ("", "0")


def _requires(
    setuptools_requires: Callable[[dict[str, Any] | None], list[str]],
    config_settings: dict[str, Any] | None,
) -> list[str]:
    if not _compiling(config_settings):
        return setuptools_requires(config_settings)
    # setuptools runs setup.py to ask: mypy is not there yet, so setup.py
    # must not compile (NETSIP_COMPILE=0) this once
    os.environ["NETSIP_COMPILE"] = "0"
    try:
        return [*setuptools_requires(config_settings), *COMPILE_REQUIRES]
    finally:
        os.environ["NETSIP_COMPILE"] = "1"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)


# pip runs each hook in a process of its own: each one reads the switch


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    _compiling(config_settings)
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    _compiling(config_settings)
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _compiling(config_settings)
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _compiling(config_settings)
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
