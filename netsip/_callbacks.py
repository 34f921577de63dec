"""Callbacks in every shape Net::SIP accepts (part of ``Net::SIP::Util``).

Net::SIP passes callbacks around as code refs, ``[\\&sub, @args]`` arrays,
objects with a ``run`` method, regexes and scalar refs; :func:`invoke_callback`
implements that convention, with :class:`Var` standing in for a scalar
reference. Public through :mod:`netsip.util`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

__all__ = ["Var", "as_callable", "invoke_callback"]

T = TypeVar("T")


class Var(Generic[T]):
    """A mutable cell, standing in for a Perl scalar reference (``\\my $stop``).

    ``value`` is initially None; ``bool(var)`` is ``bool(var.value)``.
    Passed as a callback to :func:`invoke_callback` it records the first
    argument (or True), which makes it the usual stop flag for
    ``EventLoop.loop``.
    """

    __slots__ = ("value",)

    def __init__(self, value: T | None = None) -> None:
        self.value: T | None = value

    def __bool__(self) -> bool:
        return bool(self.value)

    def __repr__(self) -> str:
        return f"Var({self.value!r})"


def invoke_callback(cb: Any, *args: Any) -> Any:
    """Invoke a callback in any of the shapes Net::SIP accepts.

    Args:
        cb: one of

            - a callable: ``cb(*args)``;
            - a tuple or list ``(func, *bound)``: ``func(*bound, *args)``;
            - an object with a ``run`` method: ``cb.run(*args)``;
            - a compiled regex: True if any arg (as str) matches (``search``),
              False otherwise, also when there are no args;
            - a :class:`Var`: set to ``args[0]`` (True without args);
            - None: nothing happens.
        *args: arguments appended to the call.

    Returns:
        Whatever the callback returns; the new value for a Var; None for None.

    Raises:
        TypeError: if ``cb`` has none of these shapes.
    """
    if isinstance(cb, Var):
        cb.value = args[0] if args else True
        return cb.value
    if callable(cb):
        return cb(*args)
    if isinstance(cb, tuple | list):
        if not cb or not callable(cb[0]):
            raise TypeError("callback sequence must start with a callable")
        return cb[0](*cb[1:], *args)
    run = getattr(cb, "run", None)
    if callable(run):
        return run(*args)
    if isinstance(cb, re.Pattern):
        if isinstance(cb.pattern, bytes):
            bpat = cast("re.Pattern[bytes]", cb)
            return any(
                bpat.search(a if isinstance(a, bytes | bytearray) else str(a).encode())
                for a in args
            )
        spat = cast("re.Pattern[str]", cb)
        return any(spat.search(str(a)) for a in args)
    if cb is None:
        return None
    raise TypeError(f"unknown callback type {type(cb).__name__}: {cb!r}")


def _nothing(*_args: Any) -> None:
    """The plain callable of a None callback."""


def as_callable(cb: Any) -> Callable[..., Any]:
    """``cb`` as a plain callable doing what ``invoke_callback(cb, *args)`` does.

    For a callback called again and again (a socket's read handler, a pool's
    receive callback): a plain function comes back as it is and is then
    called without :func:`invoke_callback`'s checks; the other shapes are
    wrapped (None becomes a function that does nothing).
    """
    if cb is None:
        return _nothing
    if callable(cb) and not isinstance(cb, Var):
        return cast("Callable[..., Any]", cb)
    return functools.partial(invoke_callback, cb)
