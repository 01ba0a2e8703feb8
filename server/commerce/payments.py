"""Stripe: Checkout Sessions for token packs, and the webhook events that credit or reverse them.

The real stripe-python client makes the calls (`STRIPE_API_BASE` points it elsewhere, e.g. at a
local server in tests) and `stripe.WebhookSignature.verify_header` verifies every webhook's signature;
the money rules live in `ledger.flows.purchases`.

Events handled (anything else is acknowledged and ignored):
- `checkout.session.completed`: credits when `payment_status` is `paid` (or
  `no_payment_required`); otherwise remembers the payment and waits for
- `checkout.session.async_payment_succeeded`: credits. Either order works: the credit's ledger id
  is derived from the session id, so the tokens arrive once.
- `checkout.session.async_payment_failed` / `checkout.session.expired`: the purchase is closed.
- `charge.refunded` (cumulative `amount_refunded`) and `charge.dispute.created` (`amount`): the
  purchase's tokens are taken back in proportion (see `ledger.flows.purchases` for the shortfall policy).
Answers: 200 when handled or ignored; 400 on a bad signature or body (including a signed one whose
`data.object` is not an object or whose amounts are not 64-bit integers: nothing is applied); 503 when
webhooks are not
configured, the ledger is unavailable or reversals are backlogged (Stripe retries non-2xx).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import stripe
from aiohttp import web

from ledger.flows import purchases
from ledger.model import INT64_MAX
from server.commerce import keys as money
from server.commerce.ledger_errors import ledger_call
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Identity
from server.kernel.settings import Settings

log = logging.getLogger("greenroom.payments")

# Marks the sessions this server created; events for other Checkout uses are ignored.
PURPOSE = "greenroom_tokens"


@dataclass(frozen=True, slots=True)
class Checkout:
    session_id: str
    url: str
    amount_total: int
    currency: str


class StripeGateway:
    """The Stripe client of one worker (None when no `STRIPE_SECRET_KEY` is set)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self.client: stripe.StripeClient | None = None
        if settings.stripe_secret_key:
            self._session = aiohttp.ClientSession()
            base: Any = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
            self.client = stripe.StripeClient(
                settings.stripe_secret_key, base_addresses=base,
                http_client=stripe.AIOHTTPClient(timeout=settings.stripe_timeout_s, session=self._session),
                max_network_retries=settings.stripe_max_network_retries)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def create_checkout(self, *, user_id: uuid.UUID, tokens: int, price: int, currency: str,
                              success_url: str, cancel_url: str, idempotency_key: str | None) -> Checkout:
        if self.client is None:
            raise ApiError(ErrorCode.UNAVAILABLE, "payments are not configured on this server")
        meta = {"purpose": PURPOSE, "user_id": str(user_id), "tokens": str(tokens)}
        params: Any = {
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": currency, "unit_amount": price,
                "product_data": {"name": f"{tokens} tokens"}}}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": str(user_id),
            "metadata": meta,
            "payment_intent_data": {"metadata": meta},
        }
        options: Any = {"idempotency_key": idempotency_key} if idempotency_key else None
        try:
            session = await self.client.v1.checkout.sessions.create_async(params, options)
        except stripe.APIConnectionError:
            log.warning("Stripe unreachable creating a checkout session", exc_info=True)
            raise ApiError(ErrorCode.UNAVAILABLE, "the payment provider is unreachable; retry shortly") from None
        except stripe.StripeError as exc:
            log.warning("Stripe refused a checkout session: %s", exc)
            raise ApiError(ErrorCode.PAYMENT_PROVIDER_ERROR, "the payment provider refused the checkout") from None
        if not session.id or not session.url:
            raise ApiError(ErrorCode.PAYMENT_PROVIDER_ERROR, "the payment provider returned no checkout URL")
        return Checkout(session.id, session.url, int(session.amount_total or price), session.currency or currency)




PAYMENTS = web.AppKey("payments", StripeGateway)  # the Stripe client of this worker

def _base_url(settings: Settings) -> str:
    return (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")


async def start_purchase(app: web.Application, buyer: Identity, pack_tokens: int,
                         idempotency_key: str | None) -> dict[str, Any]:
    """Create a Checkout Session for a token pack and record the pending purchase."""
    settings = app[keys.SETTINGS]
    packs = settings.packs
    if pack_tokens not in packs:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "no such token pack",
                       details={"field": "pack_tokens", "packs": sorted(packs)})
    base = _base_url(settings)
    key = f"buy:{buyer.user_id}:{idempotency_key}" if idempotency_key else None
    checkout = await app[PAYMENTS].create_checkout(
        user_id=buyer.user_id, tokens=pack_tokens, price=packs[pack_tokens], currency=settings.currency,
        success_url=f"{base}/?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{base}/?checkout=cancelled", idempotency_key=key)
    await purchases.open_purchase(app[keys.DB], session_id=checkout.session_id, user_id=buyer.user_id,
                                  tokens=pack_tokens, amount_total=checkout.amount_total, currency=checkout.currency)
    return {"session_id": checkout.session_id, "checkout_url": checkout.url, "tokens": pack_tokens,
            "amount": checkout.amount_total, "currency": checkout.currency, "status": "pending"}


