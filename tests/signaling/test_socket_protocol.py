"""The room socket's protocol: auth phase, envelopes, replies, limits and close codes.

Every test runs on the memory broker and on Redis (`backend` fixture).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Identity
from signaling.core import keys as socket_keys
from signaling.core.protocol import Close
from tests.support.factories import make_user
from tests.support.socket_support import connect, eventually, hub_of, public_room

MakeClient = Callable[..., Awaitable[TestClient]]


async def test_join_receive_events_and_replies(socket_client: MakeClient) -> None:
    client = await socket_client()
    viewer = await make_user(client.app, role="viewer")
    room = await public_room(client.app)
    sock = await connect(client, token=viewer.token, auth_op=False)
    assert (await sock.ok("ping"))["at"] > 0
    joined = await sock.ok("join", room)
    assert joined["recovered"] is False and joined["events"] == []
    assert joined["grant"]["role"] == "viewer" and joined["grant"]["can_chat"] is True
    hub = hub_of(client)
    first = await hub.publish(room, "test.note", {"n": 1})
    second = await hub.publish(room, "test.note", {"n": 2})
    assert second == first + 1
    ev1 = await sock.event("test.note")
    ev2 = await sock.event("test.note")
    assert ev1 == {"op": "event", "room": room, "offset": first, "type": "test.note", "data": {"n": 1}}
    assert ev2["offset"] == second and ev2["data"] == {"n": 2}
    assert first == joined["offset"] + 1
    await sock.ok("leave", room)
    await hub.publish(room, "test.note", {"n": 3})
    assert await sock.error("presence", room) == "NOT_JOINED"
    assert [e for e in sock.events if e["type"] == "test.note"] == []


async def test_auth_op_and_guests(socket_client: MakeClient) -> None:
    client = await socket_client()
    viewer = await make_user(client.app)
    room = await public_room(client.app)
    sock = await connect(client)
    assert await sock.error("join", room) == "AUTHENTICATION_REQUIRED"  # ops before auth are refused, not fatal
    info = await sock.ok("auth", token=viewer.token)
    assert info["user_id"] == str(viewer.id) and info["role"] == "viewer"
    await sock.ok("join", room)

    guest = await connect(client, guest=True)
    assert (await guest.ok("ping"))["at"] > 0
    joined = await guest.ok("join", room)
    assert joined["grant"] == {"role": "guest", "can_chat": False, "can_tip": False, "can_moderate": False}
    assert await guest.error("chat.send", room, text="hi") == "AUTHENTICATION_REQUIRED"
    offset = await hub_of(client).publish(room, "test.note", {})
    assert (await guest.event("test.note"))["offset"] == offset

    query_guest = await connect(client, guest=True, auth_op=False)
    await query_guest.ok("join", room)
    # A signed-in session cannot drop to guest.
    assert await sock.error("auth") == "BAD_REQUEST"


async def test_malformed_input_gets_error_replies_and_the_socket_stays(socket_client: MakeClient) -> None:
    client = await socket_client()
    room = await public_room(client.app)
    sock = await connect(client, guest=True)

    async def bad(raw: str) -> dict[str, Any]:
        await sock.ws.send_str(raw)
        return await sock.reply(None)

    assert (await bad("{not json"))["error"]["code"] == "MALFORMED_JSON"
    assert (await bad("[1, 2]"))["error"]["code"] == "BAD_REQUEST"
    missing_ref = await bad('{"op": "ping"}')
    assert missing_ref["error"]["code"] == "BAD_REQUEST"
    assert missing_ref["error"]["details"]["errors"][0]["field"] == "ref"
    assert (await bad('{"op": "ping", "ref": "7"}'))["error"]["code"] == "BAD_REQUEST"  # strict int
    assert (await bad('{"op": "ping", "ref": -1}'))["error"]["code"] == "BAD_REQUEST"
    assert (await bad('{"op": "ping", "ref": true}'))["error"]["code"] == "BAD_REQUEST"

    await sock.send({"op": "ping", "ref": 5, "extra": 1})
    assert (await sock.reply(5))["error"]["code"] == "BAD_REQUEST"  # ref is echoed when it was usable
    await sock.send({"op": "nope.nothing", "ref": 6})
    unknown = await sock.reply(6)
    assert unknown["error"]["code"] == "UNKNOWN_OP" and unknown["error"]["details"] == {"op": "nope.nothing"}
    await sock.send({"op": "join", "ref": 7})
    assert (await sock.reply(7))["error"]["code"] == "BAD_REQUEST"  # join needs a room
    await sock.send({"op": "join", "ref": 8, "room": room, "data": {"since": {"epoch": "x", "offset": "3"}}})
    invalid = await sock.reply(8)
    assert invalid["error"]["code"] == "VALIDATION_ERROR"
    assert invalid["error"]["details"]["errors"][0]["field"] == "since.offset"
    await sock.send({"op": "join", "ref": 9, "room": room, "data": {"surprise": True}})
    assert (await sock.reply(9))["error"]["code"] == "VALIDATION_ERROR"
    await sock.send({"op": "leave", "ref": 10, "room": room})
    assert (await sock.reply(10))["error"]["code"] == "NOT_JOINED"

    await sock.ws.send_bytes(b'{"op": "ping", "ref": 11}')
    assert (await sock.reply(None))["error"]["code"] == "BAD_REQUEST"
    assert (await sock.ok("ping"))["at"] > 0  # still open after all of that


async def test_oversized_frame_closes_1009(socket_client: MakeClient) -> None:
    client = await socket_client(ws_max_frame_bytes=1024)
    sock = await connect(client, guest=True)
    await sock.ws.send_str('{"op": "ping", "ref": 1, "data": {"pad": "' + "x" * 2000 + '"}}')
    assert await sock.closed() == Close.MESSAGE_TOO_BIG


async def test_room_and_connection_limits(socket_client: MakeClient) -> None:
    client = await socket_client(ws_max_rooms_per_conn=2, ws_max_conns_per_user=2)
    user = await make_user(client.app)
    r1, r2, r3 = [await public_room(client.app) for _ in range(3)]
    sock = await connect(client, token=user.token)
    await sock.ok("join", r1)
    assert await sock.error("join", r1) == "ALREADY_JOINED"
    await sock.ok("join", r2)
    frame = await sock.request("join", r3)
    assert frame["error"]["code"] == "TOO_MANY_ROOMS" and frame["error"]["details"] == {"limit": 2}
    await sock.ok("leave", r1)
    await sock.ok("join", r3)

    second = await connect(client, token=user.token, auth_op=False)
    third = await connect(client, token=user.token, auth_op=False)
    assert await third.closed() == Close.TOO_MANY_CONNECTIONS
    fourth = await connect(client)
    assert await fourth.error("auth", token=user.token) == "TOO_MANY_CONNECTIONS"
    assert await fourth.closed() == Close.TOO_MANY_CONNECTIONS
    await second.close()
    await eventually(lambda: len(hub_of(client).admission.by_user.get(user.id, ())) == 1)
    await connect(client, token=user.token)  # a slot is free again


async def test_guest_sockets_are_limited_per_address(socket_client: MakeClient) -> None:
    client = await socket_client(ws_max_guests_per_ip=2)
    first = await connect(client, guest=True, auth_op=False)
    await connect(client, guest=True)
    third = await connect(client, guest=True, auth_op=False)
    assert await third.closed() == Close.TOO_MANY_CONNECTIONS
    fourth = await connect(client)
    frame = await fourth.request("auth")
    assert frame["error"]["code"] == "TOO_MANY_CONNECTIONS" and frame["error"]["details"] == {"limit": 2}
    assert await fourth.closed() == Close.TOO_MANY_CONNECTIONS
    # Signed-in users are not guests: the guest limit does not apply to them.
    user = await make_user(client.app)
    await connect(client, token=user.token)
    await first.close()
    await eventually(lambda: len(hub_of(client).admission.guests_by_ip.get("127.0.0.1", ())) == 1)
    await connect(client, guest=True)  # a slot is free again


async def test_auth_timeout_closes_4001(socket_client: MakeClient) -> None:
    client = await socket_client(ws_auth_timeout_s=0.3)
    sock = await connect(client)
    assert await sock.error("ping") == "AUTHENTICATION_REQUIRED"
    assert await sock.closed() == Close.AUTH_FAILED == 4001


async def test_forged_and_expired_tokens(socket_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await socket_client()
    user = await make_user(client.app)
    forged = user.token[:-4] + ("AAAA" if not user.token.endswith("AAAA") else "BBBB")
    by_query = await connect(client, token=forged, auth_op=False)
    assert await by_query.closed() == Close.AUTH_FAILED
    by_op = await connect(client)
    assert await by_op.error("auth", token=forged) == "INVALID_TOKEN"
    assert await by_op.closed() == Close.AUTH_FAILED
    garbage = await connect(client)
    assert await garbage.error("auth", token="not-a-jwt") == "INVALID_TOKEN"
    assert await garbage.closed() == Close.AUTH_FAILED

    from server.accounts import tokens

    real_time = time.time
    monkeypatch.setattr(tokens.time, "time", lambda: real_time() - 7200)
    expired, _ = tokens.token_service(client.app).issue_access(user.id, "viewer")
    monkeypatch.setattr(tokens.time, "time", real_time)
    late = await connect(client)
    assert await late.error("auth", token=expired) == "TOKEN_EXPIRED"
    assert await late.closed() == Close.AUTH_FAILED

    # On a live session a bad refresh is refused, and the session goes on.
    live = await connect(client, token=user.token)
    assert await live.error("auth", token=forged) == "INVALID_TOKEN"
    assert (await live.ok("ping"))["at"] > 0
    other = await make_user(client.app)
    assert await live.error("auth", token=other.token) == "PERMISSION_DENIED"


class ShortTokens:
    """`<seconds>:<uuid>` tokens that expire after the given seconds, to test expiry on a live socket."""

    def revoke_user_tokens(self, user_id: uuid.UUID, at: float) -> None:
        """Revocation is the real authenticator's; these tokens are for what comes after."""

    def authenticate(self, token: str) -> Identity:
        ttl, _, user = token.partition(":")
        try:
            return Identity(uuid.UUID(user), "viewer", time.time() + float(ttl))
        except ValueError:
            raise ApiError(ErrorCode.INVALID_TOKEN, "not a short test token") from None


