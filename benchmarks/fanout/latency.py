"""A mergeable latency histogram: log-spaced buckets 1% wide, so p99 is exact to about 1%."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SCALE = 100  # buckets per factor e: bucket i holds [e^(i/SCALE) - 1, e^((i+1)/SCALE) - 1) microseconds
BUCKETS = 2400  # up to e^24 µs (~7 hours): nothing is ever out of range


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    n: int = 0
    max_us: int = 0

    def add(self, us: int) -> None:
        if us < 0:  # clocks are CLOCK_MONOTONIC on one host; a negative value would be a bug upstream
            us = 0
        self.counts[min(BUCKETS - 1, int(math.log1p(us) * SCALE))] += 1
        self.n += 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.n += other.n
        self.max_us = max(self.max_us, other.max_us)

    def quantile_ms(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile, in milliseconds (0 when empty)."""
        if self.n == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(math.expm1((i + 1) / SCALE), self.max_us) / 1000.0
        return self.max_us / 1000.0
