"""``--workers N`` for the commands that listen: N forked processes on one port.

The sockets are bound before the fork, once per worker, with
``SO_REUSEPORT`` (:func:`netsip.cli._listen_sockets.open_listen_sockets`),
so the kernel spreads UDP flows and TCP connections over the workers. The
parent keeps no socket: it forwards SIGINT/SIGTERM to the workers, waits for
them and collects what each one reports (a JSON object through a pipe) for
the summary. A worker that fails stops the others; a parent that dies
(SIGKILL) stops the workers on Linux. The signals are blocked over each
fork, so a signal that comes before a worker has its own handler waits for
it (the parent's handler would not stop the worker).

Net::SIP has no counterpart (one process, one event loop).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Final, NoReturn, TypeAlias

from netsip._log import get_logger
from netsip.cli._common import EXIT_FAIL, EXIT_OK, CliError, SignalStop
from netsip.cli._listen_sockets import Bound
from netsip.util import Var

__all__ = ["Serve", "run_workers"]

log = get_logger(__name__)

#: prctl(2) option: the signal this process gets when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG: Final = 1

#: What a worker runs: serve ``bound`` as worker ``number`` until ``stop`` is
#: set (possibly set already: a signal during start-up); returns its report.
Serve: TypeAlias = Callable[[Bound, int, Var[int]], dict[str, Any]]


def run_workers(
    sets: list[Bound], serve: Serve, ready: Callable[[], None], prog: str
) -> tuple[dict[int, dict[str, Any]], int]:
    """Fork one worker per socket set, forward SIGINT/SIGTERM, wait for all.

    Args:
        sets: the sockets of each worker (the parent closes its copies).
        serve: what each worker runs.
        ready: called in the parent once every worker is forked.
        prog: the command's name, for error lines of the workers.

    Returns:
        The report of each worker that ended well, by number (from 1), and
        how many failed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, tuple[int, int]] = {}  # pid -> (worker number, report pipe)
    stopping: Var[int] = Var()

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.value = signum
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    parent = os.getpid()
    # installed before the first fork: a signal during start-up stops every worker
    saved = {sig: signal.signal(sig, forward) for sig in SignalStop.SIGNALS}
    try:
        try:
            for i, bound in enumerate(sets):
                rfd, wfd = os.pipe()
                # blocked over the fork: a signal the child gets before it has its own
                # handler waits for that handler (the parent's would not stop it)
                signal.pthread_sigmask(signal.SIG_BLOCK, SignalStop.SIGNALS)
                try:
                    pid = os.fork()
                    if pid == 0:
                        _worker(
                            i + 1,
                            bound,
                            serve,
                            prog,
                            sets=sets,
                            fds=(rfd, wfd),
                            siblings=children,
                            parent=parent,
                        )
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, SignalStop.SIGNALS)
                os.close(wfd)
                children[pid] = (i + 1, rfd)
        finally:
            for bound in sets:
                for _, sock in bound:
                    sock.close()  # the workers have theirs; the parent keeps none
        ready()
        log.info("%d workers: %s", len(children), " ".join(map(str, children)))
        return _reap(children, stopping, forward)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _worker(
    number: int,
    bound: Bound,
    serve: Serve,
    prog: str,
    *,
    sets: list[Bound],
    fds: tuple[int, int],
    siblings: Mapping[int, tuple[int, int]],
    parent: int,
) -> NoReturn:
    """The forked worker: close what is not its own, serve, report, ``_exit``.

    Args:
        sets: every worker's sockets; the others' are closed here.
        fds: this worker's report pipe (read end, closed here; write end).
        siblings: the workers forked before, whose pipe read ends are closed here.
        parent: the parent's pid (from before the fork: it may be gone already).
    """
    rfd, wfd = fds
    stop: Var[int] = Var()

    def early(signum: int, frame: FrameType | None) -> None:
        stop.value = signum

    for sig in SignalStop.SIGNALS:  # not the parent's forwarding handler
        signal.signal(sig, early)
    _die_with_parent(parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SignalStop.SIGNALS)  # (blocked by the parent)
    status = EXIT_FAIL
    try:
        os.close(rfd)
        for _, sibling_rfd in siblings.values():
            os.close(sibling_rfd)
        for other in sets:
            if other is not bound:
                for _, sock in other:
                    sock.close()
        report = serve(bound, number, stop)
        try:
            with os.fdopen(wfd, "w") as pipe:
                json.dump(report, pipe)
        except BrokenPipeError:
            log.warning("worker %d: the parent is gone, no summary", number)
        status = EXIT_OK
    except CliError as exc:
        print(f"{prog}: error: worker {number}: {exc}", file=sys.stderr)
        status = exc.status
    except Exception:
        log.exception("worker %d failed", number)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # no cleanup of the parent's state in the child


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the parent dies, so that a parent killed with SIGKILL
    leaves no worker serving the port (Linux ``prctl(PR_SET_PDEATHSIG)``;
    elsewhere the workers outlive it)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before: stop now (pending till unblocked)


def _reap(
    children: Mapping[int, tuple[int, int]],
    stopping: Var[int],
    forward: Callable[[int, FrameType | None], None],
) -> tuple[dict[int, dict[str, Any]], int]:
    """Wait for every worker; (report per worker number, how many failed)."""
    results: dict[int, dict[str, Any]] = {}
    failed = 0
    pending = dict(children)
    while pending:
        pid, wstatus = os.waitpid(-1, 0)  # PEP 475: retried after `forward` ran
        if pid not in pending:
            continue
        number, rfd = pending.pop(pid)
        with os.fdopen(rfd) as pipe:
            data = pipe.read()
        code = os.waitstatus_to_exitcode(wstatus)
        if code == 0 and data:
            results[number] = json.loads(data)
        else:
            failed += 1
            log.error("worker %d (pid %d) ended with status %d", number, pid, code)
            if not stopping.value:
                forward(signal.SIGTERM, None)  # one is gone: stop the others too
    return results, failed
