"""Every start/stop context of a worker, one function each, and the order they run in.

aiohttp runs `cleanup_ctx` entries in list order up to their `yield` at start and unwinds them in
reverse at shutdown, after `app.on_shutdown` (where sockets close with 1001) and after in-flight
requests finished, so handlers still have their pools while they drain. `contexts(dsn)` is that
list; each entry's docstring names what it needs from the ones before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from ledger import Engine, Sweeper
from ledger.directory import AccountDirectory
from server.accounts.passwords import passwords_for
from server.accounts.sessions import forget_repeats, purge_expired
from server.accounts.tokens import TokenService
from server.app.db import create_pool
from server.app.migrator import migrate
from server.commerce import keys as money
from server.commerce import payments
from server.commerce.payments import StripeGateway
from server.http.ratelimit import MemoryLimiter, RedisLimiter
from server.kernel import keys
from server.kernel.breaker import Breaker
from server.kernel.instance import Instance
from server.kernel.settings import Settings
from signaling.core import keys as socket_keys
from signaling.core.backend import create_broker, create_presence, new_node_id
from signaling.core.control import Control
from signaling.core.hub import Hub
from signaling.core.viewers import ViewerCounts
from signaling.features import registry as features
from signaling.features.chat import retention as chat_retention
from signaling.features.tips.recorder import TIPS, TipRecorder

log = logging.getLogger("greenroom.lifecycle")

Ctx = Callable[[web.Application], AsyncIterator[None]]


def database(dsn: str) -> Ctx:
    """The PostgreSQL pool as `keys.DB`, migrated before anything uses it."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        pool = await create_pool(dsn, settings)
        async with pool.acquire() as conn:
            await migrate(conn)
        app[keys.DB] = pool
        yield
        await asyncio.wait_for(pool.close(), timeout=settings.shutdown_timeout_s)

    return context


def instance(dsn: str) -> Ctx:
    """This worker's id as `keys.INSTANCE`, alive while its lock is held (own connection)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        worker = Instance(dsn)
        await worker.start()
        app[keys.INSTANCE] = worker
        yield
        await worker.close()

    return context


async def _auth_upkeep(tokens: TokenService) -> None:
    settings = tokens.settings
    while True:
        await asyncio.sleep(settings.key_cache_refresh_s)
        try:
            await tokens.maintain()
            await purge_expired(tokens.pool, settings.sessions_purge_batch)
            await forget_repeats(tokens.pool, settings.refresh_reuse_grace_s, settings.sessions_purge_batch)
        except Exception:  # a failed pass keeps the cached keys; the next pass retries
            log.warning("auth upkeep failed; keeping cached keys", exc_info=True)


async def auth(app: web.Application) -> AsyncIterator[None]:
    """The TokenService as `keys.AUTH` (needs `database`) and its upkeep.

    Every `key_cache_refresh_s` a worker rotates the signing key when due, reloads public keys and
    access-token revocations, deletes a bounded batch of expired refresh sessions and erases the
    sealed pairs of rotations past their reuse grace.
    """
    settings = app[keys.SETTINGS]
    # Built off the loop: it computes the dummy hash used for unknown-email logins.
    await asyncio.to_thread(passwords_for, settings)
    tokens = TokenService(settings, app[keys.DB])
    await tokens.start()
    app[keys.AUTH] = tokens
    task = asyncio.create_task(_auth_upkeep(tokens), name="auth-upkeep")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await tokens.close()


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


async def redis(app: web.Application) -> AsyncIterator[None]:
    """The Redis client as `keys.REDIS`, None when `REDIS_URL` is empty (single node)."""
    settings = app[keys.SETTINGS]
    app[keys.REDIS] = None
    if not settings.redis_url:
        yield
        return
    client = await connect_redis(settings)
    app[keys.REDIS] = client
    yield
    await client.aclose()


async def limiter(app: web.Application) -> AsyncIterator[None]:
    """The rate limiter as `keys.LIMITER`: in Redis when there is one (needs `redis`), else in memory."""
    settings = app[keys.SETTINGS]
    memory = MemoryLimiter(settings.rate_memory_max_keys)
    client = keys.redis_of(app)
    breaker = Breaker("redis rate limiter", settings.redis_retry_s)
    app[keys.LIMITER] = RedisLimiter(client, memory, breaker) if client is not None else memory
    yield
    await app[keys.LIMITER].close()


def make_engine(settings: Settings, dsn: str) -> Engine:
    return Engine(dsn, batch_max=settings.ledger_batch_max, batch_wait_ms=settings.ledger_batch_wait_ms,
                  queue_max=settings.ledger_queue_max, batch_attempts=settings.ledger_batch_attempts,
                  metadata_max_bytes=settings.ledger_metadata_max_bytes,
                  statement_timeout_ms=settings.db_statement_timeout_ms,
                  close_timeout_s=settings.shutdown_timeout_s)


def ledger(dsn: str) -> Ctx:
    """The batching engine (own connection) as `money.LEDGER` and the hold sweeper (needs `database`)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        engine = make_engine(settings, dsn)
        await engine.start()
        # No `on_expired` callback: nothing acts on an expiry today. A payout request's status is
        # its hold's, read from the ledger (`ledger.flows.payouts`), so it shows `expired` without
        # being marked; seats are granted by ticketing (`room_grants`), not held in the ledger.
        sweeper = Sweeper(engine, app[keys.DB], interval_s=settings.ledger_sweep_interval_s,
                          batch_max=settings.ledger_sweep_batch_max)
        sweeper.start()
        app[money.LEDGER] = engine
        yield
        # Requests have drained by now; the engine applies what is still queued, bounded.
        await sweeper.close()
        await engine.close()

    return context


