"""Token purchases: pending purchase -> credited once -> reversed (refund, dispute) at most in full.

Knows nothing of Stripe's API or HTTP: the payment integration calls these with what a verified
event says. Every flow of one user runs under a per-user transaction lock, so the purchase row,
the user's debt and the ledger transfers it submits are decided one at a time.

Crediting: `payment_clearing -> wallet`, id derived from the session id, so duplicated and
out-of-order events (`checkout.session.completed` and `async_payment_succeeded` for the same
session, retries) credit once. If the user owes tokens, the same linked submission pays
`min(owed, tokens)` back (`wallet -> payment_clearing`, kind `debt_settlement`).

Reversal policy (refunds and disputes):
- The tokens to take back are `tokens * amount / amount_total`, rounded down, cumulative per
  purchase and capped at the purchase: a duplicate event, or a dispute after a full refund,
  takes nothing more.
- The wallet gives what it has available (never below zero: its ledger flag forbids it); the
  rest is recorded as debt (`wallet_debts`). A user with debt is restricted: no tips and no
  payouts until the next purchase settles the debt. Tokens already tipped stay with the
  performer: the platform bears that loss.
- An event for a payment whose purchase is not credited yet waits (`purchase_reversals_waiting`)
  and is applied right after the credit.
- A crash after the ledger applied a reversal but before this module recorded it is repaired
  by the retry: the derived transfer id is looked up first and its stored amount is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import asyncpg

from ledger.accounts import balances
from ledger.chain import chain_result
from ledger.directory import AccountDirectory
from ledger.engine import Engine
from ledger.flows import debts
from ledger.ids import derived_id
from ledger.model import SYSTEM_ACCOUNT_IDS, AccountKind, Code, Result, Transfer, TransferFlags

Reason = Literal["refund", "dispute"]
CLEARING = SYSTEM_ACCOUNT_IDS[AccountKind.PAYMENT_CLEARING]
# Namespace of the per-user advisory transaction lock (two-key form: namespace, hash of user).
_LOCK_NS = 0x5055


class ReversalsBacklogged(Exception):
    """Too many reversal events wait for this payment's purchase; the caller should retry later."""


class PurchaseLedgerError(Exception):
    """The ledger refused a purchase transfer that cannot fail unless something is inconsistent."""

    def __init__(self, result: Result) -> None:
        super().__init__(f"ledger refused a purchase transfer: {result}")
        self.result = result


@dataclass(frozen=True, slots=True)
class Credit:
    session_id: str
    user_id: UUID
    tokens: int
    debt_settled: int
    credited_now: bool  # False: it had been credited before (a duplicate event)
    reversals_applied: int  # waiting reversal events applied right after this credit


@dataclass(frozen=True, slots=True)
class Reversal:
    status: Literal["reversed", "duplicate", "waiting"]
    session_id: str | None
    tokens: int  # taken back by this event (from the wallet and as debt)
    taken: int
    shortfall: int  # recorded as debt


def credit_id(session_id: str) -> UUID:
    return derived_id("purchase", session_id, "credit")


def settle_id(session_id: str) -> UUID:
    return derived_id("purchase", session_id, "settle")


def reversal_id(session_id: str, target: int) -> UUID:
    """One id per cumulative level reached: a repeat of the same level is the same transfer."""
    return derived_id("purchase", session_id, "reversal", target)


async def open_purchase(db: asyncpg.Pool | asyncpg.Connection, *, session_id: str, user_id: UUID, tokens: int,
                        amount_total: int, currency: str) -> None:
    """Record a checkout the user started (idempotent per session)."""
    await db.execute(
        """INSERT INTO purchases (session_id, user_id, tokens, amount_total, currency)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO NOTHING""",
        session_id, user_id, tokens, amount_total, currency)


async def note_payment(db: asyncpg.Pool, session_id: str, payment_intent: str) -> None:
    """Remember the payment of a session (it is what refunds and disputes name)."""
    await db.execute("UPDATE purchases SET payment_intent = $2, updated_at = now() "
                     "WHERE session_id = $1 AND payment_intent IS NULL", session_id, payment_intent)


