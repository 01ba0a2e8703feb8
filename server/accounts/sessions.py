"""Refresh-token sessions: opaque tokens stored as SHA-256, rotated on every use, revoked by family.

One login starts a family. Each refresh spends the presented token and issues its child in the
same family. Presenting a spent token again means it was copied (or a client replayed it): the
whole family is revoked, so the thief's and the owner's tokens both stop working.

Except within `refresh_reuse_grace_s` of the rotation, while the child is unspent: two tabs of one
browser refreshing the same token at once is not theft, so the later one gets the very pair the
first one got (no third pair, nobody logged out). The pair is kept for that on the spent token's
row, sealed (AES-GCM) with a key derived from the spent token itself, which the database never
holds (it keeps SHA-256 of it): a reader of the database cannot open it, and only a caller that
presents the spent token can. The upkeep pass erases sealed pairs once their grace has passed.

Every write to a family first locks its `refresh_families` row, so a rotation and a revocation of
the same family serialize (a child can never be born into a family revoked a moment earlier).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal, TypeAlias

import asyncpg
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.accounts.tokens import TokenService
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Role
from server.kernel.settings import Settings

Reason = Literal["logout", "reuse", "disabled", "evicted"]
DB: TypeAlias = asyncpg.Pool | asyncpg.Connection
REVOKED_KEPT_S = 86400  # a revoked family's record is kept a day (audit), then purged


@dataclass(frozen=True, slots=True)
class Session:
    user_id: uuid.UUID
    role: Role
    access_token: str
    access_expires_at: float
    refresh_token: str


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _repeat_key(token: str) -> bytes:
    # HMAC keyed by the token, not SHA-256 of it: the stored hash must not open the seal.
    return hmac.new(token.encode(), b"greenroom/refresh-repeat", hashlib.sha256).digest()


def _seal(spent: str, session: Session) -> bytes:
    nonce = secrets.token_bytes(12)
    pair = orjson.dumps([session.refresh_token, session.access_token, session.access_expires_at])
    return nonce + AESGCM(_repeat_key(spent)).encrypt(nonce, pair, token_hash(spent))


def _unseal(spent: str, sealed: bytes) -> tuple[str, str, float] | None:
    try:
        refresh, access, expires_at = orjson.loads(
            AESGCM(_repeat_key(spent)).decrypt(sealed[:12], sealed[12:], token_hash(spent)))
    except (InvalidTag, ValueError, TypeError):
        return None
    return str(refresh), str(access), float(expires_at)


def _invalid() -> ApiError:
    return ApiError(ErrorCode.INVALID_TOKEN, "refresh token is invalid, expired or revoked")


async def _new_token(conn: asyncpg.Connection, settings: Settings, family_id: uuid.UUID,
                     parent_id: uuid.UUID | None) -> str:
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, parent_id, expires_at) "
        "VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        token_hash(token), family_id, parent_id, settings.refresh_token_ttl_s)
    await conn.execute("UPDATE refresh_families SET expires_at = now() + make_interval(secs => $2) WHERE id = $1",
                       family_id, settings.refresh_token_ttl_s)
    return token


async def _revoke(conn: asyncpg.Connection, family_ids: list[uuid.UUID], reason: Reason) -> int:
    # Lock in id order: two revocations of overlapping families cannot deadlock.
    await conn.execute("SELECT 1 FROM refresh_families WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                       family_ids)
    revoked = await conn.fetch(
        "UPDATE refresh_families SET revoked_at = now(), revoked_reason = $2, "
        "expires_at = least(expires_at, now() + make_interval(secs => $3)) "
        "WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL RETURNING id",
        family_ids, reason, REVOKED_KEPT_S)
    ids = [r["id"] for r in revoked]
    if ids:
        await conn.execute("UPDATE refresh_tokens SET revoked_at = now() "
                           "WHERE family_id = ANY($1::uuid[]) AND revoked_at IS NULL", ids)
    return len(ids)


async def start_session(pool: asyncpg.Pool, tokens: TokenService, user_id: uuid.UUID, role: Role) -> Session:
    """A new login: a new family with its first refresh token, and an access token.

    The caller has checked the credentials and that the account is active. Past
    `sessions_per_user_max` logins the oldest families are revoked.
    """
    settings = tokens.settings
    async with pool.acquire() as conn, conn.transaction():
        family_id = await conn.fetchval(
            "INSERT INTO refresh_families (user_id, expires_at) VALUES ($1, now()) RETURNING id", user_id)
        refresh = await _new_token(conn, settings, family_id, None)
        old = await conn.fetch(
            "SELECT id FROM refresh_families WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() "
            "ORDER BY created_at DESC, id OFFSET $2", user_id, settings.sessions_per_user_max)
        if old:
            await _revoke(conn, [r["id"] for r in old], "evicted")
    access, expires_at = tokens.issue_access(user_id, role)
    return Session(user_id, role, access, expires_at, refresh)


async def refresh_session(pool: asyncpg.Pool, tokens: TokenService, refresh_token: str) -> Session:
    """Spend a refresh token for a new pair. A reused, revoked or expired token is INVALID_TOKEN;
    reuse revokes the family (within the grace: the same pair again, see the module doc); a
    disabled account is ACCOUNT_DISABLED and loses the family."""
    h = token_hash(refresh_token)
    grace = tokens.settings.refresh_reuse_grace_s
    async with pool.acquire() as conn:
        family_id = await conn.fetchval("SELECT family_id FROM refresh_tokens WHERE token_hash = $1", h)
        if family_id is None:
            raise _invalid()
        failure: ApiError | None = None
        repeat: tuple[str, str, float] | None = None
        issued: Session | None = None
        async with conn.transaction():
            family = await conn.fetchrow(
                "SELECT f.user_id, f.revoked_at, u.role, u.status FROM refresh_families f "
                "JOIN users u ON u.id = f.user_id WHERE f.id = $1 FOR UPDATE OF f", family_id)
            # Read after the family lock, so a concurrent rotation's `used_at` is visible here.
            token = await conn.fetchrow(
                """SELECT t.id, t.parent_id, t.used_at, t.expires_at <= now() AS expired, t.repeat_sealed,
                          t.used_at > now() - make_interval(secs => $2) AS in_grace,
                          EXISTS (SELECT 1 FROM refresh_tokens c WHERE c.parent_id = t.id AND c.used_at IS NULL
                                    AND c.revoked_at IS NULL AND c.expires_at > now()) AS child_unspent
                   FROM refresh_tokens t WHERE t.token_hash = $1""", h, grace)
            if family is None or token is None or family["revoked_at"] is not None or token["expired"]:
                raise _invalid()
            if (token["used_at"] is not None and grace > 0 and token["in_grace"] and token["child_unspent"]
                    and token["repeat_sealed"] is not None and family["status"] == "active"):
                repeat = _unseal(refresh_token, token["repeat_sealed"])
            if repeat is not None:
                pass  # the same pair again; nothing changes
            elif token["used_at"] is not None:
                await _revoke(conn, [family_id], "reuse")
                failure = _invalid()
            elif family["status"] != "active":
                await _revoke(conn, [family_id], "disabled")
                failure = ApiError(ErrorCode.ACCOUNT_DISABLED, f"this account is {family['status']}")
            else:
                access, expires_at = tokens.issue_access(family["user_id"], family["role"])
                child = await _new_token(conn, tokens.settings, family_id, token["id"])
                issued = Session(family["user_id"], family["role"], access, expires_at, child)
                await conn.execute("UPDATE refresh_tokens SET used_at = now(), repeat_sealed = $2 WHERE id = $1",
                                   token["id"], _seal(refresh_token, issued) if grace > 0 else None)
                if token["parent_id"] is not None:
                    # This token is spent now, so its parent's pair can never be repeated again.
                    await conn.execute("UPDATE refresh_tokens SET repeat_sealed = NULL WHERE id = $1",
                                       token["parent_id"])
        if failure is not None:
            raise failure  # after the commit: the revocation must stick
    if repeat is not None:
        refresh, access, expires_at = repeat
        return Session(family["user_id"], family["role"], access, expires_at, refresh)
    assert issued is not None
    return issued


async def end_session(pool: asyncpg.Pool, refresh_token: str) -> bool:
    """Logout: revoke the family of this refresh token. False when it named no live session."""
    async with pool.acquire() as conn, conn.transaction():
        family_id = await conn.fetchval("SELECT family_id FROM refresh_tokens WHERE token_hash = $1",
                                        token_hash(refresh_token))
        if family_id is None:
            return False
        return await _revoke(conn, [family_id], "logout") > 0


async def revoke_user_sessions(conn: asyncpg.Connection, user_id: uuid.UUID, reason: Reason) -> int:
    """Revoke every live family of a user (account disabled). Run inside the caller's transaction."""
    rows = await conn.fetch("SELECT id FROM refresh_families WHERE user_id = $1 AND revoked_at IS NULL", user_id)
    return await _revoke(conn, [r["id"] for r in rows], reason) if rows else 0


async def purge_expired(db: DB, batch: int) -> int:
    """Delete up to `batch` expired families (their tokens go with them). Safe on every node at once."""
    status = await db.execute(
        "DELETE FROM refresh_families WHERE id IN (SELECT id FROM refresh_families WHERE expires_at < now() "
        "ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)", batch)
    return int(status.split()[-1])


async def forget_repeats(db: DB, grace_s: float, batch: int) -> int:
    """Erase up to `batch` sealed pairs whose reuse grace has passed (they can no longer be repeated)."""
    status = await db.execute(
        "UPDATE refresh_tokens SET repeat_sealed = NULL WHERE id IN (SELECT id FROM refresh_tokens "
        "WHERE repeat_sealed IS NOT NULL AND used_at < now() - make_interval(secs => $1) "
        "LIMIT $2 FOR UPDATE SKIP LOCKED)", grace_s, batch)
    return int(status.split()[-1])
