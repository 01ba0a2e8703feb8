"""Auth: registration, login, refresh rotation and reuse, logout, access-token verification
(forged, expired, `alg: none`, HS256 confusion, unknown kid), key rotation, JWKS, the CLI."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.accounts.passwords import passwords_for, policy_problems
from server.accounts.sessions import forget_repeats, purge_expired
from server.accounts.tokens import TokenService, token_service
from server.accounts.users import create_user
from server.accounts.users import register as register_user
from server.kernel import keys
from server.kernel.errors import ApiError
from server.kernel.settings import Settings
from tests.support.factories import make_user

PASSWORD = "Correct-Horse-Battery-9"
# Cheap argon2 keeps these tests fast; test_default_hash_parameters checks the production cost.
FAST = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1,
        "rate_auth_per_min": 10_000, "rate_general_per_hour": 100_000, "rate_anonymous_per_min": 10_000}


@pytest.fixture
async def api(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
              make_settings: Callable[..., Settings]) -> TestClient:
    return await aiohttp_client(make_app(make_settings(**FAST)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(api: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"email": f"u{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD, "display_name": "Someone"}
    body.update(fields)
    resp = await api.post("/v1/auth/register", json=body)
    data = await resp.json()
    assert resp.status == 201, data
    return dict(data["data"])


async def error_of(resp: Any) -> tuple[int, str]:
    body = await resp.json()
    return resp.status, body["error"]["code"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    signature = sign(signing_input) if sign else b""
    return f"{signing_input.decode()}.{b64(signature)}"


def claims_for(user_id: uuid.UUID, role: str = "viewer", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": str(user_id), "role": role, "iat": now, "nbf": now, "exp": now + 600,
              "iss": "greenroom", "jti": uuid.uuid4().hex}
    claims.update(over)
    return claims


async def current_key(api: TestClient) -> tuple[str, Ed25519PrivateKey, str]:
    row = await api.app[keys.DB].fetchrow(
        "SELECT kid, private_pem, public_pem FROM signing_keys ORDER BY activates_at DESC LIMIT 1")
    key = serialization.load_pem_private_key(row["private_pem"].encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return row["kid"], key, row["public_pem"]


# --- registration -------------------------------------------------------------------------

async def test_register_returns_tokens_and_user(api: TestClient) -> None:
    data = await register(api, email="Ann@Example.com", display_name="  Ann  ", username="ann_1",
                          country="US", date_of_birth="1990-01-01")
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 3600
    assert data["refresh_token"] and data["access_token"].count(".") == 2
    user = data["user"]
    assert user["email"] == "Ann@Example.com" and user["display_name"] == "Ann"
    assert user["role"] == "viewer" and user["status"] == "active" and user["username"] == "ann_1"
    assert user["country"] == "US" and user["date_of_birth"] == "1990-01-01"
    assert user["email_verified"] is False and "password_hash" not in user
    header = jwt.get_unverified_header(data["access_token"])
    assert header["alg"] == "EdDSA" and header["kid"]
    claims = jwt.decode(data["access_token"], options={"verify_signature": False})
    assert set(claims) >= {"sub", "role", "iat", "nbf", "exp", "iss", "jti"}
    assert claims["sub"] == user["id"] and claims["role"] == "viewer"
    for path in ("/v1/auth/me", "/v1/me"):
        resp = await api.get(path, headers=bearer(data["access_token"]))
        assert resp.status == 200
        assert (await resp.json())["data"]["id"] == user["id"]
    stored = await api.app[keys.DB].fetchval("SELECT password_hash FROM users WHERE id = $1",
                                                uuid.UUID(user["id"]))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_register_as_performer_but_not_admin(api: TestClient) -> None:
    data = await register(api, role="performer")
    assert data["user"]["role"] == "performer"
    # `admin` is not among the roles the schema offers (nor the document's enum): a validation error
    resp = await api.post("/v1/auth/register", json={"email": "boss@example.com", "password": PASSWORD,
                                                     "display_name": "Boss", "role": "admin"})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    doc = await (await api.get("/v1/openapi.json")).json()
    assert doc["components"]["schemas"]["RegisterBody"]["properties"]["role"]["enum"] == ["viewer", "performer"]
    assert await api.app[keys.DB].fetchval("SELECT count(*) FROM users WHERE role = 'admin'") == 0
    resp = await api.post("/v1/auth/register", json={"email": "x@example.com", "password": PASSWORD,
                                                     "display_name": "X", "role": "superuser"})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "not-an-email"}, "email"),
    ({"email": "a@b"}, "email"),
    ({"email": 5}, "email"),
    ({"password": 1234567890}, "password"),
    ({"display_name": ""}, "display_name"),
    ({"display_name": "bad\x00name"}, "display_name"),
    ({"username": "a b"}, "username"),
    ({"country": "usa"}, "country"),
    ({"date_of_birth": "2999-01-01"}, "date_of_birth"),
    ({"date_of_birth": "yesterday"}, "date_of_birth"),
    ({"role": 1}, "role"),
    ({"is_admin": True}, "is_admin"),
])
async def test_register_rejects_bad_fields(api: TestClient, body: dict[str, Any], field: str) -> None:
    payload: dict[str, Any] = {"email": "ok@example.com", "password": PASSWORD, "display_name": "Ok"}
    payload.update(body)
    resp = await api.post("/v1/auth/register", json=payload)
    data = await resp.json()
    assert resp.status == 422, data
    assert data["error"]["code"] == "VALIDATION_ERROR"
    assert any(e["field"].startswith(field) for e in data["error"]["details"]["errors"])


async def test_register_missing_fields_and_malformed_json(api: TestClient) -> None:
    resp = await api.post("/v1/auth/register", json={"email": "ok@example.com"})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    resp = await api.post("/v1/auth/register", data=b'{"email": "a@b.co", "password":',
                          headers={"Content-Type": "application/json"})
    assert await error_of(resp) == (400, "MALFORMED_JSON")
    resp = await api.post("/v1/auth/register", data=b'["not", "an", "object"]',
                          headers={"Content-Type": "application/json"})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")


async def test_register_oversized_body_is_413(api: TestClient) -> None:
    huge = {"email": "big@example.com", "password": PASSWORD, "display_name": "x" * 2_000_000}
    resp = await api.post("/v1/auth/register", json=huge)
    assert await error_of(resp) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(("password", "issue"), [
    ("Short-1", "at least"),
    ("alllowercaseletters", "mix"),
    ("12345678901234", "mix"),
    ("A" * 300 + "b", "at most"),
    ("weak@example.com", "email"),
])
async def test_register_enforces_password_policy(api: TestClient, password: str, issue: str) -> None:
    resp = await api.post("/v1/auth/register", json={"email": "weak@example.com", "password": password,
                                                     "display_name": "Weak"})
    assert resp.status == 422
    issues = [e["issue"] for e in (await resp.json())["error"]["details"]["errors"]]
    assert any(issue in i for i in issues), issues
    assert await api.app[keys.DB].fetchval("SELECT count(*) FROM users") == 0


def test_password_policy_accepts_good_passwords(settings: Settings) -> None:
    assert policy_problems("correct horse battery staple 9", "a@b.co", settings) == []
    assert policy_problems("UPPERCASE-WITH-SYMBOLS", "a@b.co", settings) == []
    assert policy_problems("A@B.CO-long", "a@b.co-long", settings) != []


async def test_duplicate_email_is_409_case_insensitive(api: TestClient) -> None:
    await register(api, email="dup@example.com", username="dupname")
    for body in ({"email": "DUP@example.com"}, {"email": "other@example.com", "username": "DUPNAME"}):
        payload = {"password": PASSWORD, "display_name": "Again", **body}
        resp = await api.post("/v1/auth/register", json=payload)
        data = await resp.json()
        assert resp.status == 409 and data["error"]["code"] == "CONFLICT"
    assert await api.app[keys.DB].fetchval("SELECT count(*) FROM users") == 1


async def test_concurrent_registrations_of_one_email_create_one_user(api: TestClient) -> None:
    body = {"email": "race@example.com", "password": PASSWORD, "display_name": "Race"}
    resps = await asyncio.gather(*(api.post("/v1/auth/register", json=body) for _ in range(4)))
    assert sorted(r.status for r in resps) == [201, 409, 409, 409]


# --- login --------------------------------------------------------------------------------

async def test_login_and_no_user_enumeration(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await register(api, email="known@example.com")
    resp = await api.post("/v1/auth/login", json={"email": "KNOWN@example.com", "password": PASSWORD})
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["user"]["email"] == "known@example.com" and data["refresh_token"]

    hasher = passwords_for(api.app[keys.SETTINGS])
    calls: list[str] = []
    real_verify = hasher._verify

    def counting(stored: str, password: str) -> bool:
        calls.append(stored)
        return real_verify(stored, password)

    monkeypatch.setattr(hasher, "_verify", counting)
    answers = []
    for email, password in (("known@example.com", "Wrong-password-1"), ("nobody@example.com", PASSWORD),
                            ("not an email", PASSWORD), ("x" * 1000 + "@example.com", PASSWORD)):
        resp = await api.post("/v1/auth/login", json={"email": email, "password": password})
        answers.append((resp.status, await resp.json()))
    # Identical answers, and an argon2 verification on every path (equal cost for unknown emails).
    assert all(a == (401, {"error": {"code": "INVALID_CREDENTIALS", "message": "email or password is wrong"}})
               for a in answers), answers
    assert len(calls) == 4


async def test_login_bad_input(api: TestClient) -> None:
    resp = await api.post("/v1/auth/login", json={"email": "a@b.co"})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    resp = await api.post("/v1/auth/login", json={"email": ["a@b.co"], "password": PASSWORD})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    resp = await api.post("/v1/auth/login", data=b"{", headers={"Content-Type": "application/json"})
    assert await error_of(resp) == (400, "MALFORMED_JSON")
    resp = await api.post("/v1/auth/login", data=b"email=a&password=b",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert await error_of(resp) == (415, "UNSUPPORTED_MEDIA_TYPE")


async def test_suspended_user_cannot_log_in(api: TestClient) -> None:
    user = await make_user(api.app)
    await api.app[keys.DB].execute("UPDATE users SET status = 'suspended' WHERE id = $1", user.id)
    resp = await api.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert await error_of(resp) == (403, "ACCOUNT_DISABLED")
    # A wrong password says nothing about the account's status.
    resp = await api.post("/v1/auth/login", json={"email": user.email, "password": "Wrong-password-1"})
    assert await error_of(resp) == (401, "INVALID_CREDENTIALS")


async def test_login_rehashes_weaker_hashes(api: TestClient) -> None:
    from argon2 import PasswordHasher

    user = await make_user(api.app)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=2).hash(PASSWORD)  # parallelism differs
    db = api.app[keys.DB]
    await db.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user.id, weak)
    resp = await api.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert resp.status == 200
    stored = await db.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert stored != weak and "p=1" in stored
    resp = await api.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert resp.status == 200


def test_default_hash_parameters_are_argon2id_rfc9106(settings: Settings) -> None:
    hasher = passwords_for(settings)
    stored = hasher.hash_now("Some-password-1")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


async def test_auth_rate_limit_per_ip(client: TestClient) -> None:
    statuses = []
    for _ in range(11):
        resp = await client.post("/v1/auth/login", json={})
        statuses.append(resp.status)
    assert statuses == [422] * 10 + [429]
    assert resp.headers["X-RateLimit-Limit"] == "10" and "Retry-After" in resp.headers
    assert (await resp.json())["error"]["code"] == "RATE_LIMIT_EXCEEDED"


# --- refresh and logout -------------------------------------------------------------------

async def refresh(api: TestClient, token: str) -> Any:
    return await api.post("/v1/auth/refresh", json={"refresh_token": token})


async def test_refresh_rotates_and_reuse_revokes_the_family(api: TestClient) -> None:
    first = await register(api)
    resp = await refresh(api, first["refresh_token"])
    assert resp.status == 200
    second = (await resp.json())["data"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["user"]["id"] == first["user"]["id"]
    resp = await refresh(api, second["refresh_token"])
    third = (await resp.json())["data"]

    # The first token replayed (stolen copy): refused, and the whole family dies with it.
    resp = await refresh(api, first["refresh_token"])
    assert await error_of(resp) == (401, "INVALID_TOKEN")
    resp = await refresh(api, third["refresh_token"])
    assert await error_of(resp) == (401, "INVALID_TOKEN")
    db = api.app[keys.DB]
    assert await db.fetchval("SELECT revoked_reason FROM refresh_families") == "reuse"
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL") == 0
    # Stored hashed: the raw token is nowhere in the table.
    hashes = [r["token_hash"] for r in await db.fetch("SELECT token_hash FROM refresh_tokens")]
    assert hashlib.sha256(first["refresh_token"].encode()).digest() in hashes
    assert all(first["refresh_token"].encode() not in h for h in hashes)
    # Another login is a separate family and still works.
    resp = await api.post("/v1/auth/login", json={"email": first["user"]["email"], "password": PASSWORD})
    other = (await resp.json())["data"]
    assert (await refresh(api, other["refresh_token"])).status == 200


async def test_concurrent_refreshes_within_the_grace_get_the_same_pair(api: TestClient) -> None:
    """Two tabs refreshing one token at once both stay signed in, with one and the same new pair."""
    first = await register(api)
    resps = await asyncio.gather(*(refresh(api, first["refresh_token"]) for _ in range(2)))
    assert [r.status for r in resps] == [200, 200], [await r.text() for r in resps]
    a, b = [(await r.json())["data"] for r in resps]
    assert (a["refresh_token"], a["access_token"]) == (b["refresh_token"], b["access_token"])
    assert a["refresh_token"] != first["refresh_token"]
    # A late third tab, still within the grace, gets that pair too: no third pair is minted.
    late = (await (await refresh(api, first["refresh_token"])).json())["data"]
    assert (late["refresh_token"], late["access_token"]) == (a["refresh_token"], a["access_token"])
    db = api.app[keys.DB]
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens") == 2
    assert await db.fetchval("SELECT revoked_at FROM refresh_families") is None
    assert (await api.get("/v1/auth/me", headers=bearer(a["access_token"]))).status == 200
    # What lets the repeat happen is stored sealed: neither new token is in the table in the clear.
    rows = await db.fetch("SELECT * FROM refresh_tokens")
    stored = b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode() for r in rows for v in r.values())
    for token in (a["refresh_token"], a["access_token"]):
        assert token.encode() not in stored and hashlib.sha256(token.encode()).digest() != stored
    # The new token rotates as usual; the first token, now two rotations back, is a reuse.
    nxt = await refresh(api, a["refresh_token"])
    assert nxt.status == 200
    assert await error_of(await refresh(api, first["refresh_token"])) == (401, "INVALID_TOKEN")
    assert await db.fetchval("SELECT revoked_reason FROM refresh_families") == "reuse"


async def test_reuse_after_the_grace_revokes_the_family(api: TestClient) -> None:
    first = await register(api)
    second = (await (await refresh(api, first["refresh_token"])).json())["data"]
    db = api.app[keys.DB]
    grace = api.app[keys.SETTINGS].refresh_reuse_grace_s
    assert grace > 0
    # As if the grace had passed since the rotation.
    await db.execute("UPDATE refresh_tokens SET used_at = used_at - make_interval(secs => $1)", grace + 1)
    # The upkeep pass erases the sealed pair, which can no longer be repeated.
    assert await forget_repeats(db, grace, 100) == 1
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE repeat_sealed IS NOT NULL") == 0
    assert await error_of(await refresh(api, first["refresh_token"])) == (401, "INVALID_TOKEN")
    assert await error_of(await refresh(api, second["refresh_token"])) == (401, "INVALID_TOKEN")
    assert await db.fetchval("SELECT revoked_reason FROM refresh_families") == "reuse"


async def test_without_a_grace_concurrent_refresh_yields_one_pair(
        aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
        make_settings: Callable[..., Settings]) -> None:
    api = await aiohttp_client(make_app(make_settings(**FAST, refresh_reuse_grace_s=0)))
    first = await register(api)
    resps = await asyncio.gather(*(refresh(api, first["refresh_token"]) for _ in range(5)))
    statuses = sorted(r.status for r in resps)
    assert statuses == [200, 401, 401, 401, 401]
    winner = next(r for r in resps if r.status == 200)
    new_token = (await winner.json())["data"]["refresh_token"]
    # The replays revoked the family, the winner's new token included.
    assert (await refresh(api, new_token)).status == 401


async def test_refresh_rejects_bad_tokens(api: TestClient) -> None:
    first = await register(api)
    for token in ("", "x" * 600, "not-a-token", first["access_token"][:500]):
        resp = await refresh(api, token)
        assert resp.status in (401, 422), token
    resp = await api.post("/v1/auth/refresh", json={"refresh_token": 123})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    db = api.app[keys.DB]
    await db.execute("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
    resp = await refresh(api, first["refresh_token"])
    assert await error_of(resp) == (401, "INVALID_TOKEN")


async def test_suspended_user_cannot_refresh(api: TestClient) -> None:
    first = await register(api)
    db = api.app[keys.DB]
    await db.execute("UPDATE users SET status = 'banned'")
    resp = await refresh(api, first["refresh_token"])
    assert await error_of(resp) == (403, "ACCOUNT_DISABLED")
    await db.execute("UPDATE users SET status = 'active'")
    resp = await refresh(api, first["refresh_token"])
    assert await error_of(resp) == (401, "INVALID_TOKEN")


async def test_logout_revokes_the_family(api: TestClient) -> None:
    first = await register(api)
    second = (await (await refresh(api, first["refresh_token"])).json())["data"]
    resp = await api.post("/v1/auth/logout", json={"refresh_token": second["refresh_token"]})
    assert resp.status == 200 and (await resp.json())["data"] == {"logged_out": True}
    assert await error_of(await refresh(api, second["refresh_token"])) == (401, "INVALID_TOKEN")
    # Unknown or already revoked tokens answer the same (revocation is idempotent).
    for token in (second["refresh_token"], "never-issued"):
        resp = await api.post("/v1/auth/logout", json={"refresh_token": token})
        assert resp.status == 200
    resp = await api.post("/v1/auth/logout", json={})
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    db = api.app[keys.DB]
    assert await db.fetchval("SELECT revoked_reason FROM refresh_families") == "logout"


async def test_sessions_per_user_are_bounded(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
                                             make_settings: Callable[..., Settings]) -> None:
    api = await aiohttp_client(make_app(make_settings(**FAST, sessions_per_user_max=2)))
    first = await register(api)
    email = first["user"]["email"]
    logins = []
    for _ in range(2):
        resp = await api.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        logins.append((await resp.json())["data"]["refresh_token"])
    assert await error_of(await refresh(api, first["refresh_token"])) == (401, "INVALID_TOKEN")
    for token in logins:
        assert (await refresh(api, token)).status == 200


async def test_expired_sessions_are_purged(api: TestClient) -> None:
    await register(api)
    keep = await register(api)
    db = api.app[keys.DB]
    await db.execute("UPDATE refresh_families SET expires_at = now() - interval '1 second' WHERE user_id <> $1",
                     uuid.UUID(keep["user"]["id"]))
    assert await purge_expired(db, 100) == 1
    assert await db.fetchval("SELECT count(*) FROM refresh_families") == 1
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens") == 1
    assert (await refresh(api, keep["refresh_token"])).status == 200


# --- access tokens ------------------------------------------------------------------------

async def test_missing_and_malformed_bearer(api: TestClient) -> None:
    assert await error_of(await api.get("/v1/me")) == (401, "AUTHENTICATION_REQUIRED")
    assert await error_of(await api.get("/v1/me", headers={"Authorization": "Basic abc"})) == \
        (401, "AUTHENTICATION_REQUIRED")
    for token in ("garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.", "...."):
        assert await error_of(await api.get("/v1/me", headers=bearer(token))) == (401, "INVALID_TOKEN"), token


async def test_forged_and_confused_tokens_are_refused(api: TestClient) -> None:
    user = await make_user(api.app, role="viewer")
    kid, key, public_pem = await current_key(api)
    good = claims_for(user.id)
    assert (await api.get("/v1/me", headers=bearer(jwt.encode(good, key, "EdDSA", headers={"kid": kid})))).status \
        == 200

    forged_key = Ed25519PrivateKey.generate()
    hs_key = public_pem.encode()
    tokens = {
        "alg none": raw_jwt({"alg": "none", "kid": kid, "typ": "JWT"}, good),
        "alg none, admin": raw_jwt({"alg": "none", "kid": kid}, claims_for(user.id, "admin")),
        "no kid": jwt.encode(good, key, "EdDSA"),
        "unknown kid": jwt.encode(good, key, "EdDSA", headers={"kid": "nope"}),
        "other key, same kid": jwt.encode(good, forged_key, "EdDSA", headers={"kid": kid}),
        "HS256 with public key": raw_jwt({"alg": "HS256", "kid": kid, "typ": "JWT"}, good,
                                         lambda m: hmac.new(hs_key, m, hashlib.sha256).digest()),
        "HS256 with public key, admin": raw_jwt(
            {"alg": "HS256", "kid": kid}, claims_for(user.id, "admin"),
            lambda m: hmac.new(hs_key, m, hashlib.sha256).digest()),
        "tampered role": _tamper(jwt.encode(good, key, "EdDSA", headers={"kid": kid}), role="admin"),
        "wrong issuer": jwt.encode(claims_for(user.id, iss="evil"), key, "EdDSA", headers={"kid": kid}),
        "unknown role": jwt.encode(claims_for(user.id, "root"), key, "EdDSA", headers={"kid": kid}),
        "sub not uuid": jwt.encode(claims_for(user.id, sub="me"), key, "EdDSA", headers={"kid": kid}),
        "not yet valid": jwt.encode(claims_for(user.id, nbf=int(time.time()) + 3600), key, "EdDSA",
                                    headers={"kid": kid}),
        "kid not a string": raw_jwt({"alg": "EdDSA", "kid": 7}, good, key.sign),
    }
    for claim in ("exp", "jti", "role", "iss"):
        partial = {k: v for k, v in good.items() if k != claim}
        tokens[f"missing {claim}"] = jwt.encode(partial, key, "EdDSA", headers={"kid": kid})
    for name, token in tokens.items():
        resp = await api.get("/v1/me", headers=bearer(token))
        assert await error_of(resp) == (401, "INVALID_TOKEN"), name
    with pytest.raises(ApiError):
        token_service(api.app).authenticate(tokens["alg none, admin"])


def _tamper(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    return f"{header}.{b64(json.dumps(data).encode())}.{signature}"


async def test_expired_token_says_so(api: TestClient) -> None:
    user = await make_user(api.app)
    kid, key, _ = await current_key(api)
    past = int(time.time()) - 7200
    token = jwt.encode(claims_for(user.id, iat=past, nbf=past, exp=past + 60), key, "EdDSA", headers={"kid": kid})
    assert await error_of(await api.get("/v1/me", headers=bearer(token))) == (401, "TOKEN_EXPIRED")
    # Within the configured leeway an expired-by-a-second token still passes (clock skew).
    now = int(time.time())
    token = jwt.encode(claims_for(user.id, exp=now - 1), key, "EdDSA", headers={"kid": kid})
    assert (await api.get("/v1/me", headers=bearer(token))).status == 200


async def test_token_of_a_deleted_user(api: TestClient) -> None:
    user = await make_user(api.app)
    await api.app[keys.DB].execute("DELETE FROM users WHERE id = $1", user.id)
    assert await error_of(await api.get("/v1/me", headers=user.headers)) == (401, "INVALID_TOKEN")


async def test_role_change_revokes_older_access_tokens(api: TestClient) -> None:
    admin = await make_user(api.app, role="admin")
    data = await register(api, role="performer")
    uid, old_access = data["user"]["id"], data["access_token"]
    resp = await api.patch(f"/v1/users/{uid}", json={"role": "viewer"}, headers=admin.headers)
    assert resp.status == 200 and (await resp.json())["data"]["role"] == "viewer"
    assert await error_of(await api.get("/v1/me", headers=bearer(old_access))) == (401, "INVALID_TOKEN")
    # Refresh still works at once and carries the new role.
    new = (await (await refresh(api, data["refresh_token"])).json())["data"]
    assert jwt.decode(new["access_token"], options={"verify_signature": False})["role"] == "viewer"
    assert (await api.get("/v1/me", headers=bearer(new["access_token"]))).status == 200
    # Another worker learns the revocation from the database on its next reload.
    other = TokenService(api.app[keys.SETTINGS], api.app[keys.DB])
    await other.load()
    with pytest.raises(ApiError) as exc:
        other.authenticate(old_access)
    assert exc.value.code == "INVALID_TOKEN"


async def test_suspension_revokes_access_and_sessions(api: TestClient) -> None:
    admin = await make_user(api.app, role="admin")
    data = await register(api)
    uid = data["user"]["id"]
    resp = await api.patch(f"/v1/users/{uid}", json={"status": "suspended"}, headers=admin.headers)
    assert resp.status == 200 and (await resp.json())["data"]["status"] == "suspended"
    assert await error_of(await api.get("/v1/me", headers=bearer(data["access_token"]))) == (401, "INVALID_TOKEN")
    assert await error_of(await refresh(api, data["refresh_token"])) == (401, "INVALID_TOKEN")
    assert await api.app[keys.DB].fetchval("SELECT revoked_reason FROM refresh_families") == "disabled"


# --- keys ---------------------------------------------------------------------------------

async def test_jwks_publishes_public_keys_that_verify_tokens(api: TestClient) -> None:
    user = await make_user(api.app)
    resp = await api.get("/.well-known/jwks.json")
    assert resp.status == 200
    jwks = await resp.json()
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA" and jwk["use"] == "sig"
    assert "d" not in jwk  # never the private part
    assert jwk["kid"] == jwt.get_unverified_header(user.token)["kid"]
    claims = jwt.decode(user.token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], issuer="greenroom")
    assert claims["sub"] == str(user.id)


async def test_rotation_keeps_old_tokens_valid(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
                                               make_settings: Callable[..., Settings]) -> None:
    api = await aiohttp_client(make_app(make_settings(**FAST, key_publish_delay_s=0)))
    tokens = token_service(api.app)
    old_user = await make_user(api.app)
    old_kid = jwt.get_unverified_header(old_user.token)["kid"]
    new_kid = await tokens.rotate()
    assert new_kid != old_kid
    new_token, _ = tokens.issue_access(old_user.id, "viewer")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    for token in (old_user.token, new_token):
        assert (await api.get("/v1/me", headers=bearer(token))).status == 200
    kids = [k["kid"] for k in (await (await api.get("/.well-known/jwks.json")).json())["keys"]]
    assert kids == [new_kid, old_kid]
    # Once the old key's last token must have expired, it is neither published nor accepted.
    await api.app[keys.DB].execute(
        "UPDATE signing_keys SET retired_at = now() - interval '2 hours' WHERE kid = $1", old_kid)
    await tokens.load()
    assert await error_of(await api.get("/v1/me", headers=old_user.headers)) == (401, "INVALID_TOKEN")
    kids = [k["kid"] for k in (await (await api.get("/.well-known/jwks.json")).json())["keys"]]
    assert kids == [new_kid]


async def test_rotated_key_is_published_before_it_signs(api: TestClient) -> None:
    tokens = token_service(api.app)
    old_kid = jwt.get_unverified_header(tokens.issue_access(uuid.uuid4(), "viewer")[0])["kid"]
    new_kid = await tokens.rotate()  # default publish delay: 150 s
    assert {k["kid"] for k in tokens.jwks()["keys"]} == {old_kid, new_kid}
    assert jwt.get_unverified_header(tokens.issue_access(uuid.uuid4(), "viewer")[0])["kid"] == old_kid
    await api.app[keys.DB].execute("UPDATE signing_keys SET activates_at = now() - interval '1 second', "
                                      "retired_at = CASE WHEN kid = $1 THEN now() - interval '1 second' END",
                                      old_kid)
    await tokens.load()
    assert jwt.get_unverified_header(tokens.issue_access(uuid.uuid4(), "viewer")[0])["kid"] == new_kid


async def test_rotation_on_another_node_is_picked_up_on_unknown_kid(
        aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
        make_settings: Callable[..., Settings]) -> None:
    api = await aiohttp_client(make_app(make_settings(**FAST, key_publish_delay_s=0, key_miss_reload_s=0.01)))
    here = token_service(api.app)
    there = TokenService(api.app[keys.SETTINGS], api.app[keys.DB])
    await there.start()
    await there.rotate()
    user = await make_user(api.app)
    token, _ = there.issue_access(user.id, "viewer")
    # First sight of the new kid: refused, and a reload is scheduled (authenticate never blocks on the DB).
    assert await error_of(await api.get("/v1/me", headers=bearer(token))) == (401, "INVALID_TOKEN")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if (await api.get("/v1/me", headers=bearer(token))).status == 200:
            break
    else:
        pytest.fail("unknown kid never triggered a key reload")
    assert here.authenticate(token).user_id == user.id


async def test_unknown_kid_reloads_are_rate_limited(api: TestClient) -> None:
    tokens = token_service(api.app)
    loads = 0
    real_load = tokens.load

    async def counting_load() -> None:
        nonlocal loads
        loads += 1
        await real_load()

    tokens.load = counting_load  # type: ignore[method-assign]
    _, key, _ = await current_key(api)
    bogus = jwt.encode(claims_for(uuid.uuid4()), key, "EdDSA", headers={"kid": "bogus"})
    for _ in range(50):
        with pytest.raises(ApiError):
            tokens.authenticate(bogus)
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert loads == 1


async def test_due_rotation_happens_once_across_workers(api: TestClient) -> None:
    db = api.app[keys.DB]
    await db.execute("UPDATE signing_keys SET created_at = now() - interval '31 days'")
    settings = api.app[keys.SETTINGS]
    services = [TokenService(settings, db) for _ in range(4)]
    await asyncio.gather(*(s.maintain() for s in services))
    assert await db.fetchval("SELECT count(*) FROM signing_keys") == 2
    assert await db.fetchval("SELECT count(*) FROM signing_keys WHERE retired_at IS NULL") == 1
    # Not due again right after.
    await token_service(api.app).maintain()
    assert await db.fetchval("SELECT count(*) FROM signing_keys") == 2


async def test_keys_are_shared_by_workers_on_one_database(api: TestClient) -> None:
    other = TokenService(api.app[keys.SETTINGS], api.app[keys.DB])
    await other.start()
    user = await make_user(api.app)
    assert other.authenticate(user.token).user_id == user.id
    token, _ = other.issue_access(user.id, "viewer")
    assert token_service(api.app).authenticate(token).user_id == user.id
    assert await api.app[keys.DB].fetchval("SELECT count(*) FROM signing_keys") == 1


# --- CLI ----------------------------------------------------------------------------------

def test_cli_users_create_and_keys(dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path))
    assert main(["users", "create", "--email", "root@example.com", "--password", PASSWORD, "--role", "admin",
                 "--display-name", "Root"]) == 0
    assert "created admin root@example.com" in capsys.readouterr().out
    assert main(["users", "create", "--email", "ROOT@example.com", "--password", PASSWORD,
                 "--role", "viewer"]) == 1
    assert "already registered" in capsys.readouterr().err
    assert main(["users", "create", "--email", "weak@example.com", "--password", "short",
                 "--role", "viewer"]) == 1
    assert "password" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["users", "create", "--email", "x@example.com", "--password", PASSWORD, "--role", "god"])
    assert main(["keys", "rotate"]) == 0
    assert main(["keys", "rotate"]) == 0
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("EdDSA") == 2

    async def check() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT role, display_name, email_verified, password_hash FROM users "
                                      "WHERE email = 'root@example.com'")
            assert row["role"] == "admin" and row["display_name"] == "Root" and row["email_verified"]
            assert row["password_hash"].startswith("$argon2id$")
            assert await conn.fetchval("SELECT count(*) FROM users") == 1
            assert await conn.fetchval("SELECT count(*) FROM signing_keys WHERE retired_at IS NULL") == 1
        finally:
            await conn.close()

    asyncio.run(check())


async def test_register_refuses_admins_whoever_calls_it(api: TestClient) -> None:
    """The rule is the domain's: `register` (self sign-up, any adapter) never makes an admin."""
    settings, db = api.app[keys.SETTINGS], api.app[keys.DB]
    with pytest.raises(ApiError) as caught:
        await register_user(db, settings, email="boss@example.com", password=PASSWORD, role="admin")
    assert caught.value.code == "PERMISSION_DENIED" and caught.value.status == 403
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    performer = await register_user(db, settings, email="p@example.com", password=PASSWORD, role="performer")
    assert performer.role == "performer" and not performer.email_verified


async def test_admin_made_by_create_user_can_log_in(api: TestClient) -> None:
    settings = api.app[keys.SETTINGS]
    await create_user(api.app[keys.DB], settings, email="boss@example.com", password=PASSWORD, role="admin")
    resp = await api.post("/v1/auth/login", json={"email": "boss@example.com", "password": PASSWORD})
    data = (await resp.json())["data"]
    assert data["user"]["role"] == "admin"
    assert jwt.decode(data["access_token"], options={"verify_signature": False})["role"] == "admin"