async def close_unpaid(db: asyncpg.Pool, session_id: str, status: Literal["failed", "expired"]) -> bool:
    """A checkout that will not be paid; a paid purchase is never changed by this."""
    done = await db.fetchval("UPDATE purchases SET status = $2, updated_at = now() "
                             "WHERE session_id = $1 AND status = 'pending' RETURNING true", session_id, status)
    return bool(done)


async def credit_purchase(engine: Engine, directory: AccountDirectory, pool: asyncpg.Pool, *, session_id: str,
                          user_id: UUID, tokens: int, amount_total: int, currency: str,
                          payment_intent: str | None, reversal_attempts: int) -> Credit:
    """Credit a paid checkout's tokens once (settling debt first); then apply waiting reversals.

    A session never recorded by `open_purchase` (its start crashed after Stripe created it) is
    recorded from the event's values.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _lock_user(conn, user_id)
        await open_purchase(conn, session_id=session_id, user_id=user_id, tokens=tokens,
                            amount_total=amount_total, currency=currency)
        row = await conn.fetchrow("SELECT user_id, tokens, status, payment_intent, debt_settled "
                                  "FROM purchases WHERE session_id = $1 FOR UPDATE", session_id)
        assert row is not None
        owner, tokens = row["user_id"], row["tokens"]  # what was recorded at checkout wins
        if owner != user_id:
            raise ValueError(f"session {session_id} belongs to another user")
        payment_intent = row["payment_intent"] or payment_intent
        if row["status"] == "paid":
            return Credit(session_id, owner, tokens, row["debt_settled"], False, 0)
        wallet = await directory.id(AccountKind.WALLET, owner)
        c_id, s_id = credit_id(session_id), settle_id(session_id)
        stored = await _stored_amounts(conn, [c_id, s_id])
        # After a crash between the ledger's commit and ours, the stored legs are the truth.
        settle = stored.get(s_id, 0) if c_id in stored else min(await debts.owed_for_update(conn, owner), tokens)
        legs = [Transfer(c_id, CLEARING, wallet, tokens, Code.PURCHASE,
                         TransferFlags.LINKED if settle else TransferFlags.NONE,
                         metadata={"stripe_session": session_id})]
        if settle:
            legs.append(Transfer(s_id, wallet, CLEARING, settle, Code.REVERSAL,
                                 metadata={"kind": "debt_settlement", "stripe_session": session_id}))
        result = chain_result(await engine.submit(legs))
        if result is not Result.OK and result is not Result.EXISTS:
            raise PurchaseLedgerError(result)
        if settle:
            await debts.change(conn, owner, -settle)
        await conn.execute(
            """UPDATE purchases SET status = 'paid', credited_at = now(), debt_settled = $2,
                          payment_intent = COALESCE(payment_intent, $3), updated_at = now()
                   WHERE session_id = $1""", session_id, settle, payment_intent)
    applied = 0
    if payment_intent is not None:
        applied = await _apply_waiting(engine, directory, pool, payment_intent, reversal_attempts)
    return Credit(session_id, owner, tokens, settle, True, applied)


async def reverse_purchase(engine: Engine, directory: AccountDirectory, pool: asyncpg.Pool, *,
                           payment_intent: str, reason: Reason, amount: int, event_id: str,
                           attempts: int, waiting_max: int) -> Reversal:
    """Take back the tokens of `amount` (smallest currency unit, cumulative for refunds).

    Raises ReversalsBacklogged when the event must wait but `waiting_max` events already do.
    """
    if amount <= 0:
        return Reversal("duplicate", None, 0, 0, 0)
    async with pool.acquire() as conn:
        found = await conn.fetchrow("SELECT session_id, user_id FROM purchases WHERE payment_intent = $1",
                                    payment_intent)
        if found is None:
            await _wait(conn, payment_intent, reason, amount, event_id, waiting_max)
            return Reversal("waiting", None, 0, 0, 0)
        session_id, user_id = found["session_id"], found["user_id"]
        async with conn.transaction():
            await _lock_user(conn, user_id)
            p = await conn.fetchrow("SELECT tokens, amount_total, status, reversed_tokens FROM purchases "
                                    "WHERE session_id = $1 FOR UPDATE", session_id)
            assert p is not None
            if p["status"] != "paid":
                await _wait(conn, payment_intent, reason, amount, event_id, waiting_max)
                return Reversal("waiting", session_id, 0, 0, 0)
            await conn.execute("DELETE FROM purchase_reversals_waiting WHERE stripe_event_id = $1", event_id)
            target = min(p["tokens"], p["tokens"] * amount // p["amount_total"])
            due = target - p["reversed_tokens"]
            if due <= 0:
                return Reversal("duplicate", session_id, 0, 0, 0)
            t_id = reversal_id(session_id, target)
            wallet = await directory.id(AccountKind.WALLET, user_id)
            stored = await _stored_amounts(conn, [t_id])
            taken = stored[t_id] if t_id in stored else await _take(
                engine, conn, Transfer(t_id, wallet, CLEARING, due, Code.REVERSAL,
                                       metadata={"kind": f"{reason}_clawback", "stripe_session": session_id}),
                attempts)
            shortfall = due - taken
            assert 0 <= taken <= due
            await conn.execute(
                """INSERT INTO purchase_reversals (transfer_id, session_id, user_id, reason, tokens, taken, shortfall,
                                                   stripe_event_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                t_id, session_id, user_id, reason, due, taken, shortfall, event_id)
            if shortfall:
                await debts.change(conn, user_id, shortfall)
            await conn.execute("UPDATE purchases SET reversed_tokens = $2, updated_at = now() WHERE session_id = $1",
                               session_id, target)
    return Reversal("reversed", session_id, due, taken, shortfall)


