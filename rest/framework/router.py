"""Route declarations: each REST route states its schema, who may call it and its rate category.

A `Router` collects declarations; the app factory mounts them and the OpenAPI document is built
from the very same declarations, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ledger.ids import derived_id
from rest.framework.guards import AuthMode, identify, rate_limit
from rest.framework.idempotency import idempotency_key, run_idempotent
from rest.framework.params import PathParam, PathValues, check_declared, parse_path
from server.kernel import keys
from server.kernel.access import Access
from server.kernel.errors import ApiError, ErrorCode, validation_details
from server.kernel.identity import Identity, Role
from server.kernel.inputs import may_nest_deeper, nesting_exceeds
from server.kernel.limits import Category

B = TypeVar("B")


@dataclass(slots=True)
class Call(Generic[B]):
    """What a handler receives: the request, its parsed path, validated body and query, and the caller."""

    request: web.Request
    path: PathValues
    body: B
    query: Any
    identity: Identity | None

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def user(self) -> Identity:
        assert self.identity is not None, "route declared auth='user' guarantees an identity"
        return self.identity


Handler = Callable[[Call[Any]], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tags: tuple[str, ...]
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: AuthMode
    roles: tuple[Role, ...]
    rate: Category
    idempotent: bool
    list_response: bool
    raw_body: bool
    params: Mapping[str, PathParam]
    errors: frozenset[ErrorCode]
    other_statuses: tuple[int, ...]
    envelope: bool
    produces: tuple[str, ...]
    database: bool
    access: Access[int] | None = None  # who gets what (server.kernel.access); the access table test reads it


@dataclass
class Router:
    """A group of routes, usually one module's; `tag` names them in the OpenAPI document."""

    tag: str
    routes: list[Route] = field(default_factory=list)

    def route(self, method: str, path: str, *, summary: str, body: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
              status: int = 200, auth: AuthMode = "user", roles: Sequence[Role] = (),
              rate: Category = "general", idempotent: bool = False, list_response: bool = False,
              raw_body: bool = False, params: Mapping[str, PathParam] | None = None,
              errors: Sequence[ErrorCode] = (), other_statuses: Sequence[int] = (), envelope: bool = True,
              produces: Sequence[str] = ("application/json",), database: bool = True,
              access: Access[int] | None = None) -> Callable[[Handler], Handler]:
        """Declare a route. `roles` empty means any authenticated role (when auth='user').

        `errors` are the codes the domain functions it calls can raise (and the code paths of the
        handler itself); the framework's own (auth, roles, body, path, rate, idempotency, 500) are
        added from the route's properties, and the OpenAPI document declares the lot.
        `other_statuses` are further success statuses with the same body (200 for a replayed
        create); `envelope=False` answers `response` as is (standard formats: JWKS, OpenAPI);
        `produces` lists the media types of a non-JSON answer.

        `params` types every `{name}` of the path (`params.uuid_param`); handlers read them
        parsed from `call.path`, and one that does not parse is 404 before the body is read.

        `access` states the status each kind of caller gets (anonymous, a viewer, another
        performer, the owner of what the route names, an admin: `server.kernel.access`); every
        route declares it, and tests/contracts/test_access_table.py holds the server to it.

        `raw_body=True` hands the handler the unparsed bytes in `call.body` (webhooks whose
        signature covers the exact bytes); a `body` model beside it only documents what the
        handler then requires of them. `database=False`: the route never touches PostgreSQL,
        so it never answers the 503 of a database outage (`server.kernel.outage`).
        """

        declared = dict(params or {})
        check_declared(path, declared)

        def decorate(handler: Handler) -> Handler:
            self.routes.append(Route(method.upper(), path, handler, summary, (self.tag,), body, query,
                                     response, status, auth, tuple(roles), rate, idempotent,
                                     list_response, raw_body, declared, frozenset(errors),
                                     tuple(other_statuses), envelope, tuple(produces), database, access))
            return handler

        return decorate

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


