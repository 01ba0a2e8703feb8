"""Accounts and history API, the database's own guards (immutability, CHECKs), the audit and its
CLI, and the engine's place in the application."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from ledger import (
    SYSTEM_ACCOUNT_IDS,
    AccountFlags,
    AccountKind,
    Code,
    Engine,
    NewAccount,
    Result,
    TransferFlags,
    account_transfers,
    accounts_of,
    audit,
    balances,
    create_accounts,
    lookup_accounts,
)
from server.commerce import keys as money
from server.kernel import keys
from tests.support.ledger_support import (
    CLEARING,
    LINKED,
    PENDING,
    PLATFORM,
    FakeClock,
    fund,
    move,
    wallets,
)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Without tests.support.ledger_support's closing audit: these tests check accounts, not ledgers."""
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


# --- accounts ----------------------------------------------------------------------------


async def test_create_accounts_is_get_or_create_in_order(db: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    first = await create_accounts(db, [NewAccount(AccountKind.WALLET, user), NewAccount(AccountKind.EARNINGS, user),
                                       NewAccount(AccountKind.PLATFORM_REVENUE, None)])
    assert [a.kind for a in first] == [AccountKind.WALLET, AccountKind.EARNINGS, AccountKind.PLATFORM_REVENUE]
    assert first[2].id == SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE]
    assert all(a.id >= 100 for a in first[:2])
    again = await create_accounts(db, [NewAccount(AccountKind.EARNINGS, user), NewAccount(AccountKind.WALLET, user)])
    assert [a.id for a in again] == [first[1].id, first[0].id]
    assert first[0].flags == AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    [clearing] = await lookup_accounts(db, [CLEARING])
    assert clearing.flags == AccountFlags.NONE
    assert [a.id for a in await accounts_of(db, user)] == sorted(a.id for a in first[:2])


async def test_concurrent_creates_of_one_wallet_make_one_account(dsn: str) -> None:
    user = uuid.uuid4()
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    assert pool is not None
    try:
        got = await asyncio.gather(*(create_accounts(pool, [NewAccount(AccountKind.WALLET, user)]) for _ in range(8)))
    finally:
        await pool.close()
    assert len({g[0].id for g in got}) == 1


async def test_create_accounts_refuses_wrong_owners(db: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="need an owner"):
        await create_accounts(db, [NewAccount(AccountKind.WALLET, None)])
    with pytest.raises(ValueError, match="have no owner"):
        await create_accounts(db, [NewAccount(AccountKind.PROMOTIONS, uuid.uuid4())])
    with pytest.raises(ValueError):
        await create_accounts(db, [])
    with pytest.raises(ValueError):
        await create_accounts(db, [NewAccount("nonsense", uuid.uuid4())])  # type: ignore[arg-type]


async def test_lookup_leaves_out_missing_and_impossible_ids(db: asyncpg.Connection) -> None:
    [a] = await wallets(db, 1)
    found = await lookup_accounts(db, [a, 999_999, -5, 2**70, PLATFORM])
    assert [x.id for x in found] == [a, PLATFORM]
    assert await balances(db, 999_999) is None


async def test_balances_and_history_pages(engine: Engine, db: asyncpg.Connection, clock: FakeClock) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 1000)
    for i in range(7):
        assert (await engine.submit([move(a, b, 10 + i, metadata={"i": i})]))[0].result is Result.OK
        clock.advance(60)
    hold = move(a, b, 100, Code.BOOKING, PENDING, timeout_s=30)
    assert (await engine.submit([hold]))[0].result is Result.OK
    tip = [move(a, b, 8, flags=LINKED), move(a, PLATFORM, 2, Code.FEE)]
    assert [o.result for o in await engine.submit(tip)] == [Result.OK, Result.OK]

    balance = await balances(db, a)
    spent = sum(10 + i for i in range(7)) + 10
    assert balance is not None
    assert (balance.available, balance.reserved, balance.incoming, balance.posted) == \
        (1000 - spent - 100, 100, 0, 1000 - spent)
    incoming = await balances(db, b)
    assert incoming is not None and incoming.incoming == 100

    seen = []
    cursor = None
    for _ in range(10):  # bounded paging
        page = await account_transfers(db, a, cursor, limit=3)
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 11  # funding, 7 payments, hold, 2 tip legs
    assert [r.seq for r in seen] == sorted((r.seq for r in seen), reverse=True)
    newest = seen[0]
    assert (newest.code, newest.amount, newest.debit_balance_after) == (Code.FEE, 2, balance.available)
    assert seen[1].flags == TransferFlags.LINKED
    held = next(r for r in seen if r.id == hold.id)
    assert held.pending_status is not None and held.pending_status.value == "pending"
    assert held.expires_at == held.created_at + timedelta(seconds=30)
    assert next(r for r in seen if r.metadata == {"i": 3}).amount == 13

    only_fees = await account_transfers(db, a, codes=[Code.FEE])
    assert [r.amount for r in only_fees.items] == [2]
    start = seen[-1].created_at
    window = await account_transfers(db, a, since=start + timedelta(seconds=60),
                                      until=start + timedelta(seconds=180))
    assert [r.amount for r in window.items] == [12, 11]
    with pytest.raises(ValueError):
        await account_transfers(db, a, limit=0)
    with pytest.raises(ValueError):
        await account_transfers(db, a, limit=1001)
    assert (await account_transfers(db, 2**70)).items == []


# --- the database's own guards -----------------------------------------------------------


