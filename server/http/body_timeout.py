"""The body timeout: a request body must arrive whole within `http_body_timeout_s` of its head.

aiohttp bounds the head (see `server.app.runner.handler_options`) but not the body: a client
sending a byte a second would hold a connection and a handler for as long as it likes. This
middleware reads the body under the bound before any handler runs; `request.read()` keeps it,
so handlers read it again for free (bodies are bounded by `max_body_bytes` anyway). Past the
bound: 408 REQUEST_TIMEOUT, and the connection closes (after at most `http_linger_s`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from rest.framework.responses import error
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def body_timeout_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.body_exists:
        bound = request.app[keys.SETTINGS].http_body_timeout_s
        try:
            async with asyncio.timeout(bound):
                await request.read()
        except TimeoutError:
            response = error(ApiError(ErrorCode.REQUEST_TIMEOUT,
                                      f"the request body did not arrive within {bound:g} s"))
            response.force_close()  # the rest of the body is not worth waiting for
            return response
    return await handler(request)
