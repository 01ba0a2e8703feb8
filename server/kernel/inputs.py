"""What every value a client sends must be, wherever it arrives (REST body, query, socket op data).

- Text without NUL (U+0000): PostgreSQL refuses it in `text` and `jsonb`, so it would otherwise
  fail deep in a query as a 500.
- Integers a `bigint` holds (-2**63 .. 2**63-1) and finite numbers: the JSON encoder of `jsonb`
  columns (orjson) refuses larger integers and writes NaN and infinities as `null`.
- JSON nested at most `json_max_depth` levels (`may_nest_deeper`, `nesting_exceeds`): REST bodies
  and socket frames are checked before a parser, the validator or the encoder meets its own
  recursion limit (orjson encodes 254 levels, parses 1024; pydantic parses about 200).

`check_value` is the one check: the REST `Schema` base, the socket `OpData` base and the envelope
run it on every field, so a new field is covered without anyone remembering it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

NUL = "\x00"
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

NUL_MESSAGE = "must not contain NUL (U+0000)"
RULES = ("Strings (and object keys) must not contain NUL (U+0000); integers must fit in 64 bits "
         f"({INT_MIN} .. {INT_MAX}) and numbers be finite; otherwise 422 VALIDATION_ERROR.")

T = TypeVar("T")
Loc = tuple[int | str, ...]


def _problem(kind: str, message: str, loc: Loc, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def problems(value: Any) -> list[InitErrorDetails]:
    """Every NUL, out-of-range integer and non-finite number in `value`, with its location.

    Walks dicts, lists, tuples, sets and the fields of models (iteratively: no depth limit of its own).
    """
    found: list[InitErrorDetails] = []
    stack: list[tuple[Loc, Any]] = [((), value)]
    children: list[tuple[Loc, Any]]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                found.append(_problem("string_nul", NUL_MESSAGE, loc, item))
            continue
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                found.append(_problem("int_64bit", "must fit in 64 bits (-2**63 .. 2**63-1)", loc, item))
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                found.append(_problem("finite_number", "must be a finite number", loc, item))
            continue
        if isinstance(item, Mapping):
            for key in item:
                if isinstance(key, str) and NUL in key:
                    found.append(_problem("string_nul", NUL_MESSAGE, (*loc, key, "[key]"), key))
            children = [((*loc, key), sub) for key, sub in item.items()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = [((*loc, i), sub) for i, sub in enumerate(item)]
        elif isinstance(item, BaseModel):
            children = [((*loc, name), getattr(item, name)) for name in type(item).model_fields]
        else:
            continue
        stack.extend(reversed(children))  # popped in document order
    return found


def check_value(value: T) -> T:
    """`value` unchanged, or a ValidationError locating each problem (inside a validator, pydantic
    prefixes the field's location)."""
    if value is None or (isinstance(value, str) and NUL not in value):
        return value  # most fields: no walk
    found = problems(value)
    if found:
        raise ValidationError.from_exception_data("request value", found)
    return value



def may_nest_deeper(raw: str | bytes, limit: int) -> bool:
    """False when the JSON text `raw` surely nests objects and arrays at most `limit` deep.

    Counting brackets costs next to nothing and settles almost every document (fewer brackets than
    the limit cannot nest deeper, even when some are inside strings); `nesting_exceeds` decides the rest.
    """
    count = raw.count("{") + raw.count("[") if isinstance(raw, str) else raw.count(b"{") + raw.count(b"[")
    return count > limit


def nesting_exceeds(parsed: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests objects and arrays more than `limit` deep (the outermost is 1).
    Iterative, and it stops at the first container past the limit."""
    stack: list[tuple[int, Any]] = [(1, parsed)]
    while stack:
        depth, item = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((depth + 1, child) for child in children)
    return False
