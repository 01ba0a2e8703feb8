"""A room's access rule changes while members are in it: those it no longer admits are removed at once.

`rooms.admitted` (one query for a room's members) must agree with `rooms.admits` (one standing at a
time, what `join` checks); the last test holds the two together over every rule and grant.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.kernel import keys
from signaling.features.rooms import access as rooms
from tests.support.factories import make_user
from tests.support.socket_support import connect, eventually, hub_of


async def test_members_the_new_rule_does_not_admit_are_removed(socket_client: Any) -> None:
    client = await socket_client()
    app = client.app
    host = await make_user(app, role="performer")
    holder = await make_user(app)
    stranger = await make_user(app)
    moderator = await make_user(app)
    resp = await client.post("/v1/streams", json={"title": "access change"}, headers=host.headers)
    assert resp.status == 201, await resp.text()
    stream = (await resp.json())["data"]
    room = stream["room"]
    db = app[keys.DB]
    await rooms.grant(db, room, holder.id, "pass")
    await db.execute("INSERT INTO room_moderators (room, user_id) VALUES ($1, $2)", room, moderator.id)

    socks = {"host": await connect(client, token=host.token), "holder": await connect(client, token=holder.token),
             "stranger": await connect(client, token=stranger.token), "guest": await connect(client, guest=True),
             "moderator": await connect(client, token=moderator.token)}
    for sock in socks.values():
        await sock.ok("join", room)

    resp = await client.patch(f"/v1/streams/{stream['id']}", json={"access": "pass"}, headers=host.headers)
    assert resp.status == 200, await resp.text()
    for sock in socks.values():  # everyone still gets the event itself
        assert (await sock.event("room.access"))["data"] == {"access": "pass"}

    async def out_of_room(name: str) -> bool:
        reply = await socks[name].request("presence", room)
        return reply["ok"] is False and reply["error"]["code"] == "NOT_JOINED"

    await eventually(lambda: out_of_room("stranger"))
    await eventually(lambda: out_of_room("guest"))
    for name in ("host", "holder", "moderator"):
        assert (await socks[name].request("presence", room))["ok"] is True
    members = (await socks["host"].ok("presence", room))["members"]
    assert {m["user_id"] for m in members} == {str(host.id), str(holder.id), str(moderator.id)}

    # Removed, not disconnected: the socket still works, and the rule now refuses a rejoin.
    assert "at" in await socks["stranger"].ok("ping")
    assert await socks["stranger"].error("join", room) == "PERMISSION_DENIED"
    await hub_of(client).publish(room, "marker", {})
    assert (await socks["holder"].event("marker"))["type"] == "marker"


async def test_an_unchanged_rule_publishes_no_access_event(socket_client: Any) -> None:
    client = await socket_client()
    host = await make_user(client.app, role="performer")
    resp = await client.post("/v1/streams", json={"title": "same", "access": "public"}, headers=host.headers)
    stream = (await resp.json())["data"]
    guest = await connect(client, guest=True)
    await guest.ok("join", stream["room"])
    resp = await client.patch(f"/v1/streams/{stream['id']}", json={"access": "public", "title": "renamed"},
                              headers=host.headers)
    assert resp.status == 200
    assert (await guest.event("stream.updated"))["data"]["title"] == "renamed"
    await hub_of(client).publish(stream["room"], "marker", {})
    assert (await guest.event())["type"] == "marker"  # no room.access in between
    assert (await guest.request("presence", stream["room"]))["ok"] is True


@pytest.mark.parametrize("access", ["public", "ticket", "pass", "private"])
async def test_admitted_agrees_with_admits_for_every_grant(access: rooms.Access, make_settings: Any,
                                                           make_app: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(make_settings()))
    app = client.app
    db = app[keys.DB]
    host = await make_user(app, role="performer")
    room = await rooms.create_room(db, "stream", uuid.uuid4(), host.id, access)
    admin = await make_user(app, role="admin")
    users = [host.id, admin.id]
    past = datetime.now(UTC) - timedelta(minutes=1)
    for source in ("ticket", "pass", "invite"):
        granted = await make_user(app)
        await rooms.grant(db, room, granted.id, source)
        expired = await make_user(app)
        await rooms.grant(db, room, expired.id, source, expires_at=past)
        users += [granted.id, expired.id]
    plain = await make_user(app)
    users.append(plain.id)
    guests, admitted = await rooms.admitted(app, room, users)
    assert guests == (access == "public")
    standings = await asyncio.gather(*(rooms.standing(db, room, uid) for uid in users))
    assert admitted == {uid for uid, (s, _) in zip(users, standings, strict=True) if rooms.admits(s)}
    assert {host.id, admin.id} <= admitted
    assert await rooms.admitted(app, "stream:" + str(uuid.uuid4()), users) == (False, set())
