"""Profile field types shared by the auth and users schemas: one rule per field, from `server.accounts.users`.

The rule runs in the domain check; `json_schema_extra` states it in the document (the display name
is trimmed before its limit counts: the raw input's bound is larger, and its pattern states the
trimmed length).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from server.accounts import users

Email = Annotated[str, Field(max_length=users.EMAIL_MAX, json_schema_extra={"pattern": users.EMAIL_PATTERN}),
                  AfterValidator(users.check_email)]
DisplayName = Annotated[str, Field(min_length=1, max_length=users.DISPLAY_NAME_MAX * 4, json_schema_extra={
    "pattern": users.DISPLAY_NAME_PATTERN}), AfterValidator(users.check_display_name)]
Username = Annotated[str, Field(json_schema_extra={"pattern": users.USERNAME_PATTERN}),
                     AfterValidator(users.check_username)]
Bio = Annotated[str, Field(max_length=users.BIO_MAX), AfterValidator(users.check_bio)]
Url = Annotated[str, Field(max_length=users.URL_MAX, json_schema_extra={"pattern": users.URL_PATTERN}),
                AfterValidator(users.check_url)]
Country = Annotated[str, Field(json_schema_extra={"pattern": users.COUNTRY_PATTERN}),
                    AfterValidator(users.check_country)]


def _date_of_birth(schema: dict[str, Any]) -> None:
    schema["pattern"] = users.date_of_birth_pattern(dt.date.today())  # as of the document's building


DateOfBirth = Annotated[dt.date, Field(json_schema_extra=_date_of_birth), AfterValidator(users.check_date_of_birth)]
