"""The check every test client runs against the app's OpenAPI document can fail, and does on drift."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from rest import ROUTERS
from rest.framework.openapi import build_openapi
from rest.framework.router import Call, Router, mount
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.settings import Settings
from tests.support.openapi_check import DocumentDrift, OpenApiCheck

ClientFactory = Callable[..., Any]


@pytest.fixture
def doc(settings: Settings) -> dict[str, Any]:
    return build_openapi(ROUTERS, settings)


def test_the_check_refuses_what_the_document_does_not_promise(doc: dict[str, Any]) -> None:
    check = OpenApiCheck(doc)
    good = orjson.dumps({"error": {"code": "NOT_FOUND", "message": "stream not found"}})
    check.check("GET", "/v1/streams/x", 404, "application/json", good, {})
    drifts = [
        ("GET", "/v1/streams/x", 409, "application/json", good, {}),  # status not declared
        ("GET", "/v1/streams/x", 404, "application/json",
         orjson.dumps({"error": {"code": "CONFLICT", "message": "m"}}), {}),  # code not of that status
        ("GET", "/v1/streams/x", 404, "application/json", orjson.dumps({"detail": "nope"}), {}),  # shape
        ("GET", "/v1/status", 200, "application/json", orjson.dumps({"version": "1"}), {}),  # no envelope
        ("GET", "/metrics", 200, "application/json", b"{}", {}),  # content type
        ("PUT", "/v1/status", 200, "application/json", orjson.dumps({"data": {}, "meta": {}}), {}),  # method
        ("PUT", "/v1/status", 405, "application/json",
         orjson.dumps({"error": {"code": "METHOD_NOT_ALLOWED", "message": "m"}}), {"Allow": "GET,POST"}),
        ("GET", "/v1/nowhere", 200, "application/json", b"{}", {}),  # not a documented path
    ]
    for method, path, status, media, body, headers in drifts:
        with pytest.raises(DocumentDrift):
            check.check(method, path, status, media, body, headers)
    check.check("PUT", "/v1/status", 405, "application/json",
                orjson.dumps({"error": {"code": "METHOD_NOT_ALLOWED", "message": "m"}}), {"Allow": "GET"})
    check.check("GET", "/metrics", 200, "text/plain; version=0.0.4; charset=utf-8", b"# x", {})


async def test_the_test_client_fails_a_test_on_drift(aiohttp_client: ClientFactory,
                                                     make_app: Callable[[Settings], web.Application],
                                                     settings: Settings) -> None:
    drifting = Router("test-drift")

    @drifting.get("/v1/test/drift", summary="raises a code it does not declare", auth="public", rate="none")
    async def _drift(call: Call[None]) -> web.StreamResponse:
        raise ApiError(ErrorCode.CONFLICT, "undeclared")

    app = make_app(settings)
    mount(app, [drifting])
    client = await aiohttp_client(app)
    with pytest.raises(DocumentDrift, match="status 409 is not declared"):
        await client.get("/v1/test/drift")
    # non-API paths are not the document's business
    assert (await client.get("/")).status == 200
