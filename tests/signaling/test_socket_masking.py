"""RFC 6455 5.1: every frame a client sends is masked, and a server closes the connection (1002,
protocol error) on one that is not. Spoken over a raw TCP socket after a real handshake, since
aiohttp's client always masks."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp.test_utils import TestClient

from signaling.core.protocol import Close

WAIT_S = 5.0
MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def backend() -> str:
    return "memory"


def client_frame(payload: bytes, *, masked: bool = True, opcode: int = 0x1) -> bytes:
    """One final client frame; masked with a random key unless `masked` is False."""
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def handshake(host: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws?guest=1 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; server frames are never masked."""
        async with asyncio.timeout(WAIT_S):
            first, second = await self.reader.readexactly(2)
            assert second & 0x80 == 0, "a server frame is never masked"
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(n)

    async def reply(self) -> dict[str, object]:
        opcode, payload = await self.frame()
        assert opcode == 0x1, (opcode, payload)
        reply: dict[str, object] = orjson.loads(payload)
        return reply

    async def close_code(self) -> int:
        """The code of the server's close frame, after which the server ends the connection; replies
        before it are skipped, and none to an unmasked frame (refs from 100) may come."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x1:
                ref = orjson.loads(payload)["ref"]
                assert ref is not None and ref < 100, payload
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                async with asyncio.timeout(WAIT_S):
                    assert await self.reader.read() == b""  # then EOF
                return int(code)


async def open_raw(client: TestClient, after_handshake: bytes = b"") -> RawSocket:
    host, port = client.server.host, client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(handshake(host, port) + after_handshake)
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawSocket(reader, writer)


def ping(ref: int) -> bytes:
    return orjson.dumps({"op": "ping", "ref": ref})


async def test_masked_frames_work_in_any_size_and_split_anywhere(socket_client: MakeClient) -> None:
    client = await socket_client(ws_max_frame_bytes=200_000)
    raw = await open_raw(client)
    raw.writer.write(client_frame(ping(1)))
    assert (await raw.reply())["ref"] == 1
    # 16- and 64-bit lengths: frames the ping schema refuses, answered all the same
    for ref, pad in ((2, 300), (3, 70_000)):
        body = orjson.dumps({"op": "ping", "ref": ref, "data": {"pad": "x" * pad}})
        raw.writer.write(client_frame(body))
        assert (await raw.reply())["ref"] == ref
    # two frames in one write, then one frame a byte at a time
    raw.writer.write(client_frame(ping(4)) + client_frame(ping(5)))
    assert [(await raw.reply())["ref"] for _ in range(2)] == [4, 5]
    for byte in client_frame(orjson.dumps({"op": "ping", "ref": 6, "data": {"pad": "y" * 200}})):
        raw.writer.write(bytes((byte,)))
        await raw.writer.drain()
    assert (await raw.reply())["ref"] == 6
    raw.writer.close()


async def test_an_unmasked_frame_closes_the_connection_1002(socket_client: MakeClient) -> None:
    client = await socket_client()
    raw = await open_raw(client)
    raw.writer.write(client_frame(ping(1)))
    assert (await raw.reply())["ok"] is True
    raw.writer.write(client_frame(ping(101), masked=False))
    assert await raw.close_code() == Close.PROTOCOL_ERROR
    raw.writer.close()
    # a masked frame and an unmasked one in one write: the close (its reply may not make it first)
    raw = await open_raw(client)
    raw.writer.write(client_frame(ping(4)) + client_frame(ping(102), masked=False))
    assert await raw.close_code() == Close.PROTOCOL_ERROR
    raw.writer.close()


async def test_an_unmasked_frame_right_behind_the_handshake_closes_1002(socket_client: MakeClient) -> None:
    client = await socket_client()
    raw = await open_raw(client, after_handshake=client_frame(ping(103), masked=False))
    assert await raw.close_code() == Close.PROTOCOL_ERROR
    raw.writer.close()


async def test_unmasked_control_frames_close_too(socket_client: MakeClient) -> None:
    client = await socket_client()
    raw = await open_raw(client)
    raw.writer.write(client_frame(b"hi", masked=False, opcode=0x9))  # ping
    assert await raw.close_code() == Close.PROTOCOL_ERROR
    raw.writer.close()
