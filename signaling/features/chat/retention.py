"""Retention: chat older than `chat_retention_days` is deleted, and lapsed mutes and bans with it.

Deletes run in bounded batches (`chat_purge_batch` rows, at most `chat_purge_max_batches` per
pass) so a large backlog never holds one long transaction or lock; what is left waits for the
next pass. `SKIP LOCKED` lets every node run the task without them fighting over rows.
"""

from __future__ import annotations

import logging

import asyncpg

from server.kernel.settings import Settings

log = logging.getLogger("greenroom.retention")

_PURGE_CHAT = """
DELETE FROM chat_messages WHERE id IN (
    SELECT id FROM chat_messages WHERE created_at < now() - make_interval(days => $1)
    ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""
_PURGE_MUTES = """
DELETE FROM room_mutes WHERE ctid IN (
    SELECT ctid FROM room_mutes WHERE until < now() LIMIT $1 FOR UPDATE SKIP LOCKED)
"""
_PURGE_BANS = """
DELETE FROM room_bans WHERE ctid IN (
    SELECT ctid FROM room_bans WHERE until < now() LIMIT $1 FOR UPDATE SKIP LOCKED)
"""


async def _batched(db: asyncpg.Pool, sql: str, *args: object, batch: int, max_batches: int) -> int:
    total = 0
    for _ in range(max_batches):
        status = await db.execute(sql, *args)
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < batch:
            break
    return total


async def purge(db: asyncpg.Pool, settings: Settings) -> dict[str, int]:
    """One retention pass; returns how many rows of each kind it deleted."""
    batch, max_batches = settings.chat_purge_batch, settings.chat_purge_max_batches
    return {
        "chat_messages": await _batched(db, _PURGE_CHAT, settings.chat_retention_days, batch,
                                        batch=batch, max_batches=max_batches),
        "room_mutes": await _batched(db, _PURGE_MUTES, batch, batch=batch, max_batches=max_batches),
        "room_bans": await _batched(db, _PURGE_BANS, batch, batch=batch, max_batches=max_batches),
    }