def use_short_tokens(app: web.Application) -> None:
    async def install(app: web.Application) -> None:
        app[keys.AUTH] = ShortTokens()

    app.on_startup.append(install)


async def test_token_expiry_and_refresh(make_settings: Any, make_app: Any, aiohttp_client: Any,
                                        backend_url: str) -> None:
    app = make_app(make_settings(redis_url=backend_url))
    use_short_tokens(app)
    client: TestClient = await aiohttp_client(app)
    user = uuid.uuid4()
    expiring = await connect(client, token=f"0.4:{user}")
    assert await expiring.closed(within=3) == Close.TOKEN_EXPIRED

    refreshed = await connect(client, token=f"0.4:{user}")
    await refreshed.ok("auth", token=f"60:{user}")  # before exp: the session goes on past the first exp
    await asyncio.sleep(0.6)
    assert (await refreshed.ok("ping"))["at"] > 0
    assert not refreshed.ws.closed


async def test_kick_removes_the_user_from_the_room_at_once(socket_client: MakeClient) -> None:
    client = await socket_client()
    target = await make_user(client.app)
    bystander = await make_user(client.app)
    room = await public_room(client.app)
    kicked = await connect(client, token=target.token)
    second_tab = await connect(client, token=target.token)
    other = await connect(client, token=bystander.token)
    for s in (kicked, second_tab, other):
        await s.ok("join", room)
    hub = hub_of(client)
    # A room event alone removes nobody: room streams carry room events only.
    await hub.publish(room, "member.kicked", {"user_id": str(target.id)})
    for s in (kicked, second_tab, other):
        assert (await s.event("member.kicked"))["data"] == {"user_id": str(target.id)}
    assert await kicked.ok("presence", room)
    await client.app[socket_keys.CONTROL].remove(target.id, room)
    after = await hub.publish(room, "test.note", {})
    assert (await other.event("test.note"))["offset"] == after
    assert await kicked.error("presence", room) == "NOT_JOINED"
    assert await second_tab.error("presence", room) == "NOT_JOINED"
    assert not [e for e in kicked.events + second_tab.events if e["type"] == "test.note"]
    assert not kicked.ws.closed  # the socket stays; only the room is left
    await kicked.ok("join", room)  # a kick is not a ban


