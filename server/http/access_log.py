"""The access log and request metrics: one JSON line and one observation per answered request.

It is the outermost middleware, so it sees the final status the error middleware chose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.kernel import keys
from server.kernel.identity import Identity
from server.kernel.metrics import UNMATCHED

log = logging.getLogger("greenroom.access")

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer


def route_template(request: web.Request) -> str:
    """The matched route's template (`/v1/users/{id}`), never the raw path (bounded labels)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def access_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    websocket = False
    try:
        response = await handler(request)
        status = response.status
        websocket = isinstance(response, web.WebSocketResponse)
        return response
    except web.HTTPException as exc:  # redirects the error middleware lets through
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = route_template(request)
        app = request.app
        # A websocket's "latency" is its lifetime: counted, not timed.
        app[keys.METRICS].observe_request(request.method, route, status, None if websocket else elapsed)
        if app[keys.SETTINGS].access_log:
            identity = request.get(keys.IDENTITY)
            log.info("request", extra={
                "request_id": request.get(keys.REQUEST_ID),
                "user_id": str(identity.user_id) if isinstance(identity, Identity) else None,
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": status,
                "latency_ms": round(elapsed * 1000, 2),
            })
