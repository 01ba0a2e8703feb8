"""Wallet use cases on top of the ledger: balance, history, payouts, admin adjustments, audit
(the ledger's invariants and the stream tip records against it).

REST calls these; the money rules themselves live in `ledger` (tipping, purchases, payouts,
grants). What is decided here is who may do what: a payout needs a performer with no debt (and,
once KYC exists, a verified one: the check goes into `request_payout` beside the debt check),
at least `payout_min_tokens`; an adjustment needs an admin and is written to the audit log.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from ledger import AccountKind, Code, Result, accounts_of
from ledger.flows import debts
from ledger.flows.grants import adjust_tokens
from ledger.flows.payouts import Payout, Status, get_payout, list_payouts, request_payout, resolve_payout
from ledger.history import Movement, movements
from server.commerce import keys as money
from server.commerce.ledger_errors import ledger_call, ledger_error, require_applied
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from server.platform import audit_log

_DESCRIPTIONS = {
    "tip_sent": "Tip to performer",
    "tip_received": "Tip received",
    "purchase": "Token purchase",
    "refund_clawback": "Tokens taken back after a refund",
    "dispute_clawback": "Tokens taken back after a payment dispute",
    "debt_settlement": "Owed tokens settled from a purchase",
    "grant": "Tokens granted",
    "adjustment_credit": "Adjustment",
    "adjustment_debit": "Adjustment",
    "payout_requested": "Payout requested",
    "payout_completed": "Payout sent",
    "payout_cancelled": "Payout rejected; tokens returned",
}


async def balance(app: web.Application, user: Identity) -> dict[str, Any]:
    settings = app[keys.SETTINGS]
    db = app[keys.DB]
    by_kind = {a.kind: a for a in await accounts_of(db, user.user_id)}
    wallet, earnings = by_kind.get(AccountKind.WALLET), by_kind.get(AccountKind.EARNINGS)
    owed = await debts.owed(db, user.user_id)
    out: dict[str, Any] = {
        "token_balance": wallet.available if wallet else 0,
        "reserved_balance": wallet.reserved if wallet else 0,
        "currency_code": settings.currency.upper(),
        "conversion_rate": settings.tokens_per_currency_unit,
        "owed_tokens": owed,
        "restricted": owed > 0,
    }
    if earnings is not None or user.role == "performer":
        out["earnings"] = {"available": earnings.available if earnings else 0,
                           "reserved": earnings.reserved if earnings else 0}
    return out


async def transactions(app: web.Application, user: Identity, *, codes: list[Code] | None, since: datetime | None,
                       until: datetime | None, cursor: int | None, page: int,
                       per_page: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The user's wallet and earnings history; page/per_page with a total, or `cursor` mode."""
    db = app[keys.DB]
    mine = {a.id: a.kind for a in await accounts_of(db, user.user_id)
            if a.kind in (AccountKind.WALLET, AccountKind.EARNINGS)}
    history = await movements(db, list(mine), codes=codes, since=since, until=until, cursor=cursor,
                              offset=0 if cursor is not None else (page - 1) * per_page, limit=per_page,
                              count=cursor is None)
    rate = app[keys.SETTINGS].tokens_per_currency_unit
    items = [_transaction(m, mine[m.account_id], rate) for m in history.items]
    meta: dict[str, Any] = {"per_page": per_page, "next_cursor": history.next_cursor}
    if history.total is not None:
        meta.update(page=page, total=history.total, pages=(history.total + per_page - 1) // per_page)
    return items, meta


def _transaction(m: Movement, account: AccountKind, rate: int) -> dict[str, Any]:
    description = _DESCRIPTIONS.get(m.kind, m.kind.replace("_", " ").capitalize())
    reason = m.metadata.get("reason")
    if isinstance(reason, str) and reason:
        description = f"{description}: {reason}"
    return {
        "id": str(m.id),
        "transaction_type": m.kind,
        "amount_tokens": m.amount,
        "amount_currency": str((Decimal(m.amount) / rate).quantize(Decimal("0.01"))),
        "fee_tokens": m.fee,
        "balance_after": m.balance_after,
        "description": description,
        "message": m.metadata.get("message"),
        "reference": m.metadata.get("tip") or m.metadata.get("stripe_session"),
        "account": account.value,
        "code": m.code.value,
        "status": m.status.value if m.status is not None else None,
        "created_at": m.created_at.isoformat(),
    }


def payout_out(p: Payout) -> dict[str, Any]:
    out = asdict(p)
    for key in ("id", "user_id", "resolved_by"):
        out[key] = str(out[key]) if out[key] is not None else None
    for key in ("created_at", "expires_at", "resolved_at"):
        out[key] = out[key].isoformat() if out[key] is not None else None
    return out


async def request_user_payout(app: web.Application, user: Identity, amount: int,
                              payout_id: uuid.UUID) -> tuple[dict[str, Any], bool]:
    """Hold earnings for a payout; returns the request and whether it was new."""
    settings = app[keys.SETTINGS]
    if amount < settings.payout_min_tokens:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"the smallest payout is {settings.payout_min_tokens} tokens",
                       details={"field": "amount", "min": settings.payout_min_tokens})
    owed = await debts.owed(app[keys.DB], user.user_id)
    if owed:
        raise ApiError(ErrorCode.WALLET_RESTRICTED, "your account owes tokens from a reversed purchase",
                       details={"owed_tokens": owed})
    with ledger_call():
        requested = await request_payout(app[money.LEDGER], app[money.ACCOUNTS], app[keys.DB],
                                         payout_id=payout_id, user_id=user.user_id, amount=amount,
                                         timeout_s=settings.payout_hold_timeout_s)
    require_applied(requested.result)
    assert requested.payout is not None
    return payout_out(requested.payout), requested.result is Result.OK


