"""Rate-limit backends: GCRA (generic cell rate algorithm), in memory or atomically in Redis.

GCRA keeps one timestamp per key (the "theoretical arrival time"), so a budget of N per window
allows bursts of N and refills smoothly; memory per key is constant.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.kernel.breaker import Breaker
from server.kernel.limits import Budget, Decision

log = logging.getLogger("greenroom.ratelimit")

KEY_PREFIX = "gr:rl:"
# After a Redis failure, budgets are kept in process memory for this long before Redis is tried
# again, so an outage costs one failed round trip per interval rather than one per request.
REDIS_RETRY_AFTER_S = 5.0

US = 1_000_000  # GCRA runs on integer microseconds: exact, so long bursts never drift

# KEYS[1]: the budget's key. ARGV: limit, window (µs), cost. "now" is Redis's own clock, so every
# node agrees on it; all values are integers below 2^53, exact in Lua's doubles. Mirrors `gcra`.
# Returns {allowed, remaining, reset_at_us, retry_after_us}.
GCRA_LUA = """
local limit = tonumber(ARGV[1])
local interval = math.ceil(tonumber(ARGV[2]) / limit)
local window = interval * limit
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now > window then
  return {0, math.floor((window - (tat - now)) / interval), tat, new_tat - window - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((window - (new_tat - now)) / interval), new_tat, 0}
"""


def gcra(tat: int, now: int, budget: Budget, cost: int) -> tuple[bool, int, Decision]:
    """Pure GCRA step on integer microseconds: returns (allowed, new_tat, decision).

    The interval is rounded up to a whole microsecond, so the effective window is at most
    `limit` µs longer than asked: never more permissive.
    """
    interval = -(-round(budget.window_s * US) // budget.limit)
    window = interval * budget.limit
    tat = max(tat, now)
    new_tat = tat + interval * cost
    if new_tat - now > window:
        remaining = (window - (tat - now)) // interval
        return False, tat, Decision(False, budget.limit, remaining, tat / US, (new_tat - window - now) / US)
    remaining = (window - (new_tat - now)) // interval
    return True, new_tat, Decision(True, budget.limit, remaining, new_tat / US, 0.0)


class MemoryLimiter:
    """One process's limiter; a bounded LRU of keys (the least recently allowed is evicted)."""

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tats)

    async def hit(self, key: str, budget: Budget, cost: int = 1) -> Decision:
        now = int(self._clock() * US)
        allowed, tat, decision = gcra(self._tats.get(key, 0), now, budget, cost)
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

    def __init__(self, redis: Redis, fallback: MemoryLimiter, breaker: Breaker | None = None) -> None:
        self._script: Any = redis.register_script(GCRA_LUA)
        self._fallback = fallback
        self._breaker = breaker or Breaker("redis rate limiter", REDIS_RETRY_AFTER_S)

    @property
    def degraded(self) -> bool:
        return self._breaker.open

    async def hit(self, key: str, budget: Budget, cost: int = 1) -> Decision:
        window_us = int(budget.window_s * 1_000_000)
        try:
            allowed, remaining, reset_us, retry_us = await self._breaker.run(
                lambda: self._script(keys=[KEY_PREFIX + key], args=[budget.limit, window_us, cost]),
                (RedisError, OSError))
        except (RedisError, OSError):  # BreakerOpen too: a ConnectionError
            return await self._fallback.hit(key, budget, cost)
        return Decision(bool(allowed), budget.limit, int(remaining), int(reset_us) / US, int(retry_us) / US)

    async def close(self) -> None:
        await self._fallback.close()
