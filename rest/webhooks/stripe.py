"""Stripe webhooks: signature-verified events that credit purchases or reverse them (see server.commerce.payments)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from rest.framework.responses import ok
from rest.framework.router import Call, Router
from server.commerce import payments
from server.kernel.errors import ErrorCode

router = Router("webhooks")


class WebhookOut(BaseModel):
    id: str
    type: str
    result: str


@router.post("/v1/webhooks/stripe", summary="Stripe events (signed with the webhook secret)", response=WebhookOut,
             auth="public", rate="none", raw_body=True,
             # UNAVAILABLE/OVERLOADED: not configured, too many waiting events, the ledger busy (Stripe retries)
             errors=(ErrorCode.BAD_REQUEST, ErrorCode.MALFORMED_JSON, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED))
async def stripe_webhook(call: Call[bytes]) -> web.StreamResponse:
    return ok(await payments.handle_webhook(call.app, call.body, call.request.headers.get("Stripe-Signature")))
