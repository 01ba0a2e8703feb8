"""The OpenAPI 3.1 document, built from the same route declarations that validate requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from rest.framework.params import PLACEHOLDER, placeholders
from rest.framework.responses import error_schema, ok_schema
from rest.framework.router import Route, Router
from server import __version__
from server.kernel.errors import ErrorCode

REF = "#/components/schemas/{model}"

ERROR_SCHEMA = error_schema(sorted(c.value for c in ErrorCode))


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _success(route: Route) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if route.response is not None:
        data = {"$ref": REF.format(model=route.response.__name__)}
        if route.list_response:
            data = {"type": "array", "items": data}
    return {"description": "success", "content": {"application/json": {"schema": ok_schema(data)}}}


def _query_params(route: Route) -> list[dict[str, Any]]:
    if route.query is None:
        return []
    schema = route.query.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "tags": list(route.tags),
        "operationId": f"{route.method.lower()}_{route.handler.__name__}_{route.tags[0]}",
    }
    params = [{"name": name, "in": "path", "required": True, "schema": route.params[name].schema,
               "description": f"Names a {route.params[name].names}; one that does not parse is 404 NOT_FOUND."}
              for name in placeholders(route.path)]
    params += _query_params(route)
    if route.idempotent:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                       "schema": {"type": "string", "maxLength": 255},
                       "description": "Retries with the same key replay the first response."})
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF.format(model=route.body.__name__)}}}}
    elif route.raw_body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {}}}}
    responses: dict[str, Any] = {str(route.status): _success(route)}
    responses["400"] = _error("malformed request")
    if route.body is not None or route.query is not None:
        responses["422"] = _error("validation failed")
    if route.auth == "user":
        op["security"] = [{"bearerAuth": []}]
        responses["401"] = _error("missing, invalid or expired access token")
        if route.roles:
            responses["403"] = _error(f"caller is not one of: {', '.join(route.roles)}")
    elif route.auth == "optional":
        op["security"] = [{"bearerAuth": []}, {}]
    if route.params:
        responses["404"] = _error("not found")
    if route.rate != "none":
        responses["429"] = _error("rate limit exceeded")
    op["responses"] = responses
    return op


def build_openapi(routers: Sequence[Router]) -> dict[str, Any]:
    routes = [r for router in routers for r in router.routes]
    models: dict[str, type[BaseModel]] = {}
    for r in routes:
        for m in (r.body, r.response):
            if m is not None:
                models[m.__name__] = m
    _, defs = models_json_schema([(m, "validation") for m in models.values()], ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        path = PLACEHOLDER.sub(lambda m: "{" + m.group(1) + "}", r.path)
        paths.setdefault(path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Greenroom API", "version": __version__,
                 "description": "REST layer of Greenroom; the room socket is at GET /ws (see README)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
