"""Test users with valid access tokens, made through the domain functions (no HTTP round trip)."""

from __future__ import annotations

import functools
import itertools
import uuid
from dataclasses import dataclass

from aiohttp import web

from server.accounts.tokens import token_service
from server.accounts.users import insert_user
from server.kernel import keys
from server.kernel.identity import Role
from server.kernel.settings import Settings

_serial = itertools.count(1)


@dataclass
class TestUser:
    __test__ = False  # not a pytest test class

    id: uuid.UUID
    email: str
    password: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def keyed(self, key: str | None) -> dict[str, str]:
        """`headers` plus `Idempotency-Key: key` (none when `key` is None; an empty one is sent)."""
        return self.headers if key is None else {**self.headers, "Idempotency-Key": key}


@functools.lru_cache(maxsize=16)
def _hash(password: str, time_cost: int, memory_kib: int, parallelism: int) -> str:
    # Hashing costs ~0.2 s by design; one hash per password and cost serves every test user.
    from argon2 import PasswordHasher, Type

    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism,
                          type=Type.ID).hash(password)


def password_hash(settings: Settings, password: str) -> str:
    """An argon2id hash with the app's cost parameters, cached."""
    return _hash(password, settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)


async def make_user(app: web.Application, *, role: str = "viewer", email: str | None = None,
                    password: str = "Correct-Horse-Battery-9", display_name: str | None = None) -> TestUser:
    """An active user of `role` in the started `app`'s database, with a fresh access token."""
    assert role in ("viewer", "performer", "admin"), role
    typed_role: Role = role  # type: ignore[assignment]
    settings = app[keys.SETTINGS]
    email = email or f"user{next(_serial)}-{uuid.uuid4().hex[:8]}@example.test"
    user = await insert_user(app[keys.DB], email=email, password_hash=password_hash(settings, password),
                             display_name=display_name or email.split("@", 1)[0], role=typed_role)
    token, _ = token_service(app).issue_access(user.id, typed_role)
    return TestUser(user.id, user.email, password, role, token)
