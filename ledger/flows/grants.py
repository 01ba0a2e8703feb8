"""Grants and corrections: tokens from (or back to) the `promotions` account.

Positive amounts grant (`promotions -> wallet`), negative ones correct a wallet back
(`wallet -> promotions`, refused with `insufficient_funds` when the wallet does not hold them).
Code `adjustment`; the reason is kept in the transfer's metadata. Used by admin adjustments
and demo seeding; the caller chooses the id, so a retry moves nothing twice.
"""

from __future__ import annotations

from uuid import UUID

from ledger.accounts import Db, create_accounts
from ledger.engine import Engine
from ledger.model import SYSTEM_ACCOUNT_IDS, AccountKind, Code, NewAccount, Result, Transfer

PROMOTIONS = SYSTEM_ACCOUNT_IDS[AccountKind.PROMOTIONS]
REASON_MAX_CHARS = 500


async def adjust_tokens(engine: Engine, db: Db, user_id: UUID, amount: int, reason: str,
                        id: UUID, *, kind: str = "adjustment") -> Result:
    """Grant (`amount` > 0) or take back (`amount` < 0) tokens; returns the ledger's result."""
    if amount == 0:
        raise ValueError("an adjustment moves a non-zero amount")
    if len(reason) > REASON_MAX_CHARS:
        raise ValueError(f"reason is at most {REASON_MAX_CHARS} characters")
    [account] = await create_accounts(db, [NewAccount(AccountKind.WALLET, user_id)])
    wallet = account.id
    meta = {"kind": kind, "reason": reason}
    if amount > 0:
        transfer = Transfer(id, PROMOTIONS, wallet, amount, Code.ADJUSTMENT, metadata=meta)
    else:
        transfer = Transfer(id, wallet, PROMOTIONS, -amount, Code.ADJUSTMENT, metadata=meta)
    [outcome] = await engine.submit([transfer])
    return outcome.result


async def grant_tokens(engine: Engine, db: Db, user_id: UUID, amount: int, reason: str,
                       id: UUID) -> Result:
    """Give a user `amount` (> 0) promotional tokens (demo seeding, goodwill)."""
    if amount <= 0:
        raise ValueError("a grant is positive")
    return await adjust_tokens(engine, db, user_id, amount, reason, id, kind="grant")