def verify_event(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event, once its signature checks out with the webhook secret and its shape is one this
    server can read: an object whose `data.object` is an object. Anything else is a 400 before any
    state is touched (a signed body is still outside input)."""
    if not settings.stripe_webhook_secret:
        raise ApiError(ErrorCode.UNAVAILABLE, "Stripe webhooks are not configured on this server")
    try:
        # Only the signature is stripe-python's: its `construct_event` fails with a 500-worthy
        # error on bodies that are valid JSON but not objects.
        stripe.WebhookSignature.verify_header(payload, signature or "", settings.stripe_webhook_secret,
                                              stripe.Webhook.DEFAULT_TOLERANCE)
    except stripe.SignatureVerificationError:
        raise ApiError(ErrorCode.BAD_REQUEST, "invalid Stripe signature") from None
    except UnicodeDecodeError:
        raise ApiError(ErrorCode.BAD_REQUEST, "webhook body is not UTF-8") from None
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ApiError(ErrorCode.MALFORMED_JSON, "webhook body is not valid JSON") from None
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ApiError(ErrorCode.BAD_REQUEST, "not a Stripe event: `data.object` must be an object")
    return event


def _malformed(what: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, f"malformed Stripe event: {what}")


def _amount(obj: dict[str, Any], name: str) -> int | None:
    """An integer amount of the event's object, None when absent; a 400 when it is not an integer or
    is past what the ledger's bigint columns hold (orjson reads integers past 64 bits as floats)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not -INT64_MAX <= value <= INT64_MAX:
        raise _malformed(f"`{name}` is not an integer in range")
    return value


async def handle_webhook(app: web.Application, payload: bytes, signature: str | None) -> dict[str, Any]:
    """Verify and apply one webhook delivery; returns what was done (for logs and tests)."""
    settings = app[keys.SETTINGS]
    event = verify_event(settings, payload, signature)
    event_id, kind, obj = str(event.get("id", "")), str(event.get("type", "")), event["data"]["object"]
    with ledger_call():
        try:
            result = await _apply(app, event_id, kind, obj)
        except purchases.ReversalsBacklogged as exc:
            log.warning("%s", exc)
            raise ApiError(ErrorCode.UNAVAILABLE, "too many events wait for this payment; retry later") from None
    log.info("stripe event %s %s: %s", event_id, kind, result)
    return {"id": event_id, "type": kind, "result": result}


async def _apply(app: web.Application, event_id: str, kind: str, obj: dict[str, Any]) -> str:
    settings = app[keys.SETTINGS]
    engine, directory, pool = app[money.LEDGER], app[money.ACCOUNTS], app[keys.DB]
    if kind.startswith("checkout.session."):
        order = _order(obj)
        if order is None:
            return "ignored: not a token purchase"
        session_id, user_id, tokens = order
        pi = obj.get("payment_intent") if isinstance(obj.get("payment_intent"), str) else None
        paid = kind == "checkout.session.async_payment_succeeded" or (
            kind == "checkout.session.completed" and obj.get("payment_status") in ("paid", "no_payment_required"))
        if paid:
            try:
                credit = await purchases.credit_purchase(
                    engine, directory, pool, session_id=session_id, user_id=user_id, tokens=tokens,
                    amount_total=_amount_total(obj, settings, tokens),
                    currency=str(obj.get("currency") or settings.currency), payment_intent=pi,
                    reversal_attempts=settings.stripe_clawback_attempts)
            except asyncpg.ForeignKeyViolationError:
                return "ignored: unknown user"
            return "credited" if credit.credited_now else "duplicate"
        if kind == "checkout.session.completed":
            try:
                await purchases.open_purchase(pool, session_id=session_id, user_id=user_id, tokens=tokens,
                                              amount_total=_amount_total(obj, settings, tokens),
                                              currency=str(obj.get("currency") or settings.currency))
            except asyncpg.ForeignKeyViolationError:
                return "ignored: unknown user"
            if pi is not None:
                await purchases.note_payment(pool, session_id, pi)
            return "awaiting payment"
        if kind == "checkout.session.async_payment_failed":
            return "failed" if await purchases.close_unpaid(pool, session_id, "failed") else "unchanged"
        if kind == "checkout.session.expired":
            return "expired" if await purchases.close_unpaid(pool, session_id, "expired") else "unchanged"
        return "ignored"
    if kind in ("charge.refunded", "charge.dispute.created"):
        pi = obj.get("payment_intent")
        amount = _amount(obj, "amount_refunded" if kind == "charge.refunded" else "amount")
        if not isinstance(pi, str) or amount is None:
            return "ignored: no payment intent or amount"
        reversal = await purchases.reverse_purchase(
            engine, directory, pool, payment_intent=pi, reason="refund" if kind == "charge.refunded" else "dispute",
            amount=amount, event_id=event_id, attempts=settings.stripe_clawback_attempts,
            waiting_max=settings.stripe_waiting_events_max)
        if reversal.status == "reversed":
            return f"reversed {reversal.taken} taken, {reversal.shortfall} owed"
        return reversal.status
    return "ignored"


def _amount_total(obj: dict[str, Any], settings: Settings, tokens: int) -> int:
    """What the session charges (smallest currency unit); used only for a session this server
    never recorded (refunds are prorated on it). Falls back to the pack's price."""
    value = _amount(obj, "amount_total")
    if value is not None and value > 0:
        return value
    return settings.packs.get(tokens) or 1


def _order(obj: dict[str, Any]) -> tuple[str, uuid.UUID, int] | None:
    """(session id, user id, tokens) from a session this server created, else None."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or meta.get("purpose") != PURPOSE or not isinstance(obj.get("id"), str):
        return None
    try:
        user_id = uuid.UUID(str(meta.get("user_id")))
        tokens = int(str(meta.get("tokens")))
    except ValueError:
        return None
    if tokens <= 0:
        return None
    if tokens > INT64_MAX:
        raise _malformed("`metadata.tokens` is out of range")
    return obj["id"], user_id, tokens
