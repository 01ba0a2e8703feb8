"""The SQL of one batch: load what it needs under row locks, write it back with set-based statements.

One batch is one transaction on the engine's connection:
  1. read the accounts of the holds it names (immutable, so no lock needed yet);
  2. lock every account it touches, `FOR UPDATE` in ascending id order (no deadlocks between
     processes, whatever their batches contain);
  3. read the transfers already stored under its ids, and the holds' states (stable now: only a
     writer holding a hold's account locks changes it);
  4. apply in memory (`apply.Batch`);
  5. one INSERT of every new transfer from `unnest`, one UPDATE of every changed account from
     `unnest` (guarded by the counters read under lock), one INSERT and one UPDATE of hold states.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import asyncpg
import orjson

from .apply import AccountState, Batch, PendingState, Stored
from .model import INT64_MAX, Code, PendingStatus

_HOLD_ACCOUNTS = """
SELECT t.debit_account_id, t.credit_account_id
FROM ledger_pending p JOIN ledger_transfers t ON t.id = p.pending_id
WHERE p.pending_id = ANY($1::uuid[])"""

_LOCK_ACCOUNTS = """
SELECT id, flags, debits_pending, debits_posted, credits_pending, credits_posted
FROM ledger_accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"""

_STORED = """
SELECT id, debit_account_id, credit_account_id, amount, code, flags, pending_id, timeout_s, metadata::text
FROM ledger_transfers WHERE id = ANY($1::uuid[])"""

_HOLDS = """
SELECT p.pending_id, t.debit_account_id, t.credit_account_id, t.amount, t.code, p.expires_at, p.status,
       p.resolved_by
FROM ledger_pending p JOIN ledger_transfers t ON t.id = p.pending_id
WHERE p.pending_id = ANY($1::uuid[])"""

# WITH ORDINALITY ... ORDER BY keeps `seq` in application order.
_INSERT_TRANSFERS = """
INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, code, flags, pending_id,
                              timeout_s, expires_at, debit_balance_after, credit_balance_after, metadata,
                              created_at)
SELECT id, d, c, a, code, f, p, t, e, da, ca, m::jsonb, $13
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::smallint[], $7::uuid[],
            $8::integer[], $9::timestamptz[], $10::bigint[], $11::bigint[], $12::text[])
     WITH ORDINALITY AS u(id, d, c, a, code, f, p, t, e, da, ca, m, n)
ORDER BY n"""

# Absolute values, guarded by the values read under lock: a mismatch means someone wrote the
# counters without the lock, and the row count says so.
_UPDATE_ACCOUNTS = """
UPDATE ledger_accounts AS a
SET debits_pending = u.dp, debits_posted = u.dpo, credits_pending = u.cp, credits_posted = u.cpo
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
            $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) AS u(id, dp, dpo, cp, cpo, odp, odpo, ocp, ocpo)
WHERE a.id = u.id AND a.debits_pending = u.odp AND a.debits_posted = u.odpo
  AND a.credits_pending = u.ocp AND a.credits_posted = u.ocpo"""

_INSERT_PENDING = """
INSERT INTO ledger_pending (pending_id, status, expires_at, resolved_by, resolved_at)
SELECT id, s, e, r, CASE WHEN s = 'pending' THEN NULL ELSE $5::timestamptz END
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::uuid[]) AS u(id, s, e, r)"""

_UPDATE_PENDING = """
UPDATE ledger_pending AS p SET status = u.s, resolved_by = u.r, resolved_at = $4
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS u(id, s, r)
WHERE p.pending_id = u.id AND p.status = 'pending'"""


def canonical_json(text: str | None) -> str | None:
    """The one spelling of a JSON value that resubmissions are compared in (sorted keys)."""
    if text is None:
        return None
    return orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS).decode()


async def load(conn: asyncpg.Connection, transfer_ids: list[UUID], pending_ids: list[UUID],
               account_ids: set[int], now: datetime) -> Batch:
    """Lock and read everything a batch needs; call inside the batch's transaction."""
    assert conn.is_in_transaction()
    wanted = set(account_ids)
    if pending_ids:
        for row in await conn.fetch(_HOLD_ACCOUNTS, pending_ids):
            wanted.add(row[0])
            wanted.add(row[1])
    # Ids outside bigint cannot exist; keeping them out keeps hostile input from failing the batch.
    lockable = sorted(i for i in wanted if 0 < i <= INT64_MAX)
    accounts: dict[int, AccountState] = {}
    for row in await conn.fetch(_LOCK_ACCOUNTS, lockable):
        accounts[row[0]] = AccountState(row[0], row[1], row[2], row[3], row[4], row[5])
    stored: dict[UUID, Stored] = {}
    for row in await conn.fetch(_STORED, transfer_ids):
        stored[row[0]] = Stored(row[0], row[1], row[2], row[3], Code(row[4]), row[5], row[6], row[7],
                                canonical_json(row[8]))
    pendings: dict[UUID, PendingState] = {}
    if pending_ids:
        for row in await conn.fetch(_HOLDS, pending_ids):
            # A hold committed by another process after step 1 has unlocked accounts: treat it as
            # not there yet, as if this batch had come first.
            if row[1] in accounts and row[2] in accounts:
                status = PendingStatus(row[6])
                pendings[row[0]] = PendingState(row[0], row[1], row[2], row[3], Code(row[4]), row[5], status,
                                                row[7], status)
    return Batch(accounts, pendings, stored, now)


async def write(conn: asyncpg.Connection, batch: Batch) -> None:
    """Write what `batch` computed; call inside the same transaction as `load`."""
    assert conn.is_in_transaction()
    now = batch.now
    if batch.rows:
        columns = list(zip(*batch.rows, strict=True))
        status = await conn.execute(_INSERT_TRANSFERS, *columns, now)
        assert status == f"INSERT 0 {len(batch.rows)}", status
    changed = batch.changed_accounts()
    if changed:
        status = await conn.execute(_UPDATE_ACCOUNTS, *_account_columns(changed))
        assert status == f"UPDATE {len(changed)}", f"account counters changed under the lock: {status}"
    new = batch.new_pendings()
    if new:
        status = await conn.execute(_INSERT_PENDING, [p.id for p in new], [p.status.value for p in new],
                                    [p.expires_at for p in new], [p.resolved_by for p in new], now)
        assert status == f"INSERT 0 {len(new)}", status
    resolved = batch.resolved_pendings()
    if resolved:
        status = await conn.execute(_UPDATE_PENDING, [p.id for p in resolved],
                                    [p.status.value for p in resolved], [p.resolved_by for p in resolved], now)
        assert status == f"UPDATE {len(resolved)}", f"hold resolved under the lock by another writer: {status}"


def _account_columns(changed: Iterable[AccountState]) -> list[list[int]]:
    columns: list[list[int]] = [[] for _ in range(9)]
    for a in changed:
        values = (a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, *a.loaded)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns
