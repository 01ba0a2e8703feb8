"""Health, metrics and status: what load balancers, Prometheus and operators read.

`/health` answers 503 only when PostgreSQL is unreachable (nothing durable works without it);
a failing Redis makes the node `degraded` but it keeps serving (rate limits fall back to memory).
It is public and anonymous, so its dependency check is reused for `health_cache_s` (concurrent
calls share one): a flood of probes costs one query and one ping per period, not one per call.

`/metrics` and `/v1/status` tell the pid, pool figures and per-route counts: only addresses of
`metrics_allow` (default loopback) or a caller with `Authorization: Bearer <metrics_token>` read
them; anyone else gets 403.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from rest.framework.access import Access, anyone
from rest.framework.responses import ok, text
from rest.framework.router import Call, Router
from server import __version__
from server.kernel import keys
from server.kernel.addresses import address_in, networks
from server.kernel.errors import ErrorCode, forbidden
from server.kernel.net import client_ip

router = Router("monitoring")

# The exposition formats the scraper may ask for (prometheus_client's choose_encoder).
PROMETHEUS = ("text/plain", "application/openmetrics-text")
ServiceState = Literal["healthy", "unhealthy", "disabled"]


class ServiceHealth(BaseModel):
    status: ServiceState
    latency_ms: float | None = None
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    timestamp: str
    checked_at: str = Field(description="When the dependencies were checked (reused for GREENROOM_HEALTH_CACHE_S).")
    version: str
    uptime_s: float
    services: dict[str, ServiceHealth]


class StatusCounts(BaseModel):
    open_sockets: int
    db_pool_size: int
    db_pool_in_use: int
    ledger_queue_depth: int


class Status(BaseModel):
    version: str
    uptime_s: float
    started_at: str
    mode: Literal["single-node", "redis"]
    workers: int
    pid: int
    counts: StatusCounts


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _uptime(app: web.Application) -> float:
    return round(time.time() - app[keys.STARTED_AT], 3)


async def _probe_postgres(app: web.Application) -> ServiceHealth:
    timeout = app[keys.SETTINGS].health_timeout_s
    started = time.perf_counter()
    try:
        app[keys.METRICS].health_probed("postgresql")
        async with asyncio.timeout(timeout), app[keys.DB].acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # whatever breaks the probe (asyncpg has several roots) means unhealthy
        return ServiceHealth(status="unhealthy", error=type(exc).__name__)
    return ServiceHealth(status="healthy", latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def _probe_redis(app: web.Application) -> ServiceHealth:
    client = keys.redis_of(app)
    if client is None:
        return ServiceHealth(status="disabled")
    timeout = app[keys.SETTINGS].health_timeout_s
    started = time.perf_counter()
    try:
        app[keys.METRICS].health_probed("redis")
        async with asyncio.timeout(timeout):
            await client.ping()
    except (OSError, TimeoutError, RedisError) as exc:
        return ServiceHealth(status="unhealthy", error=type(exc).__name__)
    return ServiceHealth(status="healthy", latency_ms=round((time.perf_counter() - started) * 1000, 2))


class DependencyCheck:
    """The last check of PostgreSQL and Redis, reused for `health_cache_s`; callers that arrive
    while a check runs wait for that one instead of starting their own."""

    def __init__(self) -> None:
        self._last: tuple[float, float, ServiceHealth, ServiceHealth] | None = None  # monotonic, wall, pg, redis
        self._running: asyncio.Task[tuple[float, float, ServiceHealth, ServiceHealth]] | None = None

    async def get(self, app: web.Application) -> tuple[float, ServiceHealth, ServiceHealth]:
        """(when checked, unix seconds; PostgreSQL; Redis)."""
        last = self._last
        if last is None or time.monotonic() - last[0] >= app[keys.SETTINGS].health_cache_s:
            if self._running is None:
                self._running = asyncio.create_task(self._check(app), name="health-check")
            # Shielded: a caller that goes away must not cancel the check the others wait for.
            last = await asyncio.shield(self._running)
        return last[1], last[2], last[3]

    async def _check(self, app: web.Application) -> tuple[float, float, ServiceHealth, ServiceHealth]:
        try:
            postgres, redis = await asyncio.gather(_probe_postgres(app), _probe_redis(app))
            self._last = (time.monotonic(), time.time(), postgres, redis)
            return self._last
        finally:
            self._running = None


DEPENDENCIES = web.AppKey("health_dependencies", DependencyCheck)  # the app's cached dependency check


async def _health(call: Call[None]) -> web.StreamResponse:
    app = call.app
    checked_at, postgres, redis = await app[DEPENDENCIES].get(app)
    if postgres.status != "healthy":
        state: Literal["ok", "degraded", "down"] = "down"
    elif redis.status == "unhealthy":
        state = "degraded"
    else:
        state = "ok"
    report = Health(status=state, timestamp=_iso(time.time()), checked_at=_iso(checked_at), version=__version__,
                    uptime_s=_uptime(app), services={"postgresql": postgres, "redis": redis})
    return ok(report.model_dump(exclude_none=True), status=503 if state == "down" else 200)


def _require_operator(call: Call[None]) -> None:
    """Allowed addresses, or the metrics token from anywhere; 403 otherwise."""
    settings = call.app[keys.SETTINGS]
    if address_in(client_ip(call.request), networks(settings.metrics_allow)):
        return
    scheme, _, presented = call.request.headers.get("Authorization", "").partition(" ")
    if (settings.metrics_token and scheme.lower() == "bearer"
            and hmac.compare_digest(presented.strip().encode(), settings.metrics_token.encode())):
        return
    raise forbidden("metrics and status are for the operator: an allowed address or the metrics token")


# No account opens /metrics or /v1/status, an admin's neither: an allowed address or the metrics
# token does (the table is for callers from elsewhere, by their account).
OPERATORS = Access.every(403)


@router.get("/health", summary="Liveness and dependencies (503 when PostgreSQL is unreachable)",
            response=Health, other_statuses=(503,), auth="public", rate="none", database=False, access=anyone(200))
async def health(call: Call[None]) -> web.StreamResponse:
    return await _health(call)


@router.get("/v1/monitoring/health", summary="Liveness and dependencies (503 when PostgreSQL is unreachable)",
            response=Health, other_statuses=(503,), auth="public", rate="none", database=False, access=anyone(200))
async def monitoring_health(call: Call[None]) -> web.StreamResponse:
    return await _health(call)


@router.get("/metrics", summary="Prometheus metrics of the worker that answers (text exposition; operators only)",
            auth="public", rate="none", produces=PROMETHEUS, errors=(ErrorCode.PERMISSION_DENIED,),
            database=False, access=OPERATORS)
async def metrics(call: Call[None]) -> web.StreamResponse:
    _require_operator(call)
    body, content_type = call.app[keys.METRICS].render(call.request.headers.get("Accept"))
    return text(body, content_type)


@router.get("/v1/status", summary="Version, uptime, mode and live counts of the worker that answers (operators only)",
            response=Status, auth="public", rate="none", errors=(ErrorCode.PERMISSION_DENIED,), database=False,
            access=OPERATORS)
async def status(call: Call[None]) -> web.StreamResponse:
    _require_operator(call)
    app = call.app
    settings = app[keys.SETTINGS]
    pool = app.get(keys.DB)
    metrics = app[keys.METRICS]
    size = pool.get_size() if pool is not None else 0
    counts = StatusCounts(open_sockets=metrics.open_websockets, db_pool_size=size,
                          db_pool_in_use=size - pool.get_idle_size() if pool is not None else 0,
                          ledger_queue_depth=metrics.ledger_queue_depth)
    report: dict[str, Any] = Status(
        version=__version__, uptime_s=_uptime(app), started_at=_iso(app[keys.STARTED_AT]),
        mode="redis" if keys.redis_of(app) is not None else "single-node", workers=settings.workers,
        pid=os.getpid(), counts=counts).model_dump()
    return ok(report)
