"""Auth: register, login, refresh, logout, the caller's own account, and the JWKS."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel, Field

from rest.accounts.user_fields import Country, DateOfBirth, DisplayName, Email, Username
from rest.framework.access import anyone, signed_in
from rest.framework.responses import document, ok
from rest.framework.router import Call, Router
from rest.framework.schema import Schema, from_settings
from server.accounts import passwords, sessions, users
from server.accounts.tokens import token_service
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.settings import Settings

router = Router("auth")

PASSWORD_INPUT_MAX = 4096  # the policy's own maximum is a setting; this bounds what is hashed at login
TOKEN_INPUT_MAX = 512


class UserOut(BaseModel):
    """An account as its owner and admins see it."""

    id: str
    email: str
    display_name: str
    username: str | None
    role: Literal["viewer", "performer", "admin"]
    status: Literal["active", "suspended", "banned"]
    country: str | None
    date_of_birth: dt.date | None
    profile_image_url: str | None
    bio: str | None
    email_verified: bool
    created_at: str
    updated_at: str


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires unless used.")
    user: UserOut


class LogoutOut(BaseModel):
    logged_out: bool


SelfRole = Literal["viewer", "performer"]
assert get_args(SelfRole) == users.SELF_REGISTER_ROLES, "the schema offers exactly the roles register accepts"


class Jwk(BaseModel):
    """An Ed25519 public key (RFC 8037)."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class Jwks(BaseModel):
    """A JSON Web Key Set (RFC 7517), served as is: not in the `{data}` envelope."""

    keys: list[Jwk]


class RegisterBody(Schema):
    email: Email
    password: str = Field(
        max_length=PASSWORD_INPUT_MAX, description=f"It {passwords.MIX_RULE}, and must not be the email address.",
        json_schema_extra={"pattern": passwords.MIX_PATTERN,
                           **from_settings(minLength="password_min_chars", maxLength="password_max_chars")})
    display_name: DisplayName
    username: Username | None = None
    role: SelfRole = Field("viewer", description="Admins are made by the CLI or by another admin.")
    country: Country | None = None
    date_of_birth: DateOfBirth | None = None


class LoginBody(Schema):
    # Not format-checked: a malformed email must fail exactly like an unknown one.
    email: str = Field(max_length=1024)
    password: str = Field(max_length=PASSWORD_INPUT_MAX)


class RefreshBody(Schema):
    refresh_token: str = Field(min_length=1, max_length=TOKEN_INPUT_MAX)


def token_json(settings: Settings, session: sessions.Session, user: users.User) -> dict[str, Any]:
    return {"access_token": session.access_token, "refresh_token": session.refresh_token,
            "token_type": "Bearer", "expires_in": settings.access_token_ttl_s,
            "refresh_expires_in": settings.refresh_token_ttl_s, "user": user.private()}


@router.post("/v1/auth/register", summary="Create an account (viewer or performer) and log in",
             body=RegisterBody, response=TokenOut, status=201, auth="public", rate="auth", access=anyone(201),
             errors=(ErrorCode.CONFLICT, ErrorCode.OVERLOADED))
async def register(call: Call[RegisterBody]) -> web.StreamResponse:
    b = call.body
    settings = call.app[keys.SETTINGS]
    pool = call.app[keys.DB]
    user = await users.register(pool, settings, email=b.email, password=b.password, display_name=b.display_name,
                                role=b.role, username=b.username, country=b.country, date_of_birth=b.date_of_birth)
    session = await sessions.start_session(pool, token_service(call.app), user.id, user.role)
    return ok(token_json(settings, session, user), status=201)


@router.post("/v1/auth/login", summary="Exchange email and password for tokens",
             body=LoginBody, response=TokenOut, auth="public", rate="auth", access=anyone(200),
             errors=(ErrorCode.INVALID_CREDENTIALS, ErrorCode.ACCOUNT_DISABLED, ErrorCode.OVERLOADED))
async def login(call: Call[LoginBody]) -> web.StreamResponse:
    settings = call.app[keys.SETTINGS]
    pool = call.app[keys.DB]
    user = await users.authenticate_password(pool, settings, call.body.email, call.body.password)
    session = await sessions.start_session(pool, token_service(call.app), user.id, user.role)
    return ok(token_json(settings, session, user))


@router.post("/v1/auth/refresh", summary="Spend a refresh token for a new token pair (rotation)",
             body=RefreshBody, response=TokenOut, auth="public", rate="auth", access=anyone(200),
             errors=(ErrorCode.INVALID_TOKEN, ErrorCode.ACCOUNT_DISABLED))
async def refresh(call: Call[RefreshBody]) -> web.StreamResponse:
    pool = call.app[keys.DB]
    session = await sessions.refresh_session(pool, token_service(call.app), call.body.refresh_token)
    user = await users.get_user(pool, session.user_id)
    return ok(token_json(call.app[keys.SETTINGS], session, user))


@router.post("/v1/auth/logout", summary="Revoke the session of this refresh token (and its rotations)",
             body=RefreshBody, response=LogoutOut, auth="public", rate="auth", access=anyone(200))
async def logout(call: Call[RefreshBody]) -> web.StreamResponse:
    # Answers alike for a live and an unknown token (revocation is idempotent, RFC 7009).
    await sessions.end_session(call.app[keys.DB], call.body.refresh_token)
    return ok({"logged_out": True})


async def _me(call: Call[None]) -> web.StreamResponse:
    user = await users.find_user(call.app[keys.DB], call.user.user_id)
    if user is None:
        raise ApiError(ErrorCode.INVALID_TOKEN, "the account of this token no longer exists")
    return ok(user.private())


@router.get("/v1/auth/me", summary="The caller's account", response=UserOut, access=signed_in(200))
async def auth_me(call: Call[None]) -> web.StreamResponse:
    return await _me(call)


@router.get("/v1/me", summary="The caller's account", response=UserOut, access=signed_in(200))
async def me(call: Call[None]) -> web.StreamResponse:
    return await _me(call)


@router.get("/.well-known/jwks.json", summary="Public keys that verify access tokens (JWKS)",
            response=Jwks, envelope=False, auth="public", rate="none", database=False, access=anyone(200))
async def jwks(call: Call[None]) -> web.StreamResponse:
    return document(token_service(call.app).jwks(), headers={"Cache-Control": "public, max-age=60"})
