"""The error middleware: every failure leaves as the one error shape; a 500 never leaks internals."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from rest.framework.responses import error, json_response
from server.kernel import keys
from server.kernel.errors import ApiError

log = logging.getLogger("greenroom.http")


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn every failure into the one error shape; a 500 never leaks internals."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    request[keys.REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(exc.status, "BAD_REQUEST")
        message = {404: "no such endpoint", 405: f"method {request.method} not allowed here",
                   413: "request body too large"}.get(exc.status, exc.reason)
        response = json_response({"error": {"code": code, "message": message}}, status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = json_response({"error": {"code": "INTERNAL_ERROR", "message": "internal error",
                                            "details": {"request_id": request_id}}}, status=500)
    response.headers["X-Request-Id"] = request_id
    return response
