"""Port of Perl's ``Net::SIP::Dispatcher::Eventloop``: a small select loop with timers.

The Perl original keeps ``select(2)`` bit vectors and a plain list of timers that
it sorts on every cycle. This port keeps its behaviour and API but uses the
standard library's machinery:

* file descriptors are watched with :mod:`selectors` (epoll on Linux), one
  registration per fd whose mask is ``modify``-ed when a direction is added or
  dropped; callbacks live in a typed table (:class:`_FdEntry` / :class:`_Handler`);
* timers live in a heap of ``(when, seq, timer)`` entries, the counter ``seq``
  breaking ties so that timers due at the same time fire in the order they were
  added (as :mod:`sched` does); :meth:`TimerEvent.cancel` only sets a flag, the
  entry is dropped when it reaches the top of the heap, and the heap is rebuilt
  when more than half of it is cancelled (asyncio's rule).

One *cycle* of :meth:`EventLoop.loop` runs the timers that are due at
:attr:`EventLoop.looptime`, checks the stop variables, waits in ``select`` until
the next timer is due (or the loop's timeout, whichever is first), sets
``looptime`` to the time ``select`` returned, and dispatches the callbacks of the
ready fds. Watching is level-triggered: a fd whose data was not read is reported
again in the next cycle. Only due timers and ready fds cost work in a cycle.

Perl's loop is not thread-safe and neither is this one: use it from one thread.

Performance plan. Operations per cycle: one ``select`` (``epoll_wait``), the
callbacks of the ready fds, the due timers. Goal: no work per cycle beyond
what is ready or due. Plan: with the standard library's ``EpollSelector``
the loop polls the selector's epoll object itself and maps each
``(fd, events)`` to its handler entry in one pass (the same event rules as
``select()``: error and hang-up count for both directions), where
``EpollSelector.select`` would first build a list of ``SelectorKey`` pairs
for the loop to map again. That epoll object is a private attribute of the
selector (``_selector``): it is used only when the selector is exactly
``selectors.EpollSelector`` and the attribute is a ``select.epoll``; any
other selector, or a standard library where that no longer holds, gets the
public ``select()``. Registration always goes through :mod:`selectors`, so
its bookkeeping stays right.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import math
import os
import select
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

from netsip._log import get_logger
from netsip._native import mypyc_attr
from netsip.util import Var, as_callable, invoke_callback

__all__ = [
    "EV_READ",
    "EV_WRITE",
    "RELATIVE_LIMIT",
    "STOPVAR_POLL_INTERVAL",
    "Callback",
    "EventLoop",
    "EventLoopLike",
    "FdLike",
    "HasFileno",
    "StopVar",
    "TimerEvent",
    "TimerLike",
]

log: Final = get_logger(__name__)

#: Watch a fd for readability (Perl's ``EV_READ``).
EV_READ: Final = 0
#: Watch a fd for writability (Perl's ``EV_WRITE``).
EV_WRITE: Final = 1

# The one place where Perl's EV_READ/EV_WRITE become selectors' masks:
# _MASKS[rw] is the selectors event bit for direction rw.
_MASKS: Final = (selectors.EVENT_READ, selectors.EVENT_WRITE)
_EV_R: Final = selectors.EVENT_READ
_EV_W: Final = selectors.EVENT_WRITE
_NOT_EPOLLIN: Final = ~getattr(select, "EPOLLIN", 0)
_NOT_EPOLLOUT: Final = ~getattr(select, "EPOLLOUT", 0)

#: A ``when`` below this many seconds (one year) is relative to ``looptime``;
#: anything larger is an absolute epoch time (Net::SIP's rule).
RELATIVE_LIMIT: Final = 3600 * 24 * 365

#: The shortest repeat interval of a timer (seconds). Anything shorter is a
#: busy loop in disguise (a repeat of 1e-300 fired 54,000 times in 0.2 s),
#: and a subnormal one overflows the catch-up arithmetic.
MIN_REPEAT: Final = 0.001


def _checked_when(when: float) -> float:
    try:
        value = float(when)
    except OverflowError:  # an int beyond the float range, such as 10**400
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"timer time must be a finite number, not {when!r}")
    return value


def _checked_repeat(repeat: float | None) -> float | None:
    if repeat is None:
        return None
    try:
        value = float(repeat)
    except OverflowError:
        value = math.inf
    if value == 0:
        return None  # Perl treats a false repeat as "once"
    if not math.isfinite(value) or value < MIN_REPEAT:
        raise ValueError(
            f"repeat must be None, 0 or a finite number of at least {MIN_REPEAT} s, not {repeat!r}"
        )
    return value


#: With stop variables, ``loop`` never waits longer than this (seconds) in one
#: ``select``, so that a stop variable set by a signal handler is noticed even
#: though Python retries an interrupted ``select`` itself (PEP 475).
STOPVAR_POLL_INTERVAL: Final = 0.25

# asyncio's rule for rebuilding the heap: more than half the entries cancelled,
# and the heap not tiny (rebuilding a handful of entries is not worth it).
_MIN_HEAP_FOR_COMPACT: Final = 100

#: Anything :func:`netsip.util.invoke_callback` accepts: a callable, a
#: ``(func, *args)`` tuple/list, an object with ``run``, a regex, a ``Var``.
Callback: TypeAlias = object


class HasFileno(Protocol):
    """An object with a ``fileno()`` method (a socket, a file, a pipe end)."""

    def fileno(self) -> int:
        """The file descriptor."""
        ...


#: A file descriptor as ``add_fd`` takes it: an int or an object with ``fileno()``.
FdLike: TypeAlias = int | HasFileno

#: A stop variable for :meth:`EventLoop.loop`: a ``Var`` or a zero-argument callable.
StopVar: TypeAlias = Var[Any] | Callable[[], object]


class TimerLike(Protocol):
    """What callers may rely on from the object ``add_timer`` returns."""

    def cancel(self) -> None:
        """Cancel the timer; it does not fire any more."""
        ...


class EventLoopLike(Protocol):
    """An :class:`EventLoop` or anything API compatible (for SocketPool, Dispatcher)."""

    def add_fd(self, fd: FdLike, rw: int, callback: Callback, name: str = "") -> None:
        """Watch ``fd`` for ``rw`` (``EV_READ``/``EV_WRITE``); see :meth:`EventLoop.add_fd`."""
        ...

    def del_fd(self, fd: FdLike, rw: int | None = None) -> None:
        """Stop watching ``fd`` in one direction, or both; see :meth:`EventLoop.del_fd`."""
        ...

    def add_timer(
        self,
        when: float,
        callback: Callback,
        repeat: float | None = None,
        name: str | None = None,
    ) -> TimerLike:
        """Call ``callback`` at ``when``; see :meth:`EventLoop.add_timer`."""
        ...

    @property
    def looptime(self) -> float:
        """The time when the last select returned; see :attr:`EventLoop.looptime`."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)  # netsip.aio's timer is one
