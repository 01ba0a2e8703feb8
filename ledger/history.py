"""A user's transactions: the transfers of their accounts, each as its effect on their balance.

One row per business event as the user sees it: a tip's fee leg is folded into its tip row
(the tipper sees `-gross` with `fee_tokens`), and every other transfer is one row. The signed
`amount` is the change of the account's `available`:
  debit side:  transfer or hold `-amount`; post of a hold `+(hold - posted)` (0 when posted in
               full: the hold had already reserved it); void `+hold`.
  credit side: transfer `+amount`; hold 0 (incoming is not available yet); post `+posted`; void 0.
An expired hold has no row of its own; its hold row says `status: expired`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from ledger.accounts import Db
from ledger.model import INT64_MAX, Code, PendingStatus, TransferFlags

_PENDING, _POST, _VOID = int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING), int(TransferFlags.VOID_PENDING)

# A tip's fee leg has `tip` in its metadata but not `gross` (that sits on the performer leg).
_FILTERS = """
AND NOT (code = 'fee' AND metadata ? 'tip' AND NOT metadata ? 'gross')
AND ($2::text[] IS NULL OR code = ANY($2::text[]))
AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)"""

_WHERE = f"(debit_account_id = ANY($1::bigint[]) OR credit_account_id = ANY($1::bigint[])) {_FILTERS}"


# Each side needs at most the rows up to the end of the asked page.
_NEWEST = "ORDER BY seq DESC LIMIT $6::bigint + $7::bigint"


def _page_sql(accounts: int) -> str:
    """Newest rows first: per account and side, an index scan on (account, seq) that stops after
    `limit + offset` rows, merged; so a page costs its size, not the account's whole history.
    A transfer between two of the user's own accounts is taken from its debit side only."""
    sides = []
    for i in range(1, accounts + 1):
        sides.append(f"(SELECT * FROM ledger_transfers WHERE debit_account_id = ($1::bigint[])[{i}] AND seq < $5 "
                     f"{_FILTERS} {_NEWEST})")
        sides.append(f"(SELECT * FROM ledger_transfers WHERE credit_account_id = ($1::bigint[])[{i}] AND seq < $5 "
                     f"AND NOT debit_account_id = ANY($1::bigint[]) {_FILTERS} {_NEWEST})")
    return f"""
SELECT t.id, t.seq, t.debit_account_id, t.credit_account_id, t.amount, t.code, t.flags,
       t.debit_balance_after, t.credit_balance_after, t.metadata::text, t.created_at, p.status, h.amount
FROM ({" UNION ALL ".join(sides)}) AS t
LEFT JOIN ledger_pending p ON p.pending_id = t.id
LEFT JOIN ledger_transfers h ON h.id = t.pending_id
ORDER BY t.seq DESC LIMIT $6 OFFSET $7"""


# A user has a wallet and maybe earnings; more accounts per call would mean a longer UNION.
ACCOUNTS_MAX = 4

_COUNT = f"SELECT count(*) FROM ledger_transfers WHERE {_WHERE}"


@dataclass(frozen=True, slots=True)
class Movement:
    id: UUID
    seq: int
    kind: str  # tip_sent, tip_received, purchase, payout_requested, ... (see `_kind`)
    code: Code
    amount: int  # signed change of `available` of the user's account
    fee: int
    balance_after: int
    account_id: int
    metadata: dict[str, Any]
    status: PendingStatus | None  # holds only
    created_at: datetime


@dataclass(frozen=True, slots=True)
class History:
    items: list[Movement]
    total: int | None  # counted in page mode only
    next_cursor: int | None


async def movements(db: Db, account_ids: Sequence[int], *, codes: Sequence[Code] | None = None,
                    since: datetime | None = None, until: datetime | None = None, cursor: int | None = None,
                    offset: int = 0, limit: int = 20, count: bool = True) -> History:
    """The accounts' transactions, newest first. Page with `offset` (and `count`), or with
    `cursor` (a `next_cursor` of the previous call: rows older than it)."""
    assert 1 <= limit <= 1000 and offset >= 0
    mine = sorted({a for a in account_ids if 0 < a <= INT64_MAX})
    if not mine:
        return History([], 0 if count else None, None)
    if len(mine) > ACCOUNTS_MAX:
        raise ValueError(f"at most {ACCOUNTS_MAX} accounts per history")
    code_values = [Code(c).value for c in codes] if codes else None
    rows = await db.fetch(_page_sql(len(mine)), mine, code_values, since, until,
                          cursor if cursor is not None else INT64_MAX, limit + 1, offset)
    items = [_movement(r, set(mine)) for r in rows[:limit]]
    total = int(await db.fetchval(_COUNT, mine, code_values, since, until)) if count else None
    return History(items, total, items[-1].seq if len(rows) > limit else None)


def _movement(r: Any, mine: set[int]) -> Movement:
    (id_, seq, debit, credit, amount, code, flags, debit_after, credit_after, meta_text, created_at, status,
     hold_amount) = tuple(r)
    meta: dict[str, Any] = orjson.loads(meta_text) if meta_text else {}
    debit_side = debit in mine
    phase = flags & (_PENDING | _POST | _VOID)
    if debit_side:
        if phase == _POST:
            effect = hold_amount - amount
        elif phase == _VOID:
            effect = hold_amount
        else:
            effect = -amount
    else:
        effect = 0 if phase in (_PENDING, _VOID) else amount
    fee = int(meta.get("fee", 0)) if "tip" in meta else 0
    if debit_side and "tip" in meta and "gross" in meta:
        effect = -int(meta["gross"])  # the whole tip, fee leg included
    return Movement(id=id_, seq=seq, kind=_kind(Code(code), phase, debit_side, meta), code=Code(code), amount=effect,
                    fee=fee, balance_after=debit_after if debit_side else credit_after,
                    account_id=debit if debit_side else credit, metadata=meta,
                    status=PendingStatus(status) if status is not None else None, created_at=created_at)


def _kind(code: Code, phase: int, debit_side: bool, meta: dict[str, Any]) -> str:
    if "tip" in meta:
        return "tip_sent" if debit_side else "tip_received"
    if code is Code.PAYOUT:
        return {_PENDING: "payout_requested", _POST: "payout_completed", _VOID: "payout_cancelled"}.get(phase, "payout")
    if code is Code.REVERSAL and isinstance(meta.get("kind"), str):
        return str(meta["kind"])  # refund_clawback, dispute_clawback, debt_settlement
    if code is Code.ADJUSTMENT:
        if meta.get("kind") == "grant":
            return "grant"
        return "adjustment_credit" if not debit_side else "adjustment_debit"
    return code.value
