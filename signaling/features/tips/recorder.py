"""Stream tip records and running totals, written in batches so a hot stream's row stays cool.

Every tip in a room adds to `streams.total_tokens_received` and to its tipper's total: a
thousand viewers tipping one performer would queue on that one row if each tip updated it in its
own transaction. The recorder collects the tips of a few milliseconds (`tip_record_wait_ms`, at
most `tip_record_batch_max`) and writes them in one transaction: one INSERT of the tip rows
(`ON CONFLICT DO NOTHING`: a tip id is recorded once), then the totals of only the rows actually
inserted, one UPDATE per stream. Each caller gets its stream's running total and top tippers
after the batch, and whether its `tip.received` still has to be broadcast.

The queue, the one writer task and the bounded close are `ledger.writer.BatchWriter` (weight 1
per record). The broadcast marks ride along: `broadcast_done` only notes the tip id and nudges
the writer, and each batch writes the marks noted so far (a batch may hold marks only).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from ledger.writer import BatchWriter, WriterClosed, WriterFull, WriterInterrupted

log = logging.getLogger("greenroom.tips")


class RecorderUnavailable(Exception):
    """The record was not written: the recorder is closing, or its close cut the record short.

    The tip itself is in the ledger; retrying the tip id records it.
    """


class RecorderFull(RecorderUnavailable):
    """`tip_record_queue_max` records wait already; refuse new tips before they move money."""


@dataclass(frozen=True, slots=True)
class StreamTip:
    tip_id: uuid.UUID
    stream_id: uuid.UUID
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID
    amount: int
    fee: int
    message: str


@dataclass(frozen=True, slots=True)
class Recorded:
    stream_total: int
    top_tippers: list[dict[str, Any]]  # {user_id, display_name, total}, highest first
    needs_broadcast: bool  # `tip.received` has not gone out for this tip id yet


_INSERT = """
INSERT INTO stream_tips (tip_id, stream_id, from_user_id, to_user_id, amount, fee, message)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[], $6::bigint[], $7::text[])
ON CONFLICT (tip_id) DO NOTHING
RETURNING tip_id, stream_id, from_user_id, amount"""

# Input sorted by key, so concurrent batches of several processes take row locks in one order.
_TIPPERS = """
INSERT INTO stream_tippers (stream_id, user_id, total)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[])
ON CONFLICT (stream_id, user_id) DO UPDATE SET total = stream_tippers.total + EXCLUDED.total"""

_LOCK_STREAMS = "SELECT id FROM streams WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE"

_ADD_TOTALS = """
UPDATE streams s SET total_tokens_received = s.total_tokens_received + u.amount
FROM unnest($1::uuid[], $2::bigint[]) AS u(id, amount) WHERE s.id = u.id"""

_TOTALS = "SELECT id, total_tokens_received FROM streams WHERE id = ANY($1::uuid[])"

_TOP = """
SELECT s.id AS stream_id, t.user_id, t.total, u.display_name
FROM unnest($1::uuid[]) AS s(id)
CROSS JOIN LATERAL (SELECT user_id, total FROM stream_tippers WHERE stream_id = s.id
                    ORDER BY total DESC, user_id LIMIT $2) AS t
