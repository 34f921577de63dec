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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from setuptools import build_meta as _setuptools

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

#: what compiling needs besides setuptools (the mypy it was tested with)
COMPILE_REQUIRES = ["mypy>=2.4"]


def _compiling(config_settings: dict[str, Any] | None) -> bool:
    """The compiled build was asked for; ``setup.py`` then sees ``NETSIP_COMPILE=1``.

    ``--config-settings compile=0|1`` wins over the environment.
    """
    if config_settings and "compile" in config_settings:
        on = str(config_settings["compile"]) not in ("", "0")
        os.environ["NETSIP_COMPILE"] = "1" if on else "0"
    return os.environ.get("NETSIP_COMPILE", "") not in ("", "0")


@contextmanager
def _pure() -> Iterator[None]:
    """``setup.py`` runs without compiling (metadata and sdists do not depend on it)."""
    before = os.environ.get("NETSIP_COMPILE")
    os.environ["NETSIP_COMPILE"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["NETSIP_COMPILE"]
        else:
            os.environ["NETSIP_COMPILE"] = before


def _requires(
    setuptools_requires: Callable[[dict[str, Any] | None], list[str]],
    config_settings: dict[str, Any] | None,
) -> list[str]:
    compiling = _compiling(config_settings)
    # setuptools runs setup.py to ask: mypy is not there yet, so setup.py
    # must not compile this once
    with _pure():
        requires = setuptools_requires(config_settings)
    return [*requires, *COMPILE_REQUIRES] if compiling else requires


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)


# pip runs each hook in a process of its own: each one reads the switch


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    with _pure():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    with _pure():
        return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    with _pure():
        return _setuptools.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    with _pure():
        return _setuptools.build_sdist(sdist_directory, config_settings)


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
