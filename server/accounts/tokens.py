"""Access tokens: short-lived JWTs signed with Ed25519 (EdDSA), and their signing keys.

Keys are kept in PostgreSQL (`signing_keys`), not in the data directory as the issue first said:
every worker process and every node must sign and verify with the same keys, and a file in one
machine's data directory is not shared by a second node (with the embedded PostgreSQL the table
lives in the data directory anyway). Private keys are stored unencrypted in that table, so the
database's access control protects them.

Verification runs on every request and socket message, so it never touches the database: public
keys sit in memory and are reloaded every `key_cache_refresh_s`, and at most once per
`key_miss_reload_s` when a token names an unknown `kid`. Rotation publishes a new key
`key_publish_delay_s` before it signs, so every node has it cached before its first token
appears; the old key stops signing then and keeps verifying until its last token has expired.

The algorithm is pinned per key: the header's `alg` must equal the key's, so `none` and the
HS256-with-the-public-key confusion are refused before any signature check.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import ROLES, Identity, Role
from server.kernel.settings import Settings

log = logging.getLogger("greenroom.auth")

ALG = "EdDSA"
KEY_LOCK = 0x6772_6B65_7973  # advisory lock serializing key creation/rotation across nodes
REQUIRED_CLAIMS = ["sub", "role", "iat", "nbf", "exp", "iss", "jti"]


def _invalid(message: str = "access token is invalid") -> ApiError:
    return ApiError(ErrorCode.INVALID_TOKEN, message)


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str
    alg: str
    key: Ed25519PublicKey
    activates_at: float
    retired_at: float | None  # stops signing then; None while current
    jwk: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    key: Ed25519PrivateKey
    activates_at: float
    retired_at: float | None


def _new_key_pem() -> tuple[str, str, str]:
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return secrets.token_urlsafe(12), private_pem, public_pem


async def ensure_keys(conn: asyncpg.Connection, settings: Settings, *, force: bool = False) -> str | None:
    """Create the first key, or rotate when the newest is older than `key_rotation_days` (or `force`).

    Returns the kid created, if any. Safe to call from every worker at once (advisory lock).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KEY_LOCK)
        newest = await conn.fetchrow(
            "SELECT kid, created_at < now() - make_interval(days => $1) AS due FROM signing_keys "
            "ORDER BY activates_at DESC, created_at DESC LIMIT 1", settings.key_rotation_days)
        if newest is not None and not newest["due"] and not force:
            return None
        kid, private_pem, public_pem = _new_key_pem()
        # The first key signs at once (no token exists yet); a rotated-in key is published first.
        delay = 0.0 if newest is None else settings.key_publish_delay_s
        activates = await conn.fetchval(
            "INSERT INTO signing_keys (kid, alg, private_pem, public_pem, activates_at) "
            "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING activates_at",
            kid, ALG, private_pem, public_pem, delay)
        await conn.execute("UPDATE signing_keys SET retired_at = $1 WHERE kid <> $2 "
                           "AND (retired_at IS NULL OR retired_at > $1)", activates, kid)
    log.info("signing key created", extra={"kid": kid, "rotation": newest is not None})
    return kid


