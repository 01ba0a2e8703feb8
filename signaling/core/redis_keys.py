"""Redis key names and the binary client the broker and presence share.

Every key of a room is `gr:room:{<channel>}:<suffix>`: the braces are a Redis Cluster hash tag,
so all of one room's keys live in one slot and a Lua script may touch them together. (A channel
name that starts with `}` would defeat the tag; room names never do.)
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

NODES_KEY = "gr:nodes"  # ZSET node_id -> expiry (ms, Redis clock): nodes alive now


def room_key(channel: str, suffix: str) -> str:
    return f"gr:room:{{{channel}}}:{suffix}"


def pubsub_channel(channel: str) -> bytes:
    return room_key(channel, "pub").encode()


def channel_of(pubsub_name: bytes) -> str | None:
    """The room of a pub/sub channel name written by `pubsub_channel`, else None."""
    prefix, suffix = b"gr:room:{", b"}:pub"
    if pubsub_name.startswith(prefix) and pubsub_name.endswith(suffix):
        return pubsub_name[len(prefix):-len(suffix)].decode()
    return None


def binary_client(redis: Redis | str, pool_max: int) -> tuple[Redis, bool]:
    """A client that returns bytes (publications are opaque bytes), and whether the caller owns it.

    A URL gets a new client whose pool waits for one of `pool_max` connections rather than failing;
    a client that decodes responses gets such a sibling on the same server; any other client is
    used as it is.
    """
    if isinstance(redis, str):
        return Redis(connection_pool=BlockingConnectionPool.from_url(redis, max_connections=pool_max)), True
    pool = redis.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return redis, False
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    kwargs["decode_responses"] = False
    return Redis(connection_pool=BlockingConnectionPool(connection_class=pool.connection_class,
                                                        max_connections=pool_max, **kwargs)), True


def connection_kwargs(redis: Redis) -> tuple[type[Any], dict[str, Any]]:
    """Class and arguments for a dedicated connection to the client's server (pub/sub)."""
    pool = redis.connection_pool
    return pool.connection_class, dict(pool.connection_kwargs)