JOIN users u ON u.id = t.user_id
ORDER BY s.id, t.total DESC, t.user_id"""

_UNBROADCAST = "SELECT tip_id FROM stream_tips WHERE tip_id = ANY($1::uuid[]) AND broadcast_at IS NULL"

_MARK = "UPDATE stream_tips SET broadcast_at = now() WHERE tip_id = ANY($1::uuid[]) AND broadcast_at IS NULL"


class TipRecorder:
    def __init__(self, pool: asyncpg.Pool, *, batch_max: int, wait_ms: float, queue_max: int, top_n: int,
                 close_timeout_s: float = 10.0) -> None:
        self._pool = pool
        self._marks_max = queue_max
        self._top_n = top_n
        self._broadcast: set[uuid.UUID] = set()
        self._writer: BatchWriter[StreamTip, Recorded] = BatchWriter(
            self._write, name="tip-recorder", batch_max=batch_max, queue_max=queue_max, wait_ms=wait_ms,
            close_timeout_s=close_timeout_s, fail=_caller_error)

    def has_room(self) -> bool:
        return self._writer.has_room()

    async def record(self, tip: StreamTip) -> Recorded:
        """Record the tip (once per tip id) with the next batch; raises RecorderFull,
        RecorderUnavailable (closing), or what the database raised for the batch (the tip is then
        not recorded: retrying the tip id records it)."""
        try:
            future = self._writer.submit(tip)
        except WriterFull:
            raise RecorderFull(f"{self._writer.queued} tip records are waiting") from None
        except WriterClosed:
            raise RecorderUnavailable("the tip recorder is not running") from None
        return await future

    def broadcast_done(self, tip_id: uuid.UUID) -> None:
        """Note that `tip.received` went out; written with the next batch. Best effort: a lost
        mark only means a retry of the tip id publishes again under the same idempotency key."""
        if len(self._broadcast) < self._marks_max:
            self._broadcast.add(tip_id)
            self._writer.nudge()

    def start(self) -> None:
        self._writer.start()

    async def close(self) -> None:
        """Write what is queued (bounded by close_timeout_s), then stop."""
        await self._writer.close()

    async def _write(self, tips: list[StreamTip]) -> list[Recorded]:
        """One batch (the writer's `write`): the tips queued and the marks noted since the last one."""
        marks, self._broadcast = list(self._broadcast), set()
        try:
            recorded = await self._write_batch(tips, marks)
        except Exception:
            log.exception("writing %d stream tip records failed", len(tips))
            raise
        return [recorded[tip.tip_id] for tip in tips]

    async def _write_batch(self, tips: list[StreamTip], marks: list[uuid.UUID]) -> dict[uuid.UUID, Recorded]:
        unique = list({t.tip_id: t for t in tips}.values())
        async with self._pool.acquire() as conn, conn.transaction():
            if marks:
                await conn.execute(_MARK, marks)
            inserted: list[asyncpg.Record] = []
            if unique:
                inserted = await conn.fetch(_INSERT, *_columns(unique))
            per_stream: dict[uuid.UUID, int] = defaultdict(int)
            per_tipper: dict[tuple[uuid.UUID, uuid.UUID], int] = defaultdict(int)
            for r in inserted:
                per_stream[r["stream_id"]] += r["amount"]
                per_tipper[(r["stream_id"], r["from_user_id"])] += r["amount"]
            if per_stream:
                keys = sorted(per_stream)
                await conn.execute(_LOCK_STREAMS, keys)
                await conn.execute(_ADD_TOTALS, keys, [per_stream[k] for k in keys])
                pairs = sorted(per_tipper)
                await conn.execute(_TIPPERS, [p[0] for p in pairs], [p[1] for p in pairs],
                                   [per_tipper[p] for p in pairs])
            if not unique:
                return {}
            streams = sorted({t.stream_id for t in unique})
            totals = {r["id"]: r["total_tokens_received"] for r in await conn.fetch(_TOTALS, streams)}
            tops: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
            if self._top_n:
                for r in await conn.fetch(_TOP, streams, self._top_n):
                    tops[r["stream_id"]].append({"user_id": str(r["user_id"]), "display_name": r["display_name"],
                                                 "total": r["total"]})
            pending = {r["tip_id"] for r in await conn.fetch(_UNBROADCAST, [t.tip_id for t in unique])}
        return {t.tip_id: Recorded(totals.get(t.stream_id, 0), tops.get(t.stream_id, []), t.tip_id in pending)
                for t in unique}


def _caller_error(error: Exception) -> Exception:
    """What each caller of a failed batch gets: what the database raised, as before the writer
    existed; the writer's own refusals as the recorder's."""
    if isinstance(error, WriterClosed):
        return RecorderUnavailable("the tip recorder closed before writing this record")
    if isinstance(error, WriterInterrupted):
        return RecorderUnavailable("the tip recorder stopped while writing this record")
    return error


def _columns(tips: list[StreamTip]) -> list[list[Any]]:
    return [[t.tip_id for t in tips], [t.stream_id for t in tips], [t.from_user_id for t in tips],
            [t.to_user_id for t in tips], [t.amount for t in tips], [t.fee for t in tips],
            [t.message for t in tips]]


TIPS = web.AppKey("tips", TipRecorder)  # batches stream tip records and running totals
