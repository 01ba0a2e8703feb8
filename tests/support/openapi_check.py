"""Every answer a test receives is checked against the app's own OpenAPI document.

The test client gets a client middleware (`checking_middleware`) that, for each response of an
API path, finds the operation (path template and method), asserts the status is declared for it
and validates the body against the declared schema with jsonschema (Draft 2020-12, the dialect of
OpenAPI 3.1; `$ref`s resolve inside the document). A method the path does not list must be the
documented 405. So a route that answers something the document does not promise fails the test
that provoked it. Not checked: non-API paths (the socket upgrade, the web client, static files).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientRequest, ClientResponse, ClientSession, web
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from rest.framework.openapi import build_openapi
from rest.framework.router import MOUNTED, Router
from server.kernel import keys

DOC_URI = "urn:greenroom:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
EXEMPT = re.compile(r"^/(ws|static/.*)?$")  # the socket upgrade, the web client and its files


class DocumentDrift(AssertionError):
    """An answer the OpenAPI document does not promise."""


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass
class OpenApiCheck:
    doc: dict[str, Any]
    _registry: Registry[Any] = field(init=False)
    _templates: list[tuple[re.Pattern[str], str]] = field(init=False)
    checked: int = 0

    def __post_init__(self) -> None:
        self._registry = Registry().with_resource(
            DOC_URI, Resource.from_contents(self.doc, default_specification=DRAFT202012))
        templates = []
        for template in self.doc["paths"]:
            pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            templates.append((re.compile(pattern), template))
        # literal paths before templated ones, as a router tries them
        self._templates = sorted(templates, key=lambda t: "{" in t[1])

    def template_of(self, path: str) -> str | None:
        return next((template for pattern, template in self._templates if pattern.match(path)), None)

    def _validate(self, pointer: str, raw: bytes, where: str) -> None:
        if where.startswith("HEAD "):
            return  # an answer to HEAD has headers only
        body = orjson.loads(raw)
        validator = Draft202012Validator({"$ref": DOC_URI + pointer}, registry=self._registry,
                                         format_checker=FormatChecker())
        error = best_match(validator.iter_errors(body))
        if error is not None:
            raise DocumentDrift(f"{where}: body does not match {pointer}: {error.message} "
                                f"at {list(error.absolute_path)}; body: {raw!r:.500}")

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes,
              headers: dict[str, str]) -> None:
        """Raise DocumentDrift when this answer is not one the document declares."""
        where = f"{method} {path} -> {status}"
        template = self.template_of(path)
        if template is None:
            # no such endpoint: the router's 404 in the error shape (no document entry can promise it)
            if status != 404:
                raise DocumentDrift(f"{where}: path is not in the document")
            self._validate("#/components/schemas/Error", body, where)
            self.checked += 1
            return
        item = self.doc["paths"][template]
        op = item.get(method.lower())
        if op is None:
            allowed = {m.upper() for m in item if m in METHODS}
            if status != 405:
                raise DocumentDrift(f"{where}: {method} is not declared for {template} (only {sorted(allowed)})")
            if set(headers.get("Allow", "").replace(" ", "").split(",")) != allowed:
                raise DocumentDrift(f"{where}: Allow {headers.get('Allow')!r}, the document lists {sorted(allowed)}")
            pointer = _pointer("components", "responses", "MethodNotAllowed", "content", "application/json",
                               "schema")
            self._validate(pointer, body, where)
            self.checked += 1
            return
        responses = op["responses"]
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            raise DocumentDrift(f"{where}: status {status} is not declared for {method} {template} "
                                f"(declared: {sorted(responses)})")
        media = content_type.split(";", 1)[0].strip().lower()
        content = responses[key].get("content", {})
        if media not in content:
            raise DocumentDrift(f"{where}: content type {media!r} is not declared (declared: {sorted(content)})")
        if media == "application/json":
            pointer = _pointer("paths", template, method.lower(), "responses", key, "content", media, "schema")
            self._validate(pointer, body, where)
        self.checked += 1


Handler = Callable[[ClientRequest], Awaitable[ClientResponse]]


def _check_answer(check: OpenApiCheck, request: ClientRequest, response: ClientResponse, body: bytes) -> None:
    check.check(request.method, request.url.path, response.status, response.headers.get("Content-Type", ""), body,
                dict(response.headers))


def served_document_middleware() -> Callable[[ClientRequest, Handler], Awaitable[ClientResponse]]:
    """The same check for a session that talks to real server processes: each origin's answers are
    checked against the document that origin serves (fetched once, on its first API answer)."""
    checks: dict[str, OpenApiCheck] = {}

    async def middleware(request: ClientRequest, handler: Handler) -> ClientResponse:
        response = await handler(request)
        path = request.url.path
        if EXEMPT.match(path) or response.status == 101 or path == "/v1/openapi.json":
            return response
        body = await response.read()
        origin = str(request.url.origin())
        if origin not in checks:
            async with ClientSession() as plain, plain.get(f"{origin}/v1/openapi.json") as served:
                assert served.status == 200, f"{origin} serves no OpenAPI document"
                checks[origin] = OpenApiCheck(await served.json())
        _check_answer(checks[origin], request, response, body)
        return response

    return middleware


def checking_middleware(app: web.Application) -> Callable[[ClientRequest, Handler], Awaitable[ClientResponse]]:
    """A client middleware checking every answer of `app` against `app`'s own document (built
    from its mounted routers and settings on first use, so a test's overrides are in it)."""
    state: dict[str, OpenApiCheck] = {}

    async def middleware(request: ClientRequest, handler: Handler) -> ClientResponse:
        response = await handler(request)
        path = request.url.path
        if MOUNTED not in app or EXEMPT.match(path) or response.status == 101:
            return response
        body = await response.read()  # cached on the response: the test reads it again
        if "check" not in state:
            routers: list[Router] = app[MOUNTED]
            state["check"] = OpenApiCheck(build_openapi(routers, app[keys.SETTINGS]))
        _check_answer(state["check"], request, response, body)
        return response

    return middleware
