"""Typed keys of the kernel services an application holds (aiohttp AppKey).

Each package owns the keys of the services it defines: the socket core's hub, broker and presence
are in `signaling.core.keys`, the stream tip recorder beside it (`signaling.features.tips.recorder`),
the ledger engine, account directory and Stripe gateway in `server.commerce.keys`. These are the
ones every layer may read.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from server.kernel.identity import Authenticator
from server.kernel.instance import Instance
from server.kernel.limits import Limiter
from server.kernel.metrics import Metrics
from server.kernel.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", asyncpg.Pool)
REDIS = web.AppKey("redis", object)  # redis.asyncio.Redis | None; object keeps AppKey runtime-checkable
AUTH = web.AppKey("authenticator", Authenticator)
LIMITER = web.AppKey("limiter", Limiter)
STARTED_AT = web.AppKey("started_at", float)
METRICS = web.AppKey("metrics", Metrics)
INSTANCE = web.AppKey("instance", Instance)  # this worker's id, alive while it runs (keyed requests' owner)
# Background tasks started by lifecycle hooks; cancelled (bounded) on shutdown.
BACKGROUND = web.AppKey("background", list)


def redis_of(app: web.Application) -> Redis | None:
    client: Any = app.get(REDIS)
    return client

# Per-request values set by the middleware and the route wrapper.
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)
IDENTITY = web.RequestKey("identity", object)  # Identity | None
