"""Accounts and their history: create (get-or-create by kind and owner), look up, balances, transfers.

These read or create rows on any connection or pool; they never change counters (only the
engine's writer does, under row locks).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg
import orjson

from ledger.model import (
    INT64_MAX,
    PAGE_LIMIT_MAX,
    SYSTEM_ACCOUNT_IDS,
    Account,
    AccountFlags,
    AccountKind,
    Balance,
    Code,
    NewAccount,
    Page,
    PendingStatus,
    TransferFlags,
    TransferRecord,
    flags_for,
)

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection
# Accounts one create/lookup call handles; callers with more split them.
ACCOUNTS_PER_CALL_MAX = 1000

_COLUMNS = "id, kind, owner, flags, debits_pending, debits_posted, credits_pending, credits_posted, created_at"

_INSERT = """
INSERT INTO ledger_accounts (kind, owner, flags)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::smallint[])
ON CONFLICT ON CONSTRAINT ledger_accounts_kind_owner DO NOTHING"""

_BY_KIND_OWNER = f"""
SELECT {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))}
FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS u(kind, owner, n)
JOIN ledger_accounts a ON a.kind = u.kind AND a.owner IS NOT DISTINCT FROM u.owner
ORDER BY u.n"""

_BY_ID = f"""
SELECT {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))}
FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, n) JOIN ledger_accounts a ON a.id = u.id
ORDER BY u.n"""

_BY_OWNER = f"SELECT {_COLUMNS} FROM ledger_accounts WHERE owner = $1 ORDER BY id"

# Each side scans its own (account, seq) index backwards; the union keeps the newest `limit`.
_SIDE = """
(SELECT * FROM ledger_transfers
 WHERE {side}_account_id = $1 AND seq < $2
   AND ($4::text[] IS NULL OR code = ANY($4)) AND ($5::timestamptz IS NULL OR created_at >= $5)
   AND ($6::timestamptz IS NULL OR created_at < $6)
 ORDER BY seq DESC LIMIT $3)"""

_HISTORY = f"""
SELECT t.id, t.seq, t.debit_account_id, t.credit_account_id, t.amount, t.code, t.flags, t.pending_id,
       t.timeout_s, t.expires_at, t.debit_balance_after, t.credit_balance_after, t.metadata::text,
       t.created_at, p.status
FROM ({_SIDE.format(side='debit')} UNION ALL {_SIDE.format(side='credit')}) AS t
LEFT JOIN ledger_pending p ON p.pending_id = t.id
ORDER BY t.seq DESC LIMIT $3"""


async def create_accounts(db: Db, new: Sequence[NewAccount]) -> list[Account]:
    """Get or create one account per (kind, owner), returned in the order asked.

    Idempotent: asking again returns the same accounts. Flags follow from the kind (wallets,
    earnings, escrow and platform revenue can never go negative). The system accounts exist
    already (see SYSTEM_ACCOUNT_IDS); asking for them returns them.
    """
    if not 1 <= len(new) <= ACCOUNTS_PER_CALL_MAX:
        raise ValueError(f"create_accounts takes 1..{ACCOUNTS_PER_CALL_MAX} accounts, got {len(new)}")
    for n in new:
        kind = AccountKind(n.kind)
        if (kind in SYSTEM_ACCOUNT_IDS) != (n.owner is None):
            raise ValueError(f"{kind} accounts {'have no' if kind in SYSTEM_ACCOUNT_IDS else 'need an'} owner")
    kinds = [AccountKind(n.kind).value for n in new]
    owners = [n.owner for n in new]
    await db.execute(_INSERT, kinds, owners, [int(flags_for(AccountKind(k))) for k in kinds])
    accounts = [_account(r) for r in await db.fetch(_BY_KIND_OWNER, kinds, owners)]
    assert len(accounts) == len(new), "every asked account exists after the insert"
    return accounts


async def lookup_accounts(db: Db, ids: Sequence[int]) -> list[Account]:
    """The accounts among `ids` that exist, in the order asked (missing ones are left out)."""
    if len(ids) > ACCOUNTS_PER_CALL_MAX:
        raise ValueError(f"lookup_accounts takes at most {ACCOUNTS_PER_CALL_MAX} ids")
    valid = [i for i in ids if 0 < i <= INT64_MAX]
    if not valid:
        return []
    return [_account(r) for r in await db.fetch(_BY_ID, valid)]


async def accounts_of(db: Db, owner: UUID) -> list[Account]:
    """Every account an owner (user or booking) has, by id."""
    return [_account(r) for r in await db.fetch(_BY_OWNER, owner)]


async def balances(db: Db, account_id: int) -> Balance | None:
    """The account's balance figures, or None when there is no such account."""
    found = await lookup_accounts(db, [account_id])
    if not found:
        return None
    a = found[0]
    return Balance(account_id=a.id, available=a.available, reserved=a.debits_pending,
                   incoming=a.credits_pending, posted=a.credits_posted - a.debits_posted)


async def account_transfers(db: Db, account_id: int, cursor: int | None = None, limit: int = 50, *,
                            codes: Sequence[Code] | None = None, since: datetime | None = None,
                            until: datetime | None = None) -> Page:
    """Transfers debiting or crediting the account, newest first.

    `cursor` is the `next_cursor` of the previous page (None starts at the newest). Optional
    filters: `codes`, `since` (created_at >=), `until` (created_at <).
    """
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise ValueError(f"limit must be in 1..{PAGE_LIMIT_MAX}")
    if cursor is not None and cursor < 1:
        raise ValueError("cursor must be a positive seq from a previous page")
    if not 0 < account_id <= INT64_MAX:
        return Page(items=[], next_cursor=None)
    code_values = [Code(c).value for c in codes] if codes is not None else None
    rows = await db.fetch(_HISTORY, account_id, cursor if cursor is not None else INT64_MAX, limit + 1,
                          code_values, since, until)
    items = [_record(r) for r in rows[:limit]]
    next_cursor = items[-1].seq if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def _account(r: asyncpg.Record) -> Account:
    return Account(id=r[0], kind=AccountKind(r[1]), owner=r[2], flags=AccountFlags(r[3]), debits_pending=r[4],
                   debits_posted=r[5], credits_pending=r[6], credits_posted=r[7], created_at=r[8])


def _record(r: asyncpg.Record) -> TransferRecord:
    return TransferRecord(id=r[0], seq=r[1], debit_account_id=r[2], credit_account_id=r[3], amount=r[4],
                          code=Code(r[5]), flags=TransferFlags(r[6]), pending_id=r[7], timeout_s=r[8],
                          expires_at=r[9], debit_balance_after=r[10], credit_balance_after=r[11],
                          metadata=orjson.loads(r[12]) if r[12] is not None else None, created_at=r[13],
                          pending_status=PendingStatus(r[14]) if r[14] is not None else None)

