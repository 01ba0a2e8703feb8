"""Stripe webhooks: signature-verified events that credit purchases or reverse them (see server.commerce.payments)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from rest.framework.access import anyone
from rest.framework.responses import ok
from rest.framework.router import Call, Router
from server.commerce import payments
from server.kernel.errors import ErrorCode

router = Router("webhooks")


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: dict[str, Any]


class StripeEvent(BaseModel):
    """A Stripe event as this route reads it: an object whose `data.object` is an object (Stripe
    sends more, read by type). Taken only as signed with the webhook secret in `Stripe-Signature`;
    an unsigned or altered body is 400."""

    model_config = ConfigDict(extra="allow")

    data: StripeEventData


class WebhookOut(BaseModel):
    id: str
    type: str
    result: str


@router.post("/v1/webhooks/stripe", summary="Stripe events (signed with the webhook secret)", response=WebhookOut,
             body=StripeEvent, auth="public", rate="none", raw_body=True,
             access=anyone(200),  # who signed it counts, not who sends it
             # UNAVAILABLE/OVERLOADED: not configured, too many waiting events, the ledger busy (Stripe retries)
             errors=(ErrorCode.BAD_REQUEST, ErrorCode.MALFORMED_JSON, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED))
async def stripe_webhook(call: Call[bytes]) -> web.StreamResponse:
    return ok(await payments.handle_webhook(call.app, call.body, call.request.headers.get("Stripe-Signature")))