class TimerEvent:
    """A timer returned by :meth:`EventLoop.add_timer`.

    Attributes:
        when: absolute time (in the loop's clock) when the timer fires next.
            Read it, don't assign it: the heap is not re-sorted.
        repeat: interval in seconds for a repeating timer, else None. May be
            changed (also from the callback); it applies when the timer re-arms.
        name: the name given to ``add_timer`` (for logging), or None.
        callback: the callback; None once the timer is cancelled (as in Perl,
            so that the closure can be garbage collected).
        cancelled: True once :meth:`cancel` was called.
    """

    __slots__ = ("_loop", "_repeat", "callback", "cancelled", "name", "when")

    def __init__(
        self, when: float, callback: Callback, repeat: float | None, name: str | None
    ) -> None:
        self.when = when
        self.callback: Callback = callback
        self._repeat = repeat
        self.name = name
        self.cancelled = False
        # The loop whose heap holds this timer, None while it is not in a heap
        # (being fired, fired for good, or dropped): cancel() tells the loop so it
        # can count cancelled heap entries.
        self._loop: EventLoop | None = None

    @property
    def repeat(self) -> float | None:
        """The repeat interval, or None (see the class docstring)."""
        return self._repeat

    @repeat.setter
    def repeat(self, value: float | None) -> None:
        # checked as add_timer checks it: the loop re-arms with it
        self._repeat = _checked_repeat(value)

    def cancel(self) -> None:
        """Cancel the timer; it will not fire (again). Idempotent.

        Cancelling from inside the timer's own callback stops a repeating timer.
        """
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = None
        loop, self._loop = self._loop, None
        if loop is not None:
            loop._timer_cancelled()

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        rep = f" repeat={self.repeat}" if self.repeat else ""
        name = self.name or _describe(self.callback)
        return f"<TimerEvent {name} when={self.when:.6f}{rep}{state}>"


