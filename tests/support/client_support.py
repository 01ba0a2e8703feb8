"""A scripted room-socket server for client tests: the protocol of DESIGN.md with an in-memory event
stream per room, and switches that make it misbehave on cue (drop sockets, skip live events, race
live events with join replies, change the epoch, refuse tokens, ban from rooms, refuse upgrades).
Optionally serves the browser module, so greenroom.js can be tested against the same script.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

STATIC = Path(__file__).resolve().parents[2] / "server" / "http" / "static"


@dataclass
class Room:
    epoch: str = "e1"
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Conn:
    ws: web.WebSocketResponse
    rooms: set[str] = field(default_factory=set)


class ScriptedServer:
    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.conns: list[Conn] = []
        self.tokens: list[str] = []
        self.joins: list[dict[str, Any]] = []
        self.skip_live: set[int] = set()  # offsets not sent live (as if pub/sub lost them)
        self.live_before_reply = False  # push the room's last event before the join reply
        self.banned: set[str] = set()
        self.refuse_tokens = False
        self.unavailable = False  # refuse the websocket upgrade (503), as a server being restarted
        self.app = web.Application()
        self.app.router.add_get("/ws", self.handle)
        self.app.router.add_get("/", self.blank)
        self.app.router.add_static("/static/", STATIC)

    async def blank(self, request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>scripted</title>", content_type="text/html")

    def room(self, name: str) -> Room:
        return self.rooms.setdefault(name, Room())

    async def publish(self, name: str, type_: str, data: dict[str, Any]) -> int:
        room = self.room(name)
        offset = len(room.events) + 1
        room.events.append({"offset": offset, "type": type_, "data": data})
        if offset not in self.skip_live:
            frame = {"op": "event", "room": name, "offset": offset, "type": type_, "data": data}
            for conn in list(self.conns):
                if name in conn.rooms and not conn.ws.closed:
                    await conn.ws.send_bytes(orjson.dumps(frame))
        return offset

    async def volatile(self, name: str, type_: str, data: dict[str, Any]) -> None:
        for conn in list(self.conns):
            if name in conn.rooms:
                await conn.ws.send_str(orjson.dumps({"op": "event", "room": name, "type": type_,
                                                     "data": data}).decode())

    async def drop_all(self, code: int = 4008) -> None:
        for conn in list(self.conns):
            await conn.ws.close(code=code)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.unavailable:
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Conn(ws)
        self.conns.append(conn)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                env = orjson.loads(msg.data)
                await self.on_op(conn, env)
        finally:
            self.conns.remove(conn)
        return ws

    async def reply(self, ws: web.WebSocketResponse, ref: int, data: dict[str, Any] | None = None,
                    error: tuple[str, str] | None = None) -> None:
        if error is None:
            body: dict[str, Any] = {"op": "reply", "ref": ref, "ok": True, "data": data or {}}
        else:
            body = {"op": "reply", "ref": ref, "ok": False, "error": {"code": error[0], "message": error[1]}}
        await ws.send_bytes(orjson.dumps(body))

    async def on_op(self, conn: Conn, env: dict[str, Any]) -> None:
        op, ref, data, name = env["op"], env["ref"], env.get("data", {}), env.get("room")
        ws = conn.ws
        if op == "auth":
            if "token" not in data:
                await self.reply(ws, ref, {"role": "guest"})
                return
            self.tokens.append(data["token"])
            if self.refuse_tokens:
                await ws.close(code=4001)
                return
            await self.reply(ws, ref, {"user_id": "u1"})
        elif op == "join":
            self.joins.append({"room": name, **data})
            if name in self.banned:
                await self.reply(ws, ref, error=("BANNED", "you are banned from this room"))
                return
            room = self.room(name)
            since = data.get("since")
            top = len(room.events)
            if since and since["epoch"] == room.epoch and since["offset"] <= top:
                recovered, events = True, room.events[since["offset"]:]
            else:
                recovered, events = False, []
            conn.rooms.add(name)
            if self.live_before_reply and room.events:
                last = room.events[-1]
                await ws.send_bytes(orjson.dumps({"op": "event", "room": name, **last}))
            await self.reply(ws, ref, {"recovered": recovered, "epoch": room.epoch, "offset": top, "events": events})
        elif op == "leave":
            conn.rooms.discard(name)
            await self.reply(ws, ref)
        elif op == "echo":
            await asyncio.sleep(data.get("delay", 0))
            await self.reply(ws, ref, data)
        elif op == "fail":
            await self.reply(ws, ref, error=("RATE_LIMIT_EXCEEDED", "slow down"))
        elif op == "garbage":
            await ws.send_str("{not json")
            await ws.send_str("[1, 2]")
            await self.reply(ws, ref, {"after": "garbage"})
        # op "silent": never replied