async def test_transfers_and_hold_states_cannot_be_edited(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    hold = move(a, b, 10, Code.BOOKING, PENDING)
    assert (await engine.submit([hold]))[0].result is Result.OK
    for statement in ("UPDATE ledger_transfers SET amount = amount + 1",
                      "UPDATE ledger_transfers SET metadata = '{}' WHERE false",
                      "DELETE FROM ledger_transfers",
                      "TRUNCATE ledger_transfers CASCADE",
                      "DELETE FROM ledger_pending"):
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await db.execute(statement)
    await engine.submit([move(0, 0, 0, Code.BOOKING, TransferFlags.VOID_PENDING, pending_id=hold.id)])
    with pytest.raises(asyncpg.RestrictViolationError, match="already voided"):
        await db.execute("UPDATE ledger_pending SET status = 'posted'")
    report = await audit(db)
    assert report.ok, report.format()


async def test_database_checks_refuse_what_the_engine_never_writes(db: asyncpg.Connection) -> None:
    [a] = await wallets(db, 1)
    for statement in ("DELETE FROM ledger_accounts WHERE id = $1",
                      "UPDATE ledger_accounts SET owner = NULL WHERE id = $1",
                      "UPDATE ledger_accounts SET kind = 'earnings' WHERE id = $1",
                      "UPDATE ledger_accounts SET id = id + 1000 WHERE id = $1"):
        with pytest.raises(asyncpg.RestrictViolationError):
            await db.execute(statement, a)
    with pytest.raises(asyncpg.RestrictViolationError):
        await db.execute("TRUNCATE ledger_accounts CASCADE")
    with pytest.raises(asyncpg.CheckViolationError):  # a wallet below zero
        await db.execute("UPDATE ledger_accounts SET debits_posted = 1 WHERE id = $1", a)
    with pytest.raises(asyncpg.CheckViolationError):  # flags follow from the kind
        await db.execute("UPDATE ledger_accounts SET flags = 0 WHERE id = $1", a)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE ledger_accounts SET credits_pending = -1 WHERE id = $1", CLEARING)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO ledger_accounts (kind, owner, flags) VALUES ('promotions', NULL, 0)")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, code, "
                         "flags, debit_balance_after, credit_balance_after, created_at) "
                         "VALUES (gen_random_uuid(), $1, $2, 0, 'tip', 0, 0, 0, now())", a, PLATFORM)


# --- audit -------------------------------------------------------------------------------


async def test_audit_names_the_accounts_and_transfers_that_break_invariants(engine: Engine,
                                                                            db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    assert (await engine.submit([move(a, b, 30)]))[0].result is Result.OK
    assert (await audit(db)).ok
    # Counters edited behind the engine's back.
    await db.execute("UPDATE ledger_accounts SET credits_posted = credits_posted + 5 WHERE id = $1", b)
    # A transfer row written without its counters.
    rogue = uuid.uuid4()
    await db.execute("INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, code, flags, "
                     "debit_balance_after, credit_balance_after, created_at) "
                     "VALUES ($1, $2, $3, 7, 'tip', 0, 0, 0, now())", rogue, CLEARING, PLATFORM)
    report = await audit(db)
    assert not report.ok
    failed = {c.name: c for c in report.checks if not c.ok}
    assert set(failed) == {"debits_equal_credits", "counters_match_transfers"}
    assert failed["counters_match_transfers"].offending == sorted([str(b), str(CLEARING), str(PLATFORM)])
    text = report.format()
    assert "FAIL  counters_match_transfers" in text and str(b) in text and "INVARIANTS VIOLATED" in text


async def test_audit_catches_a_hold_resolved_twice(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    hold = move(a, b, 10, Code.BOOKING, PENDING)
    post = move(0, 0, 0, Code.BOOKING, TransferFlags.POST_PENDING, pending_id=hold.id)
    assert [o.result for o in await engine.submit([hold, post])] == [Result.OK, Result.OK]
    second = uuid.uuid4()
    await db.execute("INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, code, flags, "
                     "pending_id, debit_balance_after, credit_balance_after, created_at) "
                     "VALUES ($1, $2, $3, 10, 'booking', 8, $4, 0, 0, now())", second, a, b, hold.id)
    report = await audit(db)
    failed = {c.name: c for c in report.checks if not c.ok}
    assert failed["holds_resolved_once"].offending == [str(second)]


async def test_audit_catches_a_transfer_naming_no_account(db: asyncpg.Connection) -> None:
    rogue = uuid.uuid4()
    await db.execute("INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, code, flags, "
                     "debit_balance_after, credit_balance_after, created_at) "
                     "VALUES ($1, 424242, $2, 7, 'tip', 0, 0, 0, now())", rogue, PLATFORM)
    failed = {c.name: c for c in (await audit(db)).checks if not c.ok}
    assert failed["transfers_well_formed"].offending == [str(rogue)]
    assert "424242" in failed["counters_match_transfers"].offending


async def test_greenroom_audit_exits_nonzero_with_offending_ids(dsn: str, db: asyncpg.Connection,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    monkeypatch.setenv("DATABASE_URL", dsn)
    assert await asyncio.to_thread(main, ["audit"]) == 0
    assert "ledger audit: clean" in capsys.readouterr().out
    [a] = await wallets(db, 1)
    await db.execute("UPDATE ledger_accounts SET credits_posted = 3 WHERE id = $1", a)
    assert await asyncio.to_thread(main, ["audit"]) == 1
    out = capsys.readouterr().out
    assert f"offending: {a}" in out


# --- in the application ------------------------------------------------------------------


async def test_app_runs_one_engine_and_sweeper(client: TestClient, db: asyncpg.Connection) -> None:
    engine = client.app[money.LEDGER]
    a, b = await wallets(db, 2)
    outcomes = await engine.submit([move(CLEARING, a, 50, Code.PURCHASE), move(a, b, 20)])
    assert [o.result for o in outcomes] == [Result.OK, Result.OK]
    assert engine.stats.batches >= 1
    balance = await balances(client.app[keys.DB], a)
    assert balance is not None and balance.available == 30
