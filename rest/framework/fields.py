"""Field types of request schemas that JSON's own rules need (beside `schema.py`'s base models).

`DateTime`: an RFC 3339 date-time with its offset, the document's `format: date-time`, and nothing
else. Pydantic's datetime also reads unix timestamps (`?until=0.5`, `"1700000000"`) and a few other
spellings, which the document does not offer and a client could send by mistake.

`JsonInt`: an integer as JSON and JSON Schema define it. `2433.0` *is* the integer 2433 there (a
number whose fraction is zero; many JSON encoders write integral floats that way), so a body with
`"amount": 2433.0` matches a documented `{"type": "integer"}` and must not be refused. Pydantic's
strict int (bodies are validated strictly) refuses every float; this takes integral ones and still
refuses `2433.5`, `true`, `"2433"` and non-finite numbers.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
JsonInt = Annotated[int, INTEGRAL]
# Bounds go on the field (`amount: JsonInt = Field(ge=1)`). Inside a union put them before the
# validator, `Annotated[int, Field(ge=1), INTEGRAL] | None`: pydantic cannot push a bound through
# the validator there and would document `ge` instead of `minimum`.


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and not RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, like 2024-05-01T12:00:00Z")
    return value


DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