async def wallet(app: web.Application) -> AsyncIterator[None]:
    """The account id cache, the stream tip recorder and Stripe (needs `database`).

    Torn down before the ledger, so queued tip records land.
    """
    settings = app[keys.SETTINGS]
    pool = app[keys.DB]
    app[money.ACCOUNTS] = AccountDirectory(pool, settings.ledger_account_cache_max)
    recorder = TipRecorder(pool, batch_max=settings.tip_record_batch_max, wait_ms=settings.tip_record_wait_ms,
                           queue_max=settings.tip_record_queue_max, top_n=settings.tip_top_tippers,
                           close_timeout_s=settings.shutdown_timeout_s)
    recorder.start()
    app[TIPS] = recorder
    gateway = StripeGateway(settings)
    app[payments.PAYMENTS] = gateway
    try:
        yield
    finally:
        await recorder.close()
        await gateway.close()


async def _purge_chat(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    while True:
        # Wait first: a pass at start-up would race a quick shutdown for the pool (tests, restarts).
        await asyncio.sleep(settings.chat_purge_interval_s)
        try:
            counts = await chat_retention.purge(app[keys.DB], settings)
            if any(counts.values()):
                log.info("retention purge", extra=counts)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            log.exception("retention purge failed; retrying next interval")


async def retention(app: web.Application) -> AsyncIterator[None]:
    """Purges expired chat, mutes and bans every `chat_purge_interval_s` (needs `database`)."""
    task = asyncio.create_task(_purge_chat(app), name="chat-retention")
    app[keys.BACKGROUND].append(task)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def socket(app: web.Application) -> AsyncIterator[None]:
    """The socket core (needs `redis` and `database`): broker and presence (Redis, or in-process
    without it), the hub, the control channel, viewer counts, and this app's socket ops with the
    room features' hooks. Torn down first, after `on_shutdown` closed the sockets."""
    settings = app[keys.SETTINGS]
    redis_client = keys.redis_of(app)
    node_id = new_node_id()  # one id for broker and presence, so a dead node's entries are found
    broker = create_broker(settings, redis_client, node_id=node_id)
    presence = create_presence(settings, redis_client, node_id=node_id)
    registry = features.build()
    hub = Hub(broker, presence, settings, registry, app, app.get(keys.METRICS))
    control = Control(broker, hub)
    viewers = ViewerCounts(hub, settings.viewer_count_interval_s)
    app[socket_keys.BROKER] = broker
    app[socket_keys.PRESENCE] = presence
    app[socket_keys.OPS] = registry
    app[socket_keys.HUB] = hub
    app[socket_keys.CONTROL] = control
    await presence.start()
    await hub.start()
    try:
        await control.start()
        viewers.start()
        yield
    finally:
        await viewers.close()
        control.close()
        await hub.close()
        await presence.close()
        await broker.close()


async def freeze_startup_heap(app: web.Application) -> None:
    """Move what start-up built (modules, pools, caches) out of the collector's reach.

    Those objects live as long as the process; left in the tracked heap, every full collection
    walks them again: measured 50-75 ms pauses that stalled every ledger submitter at once
    (benchmarks/RESULTS.md, "Garbage collection"), against 2-3 ms once frozen.
    """
    gc.collect()
    gc.freeze()


def contexts(dsn: str) -> list[Ctx]:
    """The worker's contexts in start order (torn down in reverse)."""
    return [database(dsn), instance(dsn), auth, redis, limiter, retention, ledger(dsn), wallet, socket]
