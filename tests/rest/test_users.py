"""Users: own profile, other users' profiles, admin changes, preferences; permissions and bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.accounts.users import merge_patch
from server.kernel import keys
from server.kernel.settings import Settings
from tests.support.factories import make_user

FAST = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1,
        "rate_general_per_hour": 100_000, "preferences_max_bytes": 1024}
PUBLIC_FIELDS = {"id", "display_name", "username", "role", "profile_image_url", "bio", "created_at"}


@pytest.fixture
async def api(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
              make_settings: Callable[..., Settings]) -> TestClient:
    return await aiohttp_client(make_app(make_settings(**FAST)))


async def error_of(resp: Any) -> tuple[int, str]:
    return resp.status, (await resp.json())["error"]["code"]


async def data_of(resp: Any, status: int = 200) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body["data"]


# --- own profile --------------------------------------------------------------------------

async def test_get_me_requires_a_token(api: TestClient) -> None:
    assert await error_of(await api.get("/v1/me")) == (401, "AUTHENTICATION_REQUIRED")
    assert await error_of(await api.patch("/v1/me", json={"bio": "x"})) == (401, "AUTHENTICATION_REQUIRED")


async def test_patch_me_changes_profile(api: TestClient) -> None:
    user = await make_user(api.app, display_name="Before")
    me = await data_of(await api.patch("/v1/me", json={
        "display_name": " After ", "bio": "Sings.", "avatar_url": "https://cdn.example.com/a.png",
        "username": "after_1", "country": "DE"}, headers=user.headers))
    assert me["display_name"] == "After" and me["bio"] == "Sings." and me["username"] == "after_1"
    assert me["profile_image_url"] == "https://cdn.example.com/a.png" and me["country"] == "DE"
    assert me["email"] == user.email and me["role"] == "viewer"
    # Absent fields stay; null clears an optional field.
    me = await data_of(await api.patch("/v1/me", json={"bio": None}, headers=user.headers))
    assert me["bio"] is None and me["display_name"] == "After"
    me = await data_of(await api.patch("/v1/me", json={"profile_image_url": "http://x.example/b.jpg"},
                                       headers=user.headers))
    assert me["profile_image_url"] == "http://x.example/b.jpg"
    again = await data_of(await api.get("/v1/auth/me", headers=user.headers))
    assert again == me


@pytest.mark.parametrize("body", [
    {"avatar_url": "javascript:alert(1)"},
    {"avatar_url": "ftp://example.com/a.png"},
    {"profile_image_url": "/relative.png"},
    {"profile_image_url": "https://"},
    {"profile_image_url": "https://exa mple.com/a.png"},
    {"profile_image_url": "https://example.com/" + "a" * 3000},
    {"avatar_url": "https://a.example/x.png", "profile_image_url": "https://a.example/x.png"},
    {"display_name": None},
    {"display_name": ""},
    {"display_name": "x" * 101},
    {"display_name": 5},
    {"bio": "b" * 2001},
    {"bio": ["list"]},
    {"username": "no spaces"},
    {"country": "Germany"},
    {"email": "new@example.com"},
    {"password_hash": "x"},
])
async def test_patch_me_rejects_bad_input(api: TestClient, body: dict[str, Any]) -> None:
    user = await make_user(api.app)
    assert await error_of(await api.patch("/v1/me", json=body, headers=user.headers)) == (422, "VALIDATION_ERROR")


async def test_patch_me_malformed_and_oversized(api: TestClient) -> None:
    user = await make_user(api.app)
    resp = await api.patch("/v1/me", data=b'{"bio": ', headers={**user.headers, "Content-Type": "application/json"})
    assert await error_of(resp) == (400, "MALFORMED_JSON")
    resp = await api.patch("/v1/me", json={"bio": "x" * 1_100_000}, headers=user.headers)
    assert await error_of(resp) == (413, "PAYLOAD_TOO_LARGE")


async def test_viewer_cannot_promote_or_unsuspend_self(api: TestClient) -> None:
    user = await make_user(api.app)
    for body in ({"role": "admin"}, {"role": "performer"}, {"status": "active"}, {"email_verified": True},
                 {"date_of_birth": "1990-01-01"}):
        assert await error_of(await api.patch("/v1/me", json=body, headers=user.headers)) == \
            (403, "PERMISSION_DENIED"), body
        resp = await api.patch(f"/v1/users/{user.id}", json=body, headers=user.headers)
        assert await error_of(resp) == (403, "PERMISSION_DENIED"), body
    row = await api.app[keys.DB].fetchrow("SELECT role, email_verified FROM users WHERE id = $1", user.id)
    assert row["role"] == "viewer" and row["email_verified"] is False


async def test_username_conflict_is_409(api: TestClient) -> None:
    a = await make_user(api.app)
    b = await make_user(api.app)
    await data_of(await api.patch("/v1/me", json={"username": "taken"}, headers=a.headers))
    assert await error_of(await api.patch("/v1/me", json={"username": "TAKEN"}, headers=b.headers)) == \
        (409, "CONFLICT")


# --- other users --------------------------------------------------------------------------

async def test_profiles_show_public_fields_to_others_and_everything_to_owner_and_admin(api: TestClient) -> None:
    owner = await make_user(api.app, role="performer")
    other = await make_user(api.app)
    admin = await make_user(api.app, role="admin")
    public = await data_of(await api.get(f"/v1/users/{owner.id}", headers=other.headers))
    assert set(public) == PUBLIC_FIELDS and public["role"] == "performer"
    for viewer in (owner, admin):
        full = await data_of(await api.get(f"/v1/users/{owner.id}", headers=viewer.headers))
        assert full["email"] == owner.email and full["status"] == "active" and "email_verified" in full
    assert await error_of(await api.get(f"/v1/users/{owner.id}")) == (401, "AUTHENTICATION_REQUIRED")


async def test_unknown_or_malformed_user_id_is_404(api: TestClient) -> None:
    user = await make_user(api.app, role="admin")
    for path in (f"/v1/users/{uuid.uuid4()}", "/v1/users/not-a-uuid", "/v1/users/1",
                 f"/v1/users/{uuid.uuid4()}/preferences", "/v1/users/nope/preferences"):
        assert await error_of(await api.get(path, headers=user.headers)) == (404, "NOT_FOUND"), path
    resp = await api.patch(f"/v1/users/{uuid.uuid4()}", json={"bio": "x"}, headers=user.headers)
    assert await error_of(resp) == (404, "NOT_FOUND")


async def test_banned_users_are_hidden_from_others(api: TestClient) -> None:
    banned = await make_user(api.app)
    other = await make_user(api.app)
    admin = await make_user(api.app, role="admin")
    await data_of(await api.patch(f"/v1/users/{banned.id}", json={"status": "banned"}, headers=admin.headers))
    assert await error_of(await api.get(f"/v1/users/{banned.id}", headers=other.headers)) == (404, "NOT_FOUND")
    shown = await data_of(await api.get(f"/v1/users/{banned.id}", headers=admin.headers))
    assert shown["status"] == "banned"


async def test_viewer_cannot_patch_another_user(api: TestClient) -> None:
    victim = await make_user(api.app, display_name="Victim")
    attacker = await make_user(api.app, role="performer")
    for body in ({"display_name": "Pwned"}, {"bio": "x"}, {"role": "viewer"}):
        resp = await api.patch(f"/v1/users/{victim.id}", json=body, headers=attacker.headers)
        assert await error_of(resp) == (403, "PERMISSION_DENIED")
    name = await api.app[keys.DB].fetchval("SELECT display_name FROM users WHERE id = $1", victim.id)
    assert name == "Victim"


async def test_self_patch_via_users_path(api: TestClient) -> None:
    user = await make_user(api.app)
    me = await data_of(await api.patch(f"/v1/users/{user.id}", json={"bio": "hi"}, headers=user.headers))
    assert me["bio"] == "hi" and me["email"] == user.email


async def test_admin_changes_role_status_and_profile(api: TestClient) -> None:
    admin = await make_user(api.app, role="admin")
    user = await make_user(api.app)
    changed = await data_of(await api.patch(f"/v1/users/{user.id}", json={
        "role": "performer", "status": "suspended", "email_verified": True, "date_of_birth": "1991-02-03",
        "display_name": "Renamed"}, headers=admin.headers))
    assert changed["role"] == "performer" and changed["status"] == "suspended"
    assert changed["email_verified"] is True and changed["date_of_birth"] == "1991-02-03"
    assert changed["display_name"] == "Renamed"
    changed = await data_of(await api.patch(f"/v1/users/{user.id}", json={"status": "active"},
                                            headers=admin.headers))
    assert changed["status"] == "active"
    for body in ({"role": "owner"}, {"status": "deleted"}, {"role": None}, {"email_verified": "yes"}):
        resp = await api.patch(f"/v1/users/{user.id}", json=body, headers=admin.headers)
        assert await error_of(resp) == (422, "VALIDATION_ERROR"), body


async def test_admin_cannot_change_own_role_or_status(api: TestClient) -> None:
    admin = await make_user(api.app, role="admin")
    for body in ({"role": "viewer"}, {"status": "banned"}):
        resp = await api.patch(f"/v1/users/{admin.id}", json=body, headers=admin.headers)
        assert await error_of(resp) == (403, "PERMISSION_DENIED")
    me = await data_of(await api.patch("/v1/me", json={"bio": "boss"}, headers=admin.headers))
    assert me["role"] == "admin" and me["bio"] == "boss"


async def test_admin_can_make_an_admin(api: TestClient) -> None:
    admin = await make_user(api.app, role="admin")
    user = await make_user(api.app)
    await data_of(await api.patch(f"/v1/users/{user.id}", json={"role": "admin"}, headers=admin.headers))
    resp = await api.post("/v1/auth/login", json={"email": user.email, "password": user.password})
    assert (await data_of(resp))["user"]["role"] == "admin"


# --- preferences --------------------------------------------------------------------------

async def test_preferences_merge_and_delete(api: TestClient) -> None:
    user = await make_user(api.app)
    path = f"/v1/users/{user.id}/preferences"
    assert await data_of(await api.get(path, headers=user.headers)) == {}
    prefs = await data_of(await api.patch(path, json={"theme": "dark", "notify": {"tips": True, "chat": False}},
                                          headers=user.headers))
    assert prefs == {"theme": "dark", "notify": {"tips": True, "chat": False}}
    prefs = await data_of(await api.patch(path, json={"theme": None, "notify": {"chat": True}, "volume": 0.5},
                                          headers=user.headers))
    assert prefs == {"notify": {"tips": True, "chat": True}, "volume": 0.5}
    assert await data_of(await api.get(path, headers=user.headers)) == prefs


async def test_preferences_are_private(api: TestClient) -> None:
    owner = await make_user(api.app)
    other = await make_user(api.app, role="performer")
    admin = await make_user(api.app, role="admin")
    path = f"/v1/users/{owner.id}/preferences"
    await data_of(await api.patch(path, json={"secret": 1}, headers=owner.headers))
    assert await error_of(await api.get(path, headers=other.headers)) == (403, "PERMISSION_DENIED")
    assert await error_of(await api.patch(path, json={"x": 1}, headers=other.headers)) == (403, "PERMISSION_DENIED")
    assert await data_of(await api.get(path, headers=admin.headers)) == {"secret": 1}
    assert await data_of(await api.patch(path, json={"by_admin": True}, headers=admin.headers)) == \
        {"secret": 1, "by_admin": True}
    assert await error_of(await api.get(path)) == (401, "AUTHENTICATION_REQUIRED")


async def test_preferences_bad_input(api: TestClient) -> None:
    user = await make_user(api.app)
    path = f"/v1/users/{user.id}/preferences"
    for raw in (b"[1, 2]", b'"text"', b"42", b"null"):
        resp = await api.patch(path, data=raw, headers={**user.headers, "Content-Type": "application/json"})
        assert await error_of(resp) == (422, "VALIDATION_ERROR"), raw
    resp = await api.patch(path, data=b"{not json", headers={**user.headers, "Content-Type": "application/json"})
    assert await error_of(resp) == (400, "MALFORMED_JSON")
    # preferences_max_bytes is 1024 here: one big value, or many small merges, hit the bound.
    resp = await api.patch(path, json={"blob": "x" * 2000}, headers=user.headers)
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    for i in range(30):
        resp = await api.patch(path, json={f"key{i}": "v" * 30}, headers=user.headers)
        if resp.status != 200:
            break
    assert await error_of(resp) == (422, "VALIDATION_ERROR")
    stored = await data_of(await api.get(path, headers=user.headers))
    assert 0 < len(stored) < 30


async def test_concurrent_preference_patches_all_land(api: TestClient) -> None:
    user = await make_user(api.app)
    path = f"/v1/users/{user.id}/preferences"
    await asyncio.gather(*(api.patch(path, json={f"k{i}": i}, headers=user.headers) for i in range(8)))
    assert await data_of(await api.get(path, headers=user.headers)) == {f"k{i}": i for i in range(8)}


def test_merge_patch_follows_rfc7386() -> None:
    # Examples from RFC 7386 section 3.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
