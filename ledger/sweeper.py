"""The sweeper: releases holds whose timeout has passed, through the engine's single writer.

It only finds due holds (a read on the shared pool); the release itself is an `Expiry` in a batch,
so it takes the same locks, in the same order, as every other write of this process. A post that
races the sweeper is refused `pending_expired` either way: once due, a hold cannot be posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from ledger.engine import Engine
from ledger.errors import LedgerError
from ledger.model import Result

log = logging.getLogger("greenroom.ledger")

_DUE = """
SELECT pending_id FROM ledger_pending
WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1
ORDER BY expires_at LIMIT $2"""


class Sweeper:
    def __init__(self, engine: Engine, db: asyncpg.Pool | asyncpg.Connection, *, interval_s: float,
                 batch_max: int) -> None:
        assert interval_s > 0
        assert batch_max >= 1
        self._engine = engine
        self._db = db
        self._interval_s = interval_s
        self._batch_max = min(batch_max, engine.batch_max)
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """Expire at most batch_max due holds (oldest due first); returns how many this call expired."""
        rows = await self._db.fetch(_DUE, self._engine.clock(), self._batch_max)
        if not rows:
            return 0
        results = await self._engine.expire([r[0] for r in rows])
        return sum(1 for r in results if r is Result.OK)

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._run(), name="ledger-sweeper")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # Runs until close() cancels it; one sweep (at most batch_max holds) per interval.
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                expired = await self.sweep()
            except (LedgerError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("ledger sweep failed, will retry: %s", exc)
                continue
            if expired:
                log.info("ledger holds expired", extra={"expired": expired})
