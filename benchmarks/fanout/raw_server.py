"""The ceiling: the least an aiohttp server can do to fan a message out to one room.

`GET /ws` subscribes to the single room; `GET /pub` is the publisher's socket: each text message
it sends is wrapped in the same event envelope Greenroom sends (`{"op":"event","room",...,"data"}`),
framed once, and written to every subscriber's transport without awaiting (no per-member task, no
`send_str` loop, no history, no auth, no backpressure). Nothing a real server could skip is done
here less than nothing, so this is the upper bound the others are measured against.

    python -m benchmarks.fanout.raw_server --port 8765
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import WSMsgType, web

from signaling.core.frames import text_frame

ROOM = b'"bench"'


def make_app() -> web.Application:
    members: set[asyncio.Transport] = set()
    offset = 0

    async def subscriber(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        members.add(transport)
        try:
            async for _ in ws:
                pass
        finally:
            members.discard(transport)
        return ws

    async def publisher(request: web.Request) -> web.WebSocketResponse:
        nonlocal offset
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            offset += 1
            payload = b'{"op":"event","room":%b,"offset":%d,"type":"chat.message","data":%b}' % (
                ROOM, offset, msg.data.encode())
            frame = text_frame(payload)
            for transport in members:
                if not transport.is_closing():
                    transport.write(frame)
        return ws

    async def health(request: web.Request) -> web.Response:
        return web.Response(text=str(len(members)))

    app = web.Application()
    app.router.add_get("/ws", subscriber)
    app.router.add_get("/pub", publisher)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    ns = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(), host=ns.host, port=ns.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
