"""Typed keys for the services an application holds (aiohttp AppKey)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from ledger import Engine
from ledger.directory import AccountDirectory
from server.identity import Authenticator
from server.limits import Limiter
from server.metrics import Metrics
from server.settings import Settings
from signaling.broker import Broker
from signaling.hub import Hub
from signaling.presence import Presence
from signaling.tip_recorder import TipRecorder

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from server.payments import StripeGateway

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", asyncpg.Pool)
REDIS = web.AppKey("redis", object)  # redis.asyncio.Redis | None; object keeps AppKey runtime-checkable
AUTH = web.AppKey("authenticator", Authenticator)
LIMITER = web.AppKey("limiter", Limiter)
STARTED_AT = web.AppKey("started_at", float)
METRICS = web.AppKey("metrics", Metrics)
BROKER = web.AppKey("broker", Broker)  # room streams between nodes (memory or Redis)
PRESENCE = web.AppKey("presence", Presence)  # who is in which room, across nodes
HUB = web.AppKey("hub", Hub)  # this node's rooms and sockets; `publish` is how features emit events
LEDGER = web.AppKey("ledger", Engine)  # the batching engine: `await app[LEDGER].submit(transfers)`
ACCOUNTS = web.AppKey("accounts", AccountDirectory)  # ledger account ids by (kind, owner), cached
TIPS = web.AppKey("tips", TipRecorder)  # batches stream tip records and running totals
# Stripe client (server.payments); annotated, not passed, to keep payments -> appkeys acyclic at import.
PAYMENTS: web.AppKey[StripeGateway] = web.AppKey("payments")
# Background tasks started by lifecycle hooks; cancelled (bounded) on shutdown.
BACKGROUND = web.AppKey("background", list)


def redis_of(app: web.Application) -> Redis | None:
    client: Any = app.get(REDIS)
    return client

# Per-request values set by the middleware and the route wrapper.
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)
IDENTITY = web.RequestKey("identity", object)  # Identity | None
