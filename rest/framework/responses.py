"""Every REST answer is shaped here: the success envelope `{data, meta}` and the error shape.

Handlers return `ok(...)`; the error middleware turns every failure into `error(...)`. A later
compatibility profile per replaced platform reshapes answers in this one module.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from server.kernel.errors import ApiError


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json", headers=headers)


def ok(data: Any, *, status: int = 200, meta: dict[str, Any] | None = None,
       headers: dict[str, str] | None = None) -> web.Response:
    """The success shape: {"data": ..., "meta": {...}}."""
    return json_response({"data": data, "meta": meta or {}}, status=status, headers=headers)


def page_meta(page: int, per_page: int, total: int) -> dict[str, Any]:
    pages = (total + per_page - 1) // per_page if per_page else 0
    return {"page": page, "per_page": per_page, "total": total, "pages": pages}


def error(exc: ApiError) -> web.Response:
    """The error shape `{"error": {code, message, details?}}` with the error's status and headers."""
    return json_response(exc.body(), status=exc.status, headers=dict(exc.headers or {}))
