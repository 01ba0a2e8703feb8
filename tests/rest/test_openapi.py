"""The OpenAPI document tells the truth: statuses and codes per route, unwrapped standard formats,
limits from the running app's settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from rest import ROUTERS
from rest.framework.openapi import build_openapi, route_errors
from rest.framework.params import uuid_param
from rest.framework.responses import ok
from rest.framework.router import Call, Router, mount
from server.kernel.errors import ErrorCode
from server.kernel.settings import Settings

ClientFactory = Callable[..., Any]


def _op(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = doc["paths"][path][method]
    return op


def _codes(op: dict[str, Any], status: int) -> list[str]:
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    codes: list[str] = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
    return codes


@pytest.fixture
def doc(settings: Settings) -> dict[str, Any]:
    return build_openapi(ROUTERS, settings)


def test_framework_statuses_follow_route_properties(doc: dict[str, Any]) -> None:
    transfer = _op(doc, "post", "/v1/wallet/transfer")
    assert {"200", "201", "400", "401", "403", "404", "408", "409", "413", "415", "422", "429", "500", "503"} \
        <= set(transfer["responses"])
    assert _codes(transfer, 409) == ["CONFLICT", "IDEMPOTENCY_KEY_REUSED", "INSUFFICIENT_BALANCE"]
    assert _codes(transfer, 503) == ["OVERLOADED", "UNAVAILABLE"]
    assert _codes(transfer, 400) == ["BAD_REQUEST", "MALFORMED_JSON"]  # a bad Idempotency-Key, broken JSON
    assert _codes(transfer, 413) == ["PAYLOAD_TOO_LARGE"] and _codes(transfer, 415) == ["UNSUPPORTED_MEDIA_TYPE"]
    assert {"Idempotency-Key"} <= {p["name"] for p in transfer["parameters"]}
    # no body, no path, no auth, no budget: nothing of that kind is promised (403: operators only)
    status = _op(doc, "get", "/v1/status")
    assert set(status["responses"]) == {"200", "403", "500"}
    # a route without a body never reads one: no 413/415; a public one is never 401
    balance = _op(doc, "get", "/v1/wallet/balance")
    assert set(balance["responses"]) == {"200", "401", "429", "500", "503"}  # 503: PostgreSQL away
    assert _codes(balance, 503) == ["UNAVAILABLE"]
    assert _codes(balance, 401) == ["AUTHENTICATION_REQUIRED", "INVALID_TOKEN", "TOKEN_EXPIRED"]
    register = _op(doc, "post", "/v1/auth/register")
    assert "401" not in register["responses"] and _codes(register, 409) == ["CONFLICT"]
    assert _codes(register, 503) == ["OVERLOADED", "UNAVAILABLE"]  # hashing queue full; PostgreSQL away
    # roles: 403; path parameters: 404
    approve = _op(doc, "post", "/v1/admin/payouts/{id}/approve")
    assert _codes(approve, 403) == ["PERMISSION_DENIED"] and "NOT_FOUND" in _codes(approve, 404)
    # optional auth: a token that is sent must be good
    assert _codes(_op(doc, "get", "/v1/streams"), 401) == ["INVALID_TOKEN", "TOKEN_EXPIRED"]
    # every operation may fail with the error shape
    for item in doc["paths"].values():
        for op in item.values():
            assert _codes(op, 500) == ["INTERNAL_ERROR"]


def test_rate_limited_answers_declare_their_headers(doc: dict[str, Any]) -> None:
    streams = _op(doc, "post", "/v1/streams")
    for status in ("201", "409", "413", "422", "500"):
        headers = set(streams["responses"][status]["headers"])
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= headers, status
    assert "Retry-After" in streams["responses"]["429"]["headers"]
    assert "headers" not in _op(doc, "get", "/v1/status")["responses"]["200"]


def test_route_errors_are_declared_plus_framework_codes() -> None:
    router = Router("t")

    @router.post("/v1/t/{id}", summary="t", body=None, params={"id": uuid_param("thing")}, auth="optional",
                 rate="none", errors=(ErrorCode.PAYMENT_PROVIDER_ERROR,))
    async def t(call: Call[None]) -> web.StreamResponse:
        return ok(None)

    assert route_errors(router.routes[0]) == {ErrorCode.PAYMENT_PROVIDER_ERROR, ErrorCode.NOT_FOUND,
                                              ErrorCode.INVALID_TOKEN, ErrorCode.TOKEN_EXPIRED,
                                              ErrorCode.INTERNAL_ERROR, ErrorCode.UNAVAILABLE}

    @router.get("/v1/t/doc", summary="t", auth="public", rate="none", database=False)
    async def doc(call: Call[None]) -> web.StreamResponse:
        return ok(None)

    assert route_errors(router.routes[1]) == {ErrorCode.INTERNAL_ERROR}  # no database: no outage 503


def test_standard_formats_are_documented_as_served(doc: dict[str, Any]) -> None:
    metrics = _op(doc, "get", "/metrics")["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain", "application/openmetrics-text"}
    assert metrics["text/plain"]["schema"] == {"type": "string"}
    jwks = _op(doc, "get", "/.well-known/jwks.json")["responses"]["200"]["content"]["application/json"]["schema"]
    assert jwks == {"$ref": "#/components/schemas/Jwks"}
    document = _op(doc, "get", "/v1/openapi.json")["responses"]["200"]["content"]["application/json"]["schema"]
    assert document == {"$ref": "#/components/schemas/OpenApiDocument"}
    envelope = _op(doc, "get", "/v1/status")["responses"]["200"]["content"]["application/json"]["schema"]
    assert envelope["required"] == ["data", "meta"]
    assert doc["components"]["responses"]["MethodNotAllowed"]["headers"] == {
        "Allow": {"$ref": "#/components/headers/Allow"}}


def test_limits_are_the_running_apps_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(tip_message_max_chars=50, tip_max_tokens=777, payout_min_tokens=12,
                             admin_adjust_max_tokens=99, room_ban_max_s=3600, token_packs="10:100,30:250",
                             password_min_chars=12, password_max_chars=64)
    schemas = build_openapi(ROUTERS, settings)["components"]["schemas"]
    transfer = schemas["TransferIn"]["properties"]
    assert transfer["message"]["maxLength"] == 50 and transfer["amount"]["maximum"] == 777
    assert "GREENROOM_TIP_MAX_TOKENS" in transfer["amount"]["description"]
    assert "x-greenroom-setting" not in orjson.dumps(schemas).decode()
    assert schemas["PayoutIn"]["properties"]["amount"]["minimum"] == 12
    adjust = schemas["AdjustIn"]["properties"]["amount"]
    assert (adjust["minimum"], adjust["maximum"], adjust["not"]) == (-99, 99, {"const": 0})
    duration = schemas["BanIn"]["properties"]["duration_s"]["anyOf"][0]
    assert duration == {"type": "integer", "minimum": 1, "maximum": 3600}
    assert schemas["BuyIn"]["properties"]["pack_tokens"]["enum"] == [10, 30]
    password = schemas["RegisterBody"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (12, 64)
    assert schemas["RegisterBody"]["properties"]["role"]["enum"] == ["viewer", "performer"]
    # the defaults match the README's promise: a tip message is at most 200 characters
    default = build_openapi(ROUTERS, make_settings())["components"]["schemas"]["TransferIn"]["properties"]
    assert default["message"]["maxLength"] == 200


async def test_the_server_enforces_what_the_document_states(aiohttp_client: ClientFactory,
                                                            make_app: Callable[[Settings], web.Application],
                                                            make_settings: Callable[..., Settings]) -> None:
    from tests.support.factories import make_user
    from tests.support.wallet_support import fund

    client = await aiohttp_client(make_app(make_settings(tip_message_max_chars=5, tip_max_tokens=50)))
    doc = await (await client.get("/v1/openapi.json")).json()
    limits = doc["components"]["schemas"]["TransferIn"]["properties"]
    fan, performer = await make_user(client.app), await make_user(client.app, role="performer")
    await fund(client.app, fan.id, 1000)
    body = {"to_user_id": str(performer.id)}
    at = await client.post("/v1/wallet/transfer", json={**body, "amount": limits["amount"]["maximum"],
                                                        "message": "x" * limits["message"]["maxLength"]},
                           headers=fan.headers)
    assert at.status == 201
    for over in ({"amount": limits["amount"]["maximum"] + 1}, {"amount": 1, "message": "x" * 6},
                 {"amount": 2**63}, {"amount": -1}, {"amount": 1.5}, {"amount": "1"}):
        resp = await client.post("/v1/wallet/transfer", json={**body, **over}, headers=fan.headers)
        assert resp.status == 422, over


async def test_the_document_is_served_for_the_apps_own_routes(aiohttp_client: ClientFactory,
                                                              make_app: Callable[[Settings], web.Application],
                                                              settings: Settings) -> None:
    extra = Router("test-extra")

    @extra.get("/v1/test/extra", summary="extra", auth="public", rate="none")
    async def _extra(call: Call[None]) -> web.StreamResponse:
        return ok(None)

    app = make_app(settings)
    mount(app, [extra])
    client = await aiohttp_client(app)
    paths = (await (await client.get("/v1/openapi.json")).json())["paths"]
    assert "/v1/test/extra" in paths and "/v1/streams" in paths  # mounting more keeps the app's own
