"""Tips in a stream's room over the socket: `tip.send`, the `tip.received` broadcast (once per tip id,
also across a reconnect and a crash between ledger commit and publish), refusals, stream totals."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from ledger import AccountKind, Result
from ledger.flows.tips import transfer_tip
from server.commerce import keys as money
from server.kernel import keys
from signaling.features.tips import audit as tips_audit
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import new_stream, room_of
from tests.support.socket_support import Sock, connect
from tests.support.wallet_support import available, fund

MakeClient = Callable[..., Awaitable[TestClient]]


async def _live(client: TestClient, host: TestUser, **fields: Any) -> dict[str, Any]:
    stream = await new_stream(client, host, **fields)
    resp = await client.post(f"/v1/streams/{stream['id']}/start", headers=host.headers)
    assert resp.status == 200, await resp.text()
    return stream


async def _joined(client: TestClient, user: TestUser | None, room: str) -> Sock:
    sock = await connect(client, token=user.token if user else None, guest=user is None)
    await sock.ok("join", room)
    return sock


def _tid() -> str:
    return str(uuid.uuid4())


async def _joined_at(client: TestClient, user: TestUser, room: str) -> tuple[Sock, dict[str, Any]]:
    sock = await connect(client, token=user.token)
    return sock, await sock.ok("join", room)


async def test_tip_in_a_room_broadcasts_once_even_after_a_reconnect(socket_client: MakeClient) -> None:
    client = await socket_client()
    app = client.app
    host = await make_user(app, role="performer", display_name="Host")
    fan = await make_user(app, display_name="Big Fan")
    watcher = await make_user(app)
    await fund(app, fan.id, 1000)
    stream = await _live(client, host)
    room = room_of(stream)
    (sock, joined), other = await _joined_at(client, fan, room), await _joined(client, watcher, room)
    tip_id = str(uuid.uuid4())
    reply = await sock.ok("tip.send", room, id=tip_id, amount=100, message="bravo")
    assert (reply["outcome"], reply["replayed"], reply["fee"], reply["performer_share"]) == ("ok", False, 20, 80)
    assert reply["stream_total"] == 100
    assert reply["top_tippers"] == [{"user_id": str(fan.id), "display_name": "Big Fan", "total": 100}]
    for s in (sock, other):
        ev = await s.event("tip.received")
        assert ev["room"] == room and ev["offset"] == reply["offset"]
        data = ev["data"]
        assert (data["id"], data["amount"], data["message"], data["stream_total"]) == (tip_id, 100, "bravo", 100)
        assert data["from"] == {"user_id": str(fan.id), "display_name": "Big Fan"}
        assert data["top_tippers"][0]["total"] == 100
    # The tipper's connection drops before it saw the reply; it reconnects, resumes and retries.
    await sock.close()
    sock = await connect(client, token=fan.token)
    rejoin = await sock.ok("join", room, since={"epoch": joined["epoch"], "offset": reply["offset"]})
    assert rejoin["recovered"] is True and rejoin["events"] == []
    retry = await sock.ok("tip.send", room, id=tip_id, amount=100, message="bravo")
    assert (retry["outcome"], retry["replayed"], retry["stream_total"]) == ("exists", True, 100)
    assert "offset" not in retry
    await other.ok("chat.send", room, text="after the retry")
    await other.event("chat.message")
    # Room events arrive in order: a second tip.received would have come before the chat message.
    assert not [e for e in other.events if e["type"] == "tip.received"]
    assert await available(app, fan.id) == 900
    assert await available(app, host.id, AccountKind.EARNINGS) == 80
    got = await (await client.get(f"/v1/streams/{stream['id']}")).json()
    assert got["data"]["total_tokens_received"] == 100
    tips = await (await client.get(f"/v1/streams/{stream['id']}/tips")).json()
    assert [(t["id"], t["tokens"], t["from_display_name"], t["message"]) for t in tips["data"]] == [
        (tip_id, 100, "Big Fan", "bravo")]
    assert tips["meta"]["total"] == 1
    await sock.close()
    await other.close()


async def test_publish_after_a_crash_between_ledger_commit_and_broadcast(socket_client: MakeClient) -> None:
    """The ledger applied the tip but the process died before recording and publishing it: the
    client's retry with the same id moves nothing and completes the record and the broadcast."""
    client = await socket_client()
    app = client.app
    host, fan = await make_user(app, role="performer"), await make_user(app)
    await fund(app, fan.id, 500)
    stream = await _live(client, host)
    room = room_of(stream)
    tip_id = uuid.uuid4()
    outcome = await transfer_tip(app[money.LEDGER], app[money.ACCOUNTS], tip_id=tip_id, sender=fan.id,
                                 recipient=host.id, amount=50, fee_bps=app[keys.SETTINGS].tip_fee_bps,
                                 metadata={"message": "hi", "stream": stream["id"]})
    assert outcome.result is Result.OK
    sock = await _joined(client, fan, room)
    reply = await sock.ok("tip.send", room, id=str(tip_id), amount=50, message="hi")
    assert reply["replayed"] is True and reply["stream_total"] == 50 and "offset" in reply
    assert (await sock.event("tip.received"))["data"]["id"] == str(tip_id)
    again = await sock.ok("tip.send", room, id=str(tip_id), amount=50, message="hi")
    assert "offset" not in again and again["stream_total"] == 50
    assert await available(app, fan.id) == 450
    await sock.close()


