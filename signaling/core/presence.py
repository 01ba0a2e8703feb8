"""Presence: who is in a room, on this node (`MemoryPresence`) or across nodes (`RedisPresence`).

An entry is one client (connection) in one channel with a small JSON-able `info` dict. The
distinct-user count groups entries by `info["user_id"]`; an entry without one (a guest) counts as
a user of its own.

Across nodes each entry carries an expiry: the node holding the client refreshes all its entries
every `ttl_s / 3` (one pipelined round trip per tick), and every read first drops expired entries,
so the clients of a node that died leave members and counts within `ttl_s`. Nodes register
themselves the same way (`nodes()`), which tells the live nodes apart from the dead ones.
"""

from __future__ import annotations

from typing import Any, Protocol

Info = dict[str, Any]


def user_key(client_id: str, info: Info) -> str:
    user_id = info.get("user_id")
    return f"c:{client_id}" if user_id is None else f"u:{user_id}"


class Presence(Protocol):
    async def start(self) -> None:
        """Register this node and begin refreshing its entries."""

    async def add(self, channel: str, client_id: str, info: Info) -> bool:
        """Insert or replace the client's entry in the channel.

        True when the entry is its user's first live one in the channel, on any node (atomically:
        of two nodes adding the same user at once, one gets True).
        """

    async def remove(self, channel: str, client_id: str) -> bool:
        """Drop the client's entry (idempotent). True when it was its user's last live one, on any node."""

    async def members(self, channel: str, limit: int) -> dict[str, Info]:
        """Up to `limit` live entries, client id -> info."""

    async def counts(self, channel: str) -> tuple[int, int]:
        """(live clients, distinct users) in the channel."""

    async def counts_many(self, channels: list[str]) -> dict[str, tuple[int, int]]:
        """`counts` of several channels at once (one round trip per chunk of them)."""

    async def nodes(self) -> list[str]:
        """Ids of the nodes alive now."""

    async def close(self) -> None:
        """Stop refreshing. Entries still listed expire within the TTL (a clean shutdown removes its
        clients first)."""
