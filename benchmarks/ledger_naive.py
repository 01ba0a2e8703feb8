"""The baseline the batching engine is measured against: one transaction per submission.

Each submission (one transfer, or a tip's two linked legs) is its own transaction on a pooled
connection: `SELECT … FOR UPDATE` the accounts in id order, check funds, insert the transfer rows,
update the counters, commit. Same tables and rows as the engine writes, so the audit covers it.
Single-phase transfers only (what the benchmark submits).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from ledger import Transfer, TransferFlags

_LOCK = """
SELECT id, flags, debits_pending, debits_posted, credits_posted FROM ledger_accounts
WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"""

_INSERT = """
INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, code, flags, timeout_s,
                              debit_balance_after, credit_balance_after, created_at)
VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9)"""

_UPDATE = """
UPDATE ledger_accounts SET debits_posted = debits_posted + $2, credits_posted = credits_posted + $3
WHERE id = $1"""


class NaiveLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def submit(self, transfers: Sequence[Transfer]) -> bool:
        """Apply all or nothing; False when funds are short (rolled back, nothing written)."""
        try:
            await self._apply(transfers)
        except _InsufficientFunds:
            return False
        return True

    async def _apply(self, transfers: Sequence[Transfer]) -> None:
        assert all(t.flags & ~TransferFlags.LINKED == 0 for t in transfers), "single-phase only"
        ids = sorted({t.debit_account_id for t in transfers} | {t.credit_account_id for t in transfers})
        async with self._pool.acquire() as conn, conn.transaction():
            rows = {r[0]: r for r in await conn.fetch(_LOCK, ids)}
            available = {i: r[4] - r[3] - r[2] for i, r in rows.items()}
            debited = dict.fromkeys(ids, 0)
            credited = dict.fromkeys(ids, 0)
            now = datetime.now(UTC)
            for t in transfers:
                if rows[t.debit_account_id][1] & 1 and available[t.debit_account_id] < t.amount:
                    raise _InsufficientFunds
                available[t.debit_account_id] -= t.amount
                available[t.credit_account_id] += t.amount
                debited[t.debit_account_id] += t.amount
                credited[t.credit_account_id] += t.amount
                await conn.execute(_INSERT, t.id, t.debit_account_id, t.credit_account_id, t.amount, t.code.value,
                                   int(t.flags), available[t.debit_account_id], available[t.credit_account_id],
                                   now)
            for account_id in ids:
                await conn.execute(_UPDATE, account_id, debited[account_id], credited[account_id])


class _InsufficientFunds(Exception):
    pass
