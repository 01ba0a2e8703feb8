"""The OpenAPI 3.1 document, built from the same route declarations that validate requests.

It is a promise to every client, so it states what the server really does: every status a route
can answer with (the codes its domain raises, declared on the route, plus the framework's own,
derived from the route's properties: see `route_errors`), the error codes each status carries, the
formats that are not enveloped (JWKS, this document, Prometheus text), and the limits that are
settings with the values of the running app (`schema.from_settings`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from rest.framework.params import PLACEHOLDER, placeholders
from rest.framework.responses import error_schema, error_schema_of, ok_schema
from rest.framework.router import EMPTY_BODY, Route, Router
from rest.framework.schema import SETTING_KEY
from server import __version__
from server.kernel import inputs
from server.kernel.errors import ErrorCode
from server.kernel.settings import Settings, env_name

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = error_schema(sorted(c.value for c in ErrorCode))
JSON = "application/json"

# The codes the framework itself answers with, by what a route declares.
AUTH_USER = (ErrorCode.AUTHENTICATION_REQUIRED, ErrorCode.INVALID_TOKEN, ErrorCode.TOKEN_EXPIRED)
AUTH_OPTIONAL = (ErrorCode.INVALID_TOKEN, ErrorCode.TOKEN_EXPIRED)  # a token that is sent must be good
BODY = (ErrorCode.MALFORMED_JSON, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ErrorCode.VALIDATION_ERROR)
IDEMPOTENT = (ErrorCode.BAD_REQUEST, ErrorCode.CONFLICT, ErrorCode.IDEMPOTENCY_KEY_REUSED)

# What a status means, for the response's description (its codes follow).
MEANING = {400: "malformed request", 401: "missing, invalid or expired credentials", 403: "not allowed",
           404: "not found", 409: "conflict with the current state", 413: "request body too large",
           415: "request body is not JSON", 422: "validation failed (a NUL, U+0000, in any string is refused too)",
           429: "rate limit exceeded",
           500: "internal error (details carry only a request id)", 502: "the payment provider failed",
           503: "a dependency is busy or unavailable; retry"}

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
HEADERS: dict[str, Any] = {
    "X-RateLimit-Limit": {"description": "Requests in the caller's budget for this route's category.",
                          "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Requests left in the budget.", "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "Unix time when the budget is full again.", "schema": {"type": "integer"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
    "Idempotent-Replayed": {"description": "`true` when this is the stored answer of an earlier request "
                                           "with the same Idempotency-Key.", "schema": {"type": "string"}},
    "Allow": {"description": "The methods this path has.", "schema": {"type": "string"}},
}


def route_errors(route: Route) -> frozenset[ErrorCode]:
    """Every error code `route` can answer with: its declared domain codes and the framework's own."""
    codes: set[ErrorCode] = {ErrorCode.INTERNAL_ERROR, *route.errors}
    if route.database:
        codes.add(ErrorCode.UNAVAILABLE)  # PostgreSQL away (server.kernel.outage)
    if route.auth == "user":
        codes.update(AUTH_USER)
    elif route.auth == "optional":
        codes.update(AUTH_OPTIONAL)
    if route.roles:
        codes.add(ErrorCode.PERMISSION_DENIED)
    if route.params:
        codes.add(ErrorCode.NOT_FOUND)
    if route.rate != "none":
        codes.add(ErrorCode.RATE_LIMIT_EXCEEDED)
    if route.body is not None and not route.raw_body:
        codes.update(BODY)
    if route.raw_body:
        codes.add(ErrorCode.PAYLOAD_TOO_LARGE)  # the body is still read, and bounded
    if route.body is not None or route.raw_body:
        codes.add(ErrorCode.REQUEST_TIMEOUT)  # read within http_body_timeout_s
    if route.query is not None:
        codes.add(ErrorCode.VALIDATION_ERROR)
    if route.idempotent:
        codes.update(IDEMPOTENT)
    return frozenset(codes)


def _headers(route: Route, status: int) -> dict[str, Any]:
    names: list[str] = []
    if route.rate != "none":
        names += RATE_HEADERS  # when the request spent budget: every answer after the auth checks
    if status == 429 or (status == 409 and route.idempotent) or (status == 503 and route.database):
        names.append("Retry-After")  # a budget spent, a keyed request still running, PostgreSQL away
    if route.idempotent:
        names.append("Idempotent-Replayed")
    return {n: {"$ref": f"#/components/headers/{n}"} for n in names}


def _with_headers(response: dict[str, Any], headers: dict[str, Any]) -> dict[str, Any]:
    if headers:
        response["headers"] = headers
    return response


