"""Profile field types shared by the auth and users schemas: one rule per field, from `server.accounts.users`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, Field

from server.accounts import users

Email = Annotated[str, Field(max_length=users.EMAIL_MAX), AfterValidator(users.check_email)]
DisplayName = Annotated[str, Field(max_length=users.DISPLAY_NAME_MAX * 4), AfterValidator(users.check_display_name)]
Username = Annotated[str, AfterValidator(users.check_username)]
Bio = Annotated[str, Field(max_length=users.BIO_MAX), AfterValidator(users.check_bio)]
Url = Annotated[str, Field(max_length=users.URL_MAX), AfterValidator(users.check_url)]
Country = Annotated[str, AfterValidator(users.check_country)]
DateOfBirth = Annotated[dt.date, AfterValidator(users.check_date_of_birth)]
