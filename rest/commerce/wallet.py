"""Wallet: balance, transactions, token packs and purchase, and tips outside a room (`/v1/wallet/transfer`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, get_args

from aiohttp import web
from pydantic import BaseModel, Field

from ledger import Code
from ledger.model import INT64_MAX
from rest.framework.access import Access, anyone, signed_in
from rest.framework.fields import DateTime, JsonInt
from rest.framework.idempotency import idempotency_key
from rest.framework.responses import ok
from rest.framework.router import Call, Router, idempotent_id
from rest.framework.schema import PageQuery, Schema, from_settings
from server.commerce import payments, wallet
from server.commerce.ledger_errors import LEDGER_ERRORS
from server.kernel import keys
from server.kernel.errors import ErrorCode
from signaling.features.tips.tips import SCHEMA_MESSAGE_MAX, send_tip

router = Router("wallet")

# The ledger's codes as a Literal, not the enum: query parameters are documented inline (no $defs).
CodeName = Literal["purchase", "tip", "fee", "booking", "refund", "payout", "reversal", "adjustment"]
assert set(get_args(CodeName)) == {c.value for c in Code}, "CodeName lists exactly the ledger's codes"


class BalanceOut(BaseModel):
    token_balance: int
    reserved_balance: int
    currency_code: str
    conversion_rate: int = Field(description="Tokens per unit of `currency_code`.")
    owed_tokens: int = Field(description="Tokens owed after a refund or dispute; while > 0 the wallet is restricted.")
    restricted: bool
    earnings: dict[str, int] | None = Field(None, description="Performers: `available` and `reserved` earnings.")


class TransactionsQuery(PageQuery):
    cursor: int | None = Field(None, ge=1, le=INT64_MAX, description="`meta.next_cursor` of the previous page.")
    code: CodeName | None = Field(None, description="Only transfers of this ledger code.")
    since: DateTime | None = Field(None, description="created_at >= since (ISO 8601 with offset).")
    until: DateTime | None = Field(None, description="created_at < until.")


class TransactionOut(BaseModel):
    id: str
    transaction_type: str
    amount_tokens: int = Field(description="Signed change of the account's available balance.")
    amount_currency: str
    fee_tokens: int
    balance_after: int
    description: str
    message: str | None
    reference: str | None
    account: str
    code: str
    status: str | None
    created_at: str


class TransferIn(Schema):
    to_user_id: uuid.UUID
    amount: JsonInt = Field(ge=1, le=INT64_MAX, json_schema_extra=from_settings(maximum="tip_max_tokens"))
    message: str = Field("", max_length=SCHEMA_MESSAGE_MAX,
                         json_schema_extra=from_settings(maxLength="tip_message_max_chars"))
    id: uuid.UUID | None = Field(None, description="Tip id; default: derived from Idempotency-Key, else random.")
    stream_id: uuid.UUID | None = Field(None, description="Credit the tip to this live stream of the performer.")


class TipOut(BaseModel):
    id: str
    to_user_id: str
    stream_id: str | None
    amount: int
    fee: int
    performer_share: int
    message: str
    outcome: str
    replayed: bool


class BuyIn(Schema):
    pack_tokens: JsonInt = Field(ge=1, le=INT64_MAX, description="One of the packs on sale (`/v1/wallet/packs`).",
                                   json_schema_extra=from_settings(enum="token_packs"))


class BuyOut(BaseModel):
    session_id: str
    checkout_url: str
    tokens: int
    amount: int
    currency: str
    status: str


class PackOut(BaseModel):
    tokens: int
    price: int
    currency: str


@router.get("/v1/wallet/balance", summary="Your token balance, reserved tokens and debt", response=BalanceOut,
            access=signed_in(200))
async def get_balance(call: Call[None]) -> web.StreamResponse:
    return ok(await wallet.balance(call.app, call.user))


@router.get("/v1/wallet/transactions", summary="Your wallet and earnings history, newest first",
            query=TransactionsQuery, response=TransactionOut, list_response=True, access=signed_in(200))
async def list_transactions(call: Call[None]) -> web.StreamResponse:
    q: TransactionsQuery = call.query
    since: datetime | None = q.since
    items, meta = await wallet.transactions(call.app, call.user, codes=[Code(q.code)] if q.code else None, since=since,
                                            until=q.until, cursor=q.cursor, page=q.page, per_page=q.per_page)
    return ok(items, meta=meta)


@router.post("/v1/wallet/transfer", summary="Tip a performer (outside a room, or credited to their live stream)",
             body=TransferIn, response=TipOut, status=201, other_statuses=(200,), rate="tips", idempotent=True,
             access=Access.every(201, anonymous=401, owner=403),  # to the owner: nobody tips themselves
             errors=(ErrorCode.NOT_FOUND, ErrorCode.CONFLICT, ErrorCode.PERMISSION_DENIED, ErrorCode.BANNED,
                     ErrorCode.AUTHENTICATION_REQUIRED, ErrorCode.WALLET_RESTRICTED, *LEDGER_ERRORS))
async def transfer(call: Call[TransferIn]) -> web.StreamResponse:
    b = call.body
    tip_id = b.id or idempotent_id(call, "tip")
    result = await send_tip(call.app, call.user, tip_id=tip_id, amount=b.amount, message=b.message,
                            to_user_id=b.to_user_id, stream_id=b.stream_id)
    return ok(result, status=200 if result["replayed"] else 201)


@router.get("/v1/wallet/packs", summary="Token packs on sale", response=PackOut, list_response=True, auth="optional",
            access=anyone(200))
async def list_packs(call: Call[None]) -> web.StreamResponse:
    settings = call.app[keys.SETTINGS]
    return ok([{"tokens": t, "price": p, "currency": settings.currency} for t, p in sorted(settings.packs.items())])


@router.post("/v1/wallet/buy", summary="Start buying a token pack: a Stripe Checkout Session to pay on",
             body=BuyIn, response=BuyOut, status=201, rate="payments", idempotent=True, access=signed_in(201),
             errors=(ErrorCode.UNAVAILABLE, ErrorCode.PAYMENT_PROVIDER_ERROR))
async def buy(call: Call[BuyIn]) -> web.StreamResponse:
    return ok(await payments.start_purchase(call.app, call.user, call.body.pack_tokens, idempotency_key(call.request)),
              status=201)

