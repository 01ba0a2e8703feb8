"""Accounts: creation, password login, profiles, roles and status, preferences.

Written once and called by REST, the CLI, the socket and demo seeding. Who may change what is
decided here: a user edits their own profile; an admin edits anyone's and alone changes role,
status, email verification and date of birth.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args
from urllib.parse import urlsplit

import asyncpg
import orjson

from server.accounts import sessions
from server.accounts.passwords import check_policy, passwords_for
from server.accounts.tokens import TokenService
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import ROLES, Identity, Role
from server.kernel.patterns import BLANK
from server.kernel.settings import Settings

Status = Literal["active", "suspended", "banned"]
STATUSES: tuple[Status, ...] = get_args(Status)
DB: TypeAlias = asyncpg.Pool | asyncpg.Connection

_EMAIL_CORE = rf"[^@{BLANK}\x00-\x1f]{{1,64}}@[^@{BLANK}\x00-\x1f.]+(\.[^@{BLANK}\x00-\x1f.]+)+"
_EMAIL = re.compile("^" + _EMAIL_CORE + "$")
# What `check_email` takes, for the document: the address with the blanks around it it trims.
EMAIL_PATTERN = rf"^[{BLANK}]*" + _EMAIL_CORE + rf"[{BLANK}]*$"
# An http(s) URL with an ASCII host name or address (IDNs in punycode; no user info, no IPv6
# literal) and an optional port; then a path, query or fragment without blanks or controls.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][^\x00-\x20\x7f]*)?$"
_URL = re.compile(URL_PATTERN)
USERNAME_PATTERN = r"^[A-Za-z0-9_]{3,32}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
_USERNAME = re.compile(USERNAME_PATTERN)
_COUNTRY = re.compile(COUNTRY_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EMAIL_MAX = 254
DISPLAY_NAME_MAX = 100
# A display name: 1-DISPLAY_NAME_MAX characters without control characters once the blanks around
# them are trimmed (the raw value may carry more blanks). `check_display_name` matches it, and the
# document states it.
_VISIBLE, _NOT_CONTROL = rf"[^{BLANK}\x00-\x1f\x7f]", r"[^\x00-\x1f\x7f]"
DISPLAY_NAME_PATTERN = (rf"^[{BLANK}]*" + _VISIBLE + "(" + _NOT_CONTROL + "{0," + str(DISPLAY_NAME_MAX - 2) + "}"
                        + _VISIBLE + rf")?[{BLANK}]*$")
_DISPLAY_NAME = re.compile(DISPLAY_NAME_PATTERN)
BIO_MAX = 2000
URL_MAX = 2048

# Roles anyone may sign up as (`register`); admins are made by the CLI or by another admin.
SELF_REGISTER_ROLES: tuple[Role, ...] = ("viewer", "performer")
SELF_FIELDS = frozenset({"display_name", "username", "bio", "profile_image_url", "country"})
# Told (user, tokens valid after, new status) once a role or status change committed.
OnRevoke = Callable[[uuid.UUID, float, str], Awaitable[None]]
ADMIN_FIELDS = SELF_FIELDS | {"role", "status", "email_verified", "date_of_birth"}
_COLUMNS = ("id, email, username, display_name, bio, profile_image_url, role, status, country, "
            "date_of_birth, email_verified, created_at, updated_at")


# --- field rules (also used by the REST schemas, so both paths refuse the same input) -----

def check_email(value: str) -> str:
    email = value.strip()
    if len(email) > EMAIL_MAX or not _EMAIL.fullmatch(email):
        raise ValueError("must be an email address")
    return email


def check_display_name(value: str) -> str:
    if not _DISPLAY_NAME.fullmatch(value):
        raise ValueError(f"must be 1-{DISPLAY_NAME_MAX} characters without control characters")
    return value.strip()


def check_username(value: str) -> str:
    if not _USERNAME.fullmatch(value):
        raise ValueError("must be 3-32 letters, digits or underscores")
    return value


def check_bio(value: str) -> str:
    if len(value) > BIO_MAX or "\x00" in value:
        raise ValueError(f"must be at most {BIO_MAX} characters")
    return value


def check_url(value: str) -> str:
    """An absolute http(s) URL with a host (no javascript:, data: or relative links), in the shape
    URL_PATTERN states (what the document promises), which urlsplit then agrees with."""
    if len(value) > URL_MAX or not _URL.fullmatch(value) or _CONTROL.search(value) or " " in value:
        raise ValueError("must be an http(s) URL")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValueError("must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an http(s) URL")
    return value


def check_country(value: str) -> str:
    if not _COUNTRY.fullmatch(value):
        raise ValueError("must be an ISO 3166-1 alpha-2 code in capitals, like US")
    return value


DATE_OF_BIRTH_MIN_YEAR = 1900


def date_of_birth_pattern(today: dt.date) -> str:
    """The years a date of birth may have on `today` (DATE_OF_BIRTH_MIN_YEAR to last year) as a
    pattern over the ISO date, for the document: one alternative per decade, e.g. `202[0-5]`."""
    years = range(DATE_OF_BIRTH_MIN_YEAR, today.year)
    decades: dict[str, list[int]] = {}
    for year in years:
        decades.setdefault(str(year)[:3], []).append(year % 10)
    parts = [prefix + (r"\d" if digits == list(range(10)) else f"[{digits[0]}-{digits[-1]}]")
             for prefix, digits in decades.items()]
    return "^(" + "|".join(parts) + ")-"


def check_date_of_birth(value: dt.date) -> dt.date:
    """A year from DATE_OF_BIRTH_MIN_YEAR to last year (`date_of_birth_pattern` states it)."""
    if not DATE_OF_BIRTH_MIN_YEAR <= value.year < dt.date.today().year:
        raise ValueError(f"must be a real date of birth (a year from {DATE_OF_BIRTH_MIN_YEAR} to last year)")
    return value


_CHECKS: dict[str, Any] = {"email": check_email, "display_name": check_display_name, "username": check_username,
                           "bio": check_bio, "profile_image_url": check_url, "country": check_country,
                           "date_of_birth": check_date_of_birth}


def _validated(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    for field, value in changes.items():
        check = _CHECKS.get(field)
        try:
            if field == "display_name" and value is None:
                raise ValueError("may not be null")
            if field == "role" and value not in ROLES:
                raise ValueError(f"must be one of {', '.join(ROLES)}")
            if field == "status" and value not in STATUSES:
                raise ValueError(f"must be one of {', '.join(STATUSES)}")
            if field == "email_verified" and not isinstance(value, bool):
                raise ValueError("must be a boolean")
            out[field] = check(value) if check is not None and value is not None else value
        except ValueError as exc:
            errors.append({"field": field, "issue": str(exc)})
    if errors:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "invalid user fields", details={"errors": errors})
    return out


# --- the account -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    email: str
    username: str | None
    display_name: str
    bio: str | None
    profile_image_url: str | None
    role: Role
    status: Status
    country: str | None
    date_of_birth: dt.date | None
    email_verified: bool
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def public(self) -> dict[str, Any]:
        """What any signed-in user may see."""
        return {"id": str(self.id), "display_name": self.display_name, "username": self.username,
                "role": self.role, "profile_image_url": self.profile_image_url, "bio": self.bio,
                "created_at": _iso(self.created_at)}

    def private(self) -> dict[str, Any]:
        """What the user themself and admins see."""
        return {"id": str(self.id), "email": self.email, "display_name": self.display_name,
                "username": self.username, "role": self.role, "status": self.status, "country": self.country,
                "date_of_birth": self.date_of_birth.isoformat() if self.date_of_birth else None,
                "profile_image_url": self.profile_image_url, "bio": self.bio,
                "email_verified": self.email_verified, "created_at": _iso(self.created_at),
                "updated_at": _iso(self.updated_at)}

    def view_for(self, actor: Identity) -> dict[str, Any]:
        return self.private() if actor.user_id == self.id or actor.is_admin else self.public()


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _conflict(exc: asyncpg.UniqueViolationError) -> ApiError:
    field = "username" if "username" in (exc.constraint_name or "") else "email"
    return ApiError(ErrorCode.CONFLICT, f"this {field} is already registered", details={"field": field})


async def insert_user(db: DB, *, email: str, password_hash: str, display_name: str, role: Role = "viewer",
                      username: str | None = None, country: str | None = None,
                      date_of_birth: dt.date | None = None, email_verified: bool = False) -> User:
    """Store an account whose password is already hashed (validated fields; see `create_user`)."""
    fields = _validated({"email": email, "display_name": display_name, "role": role, "username": username,
                         "country": country, "date_of_birth": date_of_birth})
    try:
        row = await db.fetchrow(
            f"INSERT INTO users (email, password_hash, display_name, role, username, country, date_of_birth, "
            f"email_verified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
            fields["email"], password_hash, fields["display_name"], fields["role"], fields["username"],
            fields["country"], fields["date_of_birth"], email_verified)
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    assert row is not None
    return User.from_row(row)


async def create_user(db: DB, settings: Settings, *, email: str, password: str, display_name: str | None = None,
                      role: Role = "viewer", username: str | None = None, country: str | None = None,
                      date_of_birth: dt.date | None = None, email_verified: bool = False) -> User:
    """Create an account: checks the fields and the password policy, hashes with argon2id.

    Any role may be given: this is the operator's path (`greenroom users create` bootstraps
    admins, demo seeding). People signing themselves up go through `register`.
    """
    email = _validated({"email": email})["email"]
    check_policy(password, email, settings)
    name = display_name if display_name is not None else email.split("@", 1)[0][:DISPLAY_NAME_MAX]
    password_hash = await passwords_for(settings).hash(password)
    return await insert_user(db, email=email, password_hash=password_hash, display_name=name, role=role,
                             username=username, country=country, date_of_birth=date_of_birth,
                             email_verified=email_verified)


async def register(db: DB, settings: Settings, *, email: str, password: str, display_name: str | None = None,
                   role: Role = "viewer", username: str | None = None, country: str | None = None,
                   date_of_birth: dt.date | None = None) -> User:
    """Self-registration: `create_user` for one of SELF_REGISTER_ROLES, email unverified.

    No one makes themselves an admin: admins come from the CLI or from another admin's role change.
    """
    if role not in SELF_REGISTER_ROLES:
        raise forbidden("admin accounts are created with the CLI or by an admin")
    return await create_user(db, settings, email=email, password=password, display_name=display_name, role=role,
                             username=username, country=country, date_of_birth=date_of_birth)


async def find_user(db: DB, user_id: uuid.UUID) -> User | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    return User.from_row(row) if row is not None else None


async def get_user(db: DB, user_id: uuid.UUID) -> User:
    user = await find_user(db, user_id)
    if user is None:
        raise not_found("user")
    return user


async def get_visible_user(db: DB, actor: Identity, user_id: uuid.UUID) -> User:
    """A user as `actor` may see them: banned accounts exist only for admins and themselves."""
    user = await find_user(db, user_id)
    if user is None or (user.status == "banned" and not actor.is_admin and actor.user_id != user.id):
        raise not_found("user")
    return user


def _bad_credentials() -> ApiError:
    return ApiError(ErrorCode.INVALID_CREDENTIALS, "email or password is wrong")


async def authenticate_password(db: DB, settings: Settings, email: str, password: str) -> User:
    """The account for these credentials. Unknown email and wrong password fail alike, in the same
    time (a dummy hash is verified); a disabled account is refused only after a correct password."""
    hasher = passwords_for(settings)
    row = None
    if len(email) <= EMAIL_MAX:
        row = await db.fetchrow(f"SELECT {_COLUMNS}, password_hash FROM users WHERE lower(email) = lower($1)",
                                email.strip())
    if not await hasher.verify(row["password_hash"] if row is not None else None, password):
        raise _bad_credentials()
    assert row is not None
    user = User.from_row(row)
    if user.status != "active":
        raise ApiError(ErrorCode.ACCOUNT_DISABLED, f"this account is {user.status}", details={"status": user.status})
    if hasher.needs_rehash(row["password_hash"]):
        await db.execute("UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash = $3",
                         user.id, await hasher.hash(password), row["password_hash"])
    return user


async def update_user(pool: asyncpg.Pool, actor: Identity, user_id: uuid.UUID, changes: dict[str, Any],
                      tokens: TokenService | None = None, on_revoke: OnRevoke | None = None) -> User:
    """Apply profile changes. Self may change SELF_FIELDS; an admin also ADMIN_FIELDS, but not their own
    role or status. A role or status change revokes the user's access tokens issued before it (this
    worker at once via `tokens`; the others within `key_cache_refresh_s`, or at once through
    `on_revoke(user_id, cutoff, status)`, called after the commit: the caller's way to tell every
    node and close the user's sockets); a non-active status also revokes their refresh sessions."""
    if actor.user_id != user_id and not actor.is_admin:
        raise forbidden("you may only change your own profile")
    allowed = ADMIN_FIELDS if actor.is_admin else SELF_FIELDS
    refused = sorted(set(changes) - allowed)
    if refused:
        raise forbidden(f"you may not change: {', '.join(refused)}")
    if actor.user_id == user_id and ({"role", "status"} & set(changes)):
        raise forbidden("admins may not change their own role or status")
    fields = _validated(changes)
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow("SELECT role, status FROM users WHERE id = $1 FOR UPDATE", user_id)
        if current is None:
            raise not_found("user")
        revoke = any(k in fields and fields[k] != current[k] for k in ("role", "status"))
        sets = [f"{name} = ${i}" for i, name in enumerate(fields, start=2)]
        sets.append("updated_at = now()")
        if revoke:
            sets.append("tokens_valid_after = now()")
        try:
            row = await conn.fetchrow(
                f"UPDATE users SET {', '.join(sets)} WHERE id = $1 RETURNING {_COLUMNS}, "
                "extract(epoch FROM tokens_valid_after)::float8 AS cutoff", user_id, *fields.values())
        except asyncpg.UniqueViolationError as exc:
            raise _conflict(exc) from None
        assert row is not None
        if fields.get("status", "active") != "active":
            await sessions.revoke_user_sessions(conn, user_id, "disabled")
    cutoff = row["cutoff"] or time.time()
    if revoke and tokens is not None:
        tokens.revoke_user_tokens(user_id, cutoff)
    if revoke and on_revoke is not None:
        await on_revoke(user_id, cutoff, row["status"])
    return User.from_row(row)