class TokenService:
    """Issues and verifies access tokens; implements `server.kernel.identity.Authenticator`."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self._public: dict[str, PublicKey] = {}
        self._signing: list[SigningKey] = []  # ascending activates_at
        self._revoked_before: dict[uuid.UUID, float] = {}  # user -> tokens with iat before are refused
        self._last_miss_reload = -math.inf
        self._reload_task: asyncio.Task[None] | None = None

    # --- loading -------------------------------------------------------------------------

    async def start(self) -> None:
        """Ensure a key exists (creating or rotating as due) and load the caches."""
        async with self.pool.acquire() as conn:
            await ensure_keys(conn, self.settings)
        await self.load()

    async def load(self) -> None:
        """Reload keys and access-token revocations from the database into memory."""
        s = self.settings
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT kid, alg, private_pem, public_pem, extract(epoch FROM activates_at)::float8 AS act, "
                "extract(epoch FROM retired_at)::float8 AS ret FROM signing_keys "
                "WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1) "
                "ORDER BY activates_at DESC LIMIT $2",
                s.access_token_ttl_s + s.jwt_leeway_s, s.keys_verify_max)
            revoked = await conn.fetch(
                "SELECT id, extract(epoch FROM tokens_valid_after)::float8 AS t FROM users "
                "WHERE tokens_valid_after > now() - make_interval(secs => $1) "
                "ORDER BY tokens_valid_after DESC LIMIT $2",
                s.access_token_ttl_s + s.jwt_leeway_s, s.auth_revocations_max)
        public: dict[str, PublicKey] = {}
        signing: list[SigningKey] = []
        now = time.time()
        for r in rows:
            if r["alg"] != ALG:
                continue
            pub = serialization.load_pem_public_key(r["public_pem"].encode())
            priv = serialization.load_pem_private_key(r["private_pem"].encode(), password=None)
            assert isinstance(pub, Ed25519PublicKey) and isinstance(priv, Ed25519PrivateKey)
            jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
            jwk.update({"kid": r["kid"], "alg": ALG, "use": "sig"})
            public[r["kid"]] = PublicKey(r["kid"], ALG, pub, r["act"], r["ret"], jwk)
            if r["ret"] is None or r["ret"] > now:  # retired private keys are not kept in memory
                signing.append(SigningKey(r["kid"], priv, r["act"], r["ret"]))
        if not signing:
            raise RuntimeError("no signing key in the database; start() creates one")
        signing.sort(key=lambda k: k.activates_at)
        self._public, self._signing = public, signing
        self._revoked_before = {r["id"]: r["t"] for r in revoked}

    async def rotate(self) -> str:
        """Create a new signing key now (published first, signs after `key_publish_delay_s`)."""
        async with self.pool.acquire() as conn:
            kid = await ensure_keys(conn, self.settings, force=True)
        assert kid is not None
        await self.load()
        return kid

    async def maintain(self) -> None:
        """One periodic pass: rotate if due, reload the caches."""
        async with self.pool.acquire() as conn:
            await ensure_keys(conn, self.settings)
        await self.load()


    def _reload_soon(self) -> None:
        """A token names a kid we do not know: another node may have rotated. Reload, rate-limited."""
        now = time.monotonic()
        if now - self._last_miss_reload < self.settings.key_miss_reload_s:
            return
        if self._reload_task is not None and not self._reload_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._last_miss_reload = now
        self._reload_task = loop.create_task(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            await self.load()
        except Exception:  # a background reload must not die silently nor crash the loop
            log.warning("reloading signing keys after an unknown kid failed", exc_info=True)

    async def close(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            await asyncio.gather(self._reload_task, return_exceptions=True)

    # --- revocation of issued access tokens ---------------------------------------------

    def revoke_user_tokens(self, user_id: uuid.UUID, at: float) -> None:
        """Refuse this user's access tokens issued before `at` (this node at once, others on reload)."""
        if len(self._revoked_before) >= self.settings.auth_revocations_max and user_id not in self._revoked_before:
            return  # bounded; the database is the record and the next reload keeps the newest
        self._revoked_before[user_id] = max(at, self._revoked_before.get(user_id, 0.0))

    # --- issuing and verifying -----------------------------------------------------------

    def _current_signing_key(self, now: float) -> SigningKey:
        current = self._signing[0]
        for k in self._signing:
            if k.activates_at <= now:
                current = k
        return current

    def issue_access(self, user_id: uuid.UUID, role: Role) -> tuple[str, float]:
        """A signed access token for this user and role, and its expiry (unix seconds)."""
        assert role in ROLES
        now = int(time.time())
        cutoff = self._revoked_before.get(user_id)
        if cutoff is not None:
            # iat has whole seconds: a token issued in the second of a role change must not look older
            # than the change (it is at most a second "early", inside jwt_leeway_s).
            now = max(now, math.ceil(cutoff))
        exp = now + self.settings.access_token_ttl_s
        key = self._current_signing_key(time.time())
        claims = {"sub": str(user_id), "role": role, "iat": now, "nbf": now, "exp": exp,
                  "iss": self.settings.jwt_issuer, "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, key.key, algorithm=ALG, headers={"kid": key.kid, "typ": "JWT"})
        return token, float(exp)

    def authenticate(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid() from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _invalid()
        key = self._public.get(kid)
        if key is None:
            self._reload_soon()
            raise _invalid("access token was signed by an unknown key")
        if header.get("alg") != key.alg:
            raise _invalid()
        now = time.time()
        if key.retired_at is not None and now > key.retired_at + self.settings.access_token_ttl_s \
                + self.settings.jwt_leeway_s:
            raise _invalid("access token was signed by a retired key")
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.alg], issuer=self.settings.jwt_issuer,
                                leeway=self.settings.jwt_leeway_s,
                                options={"require": REQUIRED_CLAIMS, "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise ApiError(ErrorCode.TOKEN_EXPIRED, "access token has expired; refresh it") from None
        except jwt.InvalidTokenError:
            raise _invalid() from None
        role = claims["role"]
        try:
            user_id = uuid.UUID(claims["sub"])
        except (ValueError, TypeError, AttributeError):
            raise _invalid() from None
        if role not in ROLES:
            raise _invalid()
        # iat has whole seconds: a token of the second of the change counts as older (issue_access
        # dates tokens issued after a change to the next second).
        cutoff = self._revoked_before.get(user_id)
        if cutoff is not None and claims["iat"] < math.ceil(cutoff):
            raise _invalid("access token was revoked; refresh or log in again")
        return Identity(user_id, role, float(claims["exp"]))

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of every key whose tokens may still be valid."""
        return {"keys": [k.jwk for k in sorted(self._public.values(), key=lambda k: -k.activates_at)]}


def token_service(app: web.Application) -> TokenService:
    service = app[keys.AUTH]
    assert isinstance(service, TokenService), "the auth context installs a TokenService"
    return service
