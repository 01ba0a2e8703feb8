"""Request schemas: the base every body and query model derives from, and the page query."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Schema(BaseModel):
    """Base of every request schema: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


# Marks a schema whose limits are settings; the OpenAPI builder writes the running app's values.
SETTING_KEY = "x-greenroom-setting"


def from_settings(**keywords: str) -> dict[str, Any]:
    """`json_schema_extra` of a field whose limit is a setting the domain enforces, e.g.
    `from_settings(maximum="tip_max_tokens")`; a leading '-' negates (`minimum="-admin_adjust_max_tokens"`).
    The document then states what this server enforces, not a compiled-in bound."""
    return {SETTING_KEY: keywords}


def not_null(schema: dict[str, Any]) -> None:
    """`json_schema_extra` of a PATCH field that may be left out but not set to null (the domain
    refuses null there): the document shows the field's type without the `null` branch."""
    branches = schema.pop("anyOf", None)
    if branches is not None:
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            schema.update(rest[0])
        else:
            schema["anyOf"] = rest
    schema.pop("default", None)


PAGE_MAX = 10_000  # deep OFFSETs are slow: past this, narrow the filter (or follow a cursor where there is one)


class PageQuery(Schema):
    """`?page=&per_page=` of every paginated list (meta from `page_meta`); lists add their filters."""

    page: int = Field(1, ge=1, le=PAGE_MAX)
    per_page: int = Field(20, ge=1, le=100)


class Empty(Schema):
    pass
