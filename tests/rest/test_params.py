"""Typed path parameters: declared per route, parsed before the handler, a malformed one is 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rest import ROUTERS
from rest.framework.params import PathValues, parse_path, text_param, uuid_param
from rest.framework.router import Router
from server.kernel.errors import ApiError
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import new_stream

MALFORMED = ["not-a-uuid", "1", "%00", "%20", "x" * 2000, "00000000-0000-0000-0000-00000000000g",
             "' OR 1=1 --", "%F0%9F%92%A9"]


def test_parse_path_types_values_and_refuses_malformed_ones() -> None:
    params = {"id": uuid_param("stream"), "user_id": uuid_param("user")}
    sid, uid = uuid.uuid4(), uuid.uuid4()
    path = parse_path({"id": str(sid), "user_id": str(uid).upper()}, params)
    assert path.uuid("id") == sid and path.uuid("user_id") == uid
    for raw in ("", "nope", "\x00", "1" * 33, "12345678-1234-1234-1234-1234567890123"):
        with pytest.raises(ApiError) as caught:
            parse_path({"id": raw, "user_id": str(uid)}, params)
        assert caught.value.status == 404 and caught.value.message == "stream not found"
    with pytest.raises(ApiError) as caught:
        parse_path({"id": str(sid), "user_id": "nope"}, params)
    assert caught.value.message == "user not found"


def test_a_text_parameter_with_a_nul_names_nothing() -> None:
    params = {"slug": text_param("page")}
    assert parse_path({"slug": "ok-slug"}, params).text("slug") == "ok-slug"
    with pytest.raises(ApiError) as caught:
        parse_path({"slug": "a\x00b"}, params)  # PostgreSQL could not even be asked about it
    assert caught.value.status == 404 and caught.value.message == "page not found"


def test_asking_for_an_undeclared_type_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        PathValues({"id": "raw"}).uuid("id")


def test_placeholders_must_match_the_declaration() -> None:
    router = Router("test")
    with pytest.raises(TypeError, match="declared"):
        router.get("/v1/things/{id}", summary="undeclared")
    with pytest.raises(TypeError, match="declared"):
        router.get("/v1/things", summary="extra", params={"id": uuid_param("thing")})
    with pytest.raises(TypeError, match="declared"):
        router.get("/v1/things/{id}/{other}", summary="one missing", params={"id": uuid_param("thing")})


def test_every_mounted_route_declares_its_path_parameters() -> None:
    for router in ROUTERS:
        for route in router.routes:
            assert ("{" in route.path) == bool(route.params), route.path


@pytest.fixture
async def people(client: TestClient) -> dict[str, TestUser]:
    app = client.app
    return {"host": await make_user(app, role="performer"), "viewer": await make_user(app),
            "admin": await make_user(app, role="admin")}


async def _not_found(resp: Any) -> str:
    body = await resp.json()
    assert resp.status == 404, body
    assert body["error"]["code"] == "NOT_FOUND"
    message: str = body["error"]["message"]
    return message


async def test_malformed_ids_are_404_on_every_kind_of_route(client: TestClient, people: dict[str, TestUser]) -> None:
    host, admin = people["host"], people["admin"]
    stream = await new_stream(client, host)
    for bad in MALFORMED:
        assert await _not_found(await client.get(f"/v1/streams/{bad}/tips")) == "stream not found"
        assert await _not_found(await client.post(f"/v1/admin/payouts/{bad}/approve", json={},
                                                  headers=admin.headers)) == "payout request not found"
        assert await _not_found(await client.post(f"/v1/admin/payouts/{bad}/reject", json={},
                                                  headers=admin.headers)) == "payout request not found"
        resp = await client.delete(f"/v1/streams/{stream['id']}/moderators/{bad}", headers=host.headers)
        assert await _not_found(resp) == "user not found"
        resp = await client.delete(f"/v1/streams/{stream['id']}/bans/{bad}", headers=host.headers)
        assert await _not_found(resp) == "user not found"
        resp = await client.patch(f"/v1/users/{bad}/preferences", json={"a": 1}, headers=admin.headers)
        assert await _not_found(resp) == "user not found"


async def test_a_malformed_id_is_404_before_the_body_is_looked_at(client: TestClient,
                                                                 people: dict[str, TestUser]) -> None:
    host = people["host"]
    # an invalid body, the wrong content type, broken JSON: the id names nothing, that comes first
    resp = await client.patch("/v1/streams/nope", json={"title": 5}, headers=host.headers)
    assert await _not_found(resp) == "stream not found"
    resp = await client.patch("/v1/streams/nope", data="title=x",
                              headers={**host.headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert await _not_found(resp) == "stream not found"
    resp = await client.post("/v1/streams/nope/bans", data=b"{", headers=host.headers)
    assert await _not_found(resp) == "stream not found"


async def test_auth_still_comes_before_the_id(client: TestClient) -> None:
    resp = await client.patch("/v1/streams/nope", json={"title": "x"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "AUTHENTICATION_REQUIRED"
    viewer = await make_user(client.app)
    resp = await client.post("/v1/admin/payouts/nope/approve", json={}, headers=viewer.headers)
    assert resp.status == 403


async def test_the_document_declares_path_parameters_as_uuids(client: TestClient) -> None:
    doc = await (await client.get("/v1/openapi.json")).json()
    op = doc["paths"]["/v1/streams/{id}/moderators/{user_id}"]["delete"]
    path_params = {p["name"]: p for p in op["parameters"] if p["in"] == "path"}
    assert set(path_params) == {"id", "user_id"}
    for p in path_params.values():
        assert p["required"] is True and p["schema"] == {"type": "string", "format": "uuid"}
    assert "404" in op["responses"]
    for path, item in doc["paths"].items():
        for op in item.values():
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert sorted(names) == sorted(n.strip("{}") for n in path.split("/") if n.startswith("{")), path