@dataclass(slots=True, eq=False)
class _Handler:
    """The callback for one direction of one fd.

    ``active`` is cleared when the handler is removed (``del_fd``, ``reset``);
    a handler collected for dispatch in the current cycle is skipped then, so a
    callback removed in this cycle is never called, even if the same fd number
    was added again meanwhile (that creates a new handler object).
    """

    fd: FdLike  # exactly as passed to add_fd; handed back to the callback
    callback: Callback
    name: str
    call: Callable[[FdLike], object]  # as_callable(callback): what dispatch calls
    active: bool = True


@dataclass(slots=True, eq=False)
class _FdEntry:
    """Everything the loop knows about one fd number (one selector registration)."""

    fileno: int
    fileobj: FdLike  # the object last passed to add_fd for this fd number
    handlers: list[_Handler | None]  # indexed by EV_READ / EV_WRITE

    def mask(self) -> int:
        read, write = self.handlers
        return (_MASKS[EV_READ] if read else 0) | (_MASKS[EV_WRITE] if write else 0)


def _describe(cb: object) -> str:
    """A short description of a callback, for logging and repr."""
    if isinstance(cb, tuple | list) and cb:
        cb = cb[0]
    return str(getattr(cb, "__qualname__", None) or type(cb).__name__)


def _fileno(fd: FdLike) -> int:
    """The fd number of ``fd``; -1 if it is closed. Raises TypeError for non-fds."""
    if isinstance(fd, int):
        if isinstance(fd, bool):
            raise TypeError("a bool is not a file descriptor")
        return fd
    try:
        getter = fd.fileno
    except AttributeError:
        raise TypeError(f"not a file descriptor: {type(fd).__name__}") from None
    try:
        return getter()
    except (OSError, ValueError):
        # closed file objects raise ValueError; closed sockets return -1
        return -1


def _check_rw(rw: int) -> int:
    if rw not in (EV_READ, EV_WRITE) or isinstance(rw, bool):
        raise ValueError(f"rw must be EV_READ (0) or EV_WRITE (1), not {rw!r}")
    return rw


