"""Wallet REST and tips outside a room: balances, `POST /v1/wallet/transfer` with hostile input,
idempotency, transaction history, and 200 concurrent tippers on one performer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ledger import AccountKind
from ledger.flows.tips import leg_ids
from server.kernel import keys
from signaling.features.rooms import access as rooms
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import new_stream, room_of
from tests.support.wallet_support import available, fund, platform_revenue


@pytest.fixture
async def people(client: TestClient) -> dict[str, TestUser]:
    app = client.app
    return {"performer": await make_user(app, role="performer", display_name="Star"),
            "viewer": await make_user(app, role="viewer", display_name="Fan"),
            "other": await make_user(app, role="viewer"),
            "admin": await make_user(app, role="admin")}


async def _tip(client: TestClient, who: TestUser, body: dict[str, Any], key: str | None = None) -> Any:
    return await client.post("/v1/wallet/transfer", json=body, headers=who.keyed(key))


async def test_balance_starts_empty_and_follows_the_ledger(client: TestClient, people: dict[str, TestUser]) -> None:
    viewer = people["viewer"]
    resp = await client.get("/v1/wallet/balance", headers=viewer.headers)
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data == {"token_balance": 0, "reserved_balance": 0, "currency_code": "USD", "conversion_rate": 100,
                    "owed_tokens": 0, "restricted": False}
    await fund(client.app, viewer.id, 500)
    data = (await (await client.get("/v1/wallet/balance", headers=viewer.headers)).json())["data"]
    assert data["token_balance"] == 500
    perf = (await (await client.get("/v1/wallet/balance", headers=people["performer"].headers)).json())["data"]
    assert perf["earnings"] == {"available": 0, "reserved": 0}
    assert (await client.get("/v1/wallet/balance")).status == 401


async def test_tip_splits_fee_and_moves_tokens(client: TestClient, people: dict[str, TestUser]) -> None:
    app, viewer, performer = client.app, people["viewer"], people["performer"]
    await fund(app, viewer.id, 1000)
    tip_id = uuid.uuid4()
    resp = await _tip(client, viewer, {"to_user_id": str(performer.id), "amount": 250, "message": " bravo\n!",
                                       "id": str(tip_id)})
    body = await resp.json()
    assert resp.status == 201, body
    data = body["data"]
    assert data == {"id": str(tip_id), "to_user_id": str(performer.id), "stream_id": None, "amount": 250,
                    "fee": 50, "performer_share": 200, "message": "bravo !", "outcome": "ok", "replayed": False}
    assert await available(app, viewer.id) == 750
    assert await available(app, performer.id, AccountKind.EARNINGS) == 200
    assert await platform_revenue(app) == 50
    share_id, fee_id = leg_ids(tip_id)
    rows = await app[keys.DB].fetch("SELECT id, amount, code FROM ledger_transfers WHERE id = ANY($1::uuid[])",
                                       [share_id, fee_id])
    assert {(r["id"], r["amount"], r["code"]) for r in rows} == {(share_id, 200, "tip"), (fee_id, 50, "fee")}


async def test_one_token_tip_has_no_fee_leg(client: TestClient, people: dict[str, TestUser]) -> None:
    app = client.app
    await fund(app, people["viewer"].id, 1)
    tip_id = uuid.uuid4()
    resp = await _tip(client, people["viewer"], {"to_user_id": str(people["performer"].id), "amount": 1,
                                                 "id": str(tip_id)})
    assert resp.status == 201
    assert (await resp.json())["data"]["fee"] == 0
    _, fee_id = leg_ids(tip_id)
    assert await app[keys.DB].fetchval("SELECT count(*) FROM ledger_transfers WHERE id = $1", fee_id) == 0
    assert await available(app, people["performer"].id, AccountKind.EARNINGS) == 1
    assert await platform_revenue(app) == 0


async def test_insufficient_balance_moves_nothing(client: TestClient, people: dict[str, TestUser]) -> None:
    app = client.app
    await fund(app, people["viewer"].id, 99)
    resp = await _tip(client, people["viewer"], {"to_user_id": str(people["performer"].id), "amount": 100})
    body = await resp.json()
    assert resp.status == 409 and body["error"]["code"] == "INSUFFICIENT_BALANCE", body
    assert await available(app, people["viewer"].id) == 99
    assert await available(app, people["performer"].id, AccountKind.EARNINGS) == 0
    assert await platform_revenue(app) == 0


# 1e3 is not here: JSON (and the document's `"type": "integer"`) counts 1000.0 as the integer 1000
@pytest.mark.parametrize("amount", [0, -1, -100, 10.5, "10", 2**63, 2**70, None, True, [], {"n": 1}])
async def test_bad_amounts_are_refused_at_the_edge(client: TestClient, people: dict[str, TestUser],
                                                   amount: Any) -> None:
    await fund(client.app, people["viewer"].id, 10_000)
    resp = await _tip(client, people["viewer"], {"to_user_id": str(people["performer"].id), "amount": amount})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "VALIDATION_ERROR", body
    assert await available(client.app, people["viewer"].id) == 10_000


async def test_amount_over_the_tip_limit(aiohttp_client: Any, make_app: Any, make_settings: Any) -> None:
    client = await aiohttp_client(make_app(make_settings(tip_max_tokens=100)))
    viewer, performer = await make_user(client.app), await make_user(client.app, role="performer")
    await fund(client.app, viewer.id, 1000)
    resp = await _tip(client, viewer, {"to_user_id": str(performer.id), "amount": 101})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["details"]["max"] == 100
    assert (await _tip(client, viewer, {"to_user_id": str(performer.id), "amount": 100})).status == 201


async def test_bad_recipients(client: TestClient, people: dict[str, TestUser]) -> None:
    app, viewer, performer = client.app, people["viewer"], people["performer"]
    await fund(app, viewer.id, 1000)
    await fund(app, performer.id, 1000)
    cases: list[tuple[TestUser, dict[str, Any], int, str]] = [
        (viewer, {"to_user_id": str(uuid.uuid4()), "amount": 5}, 404, "NOT_FOUND"),
        (viewer, {"to_user_id": str(people["other"].id), "amount": 5}, 409, "CONFLICT"),  # not a performer
        (viewer, {"to_user_id": str(people["admin"].id), "amount": 5}, 409, "CONFLICT"),
        (performer, {"to_user_id": str(performer.id), "amount": 5}, 403, "PERMISSION_DENIED"),  # yourself
        (viewer, {"to_user_id": "not-a-uuid", "amount": 5}, 422, "VALIDATION_ERROR"),
        (viewer, {"amount": 5}, 422, "VALIDATION_ERROR"),
        # Naming someone else's wallet as the source is not a field at all.
        (viewer, {"to_user_id": str(performer.id), "amount": 5, "from_user_id": str(people["other"].id)}, 422,
         "VALIDATION_ERROR"),
        (viewer, {"to_user_id": str(performer.id), "amount": 5, "stream_id": str(uuid.uuid4())}, 404, "NOT_FOUND"),
        (viewer, {"to_user_id": str(performer.id), "amount": 5, "message": "x" * 201}, 422, "VALIDATION_ERROR"),
    ]
    for who, body, status, code in cases:
        resp = await _tip(client, who, body)
        got = await resp.json()
        assert (resp.status, got["error"]["code"]) == (status, code), (body, got)
    assert await available(app, viewer.id) == 1000 and await available(app, performer.id) == 1000
    assert await available(app, performer.id, AccountKind.EARNINGS) == 0
    await app[keys.DB].execute("UPDATE users SET status = 'suspended' WHERE id = $1", performer.id)
    resp = await _tip(client, viewer, {"to_user_id": str(performer.id), "amount": 5})
    assert resp.status == 409


async def test_idempotency_key_replays_and_refuses_a_different_body(client: TestClient,
                                                                    people: dict[str, TestUser]) -> None:
    app, viewer, performer = client.app, people["viewer"], people["performer"]
    await fund(app, viewer.id, 1000)
    body = {"to_user_id": str(performer.id), "amount": 100}
    first = await _tip(client, viewer, body, key="k-1")
    again = await _tip(client, viewer, body, key="k-1")
    assert first.status == 201 and again.status == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await first.json()) == (await again.json())
    assert await available(app, viewer.id) == 900
    other = await _tip(client, viewer, {**body, "amount": 101}, key="k-1")
    assert other.status == 409 and (await other.json())["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await available(app, viewer.id) == 900
    # Another user's key space is separate: the same key is a new tip for them.
    await fund(app, people["other"].id, 100)
    assert (await _tip(client, people["other"], body, key="k-1")).status == 201
    assert await available(app, performer.id, AccountKind.EARNINGS) == 160


async def test_tip_id_is_the_idempotency_key_of_the_ledger(client: TestClient, people: dict[str, TestUser]) -> None:
    app, viewer, performer = client.app, people["viewer"], people["performer"]
    await fund(app, viewer.id, 1000)
    tip_id = str(uuid.uuid4())
    body = {"to_user_id": str(performer.id), "amount": 100, "id": tip_id}
    assert (await _tip(client, viewer, body)).status == 201
    replay = await _tip(client, viewer, body)
    data = (await replay.json())["data"]
    assert replay.status == 200 and data["replayed"] is True and data["outcome"] == "exists"
    assert await available(app, viewer.id) == 900
    changed = await _tip(client, viewer, {**body, "amount": 50})
    assert changed.status == 409 and (await changed.json())["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # Someone else cannot reuse (or hijack) the id either.
    await fund(app, people["other"].id, 1000)
    hijack = await _tip(client, people["other"], body)
    assert hijack.status == 409
    assert await available(app, viewer.id) == 900 and await available(app, people["other"].id) == 1000


async def test_restricted_wallet_cannot_tip(client: TestClient, people: dict[str, TestUser]) -> None:
    app, viewer = client.app, people["viewer"]
    await fund(app, viewer.id, 1000)
    await app[keys.DB].execute("INSERT INTO wallet_debts (user_id, owed) VALUES ($1, 7)", viewer.id)
    resp = await _tip(client, viewer, {"to_user_id": str(people["performer"].id), "amount": 5})
    body = await resp.json()
    assert resp.status == 403 and body["error"]["code"] == "WALLET_RESTRICTED"
    assert body["error"]["details"]["owed_tokens"] == 7
    balance = (await (await client.get("/v1/wallet/balance", headers=viewer.headers)).json())["data"]
    assert balance["restricted"] is True and balance["owed_tokens"] == 7


async def test_transactions_show_signed_amounts_fees_and_balances(client: TestClient,
                                                                  people: dict[str, TestUser]) -> None:
    app, viewer, performer = client.app, people["viewer"], people["performer"]
    await fund(app, viewer.id, 1000)
    for amount in (100, 5, 1):
        assert (await _tip(client, viewer, {"to_user_id": str(performer.id), "amount": amount,
                                            "message": f"m{amount}"})).status == 201
    resp = await client.get("/v1/wallet/transactions", headers=viewer.headers)
    body = await resp.json()
    rows = body["data"]
    assert [(r["transaction_type"], r["amount_tokens"], r["fee_tokens"], r["balance_after"]) for r in rows] == [
        ("tip_sent", -1, 0, 894), ("tip_sent", -5, 1, 895), ("tip_sent", -100, 20, 900), ("grant", 1000, 0, 1000)]
    assert rows[0]["message"] == "m1" and rows[0]["amount_currency"] == "-0.01"
    assert body["meta"]["total"] == 4 and body["meta"]["page"] == 1
    perf = (await (await client.get("/v1/wallet/transactions", headers=performer.headers)).json())["data"]
    assert [(r["transaction_type"], r["amount_tokens"], r["fee_tokens"], r["balance_after"], r["account"])
            for r in perf] == [("tip_received", 1, 0, 85, "earnings"), ("tip_received", 4, 1, 84, "earnings"),
                               ("tip_received", 80, 20, 80, "earnings")]
    # Filters: by ledger code, and by date.
    grants = (await (await client.get("/v1/wallet/transactions?code=adjustment",
                                      headers=viewer.headers)).json())["data"]
    assert [r["transaction_type"] for r in grants] == ["grant"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = await client.get("/v1/wallet/transactions", params={"since": future}, headers=viewer.headers)
    assert (await later.json())["data"] == []
    earlier = await client.get("/v1/wallet/transactions", params={"until": future}, headers=viewer.headers)
    assert len((await earlier.json())["data"]) == 4
    # Cursor paging walks every row once.
    seen: list[str] = []
    cursor: int | None = None
    while True:
        params: dict[str, Any] = {"per_page": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = await (await client.get("/v1/wallet/transactions", params=params, headers=viewer.headers)).json()
        seen += [r["id"] for r in page["data"]]
        cursor = page["meta"]["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in rows]
    for bad in ({"code": "bogus"}, {"per_page": 101}, {"page": 0}, {"since": "yesterday"},
                {"since": "2024-01-01T00:00:00"}, {"cursor": 0}):
        resp = await client.get("/v1/wallet/transactions", params=bad, headers=viewer.headers)
        assert resp.status == 422, bad
    # Nobody sees another user's history: the route has no user parameter.
    resp = await client.get("/v1/wallet/transactions", params={"user_id": str(viewer.id)},
                            headers=people["other"].headers)
    assert resp.status == 422


async def test_200_concurrent_tippers_on_one_performer(client: TestClient, people: dict[str, TestUser]) -> None:
    app, performer = client.app, people["performer"]
    tippers = await asyncio.gather(*(make_user(app) for _ in range(200)))
    await asyncio.gather(*(fund(app, t.id, 1000) for t in tippers))
    amounts = [1 + (i * 37) % 500 for i in range(200)]
    tip_ids = [str(uuid.uuid4()) for _ in tippers]

    async def send(t: TestUser, amount: int, tip_id: str) -> int:
        resp = await _tip(client, t, {"to_user_id": str(performer.id), "amount": amount, "id": tip_id})
        await resp.read()
        return resp.status

    # Every tip twice, concurrently: the second of each pair must move nothing.
    statuses = await asyncio.gather(*(send(t, a, i) for t, a, i in zip(tippers, amounts, tip_ids, strict=True)),
                                    *(send(t, a, i) for t, a, i in zip(tippers, amounts, tip_ids, strict=True)))
    assert set(statuses) <= {200, 201} and statuses.count(201) >= 200
    fees = [a * 2000 // 10_000 for a in amounts]
    assert await available(app, performer.id, AccountKind.EARNINGS) == sum(amounts) - sum(fees)
    assert await platform_revenue(app) == sum(fees)
    for t, a in zip(tippers, amounts, strict=True):
        assert await available(app, t.id) == 1000 - a
    count = await app[keys.DB].fetchval("SELECT count(*) FROM ledger_transfers WHERE code IN ('tip', 'fee')")
    assert count == 200 + sum(1 for f in fees if f)
    resp = await client.get("/v1/admin/ledger/audit", headers=people["admin"].headers)
    report = (await resp.json())["data"]
    assert resp.status == 200 and report["ok"] is True, report


async def test_private_stream_is_404_to_outsiders_whatever_its_status(client: TestClient,
                                                                      people: dict[str, TestUser]) -> None:
    """Whoever may not see a private stream learns nothing from tipping it: not whether it is live,
    not who hosts it. Whoever may see it gets the real answers (409 when it is not live)."""
    app = client.app
    host, outsider, invited = people["performer"], people["other"], people["viewer"]
    await fund(app, outsider.id, 100)
    await fund(app, invited.id, 100)
    created = await new_stream(client, host, access="private")
    live_host = await make_user(app, role="performer")
    live = await new_stream(client, live_host, access="private")
    assert (await client.post(f"/v1/streams/{live['id']}/start", headers=live_host.headers)).status == 200
    for stream, host_id in ((created, host.id), (live, live_host.id)):
        for body in ({"stream_id": stream["id"], "amount": 5, "to_user_id": str(host_id)},
                     {"stream_id": stream["id"], "amount": 5, "to_user_id": str(invited.id)}):
            resp = await _tip(client, outsider, body)
            assert resp.status == 404, (stream["status"], body, await resp.text())
            assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    assert await available(app, outsider.id) == 100
    # The invited may see both: the stream that is not live is a conflict, the live one takes the tip.
    for stream in (created, live):
        await rooms.grant(app[keys.DB], room_of(stream), invited.id, "invite")
    resp = await _tip(client, invited, {"stream_id": created["id"], "amount": 5, "to_user_id": str(host.id)})
    assert resp.status == 409 and (await resp.json())["error"]["details"]["status"] == "created"
    resp = await _tip(client, invited, {"stream_id": live["id"], "amount": 5, "to_user_id": str(live_host.id)})
    assert resp.status == 201, await resp.text()
    assert await available(app, invited.id) == 95
