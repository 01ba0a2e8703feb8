"""The error middleware: every failure leaves as the one error shape; a 500 never leaks internals."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from rest.framework.guards import RATE_HEADERS
from rest.framework.responses import error
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.outage import DEPENDENCY_DOWN, unavailable

log = logging.getLogger("greenroom.http")

# aiohttp's own refusals (routing, body size) in the one error shape.
_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.PAYLOAD_TOO_LARGE}


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn every failure into the one error shape; a 500 never leaks internals."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    request[keys.REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error(exc, headers=request.get(RATE_HEADERS))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, ErrorCode.BAD_REQUEST)
        message = {404: "no such endpoint", 405: f"method {request.method} not allowed here",
                   413: "request body too large"}.get(exc.status, exc.reason)
        response = error(ApiError(code, message, status=exc.status), headers=request.get(RATE_HEADERS))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except DEPENDENCY_DOWN as exc:
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc,
                    extra={"request_id": request_id, "path": request.path})
        response = error(unavailable(), headers=request.get(RATE_HEADERS))
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = error(ApiError(ErrorCode.INTERNAL_ERROR, "internal error", details={"request_id": request_id}),
                         headers=request.get(RATE_HEADERS))
    response.headers["X-Request-Id"] = request_id
    return response