async def test_staff_arrivals_are_announced_viewers_are_counted(socket_client: MakeClient) -> None:
    client = await socket_client(viewer_count_interval_s=0.05)
    host = await make_user(client.app, role="performer")
    room = await public_room(client.app, host)
    viewers = [await make_user(client.app) for _ in range(3)]
    watcher = await connect(client, token=viewers[0].token)
    await watcher.ok("join", room)
    for v in viewers[1:]:
        s = await connect(client, token=v.token)
        await s.ok("join", room)
    performer = await connect(client, token=host.token)
    await performer.ok("join", room)
    joined = await watcher.event("member.joined")
    assert joined["data"] == {"user_id": str(host.id), "role": "performer"} and joined["offset"] > 0

    async def count_is(n: int) -> bool:
        while True:
            ev = await watcher.event("room.viewers")
            assert "offset" not in ev  # volatile: no offset
            if ev["data"]["count"] == n:
                return True

    await count_is(4)
    presence = await watcher.ok("presence", room)
    assert presence["count"] == 4 and len(presence["members"]) == 4
    await performer.close()
    left = await watcher.event("member.left")
    assert left["data"] == {"user_id": str(host.id), "role": "performer"}
    await count_is(3)
    # Viewers come and go without member.joined / member.left.
    assert not [e for e in watcher.events if e["type"] in ("member.joined", "member.left")]


