"""Answers are shaped in `rest.framework.responses` alone: the shapes, and no other module building one."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from rest.framework.responses import document, error, ok, replay, text
from server.kernel.errors import ApiError, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
SHAPER = ROOT / "rest" / "framework" / "responses.py"


def _json(resp: web.Response) -> Any:
    assert isinstance(resp.body, bytes)
    return orjson.loads(resp.body)


def test_success_and_error_shapes() -> None:
    resp = ok([1, 2], status=201, meta={"page": 1})
    assert resp.status == 201 and resp.content_type == "application/json"
    assert _json(resp) == {"data": [1, 2], "meta": {"page": 1}}
    assert _json(ok(None)) == {"data": None, "meta": {}}

    exc = ApiError(ErrorCode.CONFLICT, "taken", details={"field": "email"}, headers={"Retry-After": "1"})
    resp = error(exc, headers={"X-RateLimit-Limit": "5", "Retry-After": "9"})
    assert resp.status == 409
    assert _json(resp) == {"error": {"code": "CONFLICT", "message": "taken", "details": {"field": "email"}}}
    # the error's own headers win over the extra ones
    assert resp.headers["Retry-After"] == "1" and resp.headers["X-RateLimit-Limit"] == "5"
    # no `details` key at all when there are none
    assert _json(error(ApiError(ErrorCode.NOT_FOUND, "gone"))) == {
        "error": {"code": "NOT_FOUND", "message": "gone"}}


def test_standard_formats_are_not_enveloped() -> None:
    assert _json(document({"keys": []})) == {"keys": []}
    resp = text(b"# HELP x\n", "text/plain; version=0.0.4; charset=utf-8")
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8" and resp.body == b"# HELP x\n"
    stored = b'{"data":1,"meta":{}}'
    again = replay(201, stored)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true" and again.body == stored


def _builders(path: Path) -> list[str]:
    """Places in `path` that build an HTTP answer or an envelope by hand."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("web.Response", "web.json_response", "Response", "json_response"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"data", "meta"} <= keys or ("error" in keys and len(keys) == 1):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} an envelope literal")
    return found


def test_no_handler_or_framework_module_shapes_an_answer_itself() -> None:
    modules = [p for p in (ROOT / "rest").rglob("*.py") if p != SHAPER]
    modules.append(ROOT / "server" / "http" / "error_middleware.py")
    found = [hit for p in modules for hit in _builders(p)]
    assert not found, found
    assert _builders(SHAPER), "the guard finds the shaper's own builders (it can fail)"
