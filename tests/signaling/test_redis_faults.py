"""Redis killed (-9) or hung (SIGSTOP) under a running node: REST and socket keep working or answer a
clear 503 UNAVAILABLE; nothing is half-done without the caller being told; recovery completes it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel import keys
from server.kernel.settings import Settings
from tests.support.factories import TestUser, make_user
from tests.support.services import RedisProcess
from tests.support.socket_support import Sock, connect
from tests.support.wallet_support import available, fund

pytestmark = pytest.mark.slow
TIMEOUT_S = 0.5  # each Redis command's bound
RETRY_S = 1.0  # how long a failure keeps the node off Redis


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisProcess]:
    server = RedisProcess()
    yield server
    server.close()


async def live_stream(client: TestClient, host: TestUser) -> dict[str, Any]:
    resp = await client.post("/v1/streams", json={"title": "Outage set"}, headers=host.headers)
    assert resp.status == 201, await resp.text()
    stream: dict[str, Any] = (await resp.json())["data"]
    resp = await client.post(f"/v1/streams/{stream['id']}/start", headers=host.headers)
    assert resp.status == 200, await resp.text()
    return stream


async def chat_rows(client: TestClient, room: str) -> int:
    count: int = await client.app[keys.DB].fetchval("SELECT count(*) FROM chat_messages WHERE room = $1", room)
    return count


@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_a_node_keeps_serving_while_redis_is_away(fault: str, own_redis: RedisProcess, aiohttp_client: Any,
                                                         make_app: Callable[[Settings], web.Application],
                                                         make_settings: Callable[..., Settings]) -> None:
    client: TestClient = await aiohttp_client(make_app(make_settings(
        redis_url=own_redis.url, redis_timeout_s=TIMEOUT_S, redis_retry_s=RETRY_S, broker_subscribe_timeout_s=1.0,
        broker_ping_interval_s=0.5)))
    host = await make_user(client.app, role="performer")
    fan = await make_user(client.app)
    await fund(client.app, fan.id, 1000)
    stream = await live_stream(client, host)
    room, sid = stream["room"], stream["id"]
    watcher = await connect(client, token=host.token)
    tipper = await connect(client, token=fan.token)
    for sock in (watcher, tipper):
        await sock.ok("join", room)

    (own_redis.kill if fault == "killed" else own_redis.hang)()
    try:
        # REST: reads degrade to this node's presence; a committed edit answers what happened (200).
        for path in ("/v1/streams", f"/v1/streams/{sid}", f"/v1/streams/{sid}/viewers"):
            resp = await client.get(path, headers=host.headers)
            assert resp.status == 200, (path, await resp.text())
        resp = await client.get(f"/v1/streams/{sid}")
        assert (await resp.json())["data"]["viewer_count"] == 2  # both sockets are on this node
        resp = await client.post(f"/v1/streams/{sid}/join", headers=fan.headers)
        assert resp.status == 200, await resp.text()
        resp = await client.patch(f"/v1/streams/{sid}", json={"title": "Still on"}, headers=host.headers)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["data"]["title"] == "Still on"
        health = await (await client.get("/health")).json()
        assert health["data"]["status"] == "degraded"

        # Socket chat: refused with UNAVAILABLE, and not stored (nobody saw it); the socket stays usable.
        before = await chat_rows(client, room)
        refused = await tipper.request("chat.send", room, text="anyone?")
        assert refused["error"]["code"] == "UNAVAILABLE", refused
        assert await chat_rows(client, room) == before
        assert await tipper.ok("ping")

        # A tip moves the tokens and says so: UNAVAILABLE with applied: true (socket and REST alike).
        tip_id = str(uuid.uuid4())
        refused = await tipper.request("tip.send", room, id=tip_id, amount=40)
        assert refused["error"]["code"] == "UNAVAILABLE", refused
        assert refused["error"]["details"]["applied"] is True
        assert await available(client.app, fan.id) == 960
        rest_tip = str(uuid.uuid4())
        resp = await client.post("/v1/wallet/transfer", headers=fan.headers,
                                 json={"to_user_id": str(host.id), "amount": 10, "stream_id": sid, "id": rest_tip})
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["details"]["applied"] is True

        # A join needs the room's stream: refused quickly with UNAVAILABLE, not a hang or a 500.
        late = await connect(client, token=(await make_user(client.app)).token)
        started = asyncio.get_running_loop().time()
        assert await late.error("join", room) == "UNAVAILABLE"
        assert asyncio.get_running_loop().time() - started < 3
    finally:
        (own_redis.restart if fault == "killed" else own_redis.resume)()

    # Redis is back: the retried tip completes exactly once (replayed in the ledger, broadcast once).
    await asyncio.sleep(RETRY_S + 0.2)
    if fault == "killed":
        # The room's stream died with Redis: members are told to resync, then rejoin.
        assert (await watcher.event("room.reset", within=10))["type"] == "room.reset"
        for sock in (watcher, tipper):
            await sock.ok("leave", room)
            await sock.ok("join", room)
    else:
        updated = await watcher.event("stream.updated", within=10)  # the queued edit event went out
        assert updated["data"]["title"] == "Still on"
    retried = await tipper.ok("tip.send", room, id=tip_id, amount=40)
    assert retried["replayed"] is True and retried["outcome"] == "exists"
    received = await watcher.event("tip.received", within=10)
    assert received["data"]["id"] == tip_id
    assert await available(client.app, fan.id) == 950  # 40 + 10 moved once each
    sent = await tipper.ok("chat.send", room, text="back")
    assert sent["offset"] > 0


async def test_a_publish_waits_in_the_retry_queue_and_goes_out_once(own_redis: RedisProcess, aiohttp_client: Any,
                                                                     make_app: Callable[[Settings], web.Application],
                                                                     make_settings: Callable[..., Settings]) -> None:
    client: TestClient = await aiohttp_client(make_app(make_settings(
        redis_url=own_redis.url, redis_timeout_s=TIMEOUT_S, redis_retry_s=0.3)))
    host = await make_user(client.app, role="performer")
    stream = await live_stream(client, host)
    watcher: Sock = await connect(client, token=host.token)
    await watcher.ok("join", stream["room"])
    own_redis.hang()
    try:
        for title in ("one", "two"):
            resp = await client.patch(f"/v1/streams/{stream['id']}", json={"title": title}, headers=host.headers)
            assert resp.status == 200, await resp.text()
    finally:
        own_redis.resume()
    titles = [(await watcher.event("stream.updated", within=10))["data"]["title"] for _ in range(2)]
    assert titles == ["one", "two"]  # in order, each once
    await asyncio.sleep(1.0)
    assert not [e for e in watcher.events if e["type"] == "stream.updated"]