async def test_tip_refusals_in_a_room(socket_client: MakeClient) -> None:
    client = await socket_client(rate_tips_per_min=3)
    app = client.app
    host, fan, poor = await make_user(app, role="performer"), await make_user(app), await make_user(app)
    await fund(app, fan.id, 1000)
    stream = await _live(client, host)
    room = room_of(stream)
    host_sock, sock, poor_sock = [await _joined(client, u, room) for u in (host, fan, poor)]
    guest = await _joined(client, None, room)
    assert await host_sock.error("tip.send", room, id=_tid(), amount=5) == "PERMISSION_DENIED"  # yourself
    assert await guest.error("tip.send", room, id=_tid(), amount=5) == "AUTHENTICATION_REQUIRED"
    for bad in ({"id": _tid(), "amount": 0}, {"id": _tid(), "amount": -3}, {"id": _tid(), "amount": "10"},
                {"id": _tid(), "amount": 10.5}, {"id": _tid(), "amount": 2**63}, {"id": "nope", "amount": 5},
                {"amount": 5}, {"id": _tid(), "amount": 5, "to_user_id": str(fan.id)},
                {"id": _tid(), "amount": 5, "message": "x" * 1001}):
        assert await sock.error("tip.send", room, **bad) == "VALIDATION_ERROR", bad
    assert await poor_sock.error("tip.send", room, id=_tid(), amount=5) == "INSUFFICIENT_BALANCE"
    other = await _live(client, await make_user(app, role="performer"))
    assert await sock.error("tip.send", room_of(other), id=_tid(), amount=5) == "NOT_JOINED"
    # The tips budget is shared by the socket and REST: 3 per minute here.
    assert (await sock.ok("tip.send", room, id=_tid(), amount=5))["outcome"] == "ok"
    resp = await client.post("/v1/wallet/transfer", json={"to_user_id": str(host.id), "amount": 5},
                             headers=fan.headers)
    assert resp.status == 201
    assert (await sock.ok("tip.send", room, id=_tid(), amount=5))["outcome"] == "ok"
    assert await sock.error("tip.send", room, id=_tid(), amount=5) == "RATE_LIMIT_EXCEEDED"
    assert await available(app, fan.id) == 985
    # A stream that ended takes no more tips.
    assert (await client.post(f"/v1/streams/{stream['id']}/end", headers=host.headers)).status == 200
    await fund(app, poor.id, 10)
    assert await poor_sock.error("tip.send", room, id=_tid(), amount=1) == "CONFLICT"
    for s in (host_sock, sock, poor_sock, guest):
        await s.close()


