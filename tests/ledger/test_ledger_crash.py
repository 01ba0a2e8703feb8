"""Crash: SIGKILL a process mid-stream (mid-batch, most likely), then resubmit every id.

Every tip must end up applied exactly once: what the dead process had acknowledged answers
`exists` (durable before acknowledged), the rest applies now, and the audit is clean.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path

import asyncpg

from ledger import Result, audit
from tests.support.ledger_crash_worker import tip
from tests.support.ledger_support import PLATFORM, counters, fund_all, start_engine, wallets

ROOT = Path(__file__).resolve().parents[2]
TIPS = 3000
KILL_AFTER = 300  # acknowledged tips before the kill


async def test_sigkill_mid_stream_then_resubmitting_every_id_applies_each_once(dsn: str) -> None:
    db = await asyncpg.connect(dsn)
    engine = await start_engine(dsn)
    try:
        payers = await wallets(db, 20)
        [performer] = await wallets(db, 1)
        await fund_all(engine, payers, 10**6)
        platform_before = await counters(db, PLATFORM)
        namespace = uuid.uuid4()
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.ledger_crash_worker", dsn, str(namespace), json.dumps(payers),
            str(performer), str(TIPS), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert worker.stdout is not None
        acked: set[int] = set()
        async with asyncio.timeout(60):
            while len(acked) < KILL_AFTER:
                line = await worker.stdout.readline()
                assert line, "worker ended before the kill"
                acked.add(int(line.split()[1]))
        worker.send_signal(signal.SIGKILL)
        rest = await worker.stdout.read()  # acknowledged before the kill, still in the pipe
        acked.update(int(line.split()[1]) for line in rest.decode().splitlines())
        assert await worker.wait() == -signal.SIGKILL

        async def resubmit(index: int) -> list[Result]:
            return [o.result for o in await engine.submit(tip(namespace, index, payers, performer))]

        got: list[list[Result]] = []
        for start in range(0, TIPS, 500):
            got += await asyncio.gather(*(resubmit(i) for i in range(start, min(start + 500, TIPS))))
        replayed = {i for i, r in enumerate(got) if r == [Result.EXISTS, Result.EXISTS]}
        applied_now = {i for i, r in enumerate(got) if r == [Result.OK, Result.OK]}
        assert replayed | applied_now == set(range(TIPS)), "every tip is whole: both legs or neither"
        assert acked <= replayed, "an acknowledged tip was lost"
        assert applied_now, "the worker was killed before it finished"
        assert await counters(db, performer) == (0, 0, 0, 8 * TIPS)
        platform_after = await counters(db, PLATFORM)
        assert platform_after[3] - platform_before[3] == 2 * TIPS
        assert await db.fetchval("SELECT count(*) FROM ledger_transfers WHERE code IN ('tip', 'fee')") == 2 * TIPS
        report = await audit(db)
        assert report.ok, report.format()
    finally:
        await engine.close()
        await db.close()
