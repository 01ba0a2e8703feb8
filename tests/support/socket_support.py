"""Helpers for room-socket tests: apps on either broker backend, rooms, and a raw protocol client.

`Sock` speaks the wire protocol directly (no reconnect, no dedupe), so tests see exactly the
frames the server sends.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel import keys
from server.kernel.settings import Settings
from signaling.core import keys as socket_keys
from signaling.core.hub import Hub
from signaling.features.rooms import access as rooms
from tests.support.factories import TestUser, make_user

WAIT_S = 5.0


@dataclass
class Sock:
    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[Any, dict[str, Any]] = field(default_factory=dict)
    _refs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(self, obj: Any) -> None:
        await self.ws.send_str(orjson.dumps(obj).decode())

    async def recv(self, within: float = WAIT_S) -> dict[str, Any]:
        """The next frame, parsed; raises if the socket closes instead."""
        msg = await self.ws.receive(timeout=within)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
        frame: dict[str, Any] = orjson.loads(msg.data)
        return frame

    async def pump(self, within: float = WAIT_S) -> None:
        frame = await self.recv(within)
        if frame["op"] == "reply":
            self.replies[frame["ref"]] = frame
        else:
            self.events.append(frame)

    async def reply(self, ref: Any, within: float = WAIT_S) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while ref not in self.replies:
                await self.pump()
        return self.replies.pop(ref)

    async def request(self, op: str, room: str | None = None, **data: Any) -> dict[str, Any]:
        """Send an op; return the whole reply frame."""
        ref = next(self._refs)
        envelope: dict[str, Any] = {"op": op, "ref": ref, "data": data}
        if room is not None:
            envelope["room"] = room
        await self.send(envelope)
        return await self.reply(ref)

    async def ok(self, op: str, room: str | None = None, **data: Any) -> dict[str, Any]:
        """Send an op that must succeed; return its reply data."""
        frame = await self.request(op, room, **data)
        assert frame["ok"], frame
        result: dict[str, Any] = frame["data"]
        return result

    async def error(self, op: str, room: str | None = None, **data: Any) -> str:
        frame = await self.request(op, room, **data)
        assert not frame["ok"], frame
        code: str = frame["error"]["code"]
        return code

    async def event(self, type_: str | None = None, within: float = WAIT_S) -> dict[str, Any]:
        """The next event (of `type_`), taking buffered ones first; other types stay buffered."""
        async with asyncio.timeout(within):
            while True:
                for i, ev in enumerate(self.events):
                    if type_ is None or ev["type"] == type_:
                        return self.events.pop(i)
                await self.pump()

    async def closed(self, within: float = WAIT_S) -> int | None:
        """Read until the server closes; return its close code."""
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    code: int = msg.data  # the server's code (the client's own close may then fail: 1006)
                    return code
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    return self.ws.close_code
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(msg.data)
                    (self.events if frame["op"] == "event" else []).append(frame)

    async def close(self) -> None:
        await self.ws.close()


async def connect(client: TestClient, *, token: str | None = None, guest: bool = False,
                  auth_op: bool = True, session: aiohttp.ClientSession | None = None, **kwargs: Any) -> Sock:
    """Open `/ws`; sign in with an `auth` op (or `?guest=1` / `?token=` when `auth_op` is False).

    The test client's session opens at most 100 connections; pass an unlimited `session` for more.
    """
    params: dict[str, str] = {}
    if not auth_op:
        if token is not None:
            params["token"] = token
        elif guest:
            params["guest"] = "1"
    if session is not None:
        ws = await session.ws_connect(client.make_url("/ws"), params=params, **kwargs)
    else:
        ws = await client.ws_connect("/ws", params=params, **kwargs)
    sock = Sock(ws)
    if auth_op and (token is not None or guest):
        await sock.ok("auth", **({"token": token} if token is not None else {}))
    return sock


def hub_of(client: TestClient) -> Hub:
    return client.app[socket_keys.HUB]


async def public_room(app: web.Application, host: TestUser | None = None, access: rooms.Access = "public") -> str:
    """A stream room hosted by `host` (a new performer when None)."""
    host = host or await make_user(app, role="performer")
    return await rooms.create_room(app[keys.DB], "stream", uuid.uuid4(), host.id, access)


async def eventually(check: Callable[[], bool] | Callable[[], Awaitable[bool]], within: float = WAIT_S) -> None:
    async with asyncio.timeout(within):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


MakeClient = Callable[..., Awaitable[TestClient]]  # the `socket_client` fixture


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every socket test runs single-node (memory broker) and on Redis."""
    name: str = request.param
    return name


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return ""


@pytest.fixture
def socket_client(backend_url: str, make_settings: Callable[..., Settings],
                  make_app: Callable[[Settings], web.Application],
                  aiohttp_client: Any) -> Callable[..., Awaitable[TestClient]]:
    """`await socket_client(**settings_overrides)`: a started app on the test's backend."""

    async def make(**overrides: Any) -> TestClient:
        overrides.setdefault("redis_url", backend_url)
        client: TestClient = await aiohttp_client(make_app(make_settings(**overrides)))
        return client

    return make
