"""Suspending an account (or changing its role) closes its sockets on every node at once and its
old access token is refused everywhere at once: two nodes sharing Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

from signaling.core.protocol import Close
from tests.signaling.test_socket_cluster import two_nodes
from tests.support.factories import make_user
from tests.support.socket_support import connect, public_room


async def test_suspension_closes_sockets_and_refuses_the_old_token_on_every_node(
        make_settings: Any, make_app: Any, aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url)
    admin = await make_user(a.app, role="admin")
    user = await make_user(a.app)
    bystander = await make_user(a.app)
    room = await public_room(a.app)
    on_a, on_b = await connect(a, token=user.token), await connect(b, token=user.token)
    await on_b.ok("join", room)
    other = await connect(b, token=bystander.token)
    assert (await b.get("/v1/me", headers=user.headers)).status == 200

    resp = await a.patch(f"/v1/users/{user.id}", json={"status": "suspended"}, headers=admin.headers)
    assert resp.status == 200, await resp.text()

    assert await on_a.closed() == Close.AUTH_FAILED
    assert await on_b.closed() == Close.AUTH_FAILED
    assert await other.ok("ping")  # only that user's sockets
    # Node B refuses the old token at once (it did not wait for its key reload).
    resp = await b.get("/v1/me", headers=user.headers)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "INVALID_TOKEN"
    retry = await connect(b)
    assert (await retry.request("auth", token=user.token))["error"]["code"] == "INVALID_TOKEN"
    assert await retry.closed() == Close.AUTH_FAILED


async def test_a_role_change_asks_the_sockets_to_come_back_with_a_fresh_token(
        make_settings: Any, make_app: Any, aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url)
    admin = await make_user(a.app, role="admin")
    user = await make_user(a.app)
    on_b = await connect(b, token=user.token)
    resp = await a.patch(f"/v1/users/{user.id}", json={"role": "performer"}, headers=admin.headers)
    assert resp.status == 200, await resp.text()
    assert await on_b.closed() == Close.TOKEN_EXPIRED
    # A profile edit that changes neither role nor status leaves the sockets alone.
    again = await connect(b, token=admin.token)
    resp = await a.patch(f"/v1/users/{admin.id}", json={"display_name": "Still Admin"}, headers=admin.headers)
    assert resp.status == 200, await resp.text()
    assert await again.ok("ping")
