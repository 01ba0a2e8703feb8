"""Helpers for wallet tests: funding wallets through the ledger, a local server playing Stripe's
API, and webhook payloads signed the way Stripe signs them."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from ledger import AccountKind, Result, accounts_of
from ledger.flows.grants import grant_tokens
from server.commerce import keys as money
from server.kernel import keys

STRIPE_KEY = "sk_test_greenroom"
WEBHOOK_SECRET = "whsec_test_greenroom"
_serial = itertools.count(1)


async def fund(app: web.Application, user_id: uuid.UUID, amount: int) -> None:
    result = await grant_tokens(app[money.LEDGER], app[keys.DB], user_id, amount, "test funds", uuid.uuid4())
    assert result is Result.OK, result


async def available(app: web.Application, user_id: uuid.UUID, kind: AccountKind = AccountKind.WALLET) -> int:
    for a in await accounts_of(app[keys.DB], user_id):
        if a.kind is kind:
            return a.available
    return 0


async def platform_revenue(app: web.Application) -> int:
    value = await app[keys.DB].fetchval("SELECT credits_posted - debits_posted FROM ledger_accounts WHERE id = 1")
    return int(value)


@dataclass
class FakeStripe:
    """Plays the part of Stripe's API that Checkout needs; records every request."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer this many create calls with a 400 card error
    url: str = ""

    async def create_session(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append({"path": request.path, "headers": dict(request.headers), "form": form})
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"error": {"type": "invalid_request_error", "message": "no such price"}},
                                     status=400)
        n = next(_serial)
        session_id = f"cs_test_{n:06d}{uuid.uuid4().hex[:8]}"
        metadata = {k[len("metadata["):-1]: v for k, v in form.items() if k.startswith("metadata[")}
        return web.json_response({
            "id": session_id, "object": "checkout.session", "mode": form.get("mode"), "status": "open",
            "payment_status": "unpaid", "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "amount_total": int(str(form["line_items[0][price_data][unit_amount]"])),
            "currency": form.get("line_items[0][price_data][currency]"), "metadata": metadata,
            "client_reference_id": form.get("client_reference_id"), "payment_intent": None,
            "success_url": form.get("success_url"), "cancel_url": form.get("cancel_url"), "livemode": False,
        })


def signed(event: dict[str, Any] | bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> tuple[bytes, str]:
    """The payload and its `Stripe-Signature` header: t=..., v1=HMAC-SHA256(secret, "t.payload").
    Bytes are signed as they are (for bodies orjson will not write, e.g. integers past 64 bits)."""
    payload = event if isinstance(event, bytes) else orjson.dumps(event)
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={mac}"


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {"id": event_id or f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": kind,
            "api_version": "2025-01-27.acacia", "created": int(time.time()), "livemode": False,
            "data": {"object": obj}}


def session_object(session_id: str, user_id: uuid.UUID, tokens: int, amount_total: int, *,
                   payment_status: str = "paid", payment_intent: str | None = None) -> dict[str, Any]:
    """A Checkout Session as events carry it; its payment intent defaults to one of its own."""
    payment_intent = payment_intent or f"pi_of_{session_id}"
    return {"id": session_id, "object": "checkout.session", "mode": "payment", "status": "complete",
            "payment_status": payment_status, "amount_total": amount_total, "currency": "usd",
            "payment_intent": payment_intent, "client_reference_id": str(user_id),
            "metadata": {"purpose": "greenroom_tokens", "user_id": str(user_id), "tokens": str(tokens)}}


def charge_refunded(payment_intent: str, amount: int, amount_refunded: int) -> dict[str, Any]:
    return {"id": f"ch_{uuid.uuid4().hex[:12]}", "object": "charge", "payment_intent": payment_intent,
            "amount": amount, "amount_refunded": amount_refunded, "refunded": amount_refunded >= amount}


def dispute_created(payment_intent: str, amount: int) -> dict[str, Any]:
    return {"id": f"dp_{uuid.uuid4().hex[:12]}", "object": "dispute", "payment_intent": payment_intent,
            "charge": f"ch_{uuid.uuid4().hex[:12]}", "amount": amount, "status": "needs_response"}


async def post_event(client: TestClient, evt: dict[str, Any], secret: str = WEBHOOK_SECRET) -> Any:
    payload, header = signed(evt, secret)
    resp = await client.post("/v1/webhooks/stripe", data=payload,
                             headers={"Stripe-Signature": header, "Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 200, body
    return body["data"]
