"""Request schemas: the base every body and query model derives from, and the page query."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, field_validator

from server.kernel.inputs import check_value


class Schema(BaseModel):
    """Base of every request schema (bodies and queries): unknown fields are an error, not silently
    dropped, and no field holds what PostgreSQL cannot store (`server.kernel.inputs`: a NUL in any
    string, nested ones and free-form values included; an integer beyond 64 bits; NaN, infinities)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return check_value(value)


# A free-form JSON object from a client (preferences), under the same rule as every Schema field.
JsonObject = Annotated[dict[str, JsonValue], AfterValidator(check_value)]


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
