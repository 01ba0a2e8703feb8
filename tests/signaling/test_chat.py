"""Chat and moderation over a real room socket (`/ws`): messages, limits, mute, slow mode,
delete, kick, ban. Tests marked with the `socket_client` fixture run on memory and on Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient

from server.kernel import keys
from server.kernel.errors import ApiError
from signaling.features.rooms import access as rooms
from signaling.features.rooms import moderation
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import identity
from tests.support.socket_support import Sock, connect, eventually, public_room

MakeClient = Callable[..., Awaitable[TestClient]]


async def _joined(client: TestClient, user: TestUser, room: str) -> Sock:
    sock = await connect(client, token=user.token)
    await sock.ok("join", room)
    return sock


async def test_chat_message_reaches_members_in_order_and_is_stored(socket_client: MakeClient) -> None:
    client = await socket_client()
    app = client.app
    host = await make_user(app, role="performer", display_name="Host")
    alice = await make_user(app, display_name="Alice")
    bob = await make_user(app, display_name="Bob")
    room = await public_room(app, host)
    a, b, h = [await _joined(client, u, room) for u in (alice, bob, host)]
    sent = await a.ok("chat.send", room, text="  hello\x07 world\n!\u202e  ")
    first = await a.ok("chat.send", room, text="second")
    assert first["offset"] == sent["offset"] + 1
    ev = await b.event("chat.message")
    assert ev["offset"] == sent["offset"] and ev["room"] == room
    assert ev["data"]["id"] == sent["id"] and ev["data"]["text"] == "hello world !"
    assert ev["data"]["author"] == {"id": str(alice.id), "display_name": "Alice", "role": "viewer"}
    assert (await b.event("chat.message"))["data"]["text"] == "second"
    from_host = await h.ok("chat.send", room, text="welcome")
    ev = await a.event("chat.message")
    while ev["offset"] != from_host["offset"]:
        ev = await a.event("chat.message")
    assert ev["data"]["author"]["role"] == "performer"
    row = await app[keys.DB].fetchrow("SELECT room, author_id, text FROM chat_messages WHERE id = $1::uuid",
                                         sent["id"])
    assert (row["room"], row["author_id"], row["text"]) == (room, alice.id, "hello world !")


async def test_refusals_are_error_replies_not_disconnects(client: TestClient) -> None:
    app = client.app
    viewer = await make_user(app)
    room = await public_room(app)
    other_room = await public_room(app)
    sock = await _joined(client, viewer, room)
    limit = app[keys.SETTINGS].chat_max_chars
    assert await sock.error("chat.send", room, text="x" * (limit + 1)) == "VALIDATION_ERROR"
    assert (await sock.ok("chat.send", room, text="x" * limit))["id"]
    for bad in ("", "   ", "\x00\x01\n\t", "\u202e\u2066"):
        assert await sock.error("chat.send", room, text=bad) == "VALIDATION_ERROR", repr(bad)
    assert await sock.error("chat.send", room, text=5) == "VALIDATION_ERROR"
    assert await sock.error("chat.send", room) == "VALIDATION_ERROR"
    assert await sock.error("chat.send", room, text="hi", extra=1) == "VALIDATION_ERROR"
    assert await sock.error("chat.send", other_room, text="hi") == "NOT_JOINED"
    guest = await connect(client, guest=True)
    await guest.ok("join", room)
    assert await guest.error("chat.send", room, text="hi") == "AUTHENTICATION_REQUIRED"
    assert (await sock.ok("ping"))["at"] > 0


async def test_chat_flood_is_rate_limited_per_room(socket_client: MakeClient) -> None:
    client = await socket_client(chat_rate_per_10s=3)
    app = client.app
    viewer = await make_user(app)
    room, room2 = await public_room(app), await public_room(app)
    sock = await _joined(client, viewer, room)
    await sock.ok("join", room2)
    for i in range(3):
        await sock.ok("chat.send", room, text=f"m{i}")
    frame = await sock.request("chat.send", room, text="flood")
    assert frame["error"]["code"] == "RATE_LIMIT_EXCEEDED" and frame["error"]["details"]["retry_after_s"] > 0
    await sock.ok("chat.send", room2, text="elsewhere is fine")
    count = await app[keys.DB].fetchval("SELECT count(*) FROM chat_messages WHERE room = $1", room)
    assert count == 3


async def test_mute_and_unmute(client: TestClient) -> None:
    app = client.app
    host = await make_user(app, role="performer")
    viewer = await make_user(app)
    room = await public_room(app, host)
    h, v = await _joined(client, host, room), await _joined(client, viewer, room)
    muted = await h.ok("room.mute", room, user_id=str(viewer.id), duration_s=60)
    assert muted["until"]
    assert (await v.event("member.muted"))["data"]["user_id"] == str(viewer.id)
    frame = await v.request("chat.send", room, text="let me talk")
    assert frame["error"]["code"] == "MUTED" and frame["error"]["details"]["until"] == muted["until"]
    assert (await rooms.authorize_join(app, identity(viewer), room)).can_chat is False
    assert await v.error("room.mute", room, user_id=str(host.id), duration_s=60) == "PERMISSION_DENIED"
    assert await h.error("room.mute", room, user_id=str(viewer.id), duration_s=10**9) == "VALIDATION_ERROR"
    await h.ok("room.unmute", room, user_id=str(viewer.id))
    await v.ok("chat.send", room, text="thanks")


async def test_slow_mode(client: TestClient) -> None:
    app = client.app
    host = await make_user(app, role="performer")
    viewer = await make_user(app)
    room = await public_room(app, host)
    h, v = await _joined(client, host, room), await _joined(client, viewer, room)
    assert await v.error("room.slow_mode", room, seconds=30) == "PERMISSION_DENIED"
    assert await h.error("room.slow_mode", room, seconds=-1) == "VALIDATION_ERROR"
    assert await h.error("room.slow_mode", room, seconds=10**6) == "VALIDATION_ERROR"
    await h.ok("room.slow_mode", room, seconds=30)
    assert (await v.event("room.slow_mode"))["data"] == {"seconds": 30}
    await v.ok("chat.send", room, text="one")
    frame = await v.request("chat.send", room, text="two")
    assert frame["error"]["code"] == "SLOW_MODE" and frame["error"]["details"]["seconds"] == 30
    for i in range(3):  # the performer is exempt
        await h.ok("chat.send", room, text=f"host {i}")
    await h.ok("room.slow_mode", room, seconds=0)
    await v.ok("chat.send", room, text="three")


async def test_delete_rights(client: TestClient) -> None:
    app = client.app
    host = await make_user(app, role="performer")
    alice, bob, mod = await make_user(app), await make_user(app), await make_user(app)
    room = await public_room(app, host)
    other_room = await public_room(app)
    await moderation.add_moderator(app, identity(host), room, mod.id)
    a, b, m = [await _joined(client, u, room) for u in (alice, bob, mod)]
    msg1 = await a.ok("chat.send", room, text="one")
    msg2 = await a.ok("chat.send", room, text="two")
    assert await b.error("chat.delete", room, id=msg1["id"]) == "PERMISSION_DENIED"
    gone = await a.ok("chat.delete", room, id=msg1["id"])
    ev = await b.event("chat.deleted")
    assert ev["data"] == {"id": msg1["id"]} and ev["offset"] == gone["offset"]
    await m.ok("chat.delete", room, id=msg2["id"])
    again = await a.ok("chat.delete", room, id=msg2["id"])  # already deleted: no second event
    assert "offset" not in again
    await b.ok("join", other_room)
    assert await b.error("chat.delete", other_room, id=msg1["id"]) == "NOT_FOUND"
    assert await a.error("chat.delete", room, id="00000000-0000-0000-0000-000000000000") == "NOT_FOUND"
    assert await a.error("chat.delete", room, id="nope") == "VALIDATION_ERROR"
    deleted_by = await app[keys.DB].fetchval("SELECT deleted_by FROM chat_messages WHERE id = $1::uuid",
                                                msg2["id"])
    assert deleted_by == mod.id


async def test_kick_removes_now_but_allows_rejoin(socket_client: MakeClient) -> None:
    client = await socket_client()
    app = client.app
    host = await make_user(app, role="performer")
    viewer = await make_user(app)
    room = await public_room(app, host)
    h = await _joined(client, host, room)
    v = await _joined(client, viewer, room)
    second_tab = await _joined(client, viewer, room)
    await h.ok("room.kick", room, user_id=str(viewer.id))
    assert (await v.event("member.kicked"))["data"]["user_id"] == str(viewer.id)
    for sock in (v, second_tab):
        await eventually(lambda s=sock: _not_joined(s, room))
    await v.ok("join", room)
    await v.ok("chat.send", room, text="back")


async def _not_joined(sock: Sock, room: str) -> bool:
    frame = await sock.request("presence", room)
    return not frame["ok"] and frame["error"]["code"] == "NOT_JOINED"


async def test_banned_user_is_removed_and_cannot_rejoin_even_after_restart(
        socket_client: MakeClient, make_app, settings) -> None:  # type: ignore[no-untyped-def]
    client = await socket_client()
    app = client.app
    host = await make_user(app, role="performer")
    viewer = await make_user(app)
    room = await public_room(app, host)
    h = await _joined(client, host, room)
    v = await _joined(client, viewer, room)
    assert await h.error("room.ban", room, user_id=str(viewer.id), reason="x" * 501) == "VALIDATION_ERROR"
    await h.ok("room.ban", room, user_id=str(viewer.id), reason="abuse")
    ev = await v.event("member.banned")
    assert ev["data"]["user_id"] == str(viewer.id) and "reason" not in ev["data"]
    await eventually(lambda: _not_joined(v, room))
    frame = await v.request("join", room)
    assert frame["error"]["code"] == "BANNED"
    # a fresh socket, and a fresh app on the same database, refuse it too
    again = await connect(client, token=viewer.token)
    assert await again.error("join", room) == "BANNED"
    assert await again.error("chat.send", room, text="hi") == "NOT_JOINED"
    other_app = make_app(settings)
    from aiohttp.test_utils import TestServer

    server = TestServer(other_app)
    await server.start_server()
    try:
        try:
            await rooms.authorize_join(other_app, identity(viewer), room)
            raise AssertionError("ban did not survive a restart")
        except ApiError as exc:
            assert exc.code == "BANNED"
    finally:
        await server.close()
