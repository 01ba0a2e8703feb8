"""Redis key names and the binary client the broker and presence share.

Every key of a room is `gr:room:{<channel>}:<suffix>`: the braces are a Redis Cluster hash tag,
so all of one room's keys live in one slot and a Lua script may touch them together. (A channel
name that starts with `}` would defeat the tag; room names never do.)
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis

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


def binary_client(redis: Redis | str) -> tuple[Redis, bool]:
    """A client that returns bytes (publications are opaque bytes), and whether the caller owns it.

    A URL gets a new client; a client that decodes responses gets a sibling on the same server that
    does not; any other client is used as it is.
    """
    if isinstance(redis, str):
        return Redis.from_url(redis), True
    pool = redis.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return redis, False
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    kwargs["decode_responses"] = False
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs)), True


def connection_kwargs(redis: Redis) -> tuple[type[Any], dict[str, Any]]:
    """Class and arguments for a dedicated connection to the client's server (pub/sub)."""
    pool = redis.connection_pool
    return pool.connection_class, dict(pool.connection_kwargs)
