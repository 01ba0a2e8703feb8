"""The control channel: typed actions applied on every node (two apps on one Redis), and on one node."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.kernel import keys
from signaling.core import keys as socket_keys
from signaling.core.control import (
    ACTION_MAX_BYTES,
    CONTROL_CHANNEL,
    DeliverEvent,
    DisconnectUser,
    RecheckAccess,
    RemoveMember,
    decode,
    encode,
)
from signaling.core.protocol import Close
from tests.signaling.test_socket_cluster import two_nodes
from tests.support.factories import make_user
from tests.support.socket_support import MakeClient, connect, eventually, public_room

USER = uuid.UUID(int=7)


@pytest.mark.parametrize("action", [
    RemoveMember(USER, "stream:x"),
    DisconnectUser(USER, 4001, "account suspended"),
    DeliverEvent("seat.held", {"seat": "A1", "nested": {"n": [1, 2]}}, user_id=USER, room="show:y"),
    DeliverEvent("rtc.offer", {"sdp": "v=0"}, conn_id="abc123"),
    RecheckAccess("stream:x"),
])
def test_actions_round_trip(action: Any) -> None:
    assert decode(encode(action)) == action


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b'{"a": "explode"}', b'{"a": "remove", "u": "not-a-uuid", "r": "x"}',
    b'{"a": "remove", "r": "x"}', b'{"a": "deliver", "t": "x", "d": [1], "u": null, "c": "c", "r": null}',
])
def test_malformed_actions_are_refused(payload: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode(payload)


def test_a_delivery_names_exactly_one_target_and_is_bounded() -> None:
    with pytest.raises(ValueError):
        encode(DeliverEvent("x", {}))
    with pytest.raises(ValueError):
        encode(DeliverEvent("x", {}, user_id=USER, conn_id="c"))
    with pytest.raises(ValueError):
        encode(DeliverEvent("x", {"blob": "a" * ACTION_MAX_BYTES}, user_id=USER))


async def test_every_action_reaches_the_users_sockets_on_both_nodes(make_settings: Any, make_app: Any,
                                                                      aiohttp_client: Any, redis_url: str) -> None:
    a, b = await two_nodes(make_settings, make_app, aiohttp_client, redis_url)
    user = await make_user(a.app)
    other = await make_user(a.app)
    room = await public_room(a.app)
    on_a, on_b = await connect(a, token=user.token), await connect(b, token=user.token)
    bystander = await connect(b, token=other.token)
    await on_a.ok("join", room)
    await bystander.ok("join", room)
    control = a.app[socket_keys.CONTROL]

    # Deliver to a user: every socket of the user on both nodes, nobody else; with a room, only
    # the sockets that joined it.
    await control.deliver_to_user(user.id, "note.private", {"n": 1})
    for sock in (on_a, on_b):
        ev = await sock.event("note.private")
        assert ev == {"op": "event", "type": "note.private", "data": {"n": 1}}
    await control.deliver_to_user(user.id, "note.room", {"n": 2}, room=room)
    assert (await on_a.event("note.room"))["room"] == room
    # Deliver to one connection, named by its id, on the other node.
    info = await on_b.ok("auth", token=user.token)
    await control.deliver_to_connection(info["conn_id"], "note.conn", {"n": 3})
    assert (await on_b.event("note.conn"))["data"] == {"n": 3}
    await control.deliver_to_user(user.id, "note.last", {})  # a marker: what came before has arrived
    await on_a.event("note.last")
    await on_b.event("note.last")
    assert not [e for e in on_b.events if e["type"] == "note.room"]  # on_b never joined the room
    await bystander.ok("ping")  # its reply comes after anything queued to it before
    assert not [e for e in bystander.events if e["type"].startswith("note.")]

    # Remove from a room: the user's socket on the other node leaves it and stays open.
    await b.app[socket_keys.CONTROL].remove(user.id, room)
    assert await on_a.error("presence", room) == "NOT_JOINED"
    assert await bystander.ok("presence", room)

    # Disconnect: every socket of the user, on both nodes, with the code given.
    await control.disconnect(user.id, Close.AUTH_FAILED, "account suspended")
    assert await on_a.closed() == Close.AUTH_FAILED
    assert await on_b.closed() == Close.AUTH_FAILED
    assert await bystander.ok("ping")


async def test_malformed_control_traffic_is_dropped_and_the_channel_keeps_working(socket_client: MakeClient) -> None:
    client: TestClient = await socket_client()
    user = await make_user(client.app)
    sock = await connect(client, token=user.token)
    control = client.app[socket_keys.CONTROL]
    before = control.applied
    await client.app[socket_keys.BROKER].publish_volatile(CONTROL_CHANNEL, b'{"a": "nonsense"}')
    await client.app[socket_keys.BROKER].publish_volatile(CONTROL_CHANNEL, b"\xff\xfe")
    await control.deliver_to_user(user.id, "still.here", {})
    assert (await sock.event("still.here"))["data"] == {}
    assert control.applied == before + 1


async def test_recheck_removes_only_members_the_new_rule_refuses(socket_client: MakeClient) -> None:
    client: TestClient = await socket_client()
    host = await make_user(client.app, role="performer")
    room = await public_room(client.app, host)
    viewer = await make_user(client.app)
    staff, guest, member = (await connect(client, token=host.token), await connect(client, guest=True),
                            await connect(client, token=viewer.token))
    for sock in (staff, guest, member):
        await sock.ok("join", room)
    await client.app[socket_keys.CONTROL].recheck_access(room)  # still public: nobody leaves
    assert await guest.ok("presence", room)
    await client.app[keys.DB].execute("UPDATE rooms SET access = 'private' WHERE name = $1", room)
    await client.app[socket_keys.CONTROL].recheck_access(room)

    async def gone(sock: Any) -> bool:
        frame = await sock.request("presence", room)
        return not frame["ok"] and frame["error"]["code"] == "NOT_JOINED"

    await eventually(lambda: gone(guest))
    await eventually(lambda: gone(member))
    assert await staff.ok("presence", room)  # the host is always admitted
