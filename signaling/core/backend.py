"""Choose the broker and presence for a node: Redis when there is one, else in-process.

The app's lifecycle context (owned by the socket endpoint) calls these with the app's Redis
client (`keys.REDIS`, None when `REDIS_URL` is empty), starts them, and closes them on shutdown.
A broker and a presence made from a URL own their client; one made from a client leaves it to
its owner.
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from server.kernel.settings import Settings
from signaling.core.broker import Broker, HistoryPolicy
from signaling.core.memory_broker import MemoryBroker
from signaling.core.memory_presence import MemoryPresence
from signaling.core.presence import Presence
from signaling.core.redis_broker import RedisBroker
from signaling.core.redis_presence import RedisPresence


def new_node_id() -> str:
    return secrets.token_hex(6)


def history_policy(settings: Settings) -> HistoryPolicy:
    return HistoryPolicy(settings.room_history_max, float(settings.room_history_ttl_s))


def create_broker(settings: Settings, redis: Redis | None, *, node_id: str | None = None) -> Broker:
    target = redis if redis is not None else settings.redis_url
    if not target:
        return MemoryBroker(history_policy(settings), max_channels=settings.broker_max_channels,
                            max_idempotency_keys=settings.broker_idempotency_max_keys)
    return RedisBroker(target, history_policy(settings), node_id or new_node_id(),
                       subscribe_timeout_s=settings.broker_subscribe_timeout_s,
                       reconnect_max_s=settings.broker_reconnect_max_s,
                       ping_interval_s=settings.broker_ping_interval_s,
                       pool_max=settings.redis_pool_max, retry_s=settings.redis_retry_s)


def create_presence(settings: Settings, redis: Redis | None, *, node_id: str | None = None) -> Presence:
    target = redis if redis is not None else settings.redis_url
    if not target:
        return MemoryPresence(node_id or "local")
    return RedisPresence(target, node_id or new_node_id(), settings.presence_ttl_s,
                         refresh_batch=settings.presence_refresh_batch,
                         purge_batch=settings.presence_purge_batch,
                         pool_max=settings.redis_pool_max, retry_s=settings.redis_retry_s)