async def read_body(request: web.Request) -> bytes:
    """The whole body, within `http_body_timeout_s` (aiohttp bounds the head, not the body: a client
    sending a byte a second would hold a connection and a handler as long as it liked). Past the
    bound: 408 REQUEST_TIMEOUT; aiohttp then closes the connection after `http_linger_s`. Read only
    after the route's guards, so a refused caller never gets to stream a body at all."""
    bound = request.app[keys.SETTINGS].http_body_timeout_s
    try:
        async with asyncio.timeout(bound):
            return await request.read()
    except TimeoutError:
        raise ApiError(ErrorCode.REQUEST_TIMEOUT, f"the request body did not arrive within {bound:g} s") from None


# What a request without a body reads as: a route whose body schema accepts `{}` may be called
# without one (the OpenAPI document marks such bodies optional). A body of blanks is not JSON.
EMPTY_BODY = b"{}"


async def _parse_body(request: web.Request, route: Route) -> Any:
    if route.raw_body:
        return await read_body(request)
    if route.body is None:
        return None
    raw = await read_body(request)
    if not raw:
        raw = EMPTY_BODY
    elif request.content_type not in ("application/json", "application/octet-stream", "text/plain", ""):
        # Browsers' simple form posts must not pass as JSON requests (CSRF-shaped traffic).
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "request body must be application/json")
    _bound_nesting(raw, request.app[keys.SETTINGS].json_max_depth)
    try:
        return route.body.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(ErrorCode.MALFORMED_JSON, "request body is not valid JSON") from None
        raise ApiError(ErrorCode.VALIDATION_ERROR, "request body failed validation",
                       details=validation_details(exc)) from None


def _bound_nesting(raw: bytes, limit: int) -> None:
    """422 for a body nested deeper than `json_max_depth` (pydantic's parser stops near 200 levels,
    orjson's encoder at 254: past the bound neither is reached). Text that does not parse is left
    to the schema's parser, which answers MALFORMED_JSON."""
    if not may_nest_deeper(raw, limit):
        return
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if nesting_exceeds(parsed, limit):
        issue = f"objects and arrays nest deeper than {limit} levels (GREENROOM_JSON_MAX_DEPTH)"
        raise ApiError(ErrorCode.VALIDATION_ERROR, "request body failed validation",
                       details={"errors": [{"field": "(body)", "issue": issue}]})


def _parse_query(request: web.Request, route: Route) -> Any:
    if route.query is None:
        return None
    try:
        return route.query.model_validate(dict(request.query))
    except ValidationError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "query parameters failed validation",
                       details=validation_details(exc)) from None


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        request[keys.ROUTE] = f"{route.method} {route.path}"
        identity = identify(request, route.auth)
        request[keys.IDENTITY] = identity
        if identity is not None and route.roles and identity.role not in route.roles:
            raise ApiError(ErrorCode.PERMISSION_DENIED, f"this endpoint is for: {', '.join(route.roles)}")
        rl_headers = await rate_limit(request, route.rate, identity)
        path = parse_path(request.match_info, route.params)
        body = await _parse_body(request, route)
        query = _parse_query(request, route)
        call: Call[Any] = Call(request, path, body, query, identity)
        # A key that is sent is checked, an empty one too (refused: 1-255 characters, as documented)
        if route.idempotent and "Idempotency-Key" in request.headers:
            response = await run_idempotent(request, identity, lambda: route.handler(call))
        else:
            response = await route.handler(call)
        response.headers.update(rl_headers)
        return response

    handle.__name__ = route.handler.__name__
    return handle


# The routers an app mounted: what its OpenAPI document describes.
MOUNTED: web.AppKey[list[Router]] = web.AppKey("routers")


def mount(app: web.Application, routers: Sequence[Router]) -> None:
    """Add the routers' routes; a second call adds more (tests mount their own beside the app's)."""
    app[MOUNTED] = [*app.get(MOUNTED, []), *routers]
    for router in routers:
        for route in router.routes:
            app.router.add_route(route.method, route.path, _wrap(route), name=None)


def idempotent_id(call: Call[Any], kind: str) -> uuid.UUID:
    """The ledger id of what a keyed request creates (a tip, a payout, an adjustment).

    Derived from the caller, `kind` and the key, so a retry whose first attempt died after the
    ledger committed (no stored response to replay) resubmits the same id and the ledger answers
    `exists` instead of moving tokens twice. Without a key every request is new: a fresh id.
    """
    key = idempotency_key(call.request)
    return derived_id(kind, call.user.user_id, key) if key else uuid.uuid4()
