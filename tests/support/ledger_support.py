"""Helpers shared by the ledger tests: a controllable clock, accounts with funds, short builders.

Also the fixtures (registered in conftest): `db` (a connection; the ledger audit must pass when
the test ends), `clock` (a FakeClock) and `engine` (started on that clock, closed after).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from ledger import (
    SYSTEM_ACCOUNT_IDS,
    AccountKind,
    Code,
    Engine,
    NewAccount,
    Result,
    Transfer,
    TransferFlags,
    audit,
    create_accounts,
)

PLATFORM = SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE]
CLEARING = SYSTEM_ACCOUNT_IDS[AccountKind.PAYMENT_CLEARING]
PROMOTIONS = SYSTEM_ACCOUNT_IDS[AccountKind.PROMOTIONS]
LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING
VOID = TransferFlags.VOID_PENDING


class FakeClock:
    """The engine's clock, moved by the test (holds expire without sleeping)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    report = await audit(conn)  # every test leaves a consistent ledger behind
    assert report.ok, report.format()
    await conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(dsn: str, clock: FakeClock) -> AsyncIterator[Engine]:
    engine = await start_engine(dsn, clock=clock)
    yield engine
    await engine.close()


def tid() -> uuid.UUID:
    return uuid.uuid4()


def move(debit: int, credit: int, amount: int, code: Code = Code.TIP, flags: TransferFlags = TransferFlags.NONE,
         **kw: Any) -> Transfer:
    return Transfer(tid(), debit, credit, amount, code, flags, **kw)


async def start_engine(dsn: str, **kw: Any) -> Engine:
    options: dict[str, Any] = {"batch_max": 1000, "batch_wait_ms": 1.0, "queue_max": 100_000}
    options.update(kw)
    engine = Engine(dsn, **options)
    await engine.start()
    return engine


async def wallets(db: asyncpg.Connection, count: int, kind: AccountKind = AccountKind.WALLET) -> list[int]:
    accounts = await create_accounts(db, [NewAccount(kind, uuid.uuid4()) for _ in range(count)])
    return [a.id for a in accounts]


async def fund(engine: Engine, account: int, amount: int) -> None:
    await fund_all(engine, [account], amount)


async def fund_all(engine: Engine, accounts: list[int], amount: int) -> None:
    """Credit every account from payment clearing, in one submission."""
    outcomes = await engine.submit([Transfer(tid(), CLEARING, a, amount, Code.PURCHASE) for a in accounts])
    assert all(o.result is Result.OK for o in outcomes)


async def counters(db: asyncpg.Connection, account: int) -> tuple[int, int, int, int]:
    row = await db.fetchrow("SELECT debits_pending, debits_posted, credits_pending, credits_posted "
                            "FROM ledger_accounts WHERE id = $1", account)
    assert row is not None
    return (row[0], row[1], row[2], row[3])


async def wait_for_lock_wait(db: asyncpg.Connection) -> None:
    """Until an engine's writer is blocked on a row lock (bounded)."""
    for _ in range(200):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'greenroom-ledger' "
            "AND datname = current_database() AND wait_event_type = 'Lock'")
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the writer never waited on the lock")


async def results(engine: Engine, *transfers: Transfer) -> list[Result]:
    """Submit `transfers` as one submission; their results in order."""
    return [o.result for o in await engine.submit(list(transfers))]
