"""Text and numbers PostgreSQL cannot store are refused at the schema: a NUL (U+0000) in any request
string (PostgreSQL refuses it in text) and, in free-form JSON, integers outside bigint and
non-finite numbers are 422 VALIDATION_ERROR, never a 500 from the database or the encoder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ValidationError

from rest import ROUTERS
from server.kernel.settings import Settings
from tests.support.factories import make_user

NUL = "a\x00b"
FAST = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1,
        "rate_general_per_hour": 100_000, "rate_auth_per_min": 100_000, "rate_anonymous_per_min": 100_000,
        "rate_streaming_per_min": 100_000}


@pytest.fixture
async def api(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
              make_settings: Callable[..., Settings]) -> TestClient:
    return await aiohttp_client(make_app(make_settings(**FAST)))


async def refused(resp: Any, field: str | None = None) -> dict[str, Any]:
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (422, "VALIDATION_ERROR"), body
    if field is not None:
        fields = [e["field"] for e in body["error"]["details"]["errors"]]
        assert field in fields, body
    error: dict[str, Any] = body["error"]
    return error


async def test_nul_in_anonymous_requests(api: TestClient) -> None:
    await refused(await api.get("/v1/streams?category=a%00b"), "category")
    error = await refused(await api.post("/v1/auth/login", json={"email": "a\x00@example.test", "password": "pw"}),
                          "email")
    assert "U+0000" in error["details"]["errors"][0]["issue"]
    await refused(await api.post("/v1/auth/login", json={"email": "a@example.test", "password": NUL}), "password")
    await refused(await api.post("/v1/auth/register", json={
        "email": "new@example.test", "password": "Correct-Horse-Battery-9", "display_name": NUL}), "display_name")
    await refused(await api.post("/v1/auth/refresh", json={"refresh_token": NUL}), "refresh_token")
    # still a 200 for a clean query
    assert (await api.get("/v1/streams?category=ab")).status == 200


async def test_nul_in_bodies_and_queries_of_signed_in_users(api: TestClient) -> None:
    host = await make_user(api.app, role="performer")
    await refused(await api.post("/v1/streams", json={"title": NUL}, headers=host.headers), "title")
    await refused(await api.post("/v1/streams", json={"title": "t", "tags": ["ok", NUL]}, headers=host.headers),
                  "tags.1")
    await refused(await api.post("/v1/streams", json={"title": "t", "description": NUL}, headers=host.headers),
                  "description")
    created = await api.post("/v1/streams", json={"title": "t"}, headers=host.headers)
    stream_id = (await created.json())["data"]["id"]
    await refused(await api.patch(f"/v1/streams/{stream_id}", json={"category": NUL}, headers=host.headers),
                  "category")
    await refused(await api.patch("/v1/me", json={"bio": NUL}, headers=host.headers), "bio")
    await refused(await api.post("/v1/moderation/report", json={
        "target_type": "stream", "target_id": stream_id, "reason": "spam", "details": NUL}, headers=host.headers),
        "details")
    await refused(await api.post("/v1/wallet/transfer", json={
        "to_user_id": str(host.id), "amount": 1, "message": NUL}, headers=host.headers), "message")
    admin = await make_user(api.app, role="admin")
    await refused(await api.post("/v1/admin/wallet/adjust", json={
        "user_id": str(host.id), "amount": 5, "reason": NUL}, headers=admin.headers), "reason")


async def test_preferences_refuse_nul_huge_and_non_finite_numbers(api: TestClient) -> None:
    user = await make_user(api.app)
    path = f"/v1/users/{user.id}/preferences"
    await refused(await api.patch(path, json={"theme": NUL}, headers=user.headers), "theme")
    await refused(await api.patch(path, json={NUL: 1}, headers=user.headers))
    await refused(await api.patch(path, json={"deep": {"list": [1, {"x": NUL}]}}, headers=user.headers),
                  "deep.list.1.x")
    for number in (2**64, 2**63, -(2**63) - 1, 10**30):
        await refused(await api.patch(path, json={"n": number}, headers=user.headers), "n")
    raw = b'{"n": 1e400}'
    await refused(await api.patch(path, data=raw, headers={**user.headers, "Content-Type": "application/json"}), "n")
    # the edges of bigint are stored and read back exactly
    ok = await api.patch(path, json={"big": 2**63 - 1, "small": -(2**63), "x": -0.0}, headers=user.headers)
    assert ok.status == 200, await ok.text()
    got = await (await api.get(path, headers=user.headers)).json()
    assert got["data"] == {"big": 2**63 - 1, "small": -(2**63), "x": 0}


# --- every string field of every request schema ------------------------------------------------

def _models() -> Iterator[tuple[str, type[BaseModel], bool]]:
    """(name, model, is_query) of every body and query schema the app mounts."""
    for router in ROUTERS:
        for route in router.routes:
            if route.body is not None:
                yield f"{route.method} {route.path} body", route.body, False
            if route.query is not None:
                yield f"{route.method} {route.path} query", route.query, True


def _text_kind(prop: dict[str, Any]) -> str | None:
    """'str' for a free-text string property, 'list' for an array of them, else None."""
    branches = prop.get("anyOf", [prop])
    for branch in branches:
        if branch.get("type") == "string" and not ({"format", "enum", "const"} & branch.keys()):
            return "str"
        items = branch.get("items", {})
        if branch.get("type") == "array" and items.get("type") == "string" and "format" not in items:
            return "list"
    return None


def test_every_request_string_field_refuses_nul() -> None:
    checked = 0
    for name, model, is_query in _models():
        schema = model.model_json_schema()
        for field, prop in schema.get("properties", {}).items():
            kind = _text_kind(prop)
            if kind is None:
                continue
            value: Any = NUL if kind == "str" else [NUL]
            with pytest.raises(ValidationError) as caught:
                if is_query:
                    model.model_validate({field: value})
                else:
                    model.model_validate({field: value}, strict=True)
            assert any(e["loc"][:1] == (field,) for e in caught.value.errors()), (name, field)
            checked += 1
    assert checked >= 20  # title, description, category, tags, email, password, reason, ...


def test_nul_refusal_reaches_nested_models_and_free_form_values() -> None:
    from rest.accounts.users import Preferences

    with pytest.raises(ValidationError) as caught:
        Preferences.model_validate({"a": [{"b": {"c": NUL}}]})
    assert [e["loc"] for e in caught.value.errors()] == [("a", 0, "b", "c")]
    with pytest.raises(ValidationError):
        Preferences.model_validate({"ok": {NUL: True}})
    assert Preferences.model_validate({"a": [{"b": "fine", "n": 2**63 - 1}]}).root["a"][0]["n"] == 2**63 - 1


async def test_deeply_nested_bodies_are_refused(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
                                               make_settings: Callable[..., Settings]) -> None:
    api = await aiohttp_client(make_app(make_settings(**FAST, json_max_depth=6)))
    user = await make_user(api.app)
    path = f"/v1/users/{user.id}/preferences"
    headers = {**user.headers, "Content-Type": "application/json"}
    five = {"a": {"b": {"c": {"d": [1]}}}}  # the body object is level 1: five levels
    assert (await api.patch(path, json={"ok": five}, headers=user.headers)).status == 200  # six
    error = await refused(await api.patch(path, json={"ok": {"x": five}}, headers=user.headers))
    assert "6" in error["details"]["errors"][0]["issue"]
    for depth in (150, 199, 300):
        await refused(await api.patch(path, data=b'{"a": ' + b"[" * depth + b"]" * depth + b"}", headers=headers))
    # brackets in strings are not nesting
    assert (await api.patch(path, json={"s": "[[[[[[[[[[{{{{{{{{"}, headers=user.headers)).status == 200
    resp = await api.patch(path, data=b"[" * 5000 + b"]" * 5000, headers=headers)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "MALFORMED_JSON")