async def test_stream_totals_and_top_tippers_under_concurrency(socket_client: MakeClient) -> None:
    client = await socket_client()
    app = client.app
    host = await make_user(app, role="performer")
    stream = await _live(client, host)
    fans = await asyncio.gather(*(make_user(app) for _ in range(40)))
    await asyncio.gather(*(fund(app, f.id, 1000) for f in fans))
    amounts = [10 + i for i in range(40)]

    async def tip(fan: TestUser, amount: int) -> None:
        body = {"to_user_id": str(host.id), "amount": amount, "stream_id": stream["id"], "id": str(uuid.uuid4())}
        for _ in range(2):  # each sent twice: counted once
            resp = await client.post("/v1/wallet/transfer", json=body, headers=fan.headers)
            assert resp.status in (200, 201), await resp.text()

    await asyncio.gather(*(tip(f, a) for f, a in zip(fans, amounts, strict=True)))
    got = (await (await client.get(f"/v1/streams/{stream['id']}")).json())["data"]
    assert got["total_tokens_received"] == sum(amounts)
    db = app[keys.DB]
    assert await db.fetchval("SELECT count(*) FROM stream_tips WHERE stream_id = $1", uuid.UUID(stream["id"])) == 40
    assert await db.fetchval("SELECT sum(total) FROM stream_tippers WHERE stream_id = $1",
                             uuid.UUID(stream["id"])) == sum(amounts)
    page = await (await client.get(f"/v1/streams/{stream['id']}/tips", params={"per_page": 15, "page": 3})).json()
    assert len(page["data"]) == 10 and page["meta"]["total"] == 40 and page["meta"]["pages"] == 3
    # A tip's reply (and its broadcast) carries the top tippers, highest first.
    resp = await client.post("/v1/wallet/transfer", json={"to_user_id": str(host.id), "amount": 100,
                                                          "stream_id": stream["id"]}, headers=fans[0].headers)
    data = (await resp.json())["data"]
    assert resp.status == 201 and data["stream_total"] == sum(amounts) + 100
    assert [t["total"] for t in data["top_tippers"]] == [110, 49, 48, 47, 46]
    assert data["top_tippers"][0]["user_id"] == str(fans[0].id)


async def test_stream_tips_listing_visibility(socket_client: MakeClient) -> None:
    client = await socket_client()
    app = client.app
    host, outsider = await make_user(app, role="performer"), await make_user(app)
    stream = await _live(client, host, access="private")
    assert (await client.get(f"/v1/streams/{stream['id']}/tips", headers=outsider.headers)).status == 404
    assert (await client.get(f"/v1/streams/{stream['id']}/tips", headers=host.headers)).status == 200
    assert (await client.get(f"/v1/streams/{uuid.uuid4()}/tips")).status == 404
    assert (await client.get("/v1/streams/not-a-uuid/tips")).status == 404
    assert (await client.get(f"/v1/streams/{stream['id']}/tips", params={"per_page": 0},
                             headers=host.headers)).status == 422


async def test_rest_tips_to_a_stream_respect_the_room_rules(socket_client: MakeClient) -> None:
    client = await socket_client()
    app = client.app
    host, fan, outsider = await make_user(app, role="performer"), await make_user(app), await make_user(app)
    for u in (fan, outsider):
        await fund(app, u.id, 100)
    stream = await _live(client, host)
    resp = await client.post(f"/v1/streams/{stream['id']}/bans", json={"user_id": str(fan.id)}, headers=host.headers)
    assert resp.status == 201, await resp.text()
    body = {"to_user_id": str(host.id), "amount": 5, "stream_id": stream["id"]}
    resp = await client.post("/v1/wallet/transfer", json=body, headers=fan.headers)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "BANNED"
    private = await _live(client, await make_user(app, role="performer"), access="private")
    resp = await client.post("/v1/wallet/transfer", json={**body, "to_user_id": private["host_id"],
                                                          "stream_id": private["id"]}, headers=outsider.headers)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "NOT_FOUND"
    resp = await client.post("/v1/wallet/transfer", json={**body, "to_user_id": private["host_id"]},
                             headers=outsider.headers)
    assert resp.status == 409, "a stream's id with another performer as recipient"
    assert await available(app, fan.id) == 100 and await available(app, outsider.id) == 100