async def decide_payout(app: web.Application, admin: Identity, payout_id: uuid.UUID, *, approve: bool,
                        note: str) -> dict[str, Any]:
    """Approve (post) or reject (void) a pending request; CONFLICT once it is resolved."""
    db = app[keys.DB]
    current = await get_payout(db, payout_id)
    if current is None:
        raise not_found("payout request")
    if current.status != "pending":
        raise ApiError(ErrorCode.CONFLICT, f"this payout request is already {current.status}",
                       details={"status": current.status})
    with ledger_call():
        result, payout = await resolve_payout(app[money.LEDGER], db, payout_id, approve=approve,
                                              actor=admin.user_id, note=note)
    if result is not Result.OK and result is not Result.EXISTS:
        error = ledger_error(result)
        if payout is not None:
            error.details = {**(error.details or {}), "status": payout.status}
        raise error
    assert payout is not None
    await audit_log.record(db, id=payout_id, actor_id=admin.user_id,
                           action="payout.approve" if approve else "payout.reject", target_user_id=payout.user_id,
                           details={"amount": payout.amount, "note": note})
    return payout_out(payout)


async def payouts_page(app: web.Application, viewer: Identity, *, user_id: uuid.UUID | None, status: Status | None,
                       page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
    """A user's own requests; an admin sees everyone's (optionally one user's)."""
    if not viewer.is_admin:
        if user_id is not None and user_id != viewer.user_id:
            raise forbidden("you may list only your own payout requests")
        user_id = viewer.user_id
    items, total = await list_payouts(app[keys.DB], user_id=user_id, status=status, page=page, per_page=per_page)
    return [payout_out(p) for p in items], total


async def adjust(app: web.Application, admin: Identity, *, user_id: uuid.UUID, amount: int, reason: str,
                 adjustment_id: uuid.UUID) -> dict[str, Any]:
    """Grant (> 0, from promotions) or correct (< 0, back to promotions) a user's wallet; audited."""
    settings = app[keys.SETTINGS]
    if amount == 0 or abs(amount) > settings.admin_adjust_max_tokens:
        raise ApiError(ErrorCode.VALIDATION_ERROR,
                       f"amount must be non-zero and at most {settings.admin_adjust_max_tokens} "
                       "tokens either way", details={"field": "amount", "max": settings.admin_adjust_max_tokens})
    db = app[keys.DB]
    if await db.fetchval("SELECT true FROM users WHERE id = $1", user_id) is None:
        raise not_found("user")
    with ledger_call():
        result = await adjust_tokens(app[money.LEDGER], db, user_id, amount, reason, adjustment_id)
    require_applied(result)
    await audit_log.record(db, id=adjustment_id, actor_id=admin.user_id, action="wallet.adjust",
                           target_user_id=user_id, details={"amount": amount, "reason": reason})
    return {"id": str(adjustment_id), "user_id": str(user_id), "amount": amount, "reason": reason,
            "replayed": result is Result.EXISTS, "balance": await balance_of(app, user_id)}


async def balance_of(app: web.Application, user_id: uuid.UUID) -> int:
    wallet = [a for a in await accounts_of(app[keys.DB], user_id) if a.kind is AccountKind.WALLET]
    return wallet[0].available if wallet else 0
