"""Purchases through Stripe: the real stripe-python client against a local server playing Stripe's
API, and webhooks signed with a test secret and verified by `stripe.WebhookSignature.verify_header`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ledger import AccountKind, Code, Result, Transfer, TransferFlags
from ledger.flows import debts, purchases
from server.commerce import keys as money
from server.kernel import keys
from server.kernel.settings import Settings
from tests.support.factories import TestUser, make_user
from tests.support.wallet_support import (
    STRIPE_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    available,
    charge_refunded,
    dispute_created,
    event,
    fund,
    post_event,
    session_object,
    signed,
)

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    api = web.Application()
    api.router.add_post("/v1/checkout/sessions", fake.create_session)
    server = TestServer(api, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


@pytest.fixture
def stripe_client(aiohttp_client: Any, make_settings: Callable[..., Settings],
                  make_app: Callable[[Settings], web.Application],
                  fake_stripe: FakeStripe) -> Callable[..., Awaitable[TestClient]]:
    async def make(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {"stripe_secret_key": STRIPE_KEY, "stripe_webhook_secret": WEBHOOK_SECRET,
                                  "stripe_api_base": fake_stripe.url, "stripe_max_network_retries": 0}
        values.update(overrides)
        client: TestClient = await aiohttp_client(make_app(make_settings(**values)))
        return client

    return make


async def _buy(client: TestClient, user: TestUser, tokens: int = 500, key: str | None = None) -> dict[str, Any]:
    resp = await client.post("/v1/wallet/buy", json={"pack_tokens": tokens}, headers=user.keyed(key))
    body = await resp.json()
    assert resp.status == 201, body
    data: dict[str, Any] = body["data"]
    return data


async def _paid(client: TestClient, user: TestUser, tokens: int = 500, pi: str | None = None) -> tuple[str, str]:
    """Buy a pack and deliver its `checkout.session.completed` (paid); returns (session id, payment intent)."""
    session = await _buy(client, user, tokens)
    pi = pi or f"pi_{uuid.uuid4().hex[:12]}"
    result = await post_event(client, event("checkout.session.completed", session_object(
        session["session_id"], user.id, tokens, session["amount"], payment_intent=pi)))
    assert result["result"] == "credited"
    return session["session_id"], pi


async def test_buy_creates_a_checkout_session_through_stripe(stripe_client: MakeClient,
                                                            fake_stripe: FakeStripe) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    data = await _buy(client, user, 500, key="buy-1")
    assert data["checkout_url"].startswith("https://checkout.stripe.com/") and data["session_id"].startswith("cs_test_")
    assert (data["tokens"], data["amount"], data["currency"], data["status"]) == (500, 899, "usd", "pending")
    [req] = fake_stripe.requests
    form = req["form"]
    assert req["headers"]["Authorization"] == f"Bearer {STRIPE_KEY}"
    assert req["headers"]["Idempotency-Key"] == f"buy:{user.id}:buy-1"
    assert form["mode"] == "payment" and form["line_items[0][price_data][unit_amount]"] == "899"
    assert form["metadata[user_id]"] == str(user.id) and form["metadata[tokens]"] == "500"
    assert form["payment_intent_data[metadata][user_id]"] == str(user.id)
    assert "{CHECKOUT_SESSION_ID}" in form["success_url"]
    row = await client.app[keys.DB].fetchrow("SELECT * FROM purchases WHERE session_id = $1", data["session_id"])
    assert (row["user_id"], row["tokens"], row["amount_total"], row["status"]) == (user.id, 500, 899, "pending")
    # A replay with the same key answers from the stored response, without a second Stripe call.
    again = await _buy(client, user, 500, key="buy-1")
    assert again == data and len(fake_stripe.requests) == 1
    packs = await (await client.get("/v1/wallet/packs")).json()
    assert [p["tokens"] for p in packs["data"]] == [100, 500, 1000, 5000]


@pytest.mark.parametrize("pack", [7, 0, -100, 10.5, "500", 2**64, None])
async def test_buy_refuses_unknown_packs(stripe_client: MakeClient, fake_stripe: FakeStripe, pack: Any) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    resp = await client.post("/v1/wallet/buy", json={"pack_tokens": pack}, headers=user.headers)
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "VALIDATION_ERROR"
    assert fake_stripe.requests == []


async def test_buy_when_stripe_fails_or_is_not_configured(stripe_client: MakeClient, fake_stripe: FakeStripe,
                                                          client: TestClient) -> None:
    sc = await stripe_client()
    user = await make_user(sc.app)
    fake_stripe.fail_next = 1
    resp = await sc.post("/v1/wallet/buy", json={"pack_tokens": 100}, headers=user.headers)
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "PAYMENT_PROVIDER_ERROR"
    assert await sc.app[keys.DB].fetchval("SELECT count(*) FROM purchases") == 0
    # The default client has no Stripe key and no webhook secret.
    plain = await make_user(client.app)
    resp = await client.post("/v1/wallet/buy", json={"pack_tokens": 100}, headers=plain.headers)
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "UNAVAILABLE"
    payload, header = signed(event("checkout.session.completed", {}))
    resp = await client.post("/v1/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
    assert resp.status == 503


async def test_webhook_signature_is_verified(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    session = await _buy(client, user, 100)
    evt = event("checkout.session.completed", session_object(session["session_id"], user.id, 100, 199))
    payload, header = signed(evt)
    stale_payload, stale_header = signed(evt, at=int(time.time()) - 3600)
    forged_payload, forged_header = signed(evt, secret="whsec_wrong")
    cases = [
        (payload, None),
        (payload, "garbage"),
        (payload, header.replace("v1=", "v1=00")),
        (payload.replace(b'"tokens":"100"', b'"tokens":"5000"'), header),  # tampered body
        (stale_payload, stale_header),
        (forged_payload, forged_header),
    ]
    for body, sig in cases:
        headers = {"Stripe-Signature": sig} if sig is not None else {}
        resp = await client.post("/v1/webhooks/stripe", data=body, headers=headers)
        assert resp.status == 400, (sig, await resp.text())
        assert (await resp.json())["error"]["code"] == "BAD_REQUEST"
    assert await available(client.app, user.id) == 0
    assert (await post_event(client, evt))["result"] == "credited"
    assert await available(client.app, user.id) == 100


async def test_completed_credits_once_whatever_the_duplicates_and_order(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    session = await _buy(client, user, 1000)
    sid, amount = session["session_id"], session["amount"]
    paid = event("checkout.session.completed", session_object(sid, user.id, 1000, amount))
    assert (await post_event(client, paid))["result"] == "credited"
    assert (await post_event(client, paid))["result"] == "duplicate"  # the same event delivered again
    late = event("checkout.session.async_payment_succeeded", session_object(sid, user.id, 1000, amount))
    assert (await post_event(client, late))["result"] == "duplicate"
    assert await available(client.app, user.id) == 1000
    assert await client.app[keys.DB].fetchval("SELECT status FROM purchases WHERE session_id = $1", sid) == "paid"
    rows = (await (await client.get("/v1/wallet/transactions", headers=user.headers)).json())["data"]
    assert [(r["transaction_type"], r["amount_tokens"], r["reference"]) for r in rows] == [("purchase", 1000, sid)]


async def test_async_payment_out_of_order(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    # Success arrives before the (unpaid) completion: credited on success, completion changes nothing.
    s1 = await _buy(client, user, 100)
    ok = event("checkout.session.async_payment_succeeded", session_object(s1["session_id"], user.id, 100, 199))
    assert (await post_event(client, ok))["result"] == "credited"
    unpaid = event("checkout.session.completed", session_object(s1["session_id"], user.id, 100, 199,
                                                                payment_status="unpaid"))
    assert (await post_event(client, unpaid))["result"] == "awaiting payment"
    assert await available(client.app, user.id) == 100
    # The usual order: completion (unpaid) first, then success.
    s2 = await _buy(client, user, 500)
    unpaid2 = event("checkout.session.completed", session_object(s2["session_id"], user.id, 500, 899,
                                                                 payment_status="unpaid"))
    assert (await post_event(client, unpaid2))["result"] == "awaiting payment"
    assert await available(client.app, user.id) == 100
    ok2 = event("checkout.session.async_payment_succeeded", session_object(s2["session_id"], user.id, 500, 899))
    assert (await post_event(client, ok2))["result"] == "credited"
    # A failed one never credits, and a late failure cannot undo a paid purchase.
    s3 = await _buy(client, user, 100)
    failed = event("checkout.session.async_payment_failed", session_object(s3["session_id"], user.id, 100, 199,
                                                                           payment_status="unpaid"))
    assert (await post_event(client, failed))["result"] == "failed"
    fail_paid = event("checkout.session.async_payment_failed", session_object(s2["session_id"], user.id, 500, 899))
    assert (await post_event(client, fail_paid))["result"] == "unchanged"
    assert await available(client.app, user.id) == 600


async def test_events_for_other_sessions_are_ignored(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    foreign = session_object("cs_foreign", user.id, 100, 199)
    foreign["metadata"] = {"order": "tshirt"}
    assert (await post_event(client, event("checkout.session.completed", foreign)))["result"].startswith("ignored")
    unknown_user = session_object("cs_ghost", uuid.uuid4(), 100, 199)
    assert (await post_event(client, event("checkout.session.completed", unknown_user)))["result"].startswith(
        "ignored")
    unpaid_ghost = session_object("cs_ghost2", uuid.uuid4(), 100, 199, payment_status="unpaid")
    assert (await post_event(client, event("checkout.session.completed", unpaid_ghost)))["result"].startswith(
        "ignored")
    assert (await post_event(client, event("customer.created", {"id": "cus_1"})))["result"] == "ignored"
    assert await client.app[keys.DB].fetchval("SELECT count(*) FROM ledger_transfers") == 0


async def test_refund_with_enough_balance_takes_the_tokens_back_once(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    _, pi = await _paid(client, user, 1000)
    await fund(client.app, user.id, 50)
    half = event("charge.refunded", charge_refunded(pi, 1599, 800))  # 800/1599 of 1000 tokens -> 500
    assert (await post_event(client, half))["result"] == "reversed 500 taken, 0 owed"
    assert (await post_event(client, half))["result"] == "duplicate"
    assert await available(client.app, user.id) == 550
    full = event("charge.refunded", charge_refunded(pi, 1599, 1599))
    assert (await post_event(client, full))["result"] == "reversed 500 taken, 0 owed"
    dispute = event("charge.dispute.created", dispute_created(pi, 1599))
    assert (await post_event(client, dispute))["result"] == "duplicate"  # nothing left to take back
    assert await available(client.app, user.id) == 50
    rows = (await (await client.get("/v1/wallet/transactions", headers=user.headers)).json())["data"]
    assert [(r["transaction_type"], r["amount_tokens"], r["balance_after"]) for r in rows] == [
        ("refund_clawback", -500, 50), ("refund_clawback", -500, 550), ("grant", 50, 1050), ("purchase", 1000, 1000)]


async def test_refund_without_enough_balance_records_debt_and_restricts(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    app = client.app
    user, performer = await make_user(app), await make_user(app, role="performer")
    _, pi = await _paid(client, user, 500)
    resp = await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": 400},
                             headers=user.headers)
    assert resp.status == 201
    result = await post_event(client, event("charge.dispute.created", dispute_created(pi, 899)))
    assert result["result"] == "reversed 100 taken, 400 owed"
    assert await available(app, user.id) == 0
    balance = (await (await client.get("/v1/wallet/balance", headers=user.headers)).json())["data"]
    assert (balance["owed_tokens"], balance["restricted"], balance["token_balance"]) == (400, True, 0)
    # The tips already given stay with the performer; the platform bears the loss.
    assert await available(app, performer.id, AccountKind.EARNINGS) == 320
    await fund(app, user.id, 10)
    resp = await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": 5},
                             headers=user.headers)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "WALLET_RESTRICTED"
    # The next purchase settles the debt first.
    await _paid(client, user, 1000)
    balance = (await (await client.get("/v1/wallet/balance", headers=user.headers)).json())["data"]
    assert (balance["owed_tokens"], balance["restricted"], balance["token_balance"]) == (0, False, 610)
    rows = (await (await client.get("/v1/wallet/transactions", headers=user.headers)).json())["data"]
    assert [(r["transaction_type"], r["amount_tokens"]) for r in rows[:2]] == [("debt_settlement", -400),
                                                                                 ("purchase", 1000)]
    assert (await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": 5},
                              headers=user.headers)).status == 201


async def test_debt_larger_than_the_next_purchase(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    app = client.app
    user, performer = await make_user(app), await make_user(app, role="performer")
    _, pi = await _paid(client, user, 1000)
    assert (await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": 1000},
                              headers=user.headers)).status == 201
    assert (await post_event(client, event("charge.refunded", charge_refunded(pi, 1599, 1599))))["result"] == \
        "reversed 0 taken, 1000 owed"
    await _paid(client, user, 100)
    balance = (await (await client.get("/v1/wallet/balance", headers=user.headers)).json())["data"]
    assert (balance["owed_tokens"], balance["token_balance"], balance["restricted"]) == (900, 0, True)


async def test_refund_before_completion_waits_then_applies(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    user = await make_user(client.app)
    session = await _buy(client, user, 500)
    pi = "pi_early"
    early = event("charge.refunded", charge_refunded(pi, 899, 899))
    assert (await post_event(client, early))["result"] == "waiting"
    assert (await post_event(client, early))["result"] == "waiting"
    paid = event("checkout.session.completed", session_object(session["session_id"], user.id, 500, 899,
                                                              payment_intent=pi))
    assert (await post_event(client, paid))["result"] == "credited"
    assert await available(client.app, user.id) == 0
    assert await client.app[keys.DB].fetchval("SELECT count(*) FROM purchase_reversals_waiting") == 0
    assert (await post_event(client, early))["result"] == "duplicate"


async def test_too_many_waiting_events_are_refused_for_retry(stripe_client: MakeClient) -> None:
    client = await stripe_client(stripe_waiting_events_max=2)
    for _ in range(2):
        assert (await post_event(client, event("charge.refunded", charge_refunded("pi_x", 100, 10))))["result"] \
            == "waiting"
    payload, header = signed(event("charge.refunded", charge_refunded("pi_x", 100, 20)))
    resp = await client.post("/v1/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
    assert resp.status == 503


async def test_audit_is_clean_after_every_flow(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    app = client.app
    admin, user, performer = await make_user(app, role="admin"), await make_user(app), await make_user(
        app, role="performer")
    _, pi = await _paid(client, user, 500)
    await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": 300},
                      headers=user.headers)
    await post_event(client, event("charge.refunded", charge_refunded(pi, 899, 899)))
    await _paid(client, user, 1000)
    report = (await (await client.get("/v1/admin/ledger/audit", headers=admin.headers)).json())["data"]
    assert report["ok"] is True, report
    assert WEBHOOK_SECRET  # the secret the events were signed with


async def test_reversal_repaired_after_a_crash_between_ledger_and_records(stripe_client: MakeClient) -> None:
    """The ledger applied a reversal, the process died before recording it: the retry adopts it."""
    client = await stripe_client()
    app = client.app
    user, performer = await make_user(app), await make_user(app, role="performer")
    sid, pi = await _paid(client, user, 500)
    assert (await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": 300},
                              headers=user.headers)).status == 201
    wallet = await app[money.ACCOUNTS].id(AccountKind.WALLET, user.id)
    [outcome] = await app[money.LEDGER].submit([Transfer(
        purchases.reversal_id(sid, 500), wallet, purchases.CLEARING, 200, Code.REVERSAL,
        metadata={"kind": "refund_clawback", "stripe_session": sid})])
    assert outcome.result is Result.OK
    await fund(app, user.id, 50)  # tokens arriving later must not be taken for the crashed step
    result = await post_event(client, event("charge.refunded", charge_refunded(pi, 899, 899)))
    assert result["result"] == "reversed 200 taken, 300 owed"
    assert await available(app, user.id) == 50
    assert await debts.owed(app[keys.DB], user.id) == 300


async def test_credit_repaired_after_a_crash_between_ledger_and_records(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    app = client.app
    user = await make_user(app)
    session = await _buy(client, user, 1000)
    sid = session["session_id"]
    async with app[keys.DB].acquire() as conn, conn.transaction():
        await debts.change(conn, user.id, 400)
    wallet = await app[money.ACCOUNTS].id(AccountKind.WALLET, user.id)
    # As the crashed attempt submitted them: credit and settlement, one linked chain.
    outcomes = await app[money.LEDGER].submit([
        Transfer(purchases.credit_id(sid), purchases.CLEARING, wallet, 1000, Code.PURCHASE, TransferFlags.LINKED,
                 metadata={"stripe_session": sid}),
        Transfer(purchases.settle_id(sid), wallet, purchases.CLEARING, 400, Code.REVERSAL,
                 metadata={"kind": "debt_settlement", "stripe_session": sid})])
    assert [o.result for o in outcomes] == [Result.OK, Result.OK]
    async with app[keys.DB].acquire() as conn, conn.transaction():
        await debts.change(conn, user.id, 100)  # more debt arrived since: the stored settlement still wins
    paid = event("checkout.session.completed", session_object(sid, user.id, 1000, session["amount"]))
    assert (await post_event(client, paid))["result"] == "credited"
    assert await available(app, user.id) == 600
    assert await debts.owed(app[keys.DB], user.id) == 100


def _malformed_events(user_id: uuid.UUID, sid: str, pi: str) -> list[bytes]:
    """Signed bodies that are not usable Stripe events: a `data` or `data.object` that is not an
    object, a body that is not an object, and amounts that are not integers or are past what
    PostgreSQL's bigint holds (orjson reads integers past 64 bits as floats)."""
    shapes: list[Any] = [[], "x", None, 5, True, {"object": []}, {"object": None}, {"object": "cs"}, {}]
    bodies = []
    for data in shapes:
        evt = event("checkout.session.completed", session_object(sid, user_id, 500, 899))
        evt["data"] = data
        bodies.append(orjson.dumps(evt))
    no_data = event("checkout.session.completed", {})
    del no_data["data"]
    bodies += [orjson.dumps(no_data), b"[1, 2]", b'"evt"', b"7", b"null"]
    huge_tokens = session_object(sid, user_id, 500, 899)
    huge_tokens["metadata"]["tokens"] = str(2**63)
    bodies.append(orjson.dumps(event("checkout.session.completed", huge_tokens)))
    for big, kind, obj, field in [(b, *case) for b in (2**63, 10**30, '"899"', 8.5) for case in [
            ("checkout.session.completed", session_object(sid, user_id, 500, 899), "amount_total"),
            ("checkout.session.completed", session_object("cs_new", user_id, 500, 899, payment_status="unpaid"),
             "amount_total"),
            ("charge.refunded", charge_refunded(pi, 899, 1), "amount_refunded"),
            ("charge.dispute.created", dispute_created(pi, 1), "amount")]]:
        raw = orjson.dumps(event(kind, obj))
        bodies.append(raw.replace(f'"{field}":1,'.encode(), f'"{field}":{big},'.encode())
                      .replace(f'"{field}":899,'.encode(), f'"{field}":{big},'.encode()))
        assert f'"{field}":{big},'.encode() in bodies[-1]
    return bodies


async def test_malformed_signed_events_are_refused_and_change_nothing(stripe_client: MakeClient) -> None:
    client = await stripe_client()
    db = client.app[keys.DB]
    user = await make_user(client.app)
    session = await _buy(client, user, 500)
    sid, pi = session["session_id"], "pi_malformed"
    await post_event(client, event("checkout.session.completed", session_object(sid, user.id, 500, 899,
                                                                                payment_status="unpaid",
                                                                                payment_intent=pi)))
    tables = ("ledger_transfers", "purchases", "purchase_reversals", "purchase_reversals_waiting", "wallet_debts")

    async def state() -> list[Any]:
        return [await db.fetch(f"SELECT * FROM {t} ORDER BY 1") for t in tables]

    before = await state()
    for body in _malformed_events(user.id, sid, pi):
        payload, header = signed(body)
        resp = await client.post("/v1/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
        assert resp.status == 400, (body, await resp.text())
        err = (await resp.json())["error"]
        assert err["code"] in ("BAD_REQUEST", "MALFORMED_JSON") and err["message"], err
    assert await state() == before
    assert await available(client.app, user.id) == 0
