"""Prometheus metrics of one application.

Each app has its own `CollectorRegistry`, so several apps in one process (tests) never share
counters. Label values are bounded: routes are templates (`/v1/users/{id}`), unknown methods
and unmatched paths collapse into one value each, so hostile traffic cannot grow the series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _PoolCollector(Collector):
    """Reads the PostgreSQL pool at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, pool_of: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool_of = pool_of

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("greenroom_db_pool_size", "PostgreSQL connections open in this worker's pool")
        in_use = GaugeMetricFamily("greenroom_db_pool_in_use", "PostgreSQL connections checked out of the pool")
        limit = GaugeMetricFamily("greenroom_db_pool_max", "Most PostgreSQL connections the pool may open")
        pool = self._pool_of()
        if pool is not None:
            size.add_metric([], pool.get_size())
            in_use.add_metric([], pool.get_size() - pool.get_idle_size())
            limit.add_metric([], pool.get_max_size())
        yield size
        yield in_use
        yield limit


class Metrics:
    """The metrics of one app; the socket and ledger code report through its methods."""

    def __init__(self, pool_of: Callable[[], asyncpg.Pool | None]) -> None:
        self.registry = CollectorRegistry()
        self.open_websockets = 0
        self.ledger_queue_depth = 0
        self._requests = Counter("greenroom_http_requests", "HTTP requests answered",
                                 ("method", "route", "status"), registry=self.registry)
        self._latency = Histogram("greenroom_http_request_duration_seconds",
                                  "Time from request to response (websockets excluded)",
                                  ("method", "route", "status"), buckets=LATENCY_BUCKETS,
                                  registry=self.registry)
        self._websockets = Gauge("greenroom_websockets_open", "Room sockets open on this worker",
                                 registry=self.registry)
        self._ledger_queue = Gauge("greenroom_ledger_queue_depth",
                                   "Transfers waiting for the ledger's batching engine", registry=self.registry)
        self.registry.register(_PoolCollector(pool_of))
        ProcessCollector(registry=self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """Count one answered request; `seconds=None` counts without timing (websockets)."""
        labels = (method if method in METHODS else "OTHER", route, str(status))
        self._requests.labels(*labels).inc()
        if seconds is not None:
            self._latency.labels(*labels).observe(seconds)

    def ws_opened(self) -> None:
        self.open_websockets += 1
        self._websockets.set(self.open_websockets)

    def ws_closed(self) -> None:
        assert self.open_websockets > 0, "ws_closed without ws_opened"
        self.open_websockets -= 1
        self._websockets.set(self.open_websockets)

    def set_ledger_queue_depth(self, depth: int) -> None:
        self.ledger_queue_depth = depth
        self._ledger_queue.set(depth)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
