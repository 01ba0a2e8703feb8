"""The peer users would pick: python-socketio on aiohttp, one room, the idiomatic way.

Clients connect to `/socket.io/` (Engine.IO 4 over websocket), emit `join` (acknowledged) to enter
the room; the publisher emits `publish` with a chat-message-like object and the server re-emits it
to the room as `event` with `sio.emit(..., room=...)`. No auth, no history.

    python -m benchmarks.fanout.socketio_server --port 8766
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio
import uvloop
from aiohttp import web

ROOM = "bench"


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[], logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)
    offset = 0

    @sio.event
    async def join(sid: str, *args: Any) -> bool:
        await sio.enter_room(sid, ROOM)
        return True

    @sio.event
    async def publish(sid: str, data: dict[str, Any]) -> None:
        nonlocal offset
        offset += 1
        await sio.emit("event", {"room": ROOM, "offset": offset, "type": "chat.message", "data": data},
                       room=ROOM, skip_sid=sid)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    ns = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(), host=ns.host, port=ns.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
