"""Admin: wallet adjustments (audited) and the ledger audit."""

from __future__ import annotations

import uuid

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from ledger.flows.grants import REASON_MAX_CHARS
from ledger.model import INT64_MAX
from rest.framework.access import admins
from rest.framework.fields import JsonInt
from rest.framework.responses import ok
from rest.framework.router import Call, Router, idempotent_id
from rest.framework.schema import Schema, from_settings
from server.commerce import wallet
from server.commerce.ledger_errors import LEDGER_ERRORS
from server.kernel.errors import ErrorCode
from signaling.features.tips import audit as tips_audit

router = Router("admin")


class AdjustIn(Schema):
    user_id: uuid.UUID
    amount: JsonInt = Field(ge=-INT64_MAX, le=INT64_MAX, description="> 0 grants, < 0 takes back; never 0.",
                              json_schema_extra={"not": {"const": 0}, **from_settings(
                                  minimum="-admin_adjust_max_tokens", maximum="admin_adjust_max_tokens")})
    reason: str = Field(min_length=1, max_length=REASON_MAX_CHARS)
    id: uuid.UUID | None = Field(None, description="Adjustment id; default: derived from Idempotency-Key, else random.")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("reason cannot be blank")
        return v.strip()


class AdjustOut(BaseModel):
    id: str
    user_id: str
    amount: int
    reason: str
    replayed: bool
    balance: int


class CheckOut(BaseModel):
    name: str
    description: str
    ok: bool
    offending: list[str]
    offending_count: int
    detail: str


class AuditOut(BaseModel):
    ok: bool = Field(description="false when any invariant fails; the failing checks list offending ids.")
    accounts: int
    transfers: int
    holds_pending: int
    checks: list[CheckOut]


@router.post("/v1/admin/wallet/adjust", summary="Grant (from promotions) or take back tokens; audited",
             body=AdjustIn, response=AdjustOut, roles=("admin",), idempotent=True, access=admins(200),
             errors=(ErrorCode.NOT_FOUND, *LEDGER_ERRORS))
async def adjust(call: Call[AdjustIn]) -> web.StreamResponse:
    b = call.body
    adjustment_id = b.id or idempotent_id(call, "adjust")
    return ok(await wallet.adjust(call.app, call.user, user_id=b.user_id, amount=b.amount, reason=b.reason,
                                  adjustment_id=adjustment_id))


@router.get("/v1/admin/ledger/audit",
            summary="Check the ledger invariants and the stream tip records against it (200, ok: false when one fails)",
            response=AuditOut, roles=("admin",), access=admins(200))
async def ledger_audit(call: Call[None]) -> web.StreamResponse:
    return ok(await tips_audit.report(call.app))
