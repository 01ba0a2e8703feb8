"""The sweeper: releases holds whose timeout has passed, through the engine's single writer.

It only finds due holds (a read on the shared pool); the release itself is an `Expiry` in a batch,
so it takes the same locks, in the same order, as every other write of this process. A post that
races the sweeper is refused `pending_expired` either way: once due, a hold cannot be posted.

`on_expired` tells the owner which holds a sweep expired, so it can act on them (free a seat,
mark a request). Its contract:
- It runs after the expiry committed, once per sweep that expired at least one hold, with exactly
  the holds this sweep expired (result `ok`): not those another sweeper (another process)
  expired first, nor those posted or voided between the read and the expiry.
- It is awaited, bounded by `callback_timeout_s`; the next sweep waits for it.
- If it raises or times out, the error is logged and the sweep goes on (its count stands, the
  next sweeps run); the holds stay expired and are not offered again. It is best effort, not a
  durable queue: a callback cut short (error, timeout, `close()`, a crash between the commit and
  the call) is not repeated, so whoever needs certainty reads the hold's status from the ledger
  (as payouts do) and uses the callback only to act sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from ledger.engine import Engine
from ledger.errors import LedgerError
from ledger.model import Code, Result

log = logging.getLogger("greenroom.ledger")

# The hold's fields come with the due list (one indexed read), so the callback costs no query.
_DUE = """
SELECT p.pending_id, t.debit_account_id, t.credit_account_id, t.amount, t.code, t.metadata::text, p.expires_at
FROM ledger_pending p JOIN ledger_transfers t ON t.id = p.pending_id
WHERE p.status = 'pending' AND p.expires_at IS NOT NULL AND p.expires_at <= $1
ORDER BY p.expires_at LIMIT $2"""


@dataclass(frozen=True, slots=True)
class ExpiredHold:
    """A hold a sweep expired: its amount went back to `available` of the debit account."""

    pending_id: UUID
    debit_account_id: int
    credit_account_id: int
    amount: int
    code: Code
    metadata: Mapping[str, Any] | None
    expires_at: datetime


OnExpired = Callable[[Sequence[ExpiredHold]], Awaitable[None]]


class Sweeper:
    def __init__(self, engine: Engine, db: asyncpg.Pool | asyncpg.Connection, *, interval_s: float,
                 batch_max: int, on_expired: OnExpired | None = None, callback_timeout_s: float = 10.0) -> None:
        assert interval_s > 0
        assert batch_max >= 1
        assert callback_timeout_s > 0
        self._engine = engine
        self._db = db
        self._interval_s = interval_s
        self._batch_max = min(batch_max, engine.batch_max)
        self._on_expired = on_expired
        self._callback_timeout_s = callback_timeout_s
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """Expire at most batch_max due holds (oldest due first), then tell `on_expired` (see the
        module doc); returns how many this call expired."""
        rows = await self._db.fetch(_DUE, self._engine.clock(), self._batch_max)
        if not rows:
            return 0
        results = await self._engine.expire([r[0] for r in rows])
        expired = [_hold(row) for row, result in zip(rows, results, strict=True) if result is Result.OK]
        if expired and self._on_expired is not None:
            await self._tell(expired)
        return len(expired)

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._run(), name="ledger-sweeper")

    async def close(self) -> None:
        """Stop sweeping; a callback running now is cancelled (see the module doc)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tell(self, expired: list[ExpiredHold]) -> None:
        assert self._on_expired is not None
        try:
            async with asyncio.timeout(self._callback_timeout_s):
                await self._on_expired(expired)
        except TimeoutError:
            log.error("ledger on_expired callback timed out; the holds stay expired",
                      extra={"holds": len(expired), "timeout_s": self._callback_timeout_s})
        except Exception:
            # The expiry is committed whatever the callback does; later sweeps must not stop.
            log.exception("ledger on_expired callback failed; the holds stay expired", extra={"holds": len(expired)})

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


def _hold(row: asyncpg.Record) -> ExpiredHold:
    return ExpiredHold(row[0], row[1], row[2], row[3], Code(row[4]),
                       orjson.loads(row[5]) if row[5] is not None else None, row[6])
