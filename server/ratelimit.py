"""Rate-limit backends: GCRA (generic cell rate algorithm), in memory or atomically in Redis.

GCRA keeps one timestamp per key (the "theoretical arrival time"), so a budget of N per window
allows bursts of N and refills smoothly; memory per key is constant.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .limits import Budget, Decision

MEMORY_MAX_KEYS = 100_000  # oldest keys are evicted past this, bounding memory


def gcra(tat: float, now: float, budget: Budget, cost: int) -> tuple[bool, float, Decision]:
    """Pure GCRA step: returns (allowed, new_tat, decision)."""
    interval = budget.window_s / budget.limit
    tat = max(tat, now)
    new_tat = tat + interval * cost
    allow_at = new_tat - budget.window_s
    if allow_at > now:
        remaining = max(0, int((budget.window_s - (tat - now)) / interval))
        return False, tat, Decision(False, budget.limit, remaining, tat, allow_at - now)
    remaining = max(0, int((budget.window_s - (new_tat - now)) / interval))
    return True, new_tat, Decision(True, budget.limit, remaining, new_tat, 0.0)


class MemoryLimiter:
    """One process's limiter; bounded LRU of keys."""

    def __init__(self, max_keys: int = MEMORY_MAX_KEYS, clock: Callable[[], float] = time.time) -> None:
        self._tats: OrderedDict[str, float] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    async def hit(self, key: str, budget: Budget, cost: int = 1) -> Decision:
        now = self._clock()
        allowed, tat, decision = gcra(self._tats.get(key, 0.0), now, budget, cost)
        if allowed:
            self._tats[key] = tat
            self._tats.move_to_end(key)
            while len(self._tats) > self._max_keys:
                self._tats.popitem(last=False)
        return decision

    async def close(self) -> None:
        self._tats.clear()