# --- preferences -------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes a key."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _may_see_preferences(actor: Identity, user_id: uuid.UUID) -> None:
    if actor.user_id != user_id and not actor.is_admin:
        raise forbidden("preferences are visible to their owner and admins only")


async def get_preferences(db: DB, actor: Identity, user_id: uuid.UUID) -> dict[str, Any]:
    _may_see_preferences(actor, user_id)
    prefs = await db.fetchval("SELECT preferences FROM users WHERE id = $1", user_id)
    if prefs is None:
        raise not_found("user")
    assert isinstance(prefs, dict)
    return prefs


async def update_preferences(pool: asyncpg.Pool, settings: Settings, actor: Identity, user_id: uuid.UUID,
                             patch: dict[str, Any]) -> dict[str, Any]:
    """Merge `patch` into the preferences (RFC 7386); the result is bounded by `preferences_max_bytes`."""
    _may_see_preferences(actor, user_id)
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchval("SELECT preferences FROM users WHERE id = $1 FOR UPDATE", user_id)
        if current is None:
            raise not_found("user")
        merged = merge_patch(current, patch)
        size = len(orjson.dumps(merged))
        if size > settings.preferences_max_bytes:
            raise ApiError(ErrorCode.VALIDATION_ERROR, "preferences are too large",
                           details={"errors": [{"field": "(body)",
                                                "issue": f"{size} bytes exceeds {settings.preferences_max_bytes}"}]})
        await conn.execute("UPDATE users SET preferences = $2, updated_at = now() WHERE id = $1", user_id, merged)
    assert isinstance(merged, dict)
    return merged
