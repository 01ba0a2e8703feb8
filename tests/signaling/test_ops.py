"""Op declarations and the per-app registry: roles, rate categories, detach hooks, the node socket cap."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from signaling.core import keys as socket_keys
from signaling.core.connection import Connection
from signaling.core.ops import OpContext, OpGroup, OpRegistry
from signaling.features import registry as features
from tests.support.factories import make_user
from tests.support.socket_support import MakeClient, connect, eventually, public_room

CORE_AND_FEATURE_OPS = {"auth", "join", "leave", "presence", "ping", "chat.send", "chat.delete", "tip.send",
                        "room.mute", "room.unmute", "room.kick", "room.ban", "room.unban", "room.slow_mode"}


def test_each_build_is_a_registry_of_its_own_with_every_op() -> None:
    first, second = features.build(), features.build()
    assert first is not second
    assert set(first.names) == CORE_AND_FEATURE_OPS
    first.include(_probe_ops())
    assert "test.admin_only" in first.names and "test.admin_only" not in second.names


def test_an_op_declared_twice_is_refused() -> None:
    registry = OpRegistry()
    registry.include(_probe_ops())
    with pytest.raises(AssertionError, match="declared twice"):
        registry.include(_probe_ops())


def test_only_one_feature_may_be_the_room_gate() -> None:
    registry = features.build()
    with pytest.raises(AssertionError, match="one feature"):
        registry.admit_with(registry.gate, registry.access_check)  # type: ignore[arg-type]


def _probe_ops() -> OpGroup:
    group = OpGroup()

    @group.op("test.admin_only", auth="user", roles=("admin",), room="none")
    async def admin_only(ctx: OpContext, data: Any) -> dict[str, Any]:
        return {"role": ctx.user.role}

    @group.op("test.rated", auth="any", room="none", rate="tips")
    async def rated(ctx: OpContext, data: Any) -> dict[str, Any]:
        return {}

    return group


async def test_declared_roles_and_rate_are_enforced_by_the_endpoint(socket_client: MakeClient) -> None:
    client: TestClient = await socket_client(rate_tips_per_min=2, rate_anonymous_per_min=1)
    client.app[socket_keys.OPS].include(_probe_ops())
    viewer, admin = await make_user(client.app), await make_user(client.app, role="admin")
    as_viewer, as_admin = await connect(client, token=viewer.token), await connect(client, token=admin.token)
    assert await as_viewer.error("test.admin_only") == "PERMISSION_DENIED"
    assert await as_admin.ok("test.admin_only") == {"role": "admin"}

    # The `tips` budget of a user (2 per minute here) is spent per call; then RATE_LIMIT_EXCEEDED.
    assert await as_viewer.ok("test.rated") == {}
    assert await as_viewer.ok("test.rated") == {}
    refused = await as_viewer.request("test.rated")
    assert refused["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert refused["error"]["details"]["category"] == "tips"
    assert await as_admin.ok("test.rated") == {}  # another user's budget
    # Guests spend the anonymous budget of their address.
    guest = await connect(client, guest=True)
    assert await guest.ok("test.rated") == {}
    assert (await guest.request("test.rated"))["error"]["details"]["category"] == "anonymous"


async def test_the_tip_op_shares_the_tips_budget_with_rest(socket_client: MakeClient) -> None:
    client: TestClient = await socket_client(rate_tips_per_min=1)
    viewer = await make_user(client.app)
    performer = await make_user(client.app, role="performer")
    resp = await client.post("/v1/wallet/transfer", headers=viewer.headers,
                             json={"to_user_id": str(performer.id), "amount": 1})
    assert resp.status in (201, 409), await resp.text()  # spent the budget (409: no tokens to tip)
    room = await public_room(client.app, performer)
    sock = await connect(client, token=viewer.token)
    await sock.ok("join", room)
    refused = await sock.request("tip.send", room, id="0b8ba7a0-6b1c-4c4c-9f1e-6d7a1b2c3d4e", amount=1)
    assert refused["error"]["code"] == "RATE_LIMIT_EXCEEDED"


async def test_detach_hooks_run_once_after_the_socket_left_its_rooms(socket_client: MakeClient) -> None:
    client: TestClient = await socket_client()
    seen: list[tuple[str, list[str]]] = []

    async def hook(conn: Connection) -> None:
        seen.append((conn.conn_id, list(conn.rooms)))

    async def failing(conn: Connection) -> None:
        raise RuntimeError("a feature's cleanup failed")

    client.app[socket_keys.OPS].on_detach(failing)
    client.app[socket_keys.OPS].on_detach(hook)
    user = await make_user(client.app)
    sock = await connect(client, token=user.token)
    await sock.ok("join", await public_room(client.app))
    conn_id = (await sock.ok("auth", token=user.token))["conn_id"]
    await sock.close()
    await eventually(lambda: len(seen) == 1)
    assert seen == [(conn_id, [])]  # after leaving every room; a failing hook does not stop the next
    assert await connect(client, token=user.token)  # the node still serves


async def test_a_full_node_refuses_the_upgrade_with_503(socket_client: MakeClient) -> None:
    client: TestClient = await socket_client(ws_max_conns_per_node=2)
    first, second = await connect(client, guest=True), await connect(client, guest=True)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws?guest=1")
    assert refused.value.status == 503
    assert refused.value.headers is not None and refused.value.headers.get("Retry-After") == "1"
    await first.close()
    await eventually(lambda: len(client.app[socket_keys.HUB].connections) == 1)
    third = await connect(client, guest=True)  # a freed slot is usable again
    assert await third.ok("ping") and await second.ok("ping")