@mypyc_attr(allow_interpreted_subclasses=True)  # users subclass it, as in Net::SIP
class EventLoop:
    """A level-triggered select loop with timers (Net::SIP::Dispatcher::Eventloop).

    Args:
        clock: returns the current time in seconds; ``time.time`` by default.
            Inject a fake clock in tests (and drive the loop with ``loop(0)``).
            It should be an epoch clock if absolute ``when`` values are used.
        selector: a zero-argument factory for the selector;
            ``selectors.DefaultSelector`` by default.

    The loop is a context manager; leaving the block calls :meth:`close`.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        selector: Callable[[], selectors.BaseSelector] = selectors.DefaultSelector,
    ) -> None:
        self._clock = clock
        self._selector: selectors.BaseSelector | None = selector()
        epoll = getattr(self._selector, "_selector", None)  # see the performance plan
        self._epoll: Any = (
            epoll
            if type(self._selector) is getattr(selectors, "EpollSelector", None)
            and isinstance(epoll, getattr(select, "epoll", ()))
            else None
        )
        self._fds: dict[int, _FdEntry] = {}
        self._heap: list[tuple[float, int, TimerEvent]] = []
        self._cancelled = 0  # cancelled entries still in _heap
        self._seq = 0  # tie-breaker: insertion order among equal deadlines
        self._generation = 0  # bumped by reset(): stops batches being fired
        self._now: float = clock()

    # ------------------------------------------------------------------ fds

    def add_fd(self, fd: FdLike, rw: int, callback: Callback, name: str = "") -> None:
        """Call ``invoke_callback(callback, fd)`` whenever ``fd`` is ready.

        Level-triggered: the callback is called in every cycle while the fd
        stays readable (``EV_READ``) or writable (``EV_WRITE``). Adding the same
        fd and direction again replaces the callback (also for an event already
        reported in the current cycle). A closed fd is logged and ignored.

        Args:
            fd: an int or an object with ``fileno()``; passed back as is.
            rw: ``EV_READ`` or ``EV_WRITE``.
            callback: anything ``invoke_callback`` accepts.
            name: optional name for logging.

        Raises:
            ValueError: ``rw`` is neither EV_READ nor EV_WRITE.
            TypeError: ``fd`` is not a file descriptor.
            RuntimeError: the loop is closed.
        """
        if type(rw) is not int or rw not in (EV_READ, EV_WRITE):
            rw = _check_rw(rw)  # raises for anything but EV_READ/EV_WRITE
        sel = self._selector
        if sel is None:
            raise RuntimeError("EventLoop is closed")
        fileno = fd if type(fd) is int else _fileno(fd)
        if fileno < 0:
            log.warning("add_fd(%r, %d, %s): fd is closed, ignored", fd, rw, name)
            return
        entry = self._fds.get(fileno)
        if entry is None:
            handlers: list[_Handler | None] = [None, None]
            handlers[rw] = _Handler(fd, callback, name, as_callable(callback))
            entry = _FdEntry(fileno, fd, handlers)
            try:
                sel.register(fileno, _MASKS[rw], entry)
            except (OSError, ValueError) as exc:
                log.warning("add_fd(%r, %d, %s): cannot watch fd: %s", fd, rw, name, exc)
                return
            self._fds[fileno] = entry
            if log.isEnabledFor(logging.DEBUG):
                log.debug("add_fd fd=%d rw=%d %s", fileno, rw, name)
            return

        handler = entry.handlers[rw]
        if handler is not None:
            # Replace in place: an event already collected for it in this cycle
            # goes to the new callback, as Perl (which looks up at dispatch) does.
            handler.fd, handler.callback, handler.name = fd, callback, name
            handler.call = as_callable(callback)
        else:
            entry.handlers[rw] = _Handler(fd, callback, name, as_callable(callback))
        stale = fd is not entry.fileobj and not (
            isinstance(fd, int) and isinstance(entry.fileobj, int)
        )
        entry.fileobj = fd
        if log.isEnabledFor(logging.DEBUG):
            log.debug("add_fd fd=%d rw=%d %s", fileno, rw, name)
        if stale:
            # A different object on a known fd number: the old one may have been
            # closed without del_fd, which silently drops an epoll registration,
            # and its number reused. Register afresh rather than trust the kernel.
            self._reregister(entry)
        elif handler is None:
            self._modify(entry)

    def del_fd(self, fd: FdLike, rw: int | None = None) -> None:
        """Stop watching ``fd`` in one direction, or both when ``rw`` is None.

        Call it before closing the fd. An event already reported for the fd
        (direction) in the current cycle is not dispatched any more. Unknown
        fds, and any fd after :meth:`close`, are ignored.

        Args:
            fd: the fd (int or object with ``fileno()``) as given to ``add_fd``.
                If it was closed already, it is looked up by identity.
            rw: ``EV_READ``, ``EV_WRITE`` or None for both.

        Raises:
            ValueError: ``rw`` is not EV_READ, EV_WRITE or None.
        """
        if rw is not None:
            _check_rw(rw)
        if self._selector is None:
            return
        fileno = fd if type(fd) is int else _fileno(fd)
        entry = self._fds.get(fileno) if fileno >= 0 else self._find_by_object(fd)
        if entry is None:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("del_fd fd=%d rw=%s", entry.fileno, rw)
        if rw is None:
            self._drop(entry)
            return
        handler = entry.handlers[rw]
        if handler is None:
            return
        handler.active = False
        entry.handlers[rw] = None
        if entry.mask():
            self._modify(entry)
        else:
            self._drop(entry)

    def fd_count(self) -> int:
        """Number of fds being watched (in any direction)."""
        return len(self._fds)

    def _find_by_object(self, fd: FdLike) -> _FdEntry | None:
        # Only reached when the caller closed the fd before del_fd (misuse), so
        # an O(n) search is acceptable.
        for entry in self._fds.values():
            if entry.fileobj is fd or any(h is not None and h.fd is fd for h in entry.handlers):
                return entry
        return None

    def _drop(self, entry: _FdEntry) -> None:
        """Forget ``entry`` entirely: deactivate its handlers, unregister it."""
        for h in entry.handlers:
            if h is not None:
                h.active = False
        entry.handlers = [None, None]
        if self._fds.get(entry.fileno) is entry:
            del self._fds[entry.fileno]
        sel = self._selector
        if sel is not None:
            try:
                sel.unregister(entry.fileno)
            except (KeyError, ValueError, OSError) as exc:
                log.debug("unregister fd=%d: %s", entry.fileno, exc)

    def _modify(self, entry: _FdEntry) -> None:
        sel = self._selector
        assert sel is not None
        try:
            sel.modify(entry.fileno, entry.mask(), entry)
        except (KeyError, ValueError, OSError) as exc:
            # e.g. ENOENT: the fd was closed (and maybe reused) behind our back;
            # the selector has forgotten it already (modify unregisters on error).
            log.debug("modify fd=%d failed (%s), registering again", entry.fileno, exc)
            self._reregister(entry)

    def _reregister(self, entry: _FdEntry) -> None:
        sel = self._selector
        assert sel is not None
        # Not registered (any more) is fine: we register anew below.
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(entry.fileno)
        try:
            sel.register(entry.fileno, entry.mask(), entry)
        except (OSError, ValueError) as exc:
            log.warning("fd=%d cannot be watched any more (%s): dropped", entry.fileno, exc)
            self._drop(entry)

    def _purge_bad_fds(self) -> bool:
        """Drop fds that were closed without ``del_fd``; True if any were found.

        Only used after ``select`` failed with EBADF (select/poll based
        selectors; epoll forgets closed fds by itself).
        """
        bad: list[_FdEntry] = []
        for entry in self._fds.values():
            try:
                os.fstat(entry.fileno)
            except OSError:
                bad.append(entry)
                continue
            if not isinstance(entry.fileobj, int) and _fileno(entry.fileobj) != entry.fileno:
                bad.append(entry)
        for entry in bad:
            log.warning("fd=%d was closed without del_fd: dropped", entry.fileno)
            self._drop(entry)
        return bool(bad)

    # --------------------------------------------------------------- timers

    def add_timer(
        self,
        when: float,
        callback: Callback,
        repeat: float | None = None,
        name: str | None = None,
    ) -> TimerEvent:
        """Call ``invoke_callback(callback, timer)`` at time ``when``.

        Args:
            when: seconds relative to :attr:`looptime` if below one year
                (:data:`RELATIVE_LIMIT`), else an absolute epoch time. Zero or
                negative means "in the next cycle".
            callback: anything ``invoke_callback`` accepts; gets the TimerEvent.
            repeat: if a number (at least :data:`MIN_REPEAT`), the timer
                re-arms every ``repeat`` seconds, counted from its scheduled
                time (no drift). If the loop
                fell behind by more than one interval, the missed runs are
                skipped (no burst of catch-up calls) and the timer keeps its
                phase. None or 0 fires once.
            name: optional name for logging.

        Returns:
            The :class:`TimerEvent`; call its ``cancel()`` to stop it.

        Raises:
            ValueError: ``when`` is not a finite number, or ``repeat`` is not
                None, 0 or a finite number of at least :data:`MIN_REPEAT`.
            RuntimeError: the loop is closed.
        """
        if self._selector is None:
            raise RuntimeError("EventLoop is closed")
        when = _checked_when(when)
        repeat = _checked_repeat(repeat)
        if when < RELATIVE_LIMIT:
            when += self._now
        timer = TimerEvent(when, callback, repeat, name)
        self._schedule(timer)
        return timer

    def timer_count(self) -> int:
        """Number of scheduled timers, not counting cancelled ones."""
        return len(self._heap) - self._cancelled

    def _schedule(self, timer: TimerEvent) -> None:
        self._seq += 1
        timer._loop = self
        heapq.heappush(self._heap, (timer.when, self._seq, timer))

    def _timer_cancelled(self) -> None:
        """A timer in the heap was cancelled: compact the heap if mostly dead."""
        self._cancelled += 1
        heap = self._heap
        if len(heap) > _MIN_HEAP_FOR_COMPACT and self._cancelled * 2 > len(heap):
            # In place, so code holding a reference to the list keeps working.
            heap[:] = [e for e in heap if not e[2].cancelled]
            heapq.heapify(heap)
            self._cancelled = 0

    def _next_deadline(self) -> float | None:
        """When the first live timer is due, dropping cancelled ones on top."""
        heap = self._heap
        while heap:
            if heap[0][2].cancelled:
                heapq.heappop(heap)
                self._cancelled -= 1
                continue
            return heap[0][0]
        return None

    def _run_timers(self) -> None:
        """Fire every timer due at looptime, in (when, insertion) order.

        The due entries are taken off the heap first, so timers added (or
        re-armed) by the callbacks fire in a later cycle, never in this one:
        a timer that keeps re-adding itself cannot starve the fds.
        """
        heap = self._heap
        now = self._now
        due: list[tuple[float, int, TimerEvent]] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            timer = entry[2]
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer._loop = None  # out of the heap: cancel() needs no bookkeeping
            due.append(entry)
        if not due:
            return
        generation = self._generation
        for i, (_when, _seq, timer) in enumerate(due):
            if timer.cancelled:  # by an earlier callback of this batch
                continue
            if self._generation != generation:
                # reset() or close() was called from a callback: the rest of
                # the batch was dropped with every other timer.
                for _w, _s, rest in due[i:]:
                    rest.cancelled = True
                    rest.callback = None
                return
            log.debug("timer %r fires", timer)
            try:
                invoke_callback(timer.callback, timer)
            except BaseException:
                # Keep the loop's state intact: the unfired rest of the batch
                # goes back with its original keys, so it fires first next time
                # (unless the callback reset the loop before raising).
                requeue = self._generation == generation
                for entry in due[i + 1 :]:
                    rest = entry[2]
                    if rest.cancelled:
                        continue
                    if requeue:
                        rest._loop = self
                        heapq.heappush(self._heap, entry)
                    else:
                        rest.cancelled = True
                        rest.callback = None
                raise
            finally:
                self._rearm(timer, now, generation)

    def _rearm(self, timer: TimerEvent, now: float, generation: int) -> None:
        repeat = timer._repeat
        if not repeat or timer.cancelled or self._generation != generation:
            return
        when = timer.when + repeat  # from the scheduled time: no drift
        if when <= now:
            # Fell behind by a whole interval or more (long callback, blocked
            # loop, clock jump): skip the missed runs, keep the phase.
            when += (math.floor((now - when) / repeat) + 1) * repeat
            if when <= now:  # float rounding
                when += repeat
        timer.when = when
        self._schedule(timer)

    # ----------------------------------------------------------------- loop

    @property
    def looptime(self) -> float:
        """The time when the last ``select`` returned (the clock at construction
        or at the start of :meth:`loop` before that)."""
        return self._now

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._selector is None

    def loop(self, timeout: float | None = None, *stopvars: StopVar) -> None:
        """Run the event loop.

        Args:
            timeout: None runs until a stop variable is true; 0 (or less)
                polls once: due timers fire, one ``select`` with timeout 0,
                ready fds are dispatched, and the call returns; ``t > 0``
                returns after at most ``t`` seconds (of the loop's clock).
            *stopvars: each a ``Var`` (true when its value is) or a
                zero-argument callable. The loop returns as soon as one is
                true: they are checked on entry (an already true stop variable
                returns at once, nothing is run), after the due timers fired
                (so a timer can stop the loop before it blocks, as in Perl),
                and after the fd callbacks.

        Raises:
            RuntimeError: the loop is closed.
            Exception: whatever a callback raised. The loop's state is intact:
                calling ``loop()`` again continues (unfired due timers first;
                fd events not dispatched yet are reported again, being level
                triggered).

        A signal interrupting ``select`` (EINTR) never ends the loop: Python
        runs the handler and retries (PEP 475); if the handler raises, the
        exception propagates. With stop variables, one ``select`` waits at most
        :data:`STOPVAR_POLL_INTERVAL` seconds, so a stop variable set by a
        signal handler is seen promptly. Without fds, timers, stop variables
        and timeout, the loop blocks until a signal handler raises (as Perl's
        blocks forever in select); it never busy-loops.
        """
        if self._selector is None:
            raise RuntimeError("EventLoop is closed")
        for sv in stopvars:
            if not isinstance(sv, Var) and not callable(sv):
                raise TypeError(f"stop variable must be a Var or a callable, not {sv!r}")
        clock = self._clock
        self._now = clock()
        if stopvars and self._stopped(stopvars):
            return
        poll_once = timeout is not None and timeout <= 0
        end = None if timeout is None or poll_once else self._now + timeout

        while True:
            if self._heap and self._heap[0][0] <= self._now:
                self._run_timers()
            if stopvars and self._stopped(stopvars):
                return
            sel = self._selector
            if sel is None:  # closed by a callback
                return

            # How long select may wait: until the next timer, the end of our
            # timeout, or the next look at the stop variables.
            if poll_once:
                wait: float | None = 0.0
            else:
                wait = None
                heap = self._heap
                if heap and not heap[0][2].cancelled:
                    deadline: float | None = heap[0][0]  # _next_deadline's usual case
                else:
                    deadline = self._next_deadline()
                if end is not None and (deadline is None or end < deadline):
                    deadline = end
                if deadline is not None:
                    wait = max(deadline - self._now, 0.0)
                if stopvars and (wait is None or wait > STOPVAR_POLL_INTERVAL):
                    wait = STOPVAR_POLL_INTERVAL

            try:
                if self._epoll is not None:
                    ready = self._epoll_ready(wait)
                else:
                    ready = [(key.data, events) for key, events in sel.select(wait)]
            except OSError as exc:
                # EINTR cannot get here (PEP 475). EBADF: a select/poll selector
                # holds an fd that was closed without del_fd; drop it, go on.
                self._now = clock()
                if exc.errno == errno.EBADF and self._purge_bad_fds():
                    ready = []
                else:
                    raise
            self._now = clock()

            if ready:
                self._dispatch(ready)
            if stopvars and self._stopped(stopvars):
                return
            if poll_once or (end is not None and self._now >= end):
                return

    def _epoll_ready(self, wait: float | None) -> list[tuple[_FdEntry, int]]:
        """``selectors.EpollSelector.select`` on its epoll object, with our entries."""
        if wait is None:
            timeout = -1.0
        elif wait <= 0:
            timeout = 0.0
        else:
            # epoll_wait has a resolution of 1 ms: round up to wait at least `wait`
            timeout = math.ceil(wait * 1e3) * 1e-3
        fds = self._fds
        ready: list[tuple[_FdEntry, int]] = []
        for fd, ev in self._epoll.poll(timeout, max(len(fds), 1)):
            entry = fds.get(fd)
            if entry is not None:
                # as selectors does: error and hang-up count for both directions
                events = (_EV_W if ev & _NOT_EPOLLIN else 0) | (_EV_R if ev & _NOT_EPOLLOUT else 0)
                ready.append((entry, events))
        return ready

    def _dispatch(self, ready: list[tuple[_FdEntry, int]]) -> None:
        # Collect the handlers first, then call them: a handler removed by an
        # earlier callback of this cycle is inactive by then and skipped, even
        # if its fd number was added again with a new handler.
        read_mask, write_mask = _MASKS
        batch: list[_Handler] = []
        for entry, events in ready:
            read, write = entry.handlers
            if read is not None and events & read_mask:
                batch.append(read)
            if write is not None and events & write_mask:
                batch.append(write)
        for handler in batch:
            if handler.active:
                handler.call(handler.fd)

    @staticmethod
    def _stopped(stopvars: tuple[StopVar, ...]) -> bool:
        for sv in stopvars:
            hit = bool(sv) if isinstance(sv, Var) else sv()
            if hit:
                return True
        return False

    # ------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Drop every fd and timer (fds are unregistered, not closed).

        Dropped timers count as cancelled. Callable from a callback: nothing
        dropped is called any more in the current cycle.
        """
        self._generation += 1
        for entry in list(self._fds.values()):
            self._drop(entry)
        for _when, _seq, timer in self._heap:
            timer._loop = None
            timer.cancelled = True
            timer.callback = None
        self._heap.clear()
        self._cancelled = 0

    def close(self) -> None:
        """Drop every fd and timer and release the selector. Idempotent."""
        if self._selector is None:
            return
        self.reset()
        sel, self._selector = self._selector, None
        sel.close()

    def __enter__(self) -> EventLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._selector is None else ""
        return (
            f"<EventLoop fds={len(self._fds)} timers={self.timer_count()}"
            f" looptime={self._now:.6f}{state}>"
        )
