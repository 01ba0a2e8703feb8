"""A keyed request in progress holds its key under a lease in the name of its worker: a retry while it
runs gets 409 with Retry-After; a retry after its worker died (or its lease ended) takes the key over
and runs the request again, once however many retries race for it. The process-level version (a
server killed in a tip storm) is tests/server/test_crash_tips.py."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from ledger import AccountKind, Result
from ledger.flows.tips import transfer_tip
from ledger.ids import derived_id
from rest.framework.responses import ok
from rest.framework.router import Call, Router, mount
from server.commerce import keys as money
from server.kernel import keys
from server.kernel.instance import Instance, gone_sql
from server.kernel.settings import Settings, SettingsError, load_settings
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import new_stream
from tests.support.wallet_support import available, fund

ClientFactory = Callable[..., Any]


@dataclass
class Gate:
    """Holds the test route's runs until released, and counts them."""

    runs: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


GATE = web.AppKey("test_gate", Gate)
slow = Router("test-idempotency")


class RunOut(BaseModel):
    run: int


@slow.post("/v1/test/slow", summary="test route: runs until released", response=RunOut, status=201,
           rate="none", idempotent=True)
async def _slow(call: Call[None]) -> web.StreamResponse:
    gate = call.app[GATE]
    gate.runs += 1
    run = gate.runs
    gate.entered.set()
    await gate.release.wait()
    return ok({"run": run}, status=201)


@pytest.fixture
async def gated(aiohttp_client: ClientFactory, make_app: Callable[[Settings], web.Application],
                settings: Settings) -> TestClient:
    app = make_app(settings)
    app[GATE] = Gate()
    mount(app, [slow])
    client: TestClient = await aiohttp_client(app)
    return client


async def _in_progress(app: web.Application, user: TestUser, path: str, key: str, body: bytes, *,
                       owner: int | None, lease_s: float | None) -> None:
    """The key's row as a run of another worker left it: in progress, no answer."""
    await app[keys.DB].execute(
        """INSERT INTO idempotency_keys (scope, key, request_hash, locked_until, owner, run_id)
           VALUES ($1, $2, $3, CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $4) END,
                   $5, $6)""",
        f"{user.id} POST {path}", key, hashlib.sha256(body).digest(), lease_s, owner, uuid.uuid4())


async def _gone(app: web.Application, worker: Instance) -> None:
    """Close `worker` as its process's death would, and wait (bounded) until PostgreSQL let its lock go."""
    await worker.close()
    deadline = time.monotonic() + 10
    while not await app[keys.DB].fetchval(f"SELECT {gone_sql('$1::bigint')}", worker.id):
        assert time.monotonic() < deadline, "the closed worker's lock was never released"
        await asyncio.sleep(0.02)


async def test_a_retry_while_the_first_run_is_running_gets_409_with_retry_after(gated: TestClient) -> None:
    app, gate = gated.app, gated.app[GATE]
    user = await make_user(app)
    first = asyncio.create_task(gated.post("/v1/test/slow", headers=user.keyed("k-1")))
    await asyncio.wait_for(gate.entered.wait(), 5)
    again = await gated.post("/v1/test/slow", headers=user.keyed("k-1"))
    body = await again.json()
    assert again.status == 409 and body["error"]["code"] == "CONFLICT", body
    assert again.headers["Retry-After"] == "1"
    gate.release.set()
    done = await first
    assert done.status == 201 and (await done.json())["data"] == {"run": 1}
    replay = await gated.post("/v1/test/slow", headers=user.keyed("k-1"))
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert (await replay.json())["data"] == {"run": 1} and gate.runs == 1


async def test_retries_racing_for_the_key_of_a_dead_worker_run_it_once(gated: TestClient, dsn: str) -> None:
    app, gate = gated.app, gated.app[GATE]
    user = await make_user(app)
    other = Instance(dsn)
    await other.start()
    await _in_progress(app, user, "/v1/test/slow", "k-dead", b"", owner=other.id, lease_s=3600)
    alive = await gated.post("/v1/test/slow", headers=user.keyed("k-dead"))
    assert alive.status == 409 and gate.runs == 0, "its worker still runs: the key is still its"
    await _gone(app, other)  # its process died mid-request: no answer stored
    retries = [asyncio.create_task(gated.post("/v1/test/slow", headers=user.keyed("k-dead"))) for _ in range(8)]
    await asyncio.wait_for(gate.entered.wait(), 5)
    # One retry runs; the others find its live lease while it runs.
    deadline = time.monotonic() + 10
    while sum(r.done() for r in retries) < len(retries) - 1:
        assert time.monotonic() < deadline, "the other retries never answered"
        await asyncio.sleep(0.02)
    gate.release.set()
    statuses = sorted([(r.status, r.headers.get("Idempotent-Replayed")) for r in await asyncio.gather(*retries)])
    assert statuses == [(201, None)] + [(409, None)] * 7, statuses
    assert gate.runs == 1
    replay = await gated.post("/v1/test/slow", headers=user.keyed("k-dead"))
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert (await replay.json())["data"] == {"run": 1}


