"""Rate-limit contract: categories, their budgets, and the limiter interface.

Backends live in `ratelimit.py` (memory for one process, Redis for many).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from server.kernel.settings import Settings

Category = Literal["auth", "payments", "tips", "streaming", "general", "anonymous", "none"]


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int
    window_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # unix seconds when the budget is full again
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(int(self.reset_at)),
        }


def budget(settings: Settings, category: Category) -> Budget:
    match category:
        case "auth":
            return Budget(settings.rate_auth_per_min, 60.0)
        case "payments":
            return Budget(settings.rate_payments_per_min, 60.0)
        case "tips":
            return Budget(settings.rate_tips_per_min, 60.0)
        case "streaming":
            return Budget(settings.rate_streaming_per_min, 60.0)
        case "anonymous":
            return Budget(settings.rate_anonymous_per_min, 60.0)
        case _:
            return Budget(settings.rate_general_per_hour, 3600.0)


class Limiter(Protocol):
    async def hit(self, key: str, budget: Budget, cost: int = 1) -> Decision:
        """Spend `cost` from the budget named by `key`; never raises for over-limit."""

    async def close(self) -> None: ...
