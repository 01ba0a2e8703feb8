"""The Python client against the real server (memory and Redis brokers): ops, resume, slow consumer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.accounts.tokens import token_service
from server.kernel import keys
from signaling.client import REJOINED, ClientError, Event, GreenroomClient, ReconnectPolicy
from signaling.core.protocol import Close
from tests.support.factories import make_user
from tests.support.socket_support import backend, backend_url, hub_of, public_room, socket_client  # noqa: F401

FAST = ReconnectPolicy(base_delay_s=0.02, max_delay_s=0.1, max_attempts=10)
SocketClient = Callable[..., Awaitable[TestClient]]


def url_of(client: TestClient) -> str:
    return str(client.make_url("/ws"))


async def take(client: GreenroomClient, n: int, within: float = 10.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for event in client.events():
            if event.type == "room.viewers" or event.type.startswith("member."):
                continue  # presence noise; these tests follow the room's content
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), within)
    return out


def offsets(events: list[Event]) -> list[int]:
    """Offsets of the room's stream (the client's notices and volatile events have none)."""
    return [e.offset for e in events if e.offset]


async def test_ops_and_errors_over_the_real_socket(socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client()
    room = await public_room(client.app)
    viewer = await make_user(client.app, display_name="Viewer One")
    async with GreenroomClient(url_of(client), token=viewer.token) as gc:
        assert gc.identity["user_id"] == str(viewer.id)
        joined = await gc.join(room)
        assert joined.recovered is False and joined.epoch
        sent = await gc.request("chat.send", room=room, text="hello room")
        [event] = await take(gc, 1)
        assert event.type == "chat.message"
        assert event.offset == sent["offset"]
        assert event.data["text"] == "hello room"
        assert event.data["author"]["display_name"] == "Viewer One"
        with pytest.raises(ClientError) as info:
            await gc.request("chat.send", room="stream:not-joined", text="x")
        assert info.value.code == "NOT_JOINED"
        with pytest.raises(ClientError) as info:
            await gc.request("no.such.op")
        assert info.value.code == "UNKNOWN_OP"
        assert (await gc.request("ping"))["at"] > 0  # still usable after refusals


async def test_guest_reads_but_cannot_chat(socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client()
    room = await public_room(client.app)
    async with GreenroomClient(url_of(client)) as gc:
        assert gc.identity["role"] == "guest"
        await gc.join(room)
        with pytest.raises(ClientError) as info:
            await gc.request("chat.send", room=room, text="hi")
        assert info.value.code == "AUTHENTICATION_REQUIRED"


async def test_forged_token_fails_connect_without_retrying(socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client()
    gc = GreenroomClient(url_of(client), token="not.a.token", reconnect=FAST)
    with pytest.raises(ClientError) as info:
        await gc.connect()
    assert info.value.code in ("INVALID_TOKEN", "AUTH_FAILED")
    await asyncio.sleep(0.2)
    assert gc.stats.connects == 0 and not hub_of(client).connections
    await gc.close()


async def test_server_close_then_resume_from_history(socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client()
    room = await public_room(client.app)
    hub = hub_of(client)
    async with GreenroomClient(url_of(client), reconnect=FAST) as gc:
        await gc.join(room)
        first = await hub.publish(room, "chat.message", {"text": "before"})
        assert offsets(await take(gc, 1)) == [first]
        # The server goes away for this socket; events published meanwhile exist only in history.
        hub.connections[gc.identity["conn_id"]].close_soon(Close.GOING_AWAY)
        await asyncio.sleep(0)
        missed = [await hub.publish(room, "chat.message", {"text": f"missed {i}"}) for i in range(5)]
        got = await take(gc, 6)
        assert got[0].type == REJOINED
        assert got[0].data["recovered"] is True
        assert got[0].data["since"]["offset"] == first
        assert offsets(got) == missed
        after = await hub.publish(room, "chat.message", {"text": "after"})
        assert offsets(await take(gc, 1)) == [after]
        assert gc.stats.reconnects == 1


def tiny_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket whose kernel receive buffer is small, so a reader that stops reading shows up fast."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_slow_consumer_is_closed_and_resumes_in_order_without_duplicates(
        socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client(ws_outbound_max_bytes=65_536, room_history_max=5000)
    room = await public_room(client.app)
    hub = hub_of(client)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=tiny_receive_buffer))
    # A reader that does not read: the client stops taking frames off the socket once 2 are queued.
    async with GreenroomClient(url_of(client), reconnect=FAST, max_pending_events=2, session=session) as gc:
        await gc.join(room)
        first_conn = gc.identity["conn_id"]
        published: list[int] = []
        # Publish until the server gives up on this socket (4008) instead of buffering without end.
        while first_conn in hub.connections and len(published) < 4000:
            published.append(await hub.publish(room, "chat.message", {"text": "x" * 2000}))
            if len(published) % 50 == 0:
                await asyncio.sleep(0.01)  # let the sockets move
        assert first_conn not in hub.connections, "the server never closed the slow consumer"
        # The client notices the close once its reader catches up with the queue: read until the rejoin.
        got: list[Event] = []
        async with asyncio.timeout(30):
            async for event in gc.events():
                got.append(event)
                if event.type == REJOINED:
                    break
        after = [await hub.publish(room, "chat.message", {"text": f"after {i}"}) for i in range(3)]
        # The rejoin's recovered events (if any) come first, then these three.
        async with asyncio.timeout(30):
            async for event in gc.events():
                got.append(event)
                if event.offset == after[-1]:
                    break
    await session.close()
    seen = offsets(got)
    assert seen == sorted(set(seen)), "events out of order or duplicated"
    assert seen[-3:] == after
    notice = next(e for e in got if e.type == REJOINED)
    if notice.data["recovered"]:
        assert seen == published + after  # resumed from history: nothing missing
    else:
        # The missed history was too big to resume (see SLOW_RESUMES_MAX): the client said so, and
        # what it delivered is a prefix, then the room from the rejoin on.
        before = offsets(got[:got.index(notice)])
        assert before == published[:len(before)]
        assert gc.stats.connects > 2


async def test_token_is_refreshed_on_the_live_socket(socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client()
    user = await make_user(client.app)
    issued: list[str] = []

    async def provider() -> str:
        token, _ = token_service(client.app).issue_access(user.id, "viewer")
        issued.append(token)
        return token

    ttl = client.app[keys.SETTINGS].access_token_ttl_s
    # Refresh almost at once: the margin is nearly the token's whole life.
    async with GreenroomClient(url_of(client), token_provider=provider, refresh_margin_s=ttl - 1.2) as gc:
        first_exp = gc.identity["expires_at"]
        conn_id = gc.identity["conn_id"]

        for _ in range(200):  # the refresh is due in about a second
            if gc.identity.get("expires_at") != first_exp:
                break
            await asyncio.sleep(0.05)
        assert len(issued) >= 2
        assert gc.identity["conn_id"] == conn_id  # the same socket carries the new token
        assert gc.identity["expires_at"] > first_exp
        assert gc.stats.connects == 1


async def test_many_clients_one_room_each_sees_every_event_once(socket_client: SocketClient) -> None:  # noqa: F811
    client = await socket_client()
    room = await public_room(client.app)
    hub = hub_of(client)
    clients = [GreenroomClient(url_of(client), reconnect=FAST) for _ in range(20)]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        await asyncio.gather(*(c.join(room) for c in clients))
        published = [await hub.publish(room, "chat.message", {"i": i}) for i in range(10)]
        # Half of them lose their socket halfway; all must end with the same ten events.
        for c in clients[::2]:
            hub.connections[c.identity["conn_id"]].close_soon(Close.GOING_AWAY)
        published += [await hub.publish(room, "chat.message", {"i": i}) for i in range(10, 20)]
        results: list[Any] = await asyncio.gather(*(take(c, 20 + (i % 2 == 0)) for i, c in enumerate(clients)))
        for got in results:
            assert offsets(got) == published
    finally:
        await asyncio.gather(*(c.close() for c in clients))