def _error_responses(route: Route) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in route_errors(route):
        by_status.setdefault(code.status, []).append(code.value)
    out: dict[str, Any] = {}
    for status in sorted(by_status):
        codes = sorted(by_status[status])
        schema = error_schema_of(ERROR_REF, codes)
        out[str(status)] = _with_headers(
            {"description": f"{MEANING.get(status, 'error')}: {', '.join(codes)}",
             "content": {JSON: {"schema": schema}}},
            _headers(route, status))
    return out


def _success(route: Route) -> dict[str, Any]:
    if route.produces != (JSON,):
        content = {media: {"schema": {"type": "string"}} for media in route.produces}
        return {"description": "success", "content": content}
    data: dict[str, Any] = {}
    if route.response is not None:
        data = {"$ref": REF.format(model=route.response.__name__)}
        if route.list_response:
            data = {"type": "array", "items": data}
    schema = ok_schema(data) if route.envelope else data
    return {"description": "success", "content": {JSON: {"schema": schema}}}


def _query_params(route: Route) -> list[dict[str, Any]]:
    if route.query is None:
        return []
    schema = route.query.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def _empty_body_valid(model: type[BaseModel]) -> bool:
    """Whether the route takes a request without a body: the router reads an empty body as
    `EMPTY_BODY`, so the body is optional exactly when that is valid (every field optional)."""
    try:
        model.model_validate_json(EMPTY_BODY, strict=True)
    except ValidationError:
        return False
    return True


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
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                       "description": "Retries with the same key and body replay the first response."})
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": not _empty_body_valid(route.body), "content": {JSON: {
            "schema": {"$ref": REF.format(model=route.body.__name__)}}}}
    elif route.raw_body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": {}}}}
    if route.auth == "user":
        op["security"] = [{"bearerAuth": []}]
    elif route.auth == "optional":
        op["security"] = [{"bearerAuth": []}, {}]
    responses: dict[str, Any] = {}
    for status in (route.status, *route.other_statuses):
        responses[str(status)] = _with_headers(_success(route), _headers(route, status))
    responses.update(_error_responses(route))
    op["responses"] = responses
    if route.access is not None:
        op["x-access"] = route.access.table()  # the status each kind of caller gets
    return op


# Settings whose document value is derived (a property of the settings).
_DERIVED: dict[str, Callable[[Settings], Any]] = {"token_packs": lambda s: sorted(s.packs)}


def _setting(settings: Settings, name: str) -> Any:
    negate = name.startswith("-")
    name = name.lstrip("-")
    value = _DERIVED[name](settings) if name in _DERIVED else getattr(settings, name)
    return -value if negate else value


def _apply_settings(node: Any, settings: Settings) -> None:
    """Replace every `from_settings` marker by the running app's values (in place)."""
    if isinstance(node, list):
        for item in node:
            _apply_settings(item, settings)
        return
    if not isinstance(node, dict):
        return
    marker = node.pop(SETTING_KEY, None)
    if marker is not None:
        # an optional field carries its constraints on the non-null branch
        targets = [b for b in node.get("anyOf", []) if b != {"type": "null"}] or [node]
        for target in targets:
            for keyword, name in marker.items():
                target[keyword] = _setting(settings, name)
        names = ", ".join(sorted({env_name(n.lstrip("-")) for n in marker.values()}))
        node["description"] = f"{node.get('description', '')} Limits from {names}.".strip()
    for value in node.values():
        _apply_settings(value, settings)


def build_openapi(routers: Sequence[Router], settings: Settings) -> dict[str, Any]:
    """The document of these routes as the app with `settings` serves them."""
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
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Greenroom API", "version": __version__,
                 "description": "REST layer of Greenroom; the room socket is at GET /ws (see README). "
                                "A method a path does not list answers 405 METHOD_NOT_ALLOWED "
                                "(`components.responses.MethodNotAllowed`) with an `Allow` header. "
                                f"Every request value (body, query): {inputs.RULES} A JSON body nests objects "
                                f"and arrays at most {settings.json_max_depth} levels (GREENROOM_JSON_MAX_DEPTH)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"MethodNotAllowed": {
                "description": "method not allowed on this path: METHOD_NOT_ALLOWED",
                "headers": {"Allow": {"$ref": "#/components/headers/Allow"}},
                "content": {JSON: {"schema": error_schema_of(ERROR_REF, [ErrorCode.METHOD_NOT_ALLOWED.value])}}}},
            "headers": HEADERS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
    _apply_settings(doc, settings)
    return doc