async def test_an_ended_lease_or_a_row_without_one_is_taken_over(gated: TestClient, dsn: str) -> None:
    app, gate = gated.app, gated.app[GATE]
    gate.release.set()
    user = await make_user(app)
    other = Instance(dsn)
    await other.start()
    try:
        # Its worker runs, but the run outlived its lease: it is over as far as the key goes.
        await _in_progress(app, user, "/v1/test/slow", "k-expired", b"", owner=other.id, lease_s=-1)
        # A run from before leases (or of a worker without its lock) with no lease: taken at once.
        await _in_progress(app, user, "/v1/test/slow", "k-legacy", b"", owner=None, lease_s=None)
        # A worker without its lock, within its lease: the lease alone decides, the key is still its.
        await _in_progress(app, user, "/v1/test/slow", "k-leased", b"", owner=None, lease_s=3600)
        for key in ("k-expired", "k-legacy"):
            resp = await gated.post("/v1/test/slow", headers=user.keyed(key))
            assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers, key
        assert gate.runs == 2
        assert (await gated.post("/v1/test/slow", headers=user.keyed("k-leased"))).status == 409
        assert gate.runs == 2
        # A different request under the same key is refused, in progress or not.
        resp = await gated.post("/v1/test/slow", data=b"{}", headers=user.keyed("k-leased"))
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    finally:
        await other.close()


async def test_a_keyed_tip_whose_worker_died_after_the_ledger_is_completed_by_the_retry(
        client: TestClient, dsn: str) -> None:
    """The incident: the worker died after the ledger moved the tip and before its stream record,
    broadcast and stored answer. Every retry got 409 for 24 h and the stream's total stayed short.
    The retry now runs the tip again: the ledger answers `exists` (the tip id derives from the key)
    and the record, the total and the broadcast are completed; nothing moves twice."""
    app = client.app
    host, fan = await make_user(app, role="performer"), await make_user(app)
    await fund(app, fan.id, 1000)
    stream = await new_stream(client, host)
    assert (await client.post(f"/v1/streams/{stream['id']}/start", headers=host.headers)).status == 200
    body = orjson.dumps({"to_user_id": str(host.id), "amount": 74, "message": "hi", "stream_id": stream["id"]})
    tip_id = derived_id("tip", fan.id, "storm-1")
    dead = Instance(dsn)
    await dead.start()
    await _in_progress(app, fan, "/v1/wallet/transfer", "storm-1", body, owner=dead.id, lease_s=3600)
    outcome = await transfer_tip(app[money.LEDGER], app[money.ACCOUNTS], tip_id=tip_id, sender=fan.id,
                                 recipient=host.id, amount=74, fee_bps=app[keys.SETTINGS].tip_fee_bps,
                                 metadata={"message": "hi", "stream": stream["id"]})
    assert outcome.result is Result.OK
    await _gone(app, dead)
    headers = {**fan.keyed("storm-1"), "Content-Type": "application/json"}
    resp = await client.post("/v1/wallet/transfer", data=body, headers=headers)
    data = (await resp.json())["data"]
    assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers, data
    assert (data["id"], data["replayed"], data["stream_total"]) == (str(tip_id), True, 74)
    assert "offset" in data, "the tip.received the first run never published"
    again = await client.post("/v1/wallet/transfer", data=body, headers=headers)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["data"] == data
    db = app[keys.DB]
    assert await db.fetchval("SELECT count(*) FROM ledger_transfers WHERE code = 'tip'") == 1
    assert await available(app, fan.id) == 1000 - 74
    assert await available(app, host.id, AccountKind.EARNINGS) == 74 - outcome.fee
    assert await db.fetchval("SELECT amount FROM stream_tips WHERE tip_id = $1", tip_id) == 74
    deadline = time.monotonic() + 5  # the broadcast's mark goes with the recorder's next batch
    while await db.fetchval("SELECT broadcast_at FROM stream_tips WHERE tip_id = $1", tip_id) is None:
        assert time.monotonic() < deadline, "the broadcast was never marked"
        await asyncio.sleep(0.02)
    total = await db.fetchval("SELECT total_tokens_received FROM streams WHERE id = $1", uuid.UUID(stream["id"]))
    assert total == 74


def test_the_lease_outlasts_every_bound_on_a_request() -> None:
    with pytest.raises(SettingsError, match="GREENROOM_IDEMPOTENCY_LEASE_S"):
        load_settings(database_url="postgresql://x/y", idempotency_lease_s=30)
    with pytest.raises(SettingsError, match="GREENROOM_IDEMPOTENCY_LEASE_S"):
        load_settings(database_url="postgresql://x/y", shutdown_timeout_s=120)
    assert load_settings(database_url="postgresql://x/y", idempotency_lease_s=55).idempotency_lease_s == 55
