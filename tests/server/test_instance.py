"""A worker's instance lock: held while it runs, gone when its session ends, and taken again after
its connection was cut while the worker still runs."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from server.kernel.instance import Instance, gone_sql

HOLDER = """SELECT l.pid FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1"""


async def _until(db: asyncpg.Connection, instance_id: int, *, gone: bool, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while await db.fetchval(f"SELECT {gone_sql('$1::bigint')}", instance_id) is not gone:
        assert time.monotonic() < deadline, f"the lock of {instance_id} never {'went' if gone else 'came back'}"
        await asyncio.sleep(0.02)


async def test_the_lock_is_held_while_running_and_taken_again_after_a_cut(dsn: str) -> None:
    db = await asyncpg.connect(dsn)
    worker = Instance(dsn, check_s=0.1)
    try:
        await worker.start()
        assert worker.holding and 0 < worker.id < 2**63
        assert await db.fetchval(f"SELECT {gone_sql('$1::bigint')}", worker.id) is False
        assert await db.fetchval(f"SELECT {gone_sql('$1::bigint')}", worker.id + 1) is True
        # PostgreSQL restarts, or the network cuts the connection: the worker looks gone, then locks again.
        pid = await db.fetchval(HOLDER, worker.id)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        await _until(db, worker.id, gone=True)
        await _until(db, worker.id, gone=False)
        assert worker.holding and await db.fetchval(HOLDER, worker.id) != pid
        # Closing ends the session, as the process's death would: the lock goes with it.
        await worker.close()
        assert not worker.holding
        await _until(db, worker.id, gone=True)
    finally:
        await worker.close()
        await db.close()
