"""Two nodes (two apps on one Redis and one PostgreSQL): one ordered stream per room, shared presence."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel.settings import Settings
from signaling.features.rooms import moderation
from tests.support.factories import make_user
from tests.support.rooms_support import identity
from tests.support.socket_support import Sock, connect, eventually, hub_of, public_room


async def two_nodes(make_settings: Callable[..., Settings], make_app: Callable[[Settings], web.Application],
                    aiohttp_client: Any, redis_url: str, **overrides: Any) -> tuple[TestClient, TestClient]:
    settings = make_settings(redis_url=redis_url, viewer_count_interval_s=0.05, **overrides)
    a: TestClient = await aiohttp_client(make_app(settings))
    b: TestClient = await aiohttp_client(make_app(settings))
    return a, b


async def events_until(sock: Sock, type_: str, count: int) -> list[dict[str, Any]]:
    return [await sock.event(type_) for _ in range(count)]


async def test_clients_on_both_nodes_see_one_ordered_stream(make_settings: Any, make_app: Any,
                                                              aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url)
    room = await public_room(a.app)
    on_a = await connect(a, guest=True)
    on_b = await connect(b, guest=True)
    ja = await on_a.ok("join", room)
    jb = await on_b.ok("join", room)
    assert ja["epoch"] == jb["epoch"]

    async def publish(node: TestClient, name: str) -> list[int]:
        hub = hub_of(node)
        out = []
        for i in range(40):
            out.append(await hub.publish(room, "seq", {"node": name, "i": i}))
            await asyncio.sleep(0)
        return out

    from_a, from_b = await asyncio.gather(publish(a, "a"), publish(b, "b"))
    assert sorted(from_a + from_b) == list(range(ja["offset"] + 1, ja["offset"] + 81))
    seen_a = await events_until(on_a, "seq", 80)
    seen_b = await events_until(on_b, "seq", 80)
    assert seen_a == seen_b  # same events, same order, on both nodes
    assert [e["offset"] for e in seen_a] == list(range(ja["offset"] + 1, ja["offset"] + 81))
    # Each node's own publications keep their order within the total order.
    assert [e["data"]["i"] for e in seen_a if e["data"]["node"] == "a"] == list(range(40))

    # A client of node A that reconnects to node B resumes where it was.
    await on_a.close()
    missed = [await hub_of(a).publish(room, "seq", {"node": "a", "i": 100 + i}) for i in range(3)]
    moved = await connect(b, guest=True)
    resumed = await moved.ok("join", room, since={"epoch": ja["epoch"], "offset": seen_a[-1]["offset"]})
    assert resumed["recovered"] is True and [e["offset"] for e in resumed["events"]] == missed


async def test_presence_counts_staff_and_bans_span_nodes(make_settings: Any, make_app: Any,
                                                         aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url)
    host = await make_user(a.app, role="performer")
    room = await public_room(a.app, host)
    viewer_a = await make_user(a.app)
    viewer_b = await make_user(a.app)
    sa = await connect(a, token=viewer_a.token)
    sb = await connect(b, token=viewer_b.token)
    await sa.ok("join", room)
    await sb.ok("join", room)

    async def count_seen(sock: Sock, n: int) -> None:
        while (await sock.event("room.viewers"))["data"]["count"] != n:
            pass

    await asyncio.wait_for(asyncio.gather(count_seen(sa, 2), count_seen(sb, 2)), 5)
    listed = await sa.ok("presence", room)
    assert {m["user_id"] for m in listed["members"]} == {str(viewer_a.id), str(viewer_b.id)}

    performer = await connect(b, token=host.token)
    await performer.ok("join", room)
    assert (await sa.event("member.joined"))["data"] == {"user_id": str(host.id), "role": "performer"}
    await asyncio.wait_for(count_seen(sa, 3), 5)

    # A ban on node A removes the user's socket on node B from the room at once (the control channel).
    await moderation.ban(a.app, identity(host), room, viewer_b.id, "spam", None)
    assert (await sb.event("member.banned"))["data"]["user_id"] == str(viewer_b.id)
    await eventually(lambda: room not in next(iter(hub_of(b).admission.by_user[viewer_b.id])).rooms)
    assert await sb.error("presence", room) == "NOT_JOINED"
    await asyncio.wait_for(count_seen(sa, 2), 5)


async def test_staff_with_sockets_on_both_nodes_is_announced_once(make_settings: Any, make_app: Any,
                                                                   aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url)
    host = await make_user(a.app, role="performer")
    room = await public_room(a.app, host)
    watcher = await connect(a, token=(await make_user(a.app)).token)
    await watcher.ok("join", room)
    host_a = await connect(a, token=host.token)
    host_b = await connect(b, token=host.token)
    await host_a.ok("join", room)
    await host_b.ok("join", room)
    await host_a.ok("leave", room)  # the host is still in the room through node B
    await hub_of(b).publish(room, "marker", {"n": 1})
    await host_b.ok("leave", room)
    await hub_of(b).publish(room, "marker", {"n": 2})

    seen: list[tuple[str, Any]] = []
    while len([t for t, _ in seen if t == "marker"]) < 2:
        event = await watcher.event()
        if event["type"] != "room.viewers":
            seen.append((event["type"], event["data"]))
    assert seen == [("member.joined", {"user_id": str(host.id), "role": "performer"}), ("marker", {"n": 1}),
                    ("member.left", {"user_id": str(host.id), "role": "performer"}), ("marker", {"n": 2})]


async def test_the_socket_limit_per_user_counts_every_node(make_settings: Any, make_app: Any,
                                                           aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url, ws_max_conns_per_user=2)
    user = await make_user(a.app)
    first = await connect(a, token=user.token)
    second = await connect(b, token=user.token)
    third = await connect(a)
    reply = await third.request("auth", token=user.token)
    assert reply["ok"] is False and reply["error"]["code"] == "TOO_MANY_CONNECTIONS"
    assert await third.closed() == 4009
    # Through the query string too, on the other node.
    by_query = await connect(b, token=user.token, auth_op=False)
    assert await by_query.closed() == 4009
    assert user.id not in hub_of(a).admission.by_user or len(hub_of(a).admission.by_user[user.id]) == 1

    await second.close()  # frees a place on node B, which node A sees
    await eventually(lambda: user.id not in hub_of(b).admission.by_user)
    again = await connect(a, token=user.token)
    assert "at" in await again.ok("ping")
    assert "at" in await first.ok("ping")
