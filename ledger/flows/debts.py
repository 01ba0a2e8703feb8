"""Wallet debts: tokens a user owes after a refund or dispute took back more than the wallet held.

A user with debt is restricted (no tips, no payouts) until a later purchase settles it; see
`purchases`. Rows change only inside the purchase flows' per-user transaction lock.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from ledger.accounts import Db


async def owed(db: Db, user_id: UUID) -> int:
    """Tokens the user owes (0 when none)."""
    value = await db.fetchval("SELECT owed FROM wallet_debts WHERE user_id = $1", user_id)
    return int(value or 0)


async def owed_for_update(conn: asyncpg.Connection, user_id: UUID) -> int:
    assert conn.is_in_transaction()
    value = await conn.fetchval("SELECT owed FROM wallet_debts WHERE user_id = $1 FOR UPDATE", user_id)
    return int(value or 0)


async def change(conn: asyncpg.Connection, user_id: UUID, delta: int) -> int:
    """Add `delta` (negative settles) to the user's debt; return the new debt (never negative)."""
    assert conn.is_in_transaction()
    if delta < 0:
        # An UPDATE: the CHECK (owed >= 0) would refuse a negative row proposed by an upsert.
        new = await conn.fetchval("UPDATE wallet_debts SET owed = owed + $2, updated_at = now() "
                                  "WHERE user_id = $1 RETURNING owed", user_id, delta)
    else:
        new = await conn.fetchval(
            """INSERT INTO wallet_debts (user_id, owed) VALUES ($1, $2)
               ON CONFLICT (user_id) DO UPDATE SET owed = wallet_debts.owed + EXCLUDED.owed, updated_at = now()
               RETURNING owed""", user_id, delta)
    assert new is not None and new >= 0, f"debt of {user_id} would be {new}"
    return int(new)
