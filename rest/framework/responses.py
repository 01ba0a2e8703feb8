"""Every REST answer is shaped here: the success envelope `{data, meta}`, the error shape, and the
few answers whose format a standard fixes (JWKS, the OpenAPI document, Prometheus text).

Handlers return `ok(...)` (or `document`/`text` for the standard formats); the error middleware
turns every failure into `error(...)`; idempotency replays with `replay(...)`. A later
compatibility profile per replaced platform reshapes answers in this one module.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from server.kernel.errors import ApiError

JSON = "application/json"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def _json(body: Any, *, status: int, headers: dict[str, str] | None) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type=JSON, headers=headers)


def ok(data: Any, *, status: int = 200, meta: dict[str, Any] | None = None,
       headers: dict[str, str] | None = None) -> web.Response:
    """The success shape: {"data": ..., "meta": {...}}."""
    return _json({"data": data, "meta": meta or {}}, status=status, headers=headers)


def page_meta(page: int, per_page: int, total: int) -> dict[str, Any]:
    pages = (total + per_page - 1) // per_page if per_page else 0
    return {"page": page, "per_page": per_page, "total": total, "pages": pages}


def document(body: Any, *, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON document whose format a standard fixes (JWKS, OpenAPI): served as is, never enveloped."""
    return _json(body, status=200, headers=headers)


def text(body: bytes, content_type: str) -> web.Response:
    """A non-JSON answer (Prometheus exposition); `content_type` may carry parameters (version, charset)."""
    return web.Response(body=body, headers={"Content-Type": content_type})


def error_body(exc: ApiError) -> dict[str, Any]:
    """The error shape `{"error": {code, message, details?}}`."""
    err: dict[str, Any] = {"code": exc.code.value, "message": exc.message}
    if exc.details:
        err["details"] = exc.details
    return {"error": err}


def error(exc: ApiError, *, headers: dict[str, str] | None = None) -> web.Response:
    """The error shape with the error's status and headers (plus `headers`, e.g. the rate budget's)."""
    return _json(error_body(exc), status=exc.status, headers={**(headers or {}), **(exc.headers or {})})


# --- what the shapes look like, for the OpenAPI document (kept beside the code that makes them) ---

def ok_schema(data: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of `ok(...)` whose data is `data`."""
    return {"type": "object", "required": ["data", "meta"], "additionalProperties": False,
            "properties": {"data": data, "meta": {"type": "object"}}}


def error_schema(codes: list[str]) -> dict[str, Any]:
    """JSON Schema of `error(...)` whose code is one of `codes`."""
    return {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    }


def error_schema_of(base: dict[str, Any], codes: list[str]) -> dict[str, Any]:
    """`base` (a reference to `error_schema`) narrowed to the codes one status of one route carries."""
    return {"allOf": [base, {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}


def replay(status: int, body: bytes) -> web.Response:
    """A stored answer sent again verbatim (an idempotent retry): it was shaped here the first time."""
    return web.Response(body=body, status=status, content_type=JSON, headers={"Idempotent-Replayed": "true"})
