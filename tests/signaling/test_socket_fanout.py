"""Fan-out under load: a slow consumer is cut off with bounded memory, big rooms all receive."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient

from signaling.core.protocol import Close
from tests.support.socket_support import Sock, connect, eventually, hub_of, public_room

MakeClient = Callable[..., Awaitable[TestClient]]


class RawSocket:
    """A websocket client on a bare TCP socket with a tiny receive buffer, which can stop reading."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small limit makes the stream reader stop reading the socket once 2 KB are buffered.
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, obj: Any) -> None:
        payload = orjson.dumps(obj)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.writer.write(bytes((0x81, 0x80 | len(payload))) + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.frame()
        assert opcode == 1, (opcode, payload)
        frame: dict[str, Any] = orjson.loads(payload)
        return frame

    async def close_code(self) -> int:
        """Read (and drop) frames until the close frame; return its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 8:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code


async def joined_raw_guest(client: TestClient, room: str) -> tuple[RawSocket, str]:
    """A guest on a RawSocket, joined to `room`; returns it and its server-side connection id."""
    raw = await RawSocket.open(client.server.port or 0, "/ws")
    raw.send({"op": "auth", "ref": 1, "data": {}})
    conn_id: str = (await raw.json())["data"]["conn_id"]
    raw.send({"op": "join", "ref": 2, "room": room})
    assert (await raw.json())["ok"]
    return raw, conn_id


async def test_slow_consumer_is_closed_with_bounded_memory_and_the_room_goes_on(socket_client: MakeClient) -> None:
    budget = 65_536
    client = await socket_client(ws_outbound_max_bytes=budget, ws_close_timeout_s=5.0)
    room = await public_room(client.app)
    hub = hub_of(client)
    raw, conn_id = await joined_raw_guest(client, room)
    slow = hub.connections[conn_id]
    fast = await connect(client, guest=True)
    await fast.ok("join", room)

    pad = "x" * 4000
    published: list[int] = []
    done = asyncio.Event()

    async def publisher() -> None:
        for i in range(2000):  # ~8 MB at most: past the budget plus what the kernel buffers on loopback
            published.append(await hub.publish(room, "bulk", {"i": i, "pad": pad}))
            if slow.closing and len(published) >= 300:
                break
        done.set()

    async def reader(sock: Sock) -> list[int]:
        got: list[int] = []
        while not (done.is_set() and got and got[-1] == published[-1]):
            got.append((await sock.event("bulk", within=10))["offset"])
        return got

    received, _ = await asyncio.gather(reader(fast), publisher())
    assert slow.close_code == Close.SLOW_CONSUMER
    assert slow.max_buffered <= budget  # the transport never held more than the budget
    assert received == published  # the fast member got everything, in order
    assert not fast.ws.closed
    assert await asyncio.wait_for(raw.close_code(), 10) == Close.SLOW_CONSUMER
    await eventually(lambda: conn_id not in hub.connections)
    raw.writer.close()


async def test_a_consumer_that_never_reads_is_dropped_after_the_close_timeout(socket_client: MakeClient) -> None:
    client = await socket_client(ws_outbound_max_bytes=16_384, ws_close_timeout_s=0.3)
    room = await public_room(client.app)
    hub = hub_of(client)
    raw, conn_id = await joined_raw_guest(client, room)
    stuck = hub.connections[conn_id]
    for i in range(3000):
        await hub.publish(room, "bulk", {"i": i, "pad": "y" * 4000})
        await asyncio.sleep(0)
        if stuck.closing:
            break
    assert stuck.close_code == Close.SLOW_CONSUMER
    # Its unsent bytes are dropped, not kept for a reader that never comes.
    transport = stuck._transport
    await eventually(lambda: transport.is_closing() and transport.get_write_buffer_size() == 0)
    await eventually(lambda: conn_id not in hub.connections)
    raw.writer.close()


async def test_a_thousand_members_all_receive_a_broadcast(socket_client: MakeClient) -> None:
    client = await socket_client()
    room = await public_room(client.app)
    members: list[Sock] = []

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def member() -> Sock:
            sock = await connect(client, guest=True, auth_op=False, session=session)
            await sock.ok("join", room)
            return sock

        for _ in range(10):
            members.extend(await asyncio.gather(*(member() for _ in range(100))))
        hub = hub_of(client)
        assert len(hub.rooms[room].members) == 1000
        first = await hub.publish(room, "note", {"text": "hello, all"})
        second = await hub.publish(room, "note", {"text": "again"})
        got = await asyncio.gather(*(s.event("note") for s in members))
        assert all(e["offset"] == first and e["data"] == {"text": "hello, all"} for e in got)
        got = await asyncio.gather(*(s.event("note") for s in members))
        assert all(e["offset"] == second for e in got)
        await asyncio.gather(*(s.close() for s in members))
    await eventually(lambda: room not in hub.rooms)


async def test_a_big_rooms_events_share_writes_and_replies_do_not_wait(socket_client: MakeClient) -> None:
    """GREENROOM_WS_COALESCE_*: with 2 members a room counts as big here, and the interval is long."""
    client = await socket_client(ws_coalesce_ms=1000, ws_coalesce_min_members=2, viewer_count_interval_s=3600)
    hub = hub_of(client)
    room = await public_room(client.app)
    a, b = await connect(client, guest=True), await connect(client, guest=True)
    await a.ok("join", room)
    await b.ok("join", room)
    conn = next(iter(hub.connections.values()))  # `a`'s: the first socket attached
    assert room in conn.rooms
    writes: list[int] = []
    real_write = conn._transport.write

    def counting_write(data: bytes) -> None:
        writes.append(len(data))
        real_write(data)

    conn._transport.write = counting_write  # type: ignore[method-assign]
    first = await hub.publish(room, "n", {"i": 0})
    assert (await a.event("n"))["offset"] == first  # after a quiet spell: at once
    offsets = [await hub.publish(room, "n", {"i": i}) for i in range(1, 4)]
    await eventually(lambda: hub.bulk_outbox._scheduled)  # waiting for the interval
    assert len(writes) == 1
    pong = await a.request("ping")  # the reply takes the queued events along, in order
    assert pong["ok"] is True
    assert [e["offset"] for e in a.events if e["type"] == "n"] == offsets
    assert len(writes) == 2 and hub.bulk_outbox._scheduled  # one write, before the interval ended