async def _take(engine: Engine, conn: asyncpg.Connection, want: Transfer, attempts: int) -> int:
    """Take up to `want.amount` from the wallet; what it has now, retried while tips race us."""
    for _ in range(attempts):
        balance = await balances(conn, want.debit_account_id)
        take = min(balance.available if balance is not None else 0, want.amount)
        if take <= 0:
            return 0
        [outcome] = await engine.submit([want._replace(amount=take)])
        if outcome.applied:
            return take
        if outcome.result is not Result.INSUFFICIENT_FUNDS:
            raise PurchaseLedgerError(outcome.result)
    return 0


async def _wait(conn: asyncpg.Connection, payment_intent: str, reason: Reason, amount: int, event_id: str,
                waiting_max: int) -> None:
    waiting = await conn.fetchval("SELECT count(*) FROM purchase_reversals_waiting WHERE payment_intent = $1",
                                  payment_intent)
    if waiting >= waiting_max:
        raise ReversalsBacklogged(f"{waiting} reversal events already wait for payment {payment_intent}")
    await conn.execute(
        """INSERT INTO purchase_reversals_waiting (stripe_event_id, payment_intent, reason, amount)
           VALUES ($1, $2, $3, $4) ON CONFLICT (stripe_event_id) DO NOTHING""",
        event_id, payment_intent, reason, amount)


async def _apply_waiting(engine: Engine, directory: AccountDirectory, pool: asyncpg.Pool, payment_intent: str,
                         attempts: int) -> int:
    rows = await pool.fetch("SELECT stripe_event_id, reason, amount FROM purchase_reversals_waiting "
                            "WHERE payment_intent = $1 ORDER BY created_at, stripe_event_id", payment_intent)
    for r in rows:
        await reverse_purchase(engine, directory, pool, payment_intent=payment_intent, reason=r["reason"],
                               amount=r["amount"], event_id=r["stripe_event_id"], attempts=attempts,
                               waiting_max=len(rows))
    return len(rows)


async def _lock_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    assert conn.is_in_transaction()
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", _LOCK_NS, user_id)


async def _stored_amounts(conn: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, int]:
    rows = await conn.fetch("SELECT id, amount FROM ledger_transfers WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r["amount"] for r in rows}
