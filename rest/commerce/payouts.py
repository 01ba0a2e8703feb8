"""Payouts: performers request, everyone lists their own, admins list all and approve or reject."""

from __future__ import annotations

import uuid

from aiohttp import web
from pydantic import BaseModel, Field

from ledger.flows.payouts import Status
from ledger.model import INT64_MAX
from rest.framework.access import Access, admins, owner_or_admin
from rest.framework.fields import JsonInt
from rest.framework.params import uuid_param
from rest.framework.responses import ok, page_meta
from rest.framework.router import Call, Router, idempotent_id
from rest.framework.schema import PageQuery, Schema, from_settings
from server.commerce import wallet
from server.commerce.ledger_errors import LEDGER_ERRORS
from server.kernel.errors import ErrorCode

router = Router("payouts")

NOTE_MAX = 500
PAYOUT = {"id": uuid_param("payout request")}


class PayoutIn(Schema):
    amount: JsonInt = Field(ge=1, le=INT64_MAX, json_schema_extra=from_settings(minimum="payout_min_tokens"))
    id: uuid.UUID | None = Field(None, description="Request id; default: derived from Idempotency-Key, else random.")


class PayoutOut(BaseModel):
    id: str
    user_id: str
    amount: int
    status: Status
    created_at: str
    expires_at: str | None
    resolved_at: str | None
    resolved_by: str | None
    note: str


class PayoutQuery(PageQuery):
    status: Status | None = None
    user_id: uuid.UUID | None = Field(None, description="Admins: one user's requests.")


class DecisionIn(Schema):
    note: str = Field("", max_length=NOTE_MAX)


@router.post("/v1/payouts/request", summary="Request a payout of earnings (held until an admin decides)",
             body=PayoutIn, response=PayoutOut, status=201, other_statuses=(200,), roles=("performer",),
             access=Access.every(201, anonymous=401, viewer=403, admin=403),  # any performer, of its earnings
             rate="payments", idempotent=True, errors=(ErrorCode.WALLET_RESTRICTED, *LEDGER_ERRORS))
async def request(call: Call[PayoutIn]) -> web.StreamResponse:
    payout_id = call.body.id or idempotent_id(call, "payout")
    payout, new = await wallet.request_user_payout(call.app, call.user, call.body.amount, payout_id)
    return ok(payout, status=201 if new else 200)


@router.get("/v1/payouts/requests", summary="Payout requests: your own; admins see all (filter by user, status)",
            query=PayoutQuery, response=PayoutOut, list_response=True, errors=(ErrorCode.PERMISSION_DENIED,),
            access=owner_or_admin(200))  # ?user_id= the owner: another account's list is 403
async def list_requests(call: Call[None]) -> web.StreamResponse:
    q: PayoutQuery = call.query
    items, total = await wallet.payouts_page(call.app, call.user, user_id=q.user_id, status=q.status, page=q.page,
                                             per_page=q.per_page)
    return ok(items, meta=page_meta(q.page, q.per_page, total))


@router.post("/v1/admin/payouts/{id}/approve", summary="Approve a pending payout request (its tokens leave)",
             params=PAYOUT, body=DecisionIn, response=PayoutOut, roles=("admin",), errors=LEDGER_ERRORS,
             access=admins(200))  # not the requester either
async def approve(call: Call[DecisionIn]) -> web.StreamResponse:
    return ok(await wallet.decide_payout(call.app, call.user, call.path.uuid("id"), approve=True, note=call.body.note))


@router.post("/v1/admin/payouts/{id}/reject", summary="Reject a pending payout request (its tokens return)",
             params=PAYOUT, body=DecisionIn, response=PayoutOut, roles=("admin",), errors=LEDGER_ERRORS,
             access=admins(200))
async def reject(call: Call[DecisionIn]) -> web.StreamResponse:
    return ok(await wallet.decide_payout(call.app, call.user, call.path.uuid("id"), approve=False, note=call.body.note))
