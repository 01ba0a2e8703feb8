"""The application factory: services, middlewares, routes, lifecycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from server.access import access_middleware
from server.auth import auth_context
from server.db import create_pool
from server.kernel import keys
from server.kernel.errors import ApiError
from server.kernel.metrics import Metrics
from server.kernel.settings import Settings
from server.ledger_service import ledger_context
from server.migrator import migrate
from server.ratelimit import MemoryLimiter, RedisLimiter
from server.routing import json_response
from server.wallet_service import wallet_context
from server.web import add_web_routes

log = logging.getLogger("greenroom.http")

Ctx = Callable[[web.Application], AsyncIterator[None]]


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn every failure into the one error shape; a 500 never leaks internals."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    request[keys.REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        headers = dict(exc.headers or {})
        response = json_response(exc.body(), status=exc.status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(exc.status, "BAD_REQUEST")
        message = {404: "no such endpoint", 405: f"method {request.method} not allowed here",
                   413: "request body too large"}.get(exc.status, exc.reason)
        response = json_response({"error": {"code": code, "message": message}}, status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = json_response({"error": {"code": "INTERNAL_ERROR", "message": "internal error",
                                            "details": {"request_id": request_id}}}, status=500)
    response.headers["X-Request-Id"] = request_id
    return response


async def connect_redis(settings: Settings) -> Redis:
    """A bounded client for `REDIS_URL`; an unreachable Redis stops the start with a clear message."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_pool_max, timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s)
    client = Redis.from_pool(pool)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise RuntimeError(f"REDIS_URL: cannot reach Redis: {exc}") from exc
    return client


async def freeze_startup_heap(app: web.Application) -> None:
    """Move what start-up built (modules, pools, caches) out of the collector's reach.

    Those objects live as long as the process; left in the tracked heap, every full collection
    walks them again: measured 50-75 ms pauses that stalled every ledger submitter at once
    (benchmarks/RESULTS.md, "Garbage collection"), against 2-3 ms once frozen.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, dsn: str) -> web.Application:
    """Build the application for one worker; `dsn` is the resolved PostgreSQL DSN."""
    from rest import ROUTERS
    from server.routing import mount
    from signaling.endpoint import setup_socket
    from signaling.retention import retention_context

    # The access log is outermost so it records the status the error middleware settled on.
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[access_middleware, error_middleware])
    app[keys.SETTINGS] = settings
    app[keys.STARTED_AT] = time.time()
    app[keys.BACKGROUND] = []
    app[keys.METRICS] = Metrics(lambda: app.get(keys.DB))

    async def database(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(dsn, settings)
        async with pool.acquire() as conn:
            await migrate(conn)
        app[keys.DB] = pool
        yield
        await asyncio.wait_for(pool.close(), timeout=settings.shutdown_timeout_s)

    async def redis(app: web.Application) -> AsyncIterator[None]:
        app[keys.REDIS] = None
        if not settings.redis_url:
            yield
            return
        client = await connect_redis(settings)
        app[keys.REDIS] = client
        yield
        await client.aclose()

    async def limiter(app: web.Application) -> AsyncIterator[None]:
        memory = MemoryLimiter(settings.rate_memory_max_keys)
        client = keys.redis_of(app)
        app[keys.LIMITER] = RedisLimiter(client, memory) if client is not None else memory
        yield
        await app[keys.LIMITER].close()

    # Torn down in reverse order, after `app.on_shutdown` (where sockets close with 1001) and after
    # in-flight requests finished, so handlers still have their pools while they drain.
    contexts: list[Ctx] = [database, auth_context, redis, limiter, retention_context, ledger_context(dsn),
                           wallet_context]
    app.cleanup_ctx.extend(contexts)
    setup_socket(app)  # after `contexts`: the hub starts once Redis is up and stops before it goes
    mount(app, ROUTERS)
    app.on_startup.append(freeze_startup_heap)  # runs after the cleanup contexts have started
    add_web_routes(app)
    return app
