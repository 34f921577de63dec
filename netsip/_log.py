"""Logging for netsip: one logger per module, with repeated lines rate-limited.

Not in Net::SIP, whose ``DEBUG`` levels write everything. A library on the
network must not let its peers fill the disk or the terminal: 20,000 unanswered
INVITEs, a garbage flood or a peer that fails every TLS handshake would each
log a line per packet. So every netsip logger carries one filter that lets
through, per logger and message template (the format string, which the code
fixes, never the peer), :data:`BURST` records per second at INFO and above,
and counts the records it holds back. The next record of that kind that gets through says
how many were suppressed. DEBUG records are never held back: they are for
tracing, and off by default.

Usage in a module: ``log = get_logger(__name__)`` instead of
``logging.getLogger(__name__)``. Lazy ``%`` formatting as usual: the filter
keys on ``record.msg``, so the arguments do not make a line "new".

Performance: the filter runs only for records that pass the logger's level
check, so a silent logger costs nothing; a record costs one dict lookup and
one clock read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

__all__ = ["RateLimitFilter", "get_logger"]

#: the window of the rate limit, in seconds
INTERVAL: Final = 1.0
#: lines of one kind per window
BURST: Final = 5
#: kinds remembered at most (templates are code literals: this is a safety net)
_MAX_KINDS: Final = 1024


class RateLimitFilter(logging.Filter):
    """Pass ``burst`` records per (logger, template) and interval; count the others.

    Args:
        interval: the length of one window, in seconds.
        burst: records of one kind that pass in one window (a few startup
            lines such as "listening on ..." must all get through).
        clock: the time source (``time.monotonic``; tests pass a fake one).
        min_level: records below this level always pass.
    """

    def __init__(
        self,
        interval: float = INTERVAL,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
        min_level: int = logging.INFO,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self.min_level = min_level
        # (logger name, template) -> [end of the window, passed in it, held back]
        self._state: dict[tuple[str, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        key = (record.name, record.msg)
        now = self.clock()
        state = self._state.get(key)
        held = 0
        if state is None:
            if len(self._state) >= _MAX_KINDS:
                self._forget(now)
            state = self._state[key] = [now + self.interval, 0, 0]
        elif now >= state[0]:  # a new window
            held = int(state[2])
            state[0], state[1], state[2] = now + self.interval, 0, 0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        if held:
            # formatted here: the count must not change the template (the key)
            record.msg = f"{record.getMessage()} [{held} more like this suppressed]"
            record.args = None
        return True

    def _forget(self, now: float) -> None:
        """Drop the kinds whose window is over (all of them if none is)."""
        for key in [k for k, (until, _, held) in self._state.items() if until <= now and not held]:
            del self._state[key]
        if len(self._state) >= _MAX_KINDS:
            self._state.clear()

    def reset(self) -> None:
        """Forget every kind (the next lines of each get through at once)."""
        self._state.clear()

    def suppressed(self) -> int:
        """How many records are held back now (not yet reported by a later line)."""
        return sum(int(held) for _, _, held in self._state.values())


#: the one filter every netsip logger shares
FILTER: Final = RateLimitFilter()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` with netsip's rate limit (added once)."""
    logger = logging.getLogger(name)
    if FILTER not in logger.filters:
        logger.addFilter(FILTER)
    return logger
