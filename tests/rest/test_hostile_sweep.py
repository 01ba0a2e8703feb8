"""Hostile requests at every documented operation: whatever the server answers must be a status the
document declares for it, with a body of the declared shape (the test client checks each answer
against the document, tests/support/openapi_check.py); the sweep adds what each answer must be."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel.settings import Settings
from tests.support.factories import TestUser, make_user

PARAM = re.compile(r"\{(\w+)\}")


@pytest.fixture
async def client(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
                 make_settings: Callable[..., Settings]) -> TestClient:
    """Budgets large enough that the sweep meets the routes, not the rate limiter."""
    settings = make_settings(rate_auth_per_min=100_000, rate_payments_per_min=100_000, rate_tips_per_min=100_000,
                             rate_streaming_per_min=100_000, rate_general_per_hour=100_000,
                             rate_anonymous_per_min=100_000)
    app_client: TestClient = await aiohttp_client(make_app(settings))
    return app_client


@pytest.fixture
async def doc(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/openapi.json")).json()
    return body


def _fill(template: str, value: str) -> str:
    return PARAM.sub(value, template)


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in doc["paths"].items() for method, op in item.items()]


async def _error(resp: Any) -> tuple[int, str]:
    body = await resp.json()
    return resp.status, body["error"]["code"]


async def test_malformed_and_unknown_ids_everywhere(client: TestClient, doc: dict[str, Any]) -> None:
    admin: TestUser = await make_user(client.app, role="admin")
    for method, path, op in _operations(doc):
        if "{" not in path:
            continue
        some_uuid = str(uuid.uuid4())
        for value in ("not-a-uuid", "%00", "1e309", some_uuid):
            kw: dict[str, Any] = {"json": {}} if "requestBody" in op else {}
            resp = await client.request(method, _fill(path, value), headers=admin.headers, **kw)
            status, code = await _error(resp)
            # an unknown thing is 404; a body that is empty for a route that needs fields may be
            # refused first only when the id is well formed (the id is looked at before the body)
            if value != some_uuid:
                assert (status, code) == (404, "NOT_FOUND"), (method, path, value)
            else:
                assert status in (404, 422), (method, path, value, status)


async def test_bodies_that_are_not_what_the_route_takes(client: TestClient, doc: dict[str, Any]) -> None:
    admin: TestUser = await make_user(client.app, role="admin")
    some_id = str(uuid.uuid4())
    for method, path, op in _operations(doc):
        if "requestBody" not in op or path == "/v1/webhooks/stripe":  # raw bytes, signed: its own tests
            continue
        url = _fill(path, some_id)
        hostile: list[tuple[dict[str, Any], tuple[int, ...]]] = [
            ({"data": b"{", "headers": {"Content-Type": "application/json"}}, (400, 404)),
            ({"data": b"[]", "headers": {"Content-Type": "application/json"}}, (404, 422)),
            ({"data": b'{"amount": 1e400, "title": "\\ud800"}', "headers": {"Content-Type": "application/json"}},
             (400, 404, 422)),
            ({"json": {"amount": 2**64, "user_id": "x" * 10_000, "id": -1}}, (404, 422)),
            ({"data": b"title=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, (404, 415)),
            ({"data": b"<html/>", "headers": {"Content-Type": "text/html"}}, (404, 415)),
            ({"data": b"{" + b" " * 2_000_000 + b"}", "headers": {"Content-Type": "application/json"}}, (404, 413)),
        ]
        for kw, allowed in hostile:
            headers = {**admin.headers, **kw.pop("headers", {})}
            resp = await client.request(method, url, headers=headers, **kw)
            status, _ = await _error(resp)
            # 403: routes for another role (payouts are for performers) refuse before reading
            assert status in (*allowed, 403), (method, path, kw.keys(), status)


async def test_bad_idempotency_keys(client: TestClient, doc: dict[str, Any]) -> None:
    admin: TestUser = await make_user(client.app, role="admin")
    keyed = [(m, p) for m, p, op in _operations(doc)
             if any(q["name"] == "Idempotency-Key" for q in op.get("parameters", []))]
    assert keyed, "some routes take an Idempotency-Key"
    for method, path in keyed:
        for key in ("k" * 256, "\u00e9" * 200):
            # the body is validated first (an empty one fails most routes), then the key
            resp = await client.request(method, path, json={}, headers={**admin.headers, "Idempotency-Key": key})
            assert (await _error(resp))[0] in (400, 403, 422), (path, key)
        # blanks only: HTTP trims header values, so this is an empty key (refused after the body)
        resp = await client.request(method, path, json={}, headers={**admin.headers, "Idempotency-Key": "   "})
        assert resp.status in (403, 422), path
    too_long = {**admin.headers, "Idempotency-Key": "k" * 256}
    resp = await client.post("/v1/streams", json={"title": "t"}, headers=too_long)
    assert await _error(resp) == (400, "BAD_REQUEST")


async def test_methods_a_path_does_not_have(client: TestClient, doc: dict[str, Any]) -> None:
    for _, path, _ in _operations(doc):
        listed = {m.upper() for m in doc["paths"][path]}
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
            if method in listed:
                continue
            resp = await client.request(method, _fill(path, str(uuid.uuid4())))
            assert resp.status == 405, (method, path)
            assert set(resp.headers["Allow"].split(",")) == listed
