"""Prometheus metrics of one application.

Each app has its own `CollectorRegistry`, so several apps in one process (tests) never share
counters. Label values are bounded: routes are templates (`/v1/users/{id}`), unknown methods
and unmatched paths collapse into one value each, so hostile traffic cannot grow the series.

With several workers on one port a scrape reaches any one of them, so the runner sets
`PROMETHEUS_MULTIPROC_DIR` before starting them: every worker then records into files there and
a scrape sums all workers (prometheus-client's multiprocess mode). Gauges are `livesum` (a dead
worker's share is dropped); counters and histograms keep what dead workers counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_POOL = (("greenroom_db_pool_size", "PostgreSQL connections open in the pool"),
         ("greenroom_db_pool_in_use", "PostgreSQL connections checked out of the pool"),
         ("greenroom_db_pool_max", "Most PostgreSQL connections the pool may open"))


def _pool_values(pool: asyncpg.Pool) -> tuple[int, int, int]:
    size = pool.get_size()
    return size, size - pool.get_idle_size(), pool.get_max_size()


class _PoolCollector(Collector):
    """Reads the PostgreSQL pool at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, pool_of: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool_of = pool_of

    def collect(self) -> Iterator[Metric]:
        pool = self._pool_of()
        values = _pool_values(pool) if pool is not None else None
        for i, (name, doc) in enumerate(_POOL):
            family = GaugeMetricFamily(name, doc)
            if values is not None:
                family.add_metric([], values[i])
            yield family


class Metrics:
    """The metrics of one app; the socket and ledger code report through its methods."""

    def __init__(self, pool_of: Callable[[], asyncpg.Pool | None]) -> None:
        self.registry = CollectorRegistry()
        self.open_websockets = 0
        self.ledger_queue_depth = 0
        self._pool_of = pool_of
        self._shared_dir = os.environ.get(MULTIPROC_ENV)
        self._requests = Counter("greenroom_http_requests", "HTTP requests answered",
                                 ("method", "route", "status"), registry=self.registry)
        self._latency = Histogram("greenroom_http_request_duration_seconds",
                                  "Time from request to response (websockets excluded)",
                                  ("method", "route", "status"), buckets=LATENCY_BUCKETS,
                                  registry=self.registry)
        self._websockets = Gauge("greenroom_websockets_open", "Room sockets open", registry=self.registry,
                                 multiprocess_mode="livesum")
        self._ledger_queue = Gauge("greenroom_ledger_queue_depth",
                                   "Transfers waiting for the ledger's batching engine", registry=self.registry,
                                   multiprocess_mode="livesum")
        self._health_probes = Counter("greenroom_health_probes", "Dependency checks /health ran (calls within "
                                      "GREENROOM_HEALTH_CACHE_S of the last one reuse it)", ("service",),
                                      registry=self.registry)
        self._pool_gauges: list[Gauge] = []
        if self._shared_dir:
            # A scrape runs in one worker only, so each worker writes its pool figures to the shared
            # files as of its latest request.
            self._pool_gauges = [Gauge(name, doc, registry=self.registry, multiprocess_mode="livesum")
                                 for name, doc in _POOL]
        else:
            self.registry.register(_PoolCollector(pool_of))
            ProcessCollector(registry=self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """Count one answered request; `seconds=None` counts without timing (websockets)."""
        labels = (method if method in METHODS else "OTHER", route, str(status))
        self._requests.labels(*labels).inc()
        if seconds is not None:
            self._latency.labels(*labels).observe(seconds)
        if self._pool_gauges:
            self._record_pool()

    def _record_pool(self) -> None:
        pool = self._pool_of()
        if pool is not None:
            for gauge, value in zip(self._pool_gauges, _pool_values(pool), strict=True):
                gauge.set(value)

    def health_probed(self, service: str) -> None:
        self._health_probes.labels(service).inc()

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
        registry = self.registry
        if self._shared_dir:
            self._record_pool()
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._shared_dir)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type
