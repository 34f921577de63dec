"""netsip's event loop interface on asyncio: :class:`AsyncioEventLoop`.

Net::SIP has its own select loop only; this module lets every layer above
the loop (SocketPool, Leg, Dispatcher, Endpoint, Simple, the servers) run
inside an asyncio program, unchanged::

    async def main() -> None:
        loop = AsyncioEventLoop()          # on the running asyncio loop
        with Simple(from_="sip:alice@127.0.0.1", leg="127.0.0.1:5070", loop=loop) as ua:
            ua.listen()
            await loop.run(30)             # or any other await: netsip runs beside it

The mapping:

* ``add_fd``/``del_fd`` become ``add_reader``/``add_writer`` and
  ``remove_reader``/``remove_writer`` of the asyncio loop (level-triggered
  there too: a fd whose data was not read is reported again);
* ``add_timer`` becomes ``call_later`` (``call_soon`` for a timer that is due
  already, which keeps timers due at the same time in the order they were
  added); a repeating timer re-arms from its scheduled time, as in
  :class:`~netsip.eventloop.EventLoop`;
* :attr:`~AsyncioEventLoop.looptime` is the clock (``time.time`` by default)
  read when asked: an asyncio task may run between two netsip callbacks, so
  there is no "time the last select returned" to hand out.

Differences from :class:`~netsip.eventloop.EventLoop`:

- An exception raised by a fd or timer callback does not leave the loop: it
  goes to the asyncio loop's exception handler (``call_exception_handler``),
  and the loop goes on, as asyncio does with its own callbacks.
- :meth:`~AsyncioEventLoop.loop` cannot block while the asyncio loop runs in
  this thread: it raises :class:`RuntimeError` there, and
  ``await loop.run(timeout, *stopvars)`` is the way to wait. Outside a
  running asyncio loop (a script or a test), ``loop()`` runs the asyncio loop
  until ``run`` returns. So the blocking methods of
  :class:`~netsip.simple.Simple` (``register``, ``invite`` or ``dtmf``
  without ``cb_final``) raise that error inside a coroutine, before they
  send anything (:func:`check_can_block`): pass ``cb_final``, or use the
  awaitable user agent :mod:`netsip.aioua`.
- Stop variables are checked after every netsip callback (and every
  :data:`~netsip.eventloop.STOPVAR_POLL_INTERVAL` seconds, for changes made
  by other tasks), not once per select cycle: there is no cycle of ours.
- On uvloop, a fd whose poll reports an error (POLLERR: an ICMP error on a
  connected UDP socket, or a UDP socket with ``IP_RECVERR``) is not watched
  any more, because libuv stops polling it; the selectors-based asyncio loop
  keeps reporting it, as :class:`~netsip.eventloop.EventLoop` does.
- :class:`AsyncioEventLoop` subclasses :class:`~netsip.eventloop.EventLoop`
  so that the layers typed against it accept it, but none of its machinery
  is used: there is no selector and no timer heap of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from netsip._log import get_logger
from netsip.eventloop import (
    EV_READ,
    EV_WRITE,
    RELATIVE_LIMIT,
    STOPVAR_POLL_INTERVAL,
    Callback,
    EventLoop,
    FdLike,
    StopVar,
    TimerEvent,
    _check_rw,
    _checked_repeat,
    _checked_when,
    _fileno,
    _Handler,
)
from netsip.util import Var, as_callable, invoke_callback

__all__ = ["AsyncioEventLoop", "AsyncioTimer", "check_can_block", "new_asyncio_loop"]

log = get_logger(__name__)

_BLOCKING_MESSAGE = (
    "AsyncioEventLoop.loop() cannot block while its asyncio loop is running: "
    "use 'await loop.run(timeout, *stopvars)'; for Simple's blocking methods "
    "(register/invite without cb_final) pass cb_final or use netsip.aioua.UserAgent"
)


def new_asyncio_loop(kind: str = "asyncio") -> asyncio.AbstractEventLoop:
    """A new, not running asyncio loop: ``"asyncio"`` (the default policy's) or ``"uvloop"``.

    Raises:
        ImportError: ``"uvloop"`` asked for but not installed (``pip install netsip[uvloop]``).
        ValueError: an unknown kind.
    """
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415  (optional extra)

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    raise ValueError(f"unknown asyncio loop kind {kind!r}")


class AsyncioTimer(TimerEvent):
    """A timer of :class:`AsyncioEventLoop` (a :class:`TimerEvent`, with its asyncio handle)."""

    __slots__ = ("_handle", "_owner")

    def __init__(
        self,
        when: float,
        callback: Callback,
        repeat: float | None,
        name: str | None,
        owner: AsyncioEventLoop,
    ) -> None:
        super().__init__(when, callback, repeat, name)
        self._handle: asyncio.Handle | None = None
        self._owner: AsyncioEventLoop | None = owner

    def cancel(self) -> None:
        """Cancel the timer; it will not fire (again). Idempotent."""
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = None
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._timers.discard(self)


@dataclass(slots=True, eq=False)
class _AioFd:
    """One fd number watched on the asyncio loop."""

    fileno: int
    fileobj: FdLike
    handlers: list[_Handler | None] = field(default_factory=lambda: [None, None])


@dataclass(slots=True, eq=False)
class _Waiter:
    """One pending :meth:`AsyncioEventLoop.run`: its stop variables and future."""

    stopvars: tuple[StopVar, ...]
    future: asyncio.Future[None]
    poll: asyncio.TimerHandle | None = None  # the next look at the stop variables


def _stopped(stopvars: tuple[StopVar, ...]) -> bool:
    return any(bool(sv) if isinstance(sv, Var) else sv() for sv in stopvars)


def _check_stopvars(stopvars: tuple[StopVar, ...]) -> None:
    for sv in stopvars:
        if not isinstance(sv, Var) and not callable(sv):
            raise TypeError(f"stop variable must be a Var or a callable, not {sv!r}")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncioEventLoop(EventLoop):
    """The :class:`~netsip.eventloop.EventLoop` interface on an asyncio loop.

    Args:
        loop: the asyncio loop; by default the running one, or (outside a
            coroutine) a new one that this object owns and closes.
        clock: the clock of :attr:`looptime` and of absolute timer times
            (an epoch clock; ``time.time`` by default).

    Use it from the thread of the asyncio loop only.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # EventLoop.__init__ is not called on purpose: no selector, no heap.
        self._own_aloop = False
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = asyncio.new_event_loop()
                self._own_aloop = True
        self.aloop: asyncio.AbstractEventLoop = loop
        self._clock = clock
        self._afds: dict[int, _AioFd] = {}
        self._timers: set[AsyncioTimer] = set()
        self._waiters: list[_Waiter] = []
        self._is_closed = False
        self._gen = 0  # bumped by reset(): a timer of an older generation never re-arms

    # ------------------------------------------------------------------ fds

    def add_fd(self, fd: FdLike, rw: int, callback: Callback, name: str = "") -> None:
        """Call ``invoke_callback(callback, fd)`` whenever ``fd`` is ready
        (see :meth:`EventLoop.add_fd`); a closed fd is logged and ignored.

        Raises:
            ValueError: ``rw`` is neither EV_READ nor EV_WRITE.
            TypeError: ``fd`` is not a file descriptor.
            RuntimeError: the loop is closed.
        """
        rw = _check_rw(rw)
        if self._is_closed:
            raise RuntimeError("AsyncioEventLoop is closed")
        fileno = _fileno(fd)
        if fileno < 0:
            log.warning("add_fd(%r, %d, %s): fd is closed, ignored", fd, rw, name)
            return
        handler = _Handler(fd, callback, name, as_callable(callback))
        entry = self._afds.get(fileno)
        if entry is None:
            entry = _AioFd(fileno, fd)
            self._afds[fileno] = entry
        elif fd is not entry.fileobj and not (
            isinstance(fd, int) and isinstance(entry.fileobj, int)
        ):
            # A different object on a known fd number: the old one may have been
            # closed without del_fd and its number reused. Register afresh; the
            # other direction keeps its callback (as EventLoop does).
            other = entry.handlers[1 - rw]
            self._unwatch(entry, None)
            if other is not None:
                other.active = True
                entry.handlers[1 - rw] = other
                if not self._watch(entry, 1 - rw):
                    entry.handlers[1 - rw] = None
        entry.fileobj = fd
        old = entry.handlers[rw]
        entry.handlers[rw] = handler
        if old is not None:
            # replaced: the registration stays, the dispatch looks the handler up
            old.active = False
            return
        if not self._watch(entry, rw):
            entry.handlers[rw] = None
            if entry.handlers == [None, None]:
                del self._afds[fileno]

    def _watch(self, entry: _AioFd, rw: int) -> bool:
        """Register ``entry`` with asyncio for direction ``rw``; False (logged) if it cannot be."""
        try:
            if rw == EV_READ:
                self.aloop.add_reader(entry.fileno, self._ready, entry, EV_READ)
            else:
                self.aloop.add_writer(entry.fileno, self._ready, entry, EV_WRITE)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("add_fd(%r, %d): cannot watch fd: %s", entry.fileobj, rw, exc)
            return False
        return True

    def del_fd(self, fd: FdLike, rw: int | None = None) -> None:
        """Stop watching ``fd`` in one direction, or both when ``rw`` is None
        (see :meth:`EventLoop.del_fd`). Unknown fds are ignored.

        Raises:
            ValueError: ``rw`` is not EV_READ, EV_WRITE or None.
        """
        if rw is not None:
            _check_rw(rw)
        if self._is_closed:
            return
        fileno = _fileno(fd)
        entry = self._afds.get(fileno) if fileno >= 0 else self._find_fd(fd)
        if entry is None:
            return
        self._unwatch(entry, rw)
        if entry.handlers == [None, None] and self._afds.get(entry.fileno) is entry:
            del self._afds[entry.fileno]

    def _find_fd(self, fd: FdLike) -> _AioFd | None:
        # only after the caller closed the fd before del_fd (misuse): O(n) is fine
        for entry in self._afds.values():
            if entry.fileobj is fd or any(h is not None and h.fd is fd for h in entry.handlers):
                return entry
        return None

    def _unwatch(self, entry: _AioFd, rw: int | None) -> None:
        for direction in (EV_READ, EV_WRITE) if rw is None else (rw,):
            handler = entry.handlers[direction]
            if handler is None:
                continue
            handler.active = False
            entry.handlers[direction] = None
            # The fd may be closed (and its number reused) already: asyncio's
            # selector then has nothing to remove, which is fine.
            with contextlib.suppress(OSError, ValueError, KeyError):
                if direction == EV_READ:
                    self.aloop.remove_reader(entry.fileno)
                else:
                    self.aloop.remove_writer(entry.fileno)

    def _ready(self, entry: _AioFd, rw: int) -> None:
        """asyncio's callback for a ready fd: the handler of this moment."""
        handler = entry.handlers[rw]
        if handler is None or not handler.active:
            return
        try:
            handler.call(handler.fd)
        except Exception as exc:  # reported, the loop goes on
            self._report(exc, f"fd callback {handler.name or handler.callback!r}")
        if self._waiters:
            self._check_waiters()

    def fd_count(self) -> int:
        """Number of fds being watched (in any direction)."""
        return len(self._afds)

    # --------------------------------------------------------------- timers

    def add_timer(
        self,
        when: float,
        callback: Callback,
        repeat: float | None = None,
        name: str | None = None,
    ) -> AsyncioTimer:
        """Call ``invoke_callback(callback, timer)`` at ``when`` (see
        :meth:`EventLoop.add_timer`: relative below one year, else epoch).

        Raises:
            ValueError: a bad ``when`` or ``repeat``.
            RuntimeError: the loop is closed.
        """
        if self._is_closed:
            raise RuntimeError("AsyncioEventLoop is closed")
        when = _checked_when(when)
        repeat = _checked_repeat(repeat)
        if when < RELATIVE_LIMIT:
            when += self._clock()
        timer = AsyncioTimer(when, callback, repeat, name, self)
        self._timers.add(timer)
        self._schedule_timer(timer)
        return timer

    def timer_count(self) -> int:
        """Number of scheduled timers, not counting cancelled ones."""
        return len(self._timers)

    def _schedule_timer(self, timer: AsyncioTimer) -> None:
        delay = timer.when - self._clock()
        if delay <= 0:
            timer._handle = self.aloop.call_soon(self._fire, timer, self._gen)
        else:
            timer._handle = self.aloop.call_later(delay, self._fire, timer, self._gen)

    def _fire(self, timer: AsyncioTimer, generation: int) -> None:
        if timer.cancelled or generation != self._gen:
            return
        timer._handle = None
        if not timer.repeat:
            self._timers.discard(timer)
            timer._owner = None
        try:
            invoke_callback(timer.callback, timer)
        except Exception as exc:  # reported, the loop goes on
            self._report(exc, f"timer {timer!r}")
        finally:
            self._rearm_timer(timer, generation)
        if self._waiters:
            self._check_waiters()

    def _rearm_timer(self, timer: AsyncioTimer, generation: int) -> None:
        repeat = timer.repeat
        if timer.cancelled or generation != self._gen:
            return
        if not repeat:
            # repeat cleared by the callback: the timer is done
            self._timers.discard(timer)
            timer._owner = None
            return
        now = self._clock()
        when = timer.when + repeat  # from the scheduled time: no drift
        if when <= now:  # fell behind: skip the missed runs, keep the phase
            when += ((now - when) // repeat + 1) * repeat
            if when <= now:
                when += repeat
        timer.when = when
        self._schedule_timer(timer)

    # ----------------------------------------------------------------- loop

    @property
    def looptime(self) -> float:
        """The clock, now (see the module docstring)."""
        return self._clock()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._is_closed

    def loop(self, timeout: float | None = None, *stopvars: StopVar) -> None:
        """Run :meth:`run` to its end on the asyncio loop, which must not be running.

        Raises:
            RuntimeError: the asyncio loop is running in this thread (await
                :meth:`run` there), or the loop is closed.
        """
        if self._is_closed:
            raise RuntimeError("AsyncioEventLoop is closed")
        _check_stopvars(stopvars)
        check_can_block(self)
        try:
            # (_wait, not run: a callback may close the loop before it starts)
            self.aloop.run_until_complete(self._wait(timeout, stopvars))
        finally:
            if self._is_closed and self._own_aloop:
                self._drain_and_close()  # close() was called by a callback

    async def run(self, timeout: float | None = None, *stopvars: StopVar) -> None:
        """Wait, while netsip's callbacks run, as :meth:`EventLoop.loop` would.

        Args:
            timeout: None waits until a stop variable is true (or the loop is
                closed); 0 (or less) lets the asyncio loop poll once (due
                timers and ready fds run); ``t > 0`` returns after at most
                ``t`` seconds.
            *stopvars: each a ``Var`` or a zero-argument callable; ``run``
                returns as soon as one is true. They are checked on entry,
                after each netsip callback, and every
                :data:`~netsip.eventloop.STOPVAR_POLL_INTERVAL` seconds (for a
                change made by another task).

        Raises:
            RuntimeError: the loop is closed.
            Exception: whatever a stop variable raised.
        """
        if self._is_closed:
            raise RuntimeError("AsyncioEventLoop is closed")
        _check_stopvars(stopvars)
        await self._wait(timeout, stopvars)

    async def _wait(self, timeout: float | None, stopvars: tuple[StopVar, ...]) -> None:
        if self._is_closed or (stopvars and _stopped(stopvars)):
            return
        if timeout is not None and timeout <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = self.aloop.create_future()
        waiter = _Waiter(stopvars, fut)
        self._waiters.append(waiter)
        deadline = None if timeout is None else self.aloop.call_later(timeout, _resolve, fut)
        if stopvars:
            waiter.poll = self.aloop.call_later(STOPVAR_POLL_INTERVAL, self._poll_waiter, waiter)
        try:
            await fut
        finally:
            if deadline is not None:
                deadline.cancel()
            if waiter.poll is not None:
                waiter.poll.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _poll_waiter(self, waiter: _Waiter) -> None:
        waiter.poll = None
        self._check_one(waiter)
        if not waiter.future.done():
            waiter.poll = self.aloop.call_later(STOPVAR_POLL_INTERVAL, self._poll_waiter, waiter)

    def _check_waiters(self) -> None:
        for waiter in list(self._waiters):
            self._check_one(waiter)

    @staticmethod
    def _check_one(waiter: _Waiter) -> None:
        fut = waiter.future
        if fut.done() or not waiter.stopvars:
            return
        try:
            hit = _stopped(waiter.stopvars)
        except Exception as exc:  # handed to the awaiting task
            fut.set_exception(exc)
            return
        if hit:
            fut.set_result(None)

    def _report(self, exc: Exception, what: str) -> None:
        """Hand a callback's exception to the asyncio loop's exception handler."""
        self.aloop.call_exception_handler(
            {"message": f"netsip: exception in {what}", "exception": exc}
        )

    # ------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Drop every fd and timer (fds are unregistered, not closed)."""
        self._gen += 1
        for entry in list(self._afds.values()):
            self._unwatch(entry, None)
        self._afds.clear()
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()

    def close(self) -> None:
        """Drop every fd and timer; pending :meth:`run` calls return. Idempotent.

        A loop created by this object (no loop given, none running) is closed too.
        """
        if self._is_closed:
            return
        self.reset()
        self._is_closed = True
        for waiter in self._waiters:
            _resolve(waiter.future)
        if self._own_aloop and not self.aloop.is_running():
            self._drain_and_close()

    def _drain_and_close(self) -> None:
        aloop = self.aloop
        if aloop.is_closed():
            return
        if self._waiters:  # let the resolved run() calls finish
            aloop.run_until_complete(asyncio.sleep(0))
        aloop.run_until_complete(aloop.shutdown_asyncgens())
        aloop.close()

    def __enter__(self) -> AsyncioEventLoop:
        return self

    def __repr__(self) -> str:
        state = " closed" if self._is_closed else ""
        return f"<AsyncioEventLoop fds={len(self._afds)} timers={len(self._timers)}{state}>"


def check_can_block(loop: object) -> None:
    """Refuse a blocking call (one that runs the loop until its outcome) that cannot block.

    For the blocking methods of the user agent, before they send anything.

    Raises:
        RuntimeError: ``loop`` is an :class:`AsyncioEventLoop` whose asyncio
            loop is running (in this thread or another): waiting there would
            stop every other task.
    """
    if isinstance(loop, AsyncioEventLoop) and loop.aloop.is_running():
        raise RuntimeError(_BLOCKING_MESSAGE)
