"""Rate-limit backends: GCRA (generic cell rate algorithm), in memory or atomically in Redis.

GCRA keeps one timestamp per key (the "theoretical arrival time"), so a budget of N per window
allows bursts of N and refills smoothly; memory per key is constant.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .limits import Budget, Decision

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("greenroom.ratelimit")

KEY_PREFIX = "gr:rl:"
# After a Redis failure, budgets are kept in process memory for this long before Redis is tried
# again, so an outage costs one failed round trip per interval rather than one per request.
REDIS_RETRY_AFTER_S = 5.0

# KEYS[1]: the budget's key. ARGV: limit, window (µs), cost. Times are Redis's own clock in
# integer microseconds, so every node agrees on "now" and Lua doubles stay exact.
# Returns {allowed, remaining, reset_at_us, retry_after_us}.
GCRA_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = window / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - window
if allow_at > now then
  local remaining = math.max(0, math.floor((window - (tat - now)) / interval))
  return {0, remaining, string.format('%.0f', tat), string.format('%.0f', allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
local remaining = math.max(0, math.floor((window - (new_tat - now)) / interval))
return {1, remaining, string.format('%.0f', new_tat), '0'}
"""


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
    """One process's limiter; a bounded LRU of keys (the least recently allowed is evicted)."""

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        self._tats: OrderedDict[str, float] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tats)

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


class RedisLimiter:
    """Budgets shared by every process and node using one Redis: one atomic script per hit.

    Keys are `gr:rl:<category>:<subject>` and expire once their budget is full again.
    If Redis fails, the limiter fails open to a per-process `MemoryLimiter` (logged), so a Redis
    outage never turns into errors on every request; while degraded, each process enforces the
    budgets on its own.
    """

    def __init__(self, redis: Redis, fallback: MemoryLimiter,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._script: Any = redis.register_script(GCRA_LUA)
        self._fallback = fallback
        self._clock = clock
        self._redis_down_until = 0.0

    @property
    def degraded(self) -> bool:
        return self._clock() < self._redis_down_until

    async def hit(self, key: str, budget: Budget, cost: int = 1) -> Decision:
        if self.degraded:
            return await self._fallback.hit(key, budget, cost)
        window_us = int(budget.window_s * 1_000_000)
        try:
            allowed, remaining, reset_us, retry_us = await self._script(
                keys=[KEY_PREFIX + key], args=[budget.limit, window_us, cost])
        except (RedisError, OSError) as exc:
            self._redis_down_until = self._clock() + REDIS_RETRY_AFTER_S
            log.warning("redis rate limiter unavailable; limiting per process",
                        extra={"error": f"{type(exc).__name__}: {exc}", "retry_after_s": REDIS_RETRY_AFTER_S})
            return await self._fallback.hit(key, budget, cost)
        return Decision(bool(allowed), budget.limit, int(remaining), int(reset_us) / 1e6, int(retry_us) / 1e6)

    async def close(self) -> None:
        await self._fallback.close()
