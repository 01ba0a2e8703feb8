"""Payouts (holds on earnings, approve = post, reject = void) and admin adjustments and audit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ledger import AccountKind, Result
from ledger.flows.payouts import request_payout
from server.commerce import keys as money
from server.kernel import keys
from tests.support.factories import TestUser, make_user
from tests.support.wallet_support import available, fund


@pytest.fixture
async def people(client: TestClient) -> dict[str, TestUser]:
    app = client.app
    return {"performer": await make_user(app, role="performer"), "performer2": await make_user(app, role="performer"),
            "viewer": await make_user(app), "admin": await make_user(app, role="admin")}


async def _earn(client: TestClient, performer: TestUser, amount: int) -> None:
    """Give the performer `amount` earnings: a fan tips amount / 0.8 (fee 20 %)."""
    fan = await make_user(client.app)
    gross = amount * 10_000 // 8_000
    await fund(client.app, fan.id, gross)
    resp = await client.post("/v1/wallet/transfer", json={"to_user_id": str(performer.id), "amount": gross},
                             headers=fan.headers)
    assert resp.status == 201
    assert await available(client.app, performer.id, AccountKind.EARNINGS) >= amount


async def _request(client: TestClient, who: TestUser, body: Any, key: str | None = None) -> Any:
    return await client.post("/v1/payouts/request", json=body, headers=who.keyed(key))


async def test_payout_lifecycle(client: TestClient, people: dict[str, TestUser]) -> None:
    app, performer, admin = client.app, people["performer"], people["admin"]
    await _earn(client, performer, 4000)
    resp = await _request(client, performer, {"amount": 1500})
    first = (await resp.json())["data"]
    assert resp.status == 201 and first["status"] == "pending" and first["amount"] == 1500
    balance = (await (await client.get("/v1/wallet/balance", headers=performer.headers)).json())["data"]
    assert balance["earnings"] == {"available": 2500, "reserved": 1500}
    second = (await (await _request(client, performer, {"amount": 2000})).json())["data"]
    # More than what is left: refused, nothing held.
    over = await _request(client, performer, {"amount": 1000})
    assert over.status == 409 and (await over.json())["error"]["code"] == "INSUFFICIENT_BALANCE"

    approved = await client.post(f"/v1/admin/payouts/{first['id']}/approve", json={"note": "sent"},
                                 headers=admin.headers)
    data = (await approved.json())["data"]
    assert approved.status == 200 and data["status"] == "approved" and data["resolved_by"] == str(admin.id)
    for action in ("approve", "reject"):
        again = await client.post(f"/v1/admin/payouts/{first['id']}/{action}", headers=admin.headers)
        body = await again.json()
        assert again.status == 409 and body["error"]["details"]["status"] == "approved", body
    rejected = await client.post(f"/v1/admin/payouts/{second['id']}/reject", headers=admin.headers)
    assert (await rejected.json())["data"]["status"] == "rejected"
    assert (await client.post(f"/v1/admin/payouts/{second['id']}/approve", headers=admin.headers)).status == 409
    assert await available(app, performer.id, AccountKind.EARNINGS) == 2500
    balance = (await (await client.get("/v1/wallet/balance", headers=performer.headers)).json())["data"]
    assert balance["earnings"] == {"available": 2500, "reserved": 0}

    rows = (await (await client.get("/v1/wallet/transactions", headers=performer.headers)).json())["data"]
    assert [(r["transaction_type"], r["amount_tokens"], r["balance_after"]) for r in rows[:4]] == [
        ("payout_cancelled", 2000, 2500), ("payout_completed", 0, 500), ("payout_requested", -2000, 500),
        ("payout_requested", -1500, 2500)]
    log = await app[keys.DB].fetch("SELECT action, actor_id, target_user_id, details->>'amount' AS amount "
                                      "FROM admin_audit_log ORDER BY created_at")
    assert [(r["action"], r["actor_id"], r["target_user_id"], r["amount"]) for r in log] == [
        ("payout.approve", admin.id, performer.id, "1500"), ("payout.reject", admin.id, performer.id, "2000")]
    report = (await (await client.get("/v1/admin/ledger/audit", headers=admin.headers)).json())["data"]
    assert report["ok"] is True


async def test_payout_request_refusals(client: TestClient, people: dict[str, TestUser]) -> None:
    app, performer = client.app, people["performer"]
    await _earn(client, performer, 2000)
    for amount in (0, -1, 10.5, "1000", 2**63, None, True):
        resp = await _request(client, performer, {"amount": amount})
        assert resp.status == 422, amount
    resp = await _request(client, performer, {"amount": 999})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["details"]["min"] == 1000
    assert (await _request(client, people["viewer"], {"amount": 1000})).status == 403
    assert (await _request(client, people["admin"], {"amount": 1000})).status == 403
    assert (await _request(client, performer, {"amount": 1000, "user_id": str(people["performer2"].id)})).status == 422
    assert (await client.post("/v1/payouts/request", json={"amount": 1000})).status == 401
    await app[keys.DB].execute("INSERT INTO wallet_debts (user_id, owed) VALUES ($1, 1)", performer.id)
    resp = await _request(client, performer, {"amount": 1000})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "WALLET_RESTRICTED"
    assert await available(app, performer.id, AccountKind.EARNINGS) == 2000


async def test_payout_idempotency(client: TestClient, people: dict[str, TestUser]) -> None:
    performer = people["performer"]
    await _earn(client, performer, 3000)
    a = await _request(client, performer, {"amount": 1000}, key="p1")
    b = await _request(client, performer, {"amount": 1000}, key="p1")
    assert a.status == b.status == 201 and (await a.json()) == (await b.json())
    c = await _request(client, performer, {"amount": 1200}, key="p1")
    assert c.status == 409 and (await c.json())["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    pid = str(uuid.uuid4())
    assert (await _request(client, performer, {"amount": 1000, "id": pid})).status == 201
    assert (await _request(client, performer, {"amount": 1000, "id": pid})).status == 200
    assert (await _request(client, performer, {"amount": 1001, "id": pid})).status == 409
    assert await available(client.app, performer.id, AccountKind.EARNINGS) == 1000


async def test_payout_listing_and_decisions_are_guarded(client: TestClient, people: dict[str, TestUser]) -> None:
    p1, p2, admin, viewer = people["performer"], people["performer2"], people["admin"], people["viewer"]
    await _earn(client, p1, 2000)
    await _earn(client, p2, 2000)
    mine = (await (await _request(client, p1, {"amount": 1000})).json())["data"]
    await _request(client, p2, {"amount": 1000})
    own = await (await client.get("/v1/payouts/requests", headers=p1.headers)).json()
    assert [r["id"] for r in own["data"]] == [mine["id"]] and own["meta"]["total"] == 1
    assert (await (await client.get("/v1/payouts/requests", headers=viewer.headers)).json())["data"] == []
    peek = await client.get("/v1/payouts/requests", params={"user_id": str(p2.id)}, headers=p1.headers)
    assert peek.status == 403
    every = await (await client.get("/v1/payouts/requests", headers=admin.headers)).json()
    assert every["meta"]["total"] == 2
    one = await (await client.get("/v1/payouts/requests", params={"user_id": str(p1.id), "status": "pending"},
                                  headers=admin.headers)).json()
    assert [r["id"] for r in one["data"]] == [mine["id"]]
    none = await (await client.get("/v1/payouts/requests", params={"status": "approved"}, headers=admin.headers)).json()
    assert none["data"] == []
    assert (await client.get("/v1/payouts/requests", params={"status": "paid"}, headers=admin.headers)).status == 422
    for who in (p1, viewer):
        assert (await client.post(f"/v1/admin/payouts/{mine['id']}/approve", headers=who.headers)).status == 403
    assert (await client.post(f"/v1/admin/payouts/{uuid.uuid4()}/approve", headers=admin.headers)).status == 404
    assert (await client.post("/v1/admin/payouts/not-an-id/reject", headers=admin.headers)).status == 404


async def test_expired_payout_cannot_be_approved(client: TestClient, people: dict[str, TestUser]) -> None:
    app, performer, admin = client.app, people["performer"], people["admin"]
    await _earn(client, performer, 1000)
    requested = await request_payout(app[money.LEDGER], app[money.ACCOUNTS], app[keys.DB],
                                     payout_id=uuid.uuid4(), user_id=performer.id, amount=1000, timeout_s=1)
    assert requested.result is Result.OK and requested.payout is not None
    await asyncio.sleep(1.2)
    resp = await client.post(f"/v1/admin/payouts/{requested.payout.id}/approve", headers=admin.headers)
    assert resp.status == 409 and (await resp.json())["error"]["details"]["status"] == "expired"
    listed = (await (await client.get("/v1/payouts/requests", headers=performer.headers)).json())["data"]
    assert listed[0]["status"] == "expired"


async def _adjust(client: TestClient, admin: TestUser, body: Any, key: str | None = None) -> Any:
    return await client.post("/v1/admin/wallet/adjust", json=body, headers=admin.keyed(key))


async def test_admin_adjustments_are_audited(client: TestClient, people: dict[str, TestUser]) -> None:
    app, admin, viewer = client.app, people["admin"], people["viewer"]
    resp = await _adjust(client, admin, {"user_id": str(viewer.id), "amount": 300, "reason": " welcome bonus "})
    data = (await resp.json())["data"]
    assert resp.status == 200 and data["balance"] == 300 and data["reason"] == "welcome bonus"
    resp = await _adjust(client, admin, {"user_id": str(viewer.id), "amount": -100, "reason": "duplicate grant"})
    assert (await resp.json())["data"]["balance"] == 200
    over = await _adjust(client, admin, {"user_id": str(viewer.id), "amount": -201, "reason": "too much"})
    assert over.status == 409 and (await over.json())["error"]["code"] == "INSUFFICIENT_BALANCE"
    promotions = await app[keys.DB].fetchval(
        "SELECT credits_posted - debits_posted FROM ledger_accounts WHERE id = 3")
    assert promotions == -200
    log = await app[keys.DB].fetch("SELECT actor_id, target_user_id, action, details FROM admin_audit_log "
                                      "ORDER BY created_at")
    assert [(r["actor_id"], r["target_user_id"], r["action"]) for r in log] == [
        (admin.id, viewer.id, "wallet.adjust"), (admin.id, viewer.id, "wallet.adjust")]
    with pytest.raises(Exception, match="append-only"):
        await app[keys.DB].execute("DELETE FROM admin_audit_log")
    rows = (await (await client.get("/v1/wallet/transactions", headers=viewer.headers)).json())["data"]
    assert [(r["transaction_type"], r["amount_tokens"], r["description"]) for r in rows] == [
        ("adjustment_debit", -100, "Adjustment: duplicate grant"),
        ("adjustment_credit", 300, "Adjustment: welcome bonus")]


async def test_admin_adjust_refusals(client: TestClient, people: dict[str, TestUser]) -> None:
    admin, viewer = people["admin"], people["viewer"]
    uid = str(viewer.id)
    cases: list[tuple[TestUser, Any, int]] = [
        (admin, {"user_id": uid, "amount": 0, "reason": "x"}, 422),
        (admin, {"user_id": uid, "amount": 10_000_001, "reason": "x"}, 422),
        (admin, {"user_id": uid, "amount": 2**63, "reason": "x"}, 422),
        (admin, {"user_id": uid, "amount": -(2**63), "reason": "x"}, 422),
        (admin, {"user_id": uid, "amount": 10.5, "reason": "x"}, 422),
        (admin, {"user_id": uid, "amount": "10", "reason": "x"}, 422),
        (admin, {"user_id": uid, "amount": 10, "reason": "   "}, 422),
        (admin, {"user_id": uid, "amount": 10}, 422),
        (admin, {"user_id": str(uuid.uuid4()), "amount": 10, "reason": "x"}, 404),
        (viewer, {"user_id": uid, "amount": 10, "reason": "x"}, 403),
        (people["performer"], {"user_id": uid, "amount": 10, "reason": "x"}, 403),
    ]
    for who, body, status in cases:
        resp = await _adjust(client, who, body)
        assert resp.status == status, (body, await resp.text())
    assert await available(client.app, viewer.id) == 0
    assert await client.app[keys.DB].fetchval("SELECT count(*) FROM admin_audit_log") == 0


async def test_admin_adjust_idempotency(client: TestClient, people: dict[str, TestUser]) -> None:
    admin, viewer = people["admin"], people["viewer"]
    body = {"user_id": str(viewer.id), "amount": 50, "reason": "promo"}
    a = await _adjust(client, admin, body, key="a1")
    b = await _adjust(client, admin, body, key="a1")
    assert (await a.json()) == (await b.json()) and b.headers.get("Idempotent-Replayed") == "true"
    c = await _adjust(client, admin, {**body, "amount": 60}, key="a1")
    assert c.status == 409
    assert await available(client.app, viewer.id) == 50
    assert await client.app[keys.DB].fetchval("SELECT count(*) FROM admin_audit_log") == 1


async def test_audit_route_reports_violations_with_ids(client: TestClient, people: dict[str, TestUser]) -> None:
    app, admin, viewer = client.app, people["admin"], people["viewer"]
    assert (await client.get("/v1/admin/ledger/audit", headers=viewer.headers)).status == 403
    await fund(app, viewer.id, 100)
    report = (await (await client.get("/v1/admin/ledger/audit", headers=admin.headers)).json())["data"]
    assert report["ok"] is True and all(c["ok"] for c in report["checks"])
    wallet = await app[money.ACCOUNTS].id(AccountKind.WALLET, viewer.id)
    # Corrupt a counter behind the engine's back: the audit must name the account.
    await app[keys.DB].execute("UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = $1",
                                  wallet)
    resp = await client.get("/v1/admin/ledger/audit", headers=admin.headers)
    report = (await resp.json())["data"]
    assert resp.status == 200 and report["ok"] is False
    failed = [c for c in report["checks"] if not c["ok"]]
    assert failed and any(str(wallet) in c["offending"] for c in failed), failed
