"""Payouts: a performer asks for earnings to be paid out; an admin approves or rejects.

A request is a hold (`earnings -> payment_clearing`, code `payout`, PENDING) whose id is the
request's id: the earnings are reserved at once and can neither be spent twice nor requested
twice. Approving posts the hold (the tokens leave to the outside world, where the money is
sent); rejecting voids it (they return to `available`). An unresolved request expires after
its timeout and the sweeper releases it. The request's status is the hold's status, read from
the ledger, so the two cannot disagree.

Who may ask (performers, no debt, and once KYC exists: verified) is the caller's rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from ledger.accounts import Db
from ledger.directory import AccountDirectory
from ledger.engine import Engine
from ledger.ids import derived_id
from ledger.model import SYSTEM_ACCOUNT_IDS, AccountKind, Code, Result, Transfer, TransferFlags

Status = Literal["pending", "approved", "rejected", "expired"]
# The hold's status (ledger_pending) as a payout status.
_STATUS: dict[str, Status] = {"pending": "pending", "posted": "approved", "voided": "rejected", "expired": "expired"}
_BY_STATUS: dict[Status, str] = {v: k for k, v in _STATUS.items()}
CLEARING = SYSTEM_ACCOUNT_IDS[AccountKind.PAYMENT_CLEARING]

# A hold past its expiry is expired even before the sweeper has released it (it can no longer be posted).
_STATUS_SQL = "CASE WHEN p.status = 'pending' AND p.expires_at <= now() THEN 'expired' ELSE p.status END"
_SELECT = f"""
SELECT r.id, r.user_id, r.amount, r.created_at, r.resolved_by, r.note, {_STATUS_SQL} AS status, p.resolved_at,
       p.expires_at
FROM payout_requests r JOIN ledger_pending p ON p.pending_id = r.id"""


@dataclass(frozen=True, slots=True)
class Payout:
    id: UUID
    user_id: UUID
    amount: int
    status: Status
    created_at: datetime
    expires_at: datetime | None
    resolved_at: datetime | None
    resolved_by: UUID | None
    note: str


@dataclass(frozen=True, slots=True)
class Requested:
    result: Result  # OK, EXISTS (the same request again), or why the hold was refused
    payout: Payout | None


def approve_id(payout_id: UUID) -> UUID:
    return derived_id("payout", payout_id, "approve")


def reject_id(payout_id: UUID) -> UUID:
    return derived_id("payout", payout_id, "reject")


async def request_payout(engine: Engine, directory: AccountDirectory, db: asyncpg.Pool, *, payout_id: UUID,
                         user_id: UUID, amount: int, timeout_s: int) -> Requested:
    """Hold `amount` of the user's earnings for a payout. A crash after the hold but before the
    request row leaves a hold that expires by itself; retrying the same id records the row."""
    earnings = await directory.id(AccountKind.EARNINGS, user_id)
    [outcome] = await engine.submit([Transfer(payout_id, earnings, CLEARING, amount, Code.PAYOUT,
                                              TransferFlags.PENDING, timeout_s=timeout_s)])
    if not outcome.applied:
        return Requested(outcome.result, None)
    await db.execute("INSERT INTO payout_requests (id, user_id, amount) VALUES ($1, $2, $3) "
                     "ON CONFLICT (id) DO NOTHING", payout_id, user_id, amount)
    payout = await get_payout(db, payout_id)
    assert payout is not None
    return Requested(outcome.result, payout)


async def resolve_payout(engine: Engine, db: asyncpg.Pool, payout_id: UUID, *, approve: bool, actor: UUID,
                         note: str = "") -> tuple[Result, Payout | None]:
    """Post (approve) or void (reject) the request's hold. Returns the ledger's result:
    OK, EXISTS (the same decision again), PENDING_ALREADY_POSTED / _VOIDED, PENDING_EXPIRED, or
    PENDING_NOT_FOUND when there is no such request."""
    if await get_payout(db, payout_id) is None:
        return Result.PENDING_NOT_FOUND, None
    flag = TransferFlags.POST_PENDING if approve else TransferFlags.VOID_PENDING
    t_id = approve_id(payout_id) if approve else reject_id(payout_id)
    [outcome] = await engine.submit([Transfer(t_id, 0, 0, 0, Code.PAYOUT, flag, pending_id=payout_id)])
    if outcome.applied:
        await db.execute("UPDATE payout_requests SET resolved_by = $2, note = $3 WHERE id = $1 AND resolved_by IS NULL",
                         payout_id, actor, note)
    return outcome.result, await get_payout(db, payout_id)


async def get_payout(db: Db, payout_id: UUID) -> Payout | None:
    row = await db.fetchrow(_SELECT + " WHERE r.id = $1", payout_id)
    return _payout(row) if row is not None else None


async def list_payouts(db: Db, *, user_id: UUID | None, status: Status | None, page: int,
                       per_page: int) -> tuple[list[Payout], int]:
    """Requests newest first, optionally one user's and/or one status; and the total count."""
    where = f"($1::uuid IS NULL OR r.user_id = $1) AND ($2::text IS NULL OR {_STATUS_SQL} = $2)"
    args = (user_id, _BY_STATUS[status] if status is not None else None)
    rows = await db.fetch(f"{_SELECT} WHERE {where} ORDER BY r.created_at DESC, r.id LIMIT $3 OFFSET $4",
                          *args, per_page, (page - 1) * per_page)
    total = await db.fetchval(
        f"SELECT count(*) FROM payout_requests r JOIN ledger_pending p ON p.pending_id = r.id WHERE {where}", *args)
    return [_payout(r) for r in rows], int(total)


def _payout(r: asyncpg.Record) -> Payout:
    return Payout(id=r["id"], user_id=r["user_id"], amount=r["amount"], status=_STATUS[r["status"]],
                  created_at=r["created_at"], expires_at=r["expires_at"], resolved_at=r["resolved_at"],
                  resolved_by=r["resolved_by"], note=r["note"])