async def test_a_tip_id_reused_for_another_tip_is_refused_on_both_paths(socket_client: MakeClient) -> None:
    """The same tip id with any field changed is IDEMPOTENCY_KEY_REUSED (409) over the socket and
    REST alike, whichever leg of the tip differs: also when the fee leg is unchanged (another
    message, or another amount with the same fee), which the ledger sees as a half-replayed chain.
    Nothing moves and the first tip stays as it was."""
    client = await socket_client()
    app = client.app
    host, rival, fan = (await make_user(app, role="performer"), await make_user(app, role="performer"),
                        await make_user(app))
    await fund(app, fan.id, 1000)
    stream, elsewhere = await _live(client, host), await _live(client, rival)
    room, other_room = room_of(stream), room_of(elsewhere)
    sock, rival_sock = await _joined(client, fan, room), await _joined(client, fan, other_room)
    tip_id = _tid()
    first = await sock.ok("tip.send", room, id=tip_id, amount=100, message="bravo")
    assert (first["outcome"], first["fee"], first["stream_total"]) == ("ok", 20, 100)
    assert (await sock.event("tip.received"))["data"]["id"] == tip_id
    # 101 at 20 % carries the same 20-token fee as 100; 150 carries 30.
    socket_variants: list[tuple[Sock, str, dict[str, Any]]] = [
        (sock, room, {"amount": 100, "message": "another message"}),
        (sock, room, {"amount": 101, "message": "bravo"}),
        (sock, room, {"amount": 150, "message": "bravo"}),
        (rival_sock, other_room, {"amount": 100, "message": "bravo"}),  # another recipient
    ]
    for s, r, data in socket_variants:
        frame = await s.request("tip.send", r, id=tip_id, **data)
        assert not frame["ok"] and frame["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", (data, frame)
    base = {"to_user_id": str(host.id), "amount": 100, "message": "bravo", "stream_id": stream["id"], "id": tip_id}
    rest_variants: list[dict[str, Any]] = [
        {**base, "message": "another message"},
        {**base, "amount": 101},
        {**base, "amount": 150},
        {**base, "to_user_id": str(rival.id), "stream_id": elsewhere["id"]},
        {**base, "to_user_id": str(rival.id), "stream_id": None},
        {**base, "stream_id": None},  # the same tip outside the stream
    ]
    for body in rest_variants:
        resp = await client.post("/v1/wallet/transfer", json=body, headers=fan.headers)
        got = await resp.json()
        assert resp.status == 409 and got["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", (body, got)
    # The very same tip is still a replay on both paths.
    assert (await sock.ok("tip.send", room, id=tip_id, amount=100, message="bravo"))["replayed"] is True
    resp = await client.post("/v1/wallet/transfer", json=base, headers=fan.headers)
    assert resp.status == 200 and (await resp.json())["data"]["replayed"] is True
    assert await available(app, fan.id) == 900
    assert await available(app, host.id, AccountKind.EARNINGS) == 80
    assert await available(app, rival.id, AccountKind.EARNINGS) == 0
    db = app[keys.DB]
    rows = await db.fetch("SELECT tip_id, stream_id, amount, fee, message FROM stream_tips")
    assert [tuple(r) for r in rows] == [(uuid.UUID(tip_id), uuid.UUID(stream["id"]), 100, 20, "bravo")]
    totals = {str(r["id"]): r["total_tokens_received"] for r in await db.fetch(
        "SELECT id, total_tokens_received FROM streams")}
    assert totals == {stream["id"]: 100, elsewhere["id"]: 0}
    for s in (sock, rival_sock):
        await s.close()


async def test_a_retry_of_an_applied_tip_completes_it_after_its_stream_ended(socket_client: MakeClient) -> None:
    """The process died after the ledger moved the tip; before the client's retry the host ended the
    stream (or became unable to take tips, or the tipper fell into debt). The retry is not refused:
    the tokens moved, so refusing would tell the tipper no while its tokens are gone, and the stream
    would lack the record for good. It completes the record; a new tip there is still refused."""
    client = await socket_client()
    app = client.app
    host, fan = await make_user(app, role="performer"), await make_user(app)
    await fund(app, fan.id, 500)
    stream = await _live(client, host)
    tip_id = uuid.uuid4()
    outcome = await transfer_tip(app[money.LEDGER], app[money.ACCOUNTS], tip_id=tip_id, sender=fan.id,
                                 recipient=host.id, amount=50, fee_bps=app[keys.SETTINGS].tip_fee_bps,
                                 metadata={"message": "hi", "stream": stream["id"]})
    assert outcome.result is Result.OK
    assert (await client.post(f"/v1/streams/{stream['id']}/end", headers=host.headers)).status == 200
    db = app[keys.DB]
    await db.execute("INSERT INTO wallet_debts (user_id, owed) VALUES ($1, 7)", fan.id)
    body = {"to_user_id": str(host.id), "amount": 50, "message": "hi", "stream_id": stream["id"], "id": str(tip_id)}
    resp = await client.post("/v1/wallet/transfer", json=body, headers=fan.headers)
    data = (await resp.json())["data"]
    assert resp.status == 200 and data["replayed"] is True and data["stream_total"] == 50, data
    fresh = await client.post("/v1/wallet/transfer", json={**body, "id": _tid()}, headers=fan.headers)
    assert fresh.status == 409 and (await fresh.json())["error"]["code"] == "CONFLICT"
    changed = await client.post("/v1/wallet/transfer", json={**body, "amount": 51}, headers=fan.headers)
    assert changed.status == 409 and (await changed.json())["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await available(app, fan.id) == 450
    assert await db.fetchval("SELECT amount FROM stream_tips WHERE tip_id = $1", tip_id) == 50
    report = await tips_audit.audit(db, settle_s=0)
    assert all(c.ok for c in report), report
