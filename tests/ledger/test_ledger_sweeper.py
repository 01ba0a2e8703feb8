"""The sweeper's `on_expired` callback: told exactly the holds a sweep expired, after the commit;
a callback that raises or hangs neither undoes the expiry nor stops later sweeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

import asyncpg

from ledger import Code, Engine, ExpiredHold, Result, Sweeper, Transfer
from tests.support.ledger_support import (
    PENDING,
    POST,
    VOID,
    FakeClock,
    counters,
    fund,
    fund_all,
    move,
    results,
    start_engine,
    wait_for_lock_wait,
    wallets,
)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def statuses(db: asyncpg.Connection, holds: Sequence[Transfer]) -> dict[object, str]:
    rows = await db.fetch("SELECT pending_id, status FROM ledger_pending WHERE pending_id = ANY($1::uuid[])",
                          [h.id for h in holds])
    return {r[0]: r[1] for r in rows}


class Told:
    """An `on_expired` callback that records each call's holds."""

    def __init__(self) -> None:
        self.calls: list[list[ExpiredHold]] = []

    async def __call__(self, holds: Sequence[ExpiredHold]) -> None:
        self.calls.append(list(holds))


async def test_on_expired_gets_the_expired_holds_not_those_posted_or_voided_meanwhile(
        dsn: str, engine: Engine, db: asyncpg.Connection, clock: FakeClock) -> None:
    a, b, c, d = await wallets(db, 4)
    await fund_all(engine, [a, c], 100)
    start = clock.now
    seat = move(a, b, 10, Code.BOOKING, PENDING, timeout_s=10, metadata={"seat": "A1"})
    posted = move(a, b, 20, Code.BOOKING, PENDING, timeout_s=30)
    voided = move(a, b, 30, Code.BOOKING, PENDING, timeout_s=30)
    assert await results(engine, seat, posted, voided) == [Result.OK] * 3
    told = Told()
    sweeper_db = await asyncpg.connect(dsn)
    sweeper = Sweeper(engine, sweeper_db, interval_s=1, batch_max=100, on_expired=told)
    blocker = await asyncpg.connect(dsn)
    try:
        # Hold the writer on an unrelated batch, so what follows queues behind it in a known order.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM ledger_accounts WHERE id = $1 FOR UPDATE", c)
        unrelated = asyncio.create_task(results(engine, move(c, d, 1)))
        await wait_for_lock_wait(db)
        post = asyncio.create_task(results(engine, move(0, 0, 0, Code.BOOKING, POST, pending_id=posted.id)))
        void = asyncio.create_task(results(engine, move(0, 0, 0, Code.BOOKING, VOID, pending_id=voided.id)))
        # The sweeper reads on a clock 10 s ahead of the writer's (another process's, say): all three
        # holds look due to it, but the post and the void are applied first and before they are due.
        clock.advance(30)
        sweep = asyncio.create_task(sweeper.sweep())
        await eventually(lambda: engine.queued == 2 + 3, "the sweeper's expiry queued behind the post and void")
        clock.advance(-10)
        await transaction.rollback()
        assert await unrelated == [Result.OK]
        assert await post == [Result.OK]
        assert await void == [Result.OK]
        assert await sweep == 1
    finally:
        await blocker.close()
        await sweeper_db.close()
    assert told.calls == [[ExpiredHold(seat.id, a, b, 10, Code.BOOKING, {"seat": "A1"}, start + timedelta(seconds=10))]]
    assert await statuses(db, [seat, posted, voided]) == {seat.id: "expired", posted.id: "posted",
                                                          voided.id: "voided"}
    assert await counters(db, a) == (0, 20, 0, 100)


async def test_a_hold_expired_by_another_process_is_not_reported_again(
        dsn: str, engine: Engine, db: asyncpg.Connection, clock: FakeClock) -> None:
    """Every worker runs a sweeper: two reading the same due holds report each hold once in all."""
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    holds = [move(a, b, 10, Code.BOOKING, PENDING, timeout_s=10) for _ in range(6)]
    assert await results(engine, *holds) == [Result.OK] * 6
    clock.advance(10)
    # The slow process's batch waits long enough for the fast one to read and expire them all.
    slow_engine = await start_engine(dsn, clock=clock, batch_wait_ms=1000)
    slow_db, fast_db = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    slow_told, fast_told = Told(), Told()
    try:
        slow = Sweeper(slow_engine, slow_db, interval_s=1, batch_max=100, on_expired=slow_told)
        fast = Sweeper(engine, fast_db, interval_s=1, batch_max=100, on_expired=fast_told)
        slow_sweep = asyncio.create_task(slow.sweep())
        await eventually(lambda: slow_engine.queued == 6, "the slow sweeper read every due hold")
        assert await fast.sweep() == 6
        assert await slow_sweep == 0
    finally:
        await slow_engine.close()
        await slow_db.close()
        await fast_db.close()
    assert slow_told.calls == []
    assert [[h.pending_id for h in call] for call in fast_told.calls] == [[h.id for h in holds]]
    assert set((await statuses(db, holds)).values()) == {"expired"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_raising_or_hanging_callback_does_not_stop_later_sweeps(
        dsn: str, engine: Engine, db: asyncpg.Connection, clock: FakeClock) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    calls: list[list[ExpiredHold]] = []

    async def on_expired(holds: Sequence[ExpiredHold]) -> None:
        calls.append(list(holds))
        if len(calls) == 1:
            raise RuntimeError("seat service down")
        if len(calls) == 2:
            await asyncio.sleep(60)  # cut short by callback_timeout_s

    records = _Records()
    logger = logging.getLogger("greenroom.ledger")
    logger.addHandler(records)
    sweeper_db = await asyncpg.connect(dsn)
    sweeper = Sweeper(engine, sweeper_db, interval_s=0.01, batch_max=100, on_expired=on_expired,
                      callback_timeout_s=0.2)
    sweeper.start()
    waves: list[Transfer] = []
    try:
        for wave in range(3):
            hold = move(a, b, 10, Code.BOOKING, PENDING, timeout_s=10)
            assert await results(engine, hold) == [Result.OK]
            waves.append(hold)
            clock.advance(10)
            await eventually(lambda n=wave + 1: len(calls) == n, f"callback call {wave + 1}")
    finally:
        await sweeper.close()
        await sweeper_db.close()
        logger.removeHandler(records)
    assert [[h.pending_id for h in call] for call in calls] == [[h.id] for h in waves]
    assert set((await statuses(db, waves)).values()) == {"expired"}
    assert await counters(db, a) == (0, 0, 0, 100)
    assert any("callback failed" in m for m in records.messages), records.messages
    assert any("callback timed out" in m for m in records.messages), records.messages
