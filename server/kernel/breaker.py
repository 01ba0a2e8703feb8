"""A circuit breaker: after a dependency failed, skip it for a while instead of waiting on it again.

A hung Redis costs each call its full timeout (`redis_timeout_s`); without a breaker every request
touching Redis would wait that long. After a failure the breaker is open for `open_s`: callers take
their fallback at once (this node's presence, the in-process rate limiter, or a 503). The first
call after that tries the dependency again; success closes the breaker, failure re-opens it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("greenroom.breaker")

T = TypeVar("T")


class BreakerOpen(ConnectionError):
    """The dependency failed moments ago; the call was not attempted."""


class Breaker:
    def __init__(self, name: str, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert open_s > 0
        self.name = name
        self._open_s = open_s
        self._clock = clock
        self._open_until = 0.0
        self._tripped = False  # failed since the last success (for one log line per outage)

    @property
    def open(self) -> bool:
        """True while calls should skip the dependency."""
        return self._clock() < self._open_until

    def failed(self, exc: BaseException) -> None:
        if not self._tripped:
            log.warning("%s unavailable; using the fallback", self.name,
                        extra={"error": f"{type(exc).__name__}: {exc}", "retry_after_s": self._open_s})
        self._tripped = True
        self._open_until = self._clock() + self._open_s

    def succeeded(self) -> None:
        if self._tripped:
            log.info("%s available again", self.name)
        self._tripped = False
        self._open_until = 0.0

    async def run(self, command: Callable[[], Awaitable[T]], failures: tuple[type[BaseException], ...]) -> T:
        """Run `command`: BreakerOpen at once while open; a failure in `failures` opens it and re-raises."""
        if self.open:
            raise BreakerOpen(f"{self.name} failed moments ago; not trying again yet")
        try:
            result = await command()
        except failures as exc:
            self.failed(exc)
            raise
        self.succeeded()
        return result
