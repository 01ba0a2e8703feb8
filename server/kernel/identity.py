"""Who is calling: resolved from an access token by the authenticator."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import web

Role = Literal["viewer", "performer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "performer", "admin")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: uuid.UUID
    role: Role
    expires_at: float  # unix seconds of the access token's `exp`

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Identity:
        """Verify an access token; raise ApiError(INVALID_TOKEN / TOKEN_EXPIRED) when it is bad."""

    def revoke_user_tokens(self, user_id: uuid.UUID, at: float) -> None:
        """Refuse the user's access tokens issued before `at` (unix seconds) from now on."""


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
