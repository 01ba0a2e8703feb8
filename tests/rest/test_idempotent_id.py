"""`idempotent_id`: the ledger id of a keyed request, the same on every retry, fresh without a key."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient, make_mocked_request

from rest.framework.params import PathValues
from rest.framework.router import Call, idempotent_id
from server.kernel import keys
from server.kernel.identity import Identity
from tests.support.factories import TestUser, make_user
from tests.support.wallet_support import fund

USER = uuid.UUID("6f1b1d34-8a5e-4f0c-9a61-0c3f3e0a1d2b")


def _call(key: str | None, user: uuid.UUID = USER) -> Call[None]:
    headers = {} if key is None else {"Idempotency-Key": key}
    request = make_mocked_request("POST", "/v1/wallet/transfer", headers=headers)
    return Call(request, PathValues({}), None, None, Identity(user, "viewer", 0.0))


def test_the_derivation_is_pinned() -> None:
    # Retries after a deploy must derive what the previous version derived: this value is fixed forever.
    assert idempotent_id(_call("k-1"), "tip") == uuid.UUID("72a28c74-d855-5e12-add8-a156b0fc2c17")
    # surrounding blanks are not part of the key (run_idempotent scopes the stripped key too)
    assert idempotent_id(_call("  k-1 "), "tip") == idempotent_id(_call("k-1"), "tip")


def test_kind_caller_and_key_each_separate_ids() -> None:
    base = idempotent_id(_call("k-1"), "tip")
    assert idempotent_id(_call("k-1"), "payout") != base
    assert idempotent_id(_call("k-2"), "tip") != base
    assert idempotent_id(_call("k-1", uuid.uuid4()), "tip") != base


def test_without_a_key_every_request_is_new() -> None:
    ids = {idempotent_id(_call(None), "tip") for _ in range(3)} | {idempotent_id(_call(""), "tip")}
    assert len(ids) == 4


async def test_a_retry_whose_response_was_lost_moves_nothing_twice(client: TestClient) -> None:
    """The first attempt committed in the ledger but its stored response is gone (the process died
    before storing it): the retry derives the same tip id and the ledger answers `exists`."""
    app = client.app
    fan: TestUser = await make_user(app)
    performer = await make_user(app, role="performer")
    await fund(app, fan.id, 1000)
    body: dict[str, Any] = {"to_user_id": str(performer.id), "amount": 100}
    first = await client.post("/v1/wallet/transfer", json=body, headers=fan.keyed("lost-1"))
    assert first.status == 201
    tip = (await first.json())["data"]
    await app[keys.DB].execute("DELETE FROM idempotency_keys")
    again = await client.post("/v1/wallet/transfer", json=body, headers=fan.keyed("lost-1"))
    replay = (await again.json())["data"]
    assert again.status == 200 and "Idempotent-Replayed" not in again.headers
    assert replay["id"] == tip["id"] and replay["replayed"] is True
    assert await app[keys.DB].fetchval("SELECT count(*) FROM ledger_transfers WHERE code = 'tip'") == 1
