"""Retention: chat older than `chat_retention_days` is deleted, and lapsed mutes and bans with it.

Deletes run in bounded batches (`chat_purge_batch` rows, at most `chat_purge_max_batches` per
pass) so a large backlog never holds one long transaction or lock; what is left waits for the
next pass. `SKIP LOCKED` lets every node run the task without them fighting over rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from server.kernel import keys
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


async def _loop(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    while True:
        # Wait first: a pass at start-up would race a quick shutdown for the pool (tests, restarts).
        await asyncio.sleep(settings.chat_purge_interval_s)
        try:
            counts = await purge(app[keys.DB], settings)
            if any(counts.values()):
                log.info("retention purge", extra=counts)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            log.exception("retention purge failed; retrying next interval")


async def retention_context(app: web.Application) -> AsyncIterator[None]:
    """Lifecycle context: runs the purge every `chat_purge_interval_s` (needs the database context)."""
    task = asyncio.create_task(_loop(app), name="chat-retention")
    app[keys.BACKGROUND].append(task)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
