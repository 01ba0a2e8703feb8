"""Typed path parameters: a route declares what each `{name}` of its path is, handlers get it parsed.

    @router.get("/v1/streams/{id}", params={"id": uuid_param("stream")}, ...)
    async def get_stream(call): ... call.path.uuid("id") ...

A value that does not parse names nothing, so it answers 404 NOT_FOUND ("stream not found"),
exactly like a well-formed id of nothing: a client cannot tell a typo from a deleted resource,
and the answer does not depend on how the id was mangled.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.kernel.errors import not_found
from server.kernel.inputs import NUL

# aiohttp's `{name}` and `{name:regex}` placeholders.
PLACEHOLDER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True, slots=True)
class PathParam:
    """What one placeholder holds: how to parse it, what a 404 names, and its JSON Schema."""

    names: str
    parse: Callable[[str], object]
    schema: dict[str, Any]


def _uuid(raw: str) -> uuid.UUID:
    return uuid.UUID(raw)


def uuid_param(names: str) -> PathParam:
    """A UUID naming a `names` ("stream", "user"); anything else is that thing not found."""
    return PathParam(names, _uuid, {"type": "string", "format": "uuid"})


def _text(raw: str) -> str:
    if NUL in raw:  # nothing stored can be named by it (PostgreSQL refuses NUL in text)
        raise ValueError("NUL in a path segment")
    return raw


def text_param(names: str) -> PathParam:
    """Any non-empty segment (a slug, a name), as the router matched it; one with a NUL (U+0000)
    names nothing, so it is 404 like any segment that does not parse (not 422: see the module)."""
    return PathParam(names, _text, {"type": "string", "minLength": 1})


def placeholders(path: str) -> list[str]:
    return PLACEHOLDER.findall(path)


def check_declared(path: str, params: Mapping[str, PathParam]) -> None:
    """Every placeholder declared and nothing else: a mismatch is a programming error, caught at import."""
    named = placeholders(path)
    if sorted(named) != sorted(params):
        raise TypeError(f"{path}: path parameters {sorted(named)} but declared {sorted(params)}")


class PathValues:
    """A request's parsed path parameters; the accessors say the type the handler expects."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, object]) -> None:
        self._values = values

    def uuid(self, name: str) -> uuid.UUID:
        value = self._values[name]
        assert isinstance(value, uuid.UUID), f"path parameter {name} is not declared as a uuid"
        return value

    def text(self, name: str) -> str:
        value = self._values[name]
        assert isinstance(value, str), f"path parameter {name} is not declared as text"
        return value


def parse_path(match_info: Mapping[str, str], params: Mapping[str, PathParam]) -> PathValues:
    """Parse every declared parameter; the first that does not parse is NOT_FOUND."""
    values: dict[str, object] = {}
    for name, param in params.items():
        try:
            values[name] = param.parse(match_info[name])
        except ValueError:
            raise not_found(param.names) from None
    return PathValues(values)