async def test_shutdown_closes_sockets_with_1001(socket_client: MakeClient) -> None:
    client = await socket_client()
    room = await public_room(client.app)
    socks = [await connect(client, guest=True) for _ in range(3)]
    for s in socks:
        await s.ok("join", room)
    await client.server.close()
    for s in socks:
        assert await s.closed() == Close.GOING_AWAY == 1001


async def test_aiohttp_client_sees_close_reason(socket_client: MakeClient) -> None:
    client = await socket_client(ws_auth_timeout_s=0.2)
    ws = await client.ws_connect("/ws")
    msg = await ws.receive(timeout=3)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == Close.AUTH_FAILED and msg.extra == "authentication timeout"


async def test_a_flooding_socket_gets_rate_limit_replies(socket_client: MakeClient) -> None:
    client = await socket_client(ws_ops_per_10s=5)
    sock = await connect(client, guest=True)  # the auth op is the first of the five
    for _ in range(4):
        await sock.ok("ping")
    frame = await sock.request("ping")
    assert frame["error"]["code"] == "RATE_LIMIT_EXCEEDED" and frame["error"]["details"]["limit"] == 5
    await sock.ws.send_str("{broken")
    assert (await sock.reply(None))["error"]["code"] == "MALFORMED_JSON"
    assert not sock.ws.closed


async def test_a_member_removed_while_its_room_opens_gets_a_reply(socket_client: MakeClient) -> None:
    """A kick during the join empties the room, which cancels the room's opening; the join waiting
    for that opening must still answer (it once waited forever, and with it every later op)."""
    client = await socket_client()
    hub = hub_of(client)
    gate = asyncio.Event()
    subscribe = hub.broker.subscribe

    async def slow_subscribe(channel: str) -> None:
        await gate.wait()
        await subscribe(channel)

    hub.broker.subscribe = slow_subscribe  # type: ignore[method-assign]
    room = await public_room(client.app)
    sock = await connect(client, guest=True)
    await sock.send({"op": "join", "ref": 99, "room": room})
    await eventually(lambda: room in hub.rooms and bool(hub.rooms[room].members))
    [member] = hub.rooms[room].members
    assert await hub.leave(member, room)  # what a kick does to a socket in the room
    reply = await sock.reply(99)
    assert reply["ok"] is False and reply["error"]["code"] == "PERMISSION_DENIED", reply
    assert room not in hub.rooms
    gate.set()
    assert "at" in await sock.ok("ping")  # the socket goes on
    assert (await sock.ok("join", room))["offset"] == 0  # and the room opens again
