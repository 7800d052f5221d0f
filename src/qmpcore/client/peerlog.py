"""Rate-limited log lines about one peer.

A peer chooses how often it misbehaves: one WARNING per garbage byte would
let it write millions of lines and hold the loop while doing so.  A
:class:`PeerLog` writes the first line at once and then, at most once per
``interval`` seconds, one line with the newest message and how many were
suppressed since the last line.  One per connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PeerLog", "LOG_INTERVAL"]

#: Seconds between two lines about the same peer.
LOG_INTERVAL = 1.0


class PeerLog:
    """Warnings about one peer, rate-limited (see the module docstring).

    ``where`` prefixes every line (the peer's address).  :attr:`total`
    counts every message, written or suppressed.
    """

    __slots__ = ("_logger", "_where", "_interval", "_clock", "_next", "_suppressed", "total")

    def __init__(
        self,
        logger: logging.Logger,
        where: object,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._where = where
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0
        #: Messages seen, including those not written.
        self.total = 0

    @property
    def suppressed(self) -> int:
        """Messages not written since the last line."""
        return self._suppressed

    def warning(self, msg: str, *args: Any) -> None:
        """Log ``msg % args`` about the peer, unless a line was written less than ``interval`` ago."""
        self.total += 1
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        logger = self._logger
        if not logger.isEnabledFor(logging.WARNING):
            self._suppressed = 0
            return
        if self._suppressed:
            logger.warning("%s: " + msg + " (%d similar messages suppressed)", self._where, *args, self._suppressed)
            self._suppressed = 0
        else:
            logger.warning("%s: " + msg, self._where, *args)

    def flush(self) -> None:
        """Write the count of suppressed messages, if any (when the peer goes away)."""
        if self._suppressed:
            self._logger.warning("%s: %d similar messages suppressed", self._where, self._suppressed)
            self._suppressed = 0
