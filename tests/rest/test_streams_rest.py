"""Streams REST: lifecycle, listing, visibility, join rights, viewers, room staff and bans."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.kernel import keys
from signaling.features.rooms import access as rooms
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import new_stream, room_of
from tests.support.socket_support import connect


@pytest.fixture
async def people(client: TestClient) -> dict[str, TestUser]:
    app = client.app
    return {
        "host": await make_user(app, role="performer", display_name="Host One"),
        "performer2": await make_user(app, role="performer"),
        "viewer": await make_user(app, role="viewer"),
        "viewer2": await make_user(app, role="viewer"),
        "admin": await make_user(app, role="admin"),
    }


async def _json(resp: Any, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_create_stream_creates_its_room(client: TestClient, people: dict[str, TestUser]) -> None:
    body = {"title": "  Jazz night ", "description": "standards", "category": " Music ",
            "tags": ["Jazz", "jazz", "piano"], "access": "pass"}
    resp = await client.post("/v1/streams", json=body, headers=people["host"].headers)
    stream = (await _json(resp, 201))["data"]
    assert stream["title"] == "Jazz night" and stream["category"] == "music"
    assert stream["tags"] == ["jazz", "piano"]
    assert stream["status"] == "created" and stream["viewer_count"] == 0 and stream["total_tokens_received"] == 0
    assert stream["host_id"] == str(people["host"].id) and stream["host_name"] == "Host One"
    assert stream["room"] == f"stream:{stream['id']}" and stream["started_at"] is None
    row = await client.app[keys.DB].fetchrow("SELECT * FROM rooms WHERE name = $1", stream["room"])
    assert row["host_id"] == people["host"].id and row["access"] == "pass" and row["kind"] == "stream"


BAD_CREATE_BODIES: list[dict[str, Any]] = [
    {},
    {"title": "   "},
    {"title": 5},
    {"title": "x" * 201},
    {"title": "ok", "tags": ["a"] * 21},
    {"title": "ok", "tags": [""]},
    {"title": "ok", "tags": ["x" * 33]},
    {"title": "ok", "access": "friends"},
    {"title": "ok", "status": "live"},
    {"title": "ok", "host_id": str(uuid.UUID(int=1))},
]


async def test_create_stream_validation(client: TestClient, people: dict[str, TestUser]) -> None:
    for body in BAD_CREATE_BODIES:
        resp = await client.post("/v1/streams", json=body, headers=people["host"].headers)
        assert (await _json(resp, 422))["error"]["code"] == "VALIDATION_ERROR", body
    assert await client.app[keys.DB].fetchval("SELECT count(*) FROM streams") == 0


async def test_only_performers_and_admins_create(client: TestClient, people: dict[str, TestUser]) -> None:
    resp = await client.post("/v1/streams", json={"title": "t"}, headers=people["viewer"].headers)
    assert (await _json(resp, 403))["error"]["code"] == "PERMISSION_DENIED"
    resp = await client.post("/v1/streams", json={"title": "t"})
    assert (await _json(resp, 401))["error"]["code"] == "AUTHENTICATION_REQUIRED"
    resp = await client.post("/v1/streams", json={"title": "t"}, headers={"Authorization": "Bearer forged"})
    assert resp.status == 401
    await _json(await client.post("/v1/streams", json={"title": "t"}, headers=people["admin"].headers), 201)


async def test_unknown_and_malformed_ids_are_404(client: TestClient, people: dict[str, TestUser]) -> None:
    for sid in (str(uuid.uuid4()), "not-a-uuid", "1", "%00"):
        for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/start"), ("POST", "/end"),
                             ("POST", "/join"), ("GET", "/viewers")):
            kw: dict[str, Any] = {"json": {"title": "x"}} if method == "PATCH" else {}
            resp = await client.request(method, f"/v1/streams/{sid}{path}", headers=people["host"].headers, **kw)
            assert (await _json(resp, 404))["error"]["code"] == "NOT_FOUND", (method, path, sid)


async def test_lifecycle_and_who_may_drive_it(client: TestClient, people: dict[str, TestUser]) -> None:
    host, other, admin = people["host"], people["performer2"], people["admin"]
    stream = await new_stream(client, host)
    sid = stream["id"]
    # another performer may neither start nor end my stream; an admin may end but not start it
    for who in (other, people["viewer"], admin):
        resp = await client.post(f"/v1/streams/{sid}/start", headers=who.headers)
        assert (await _json(resp, 403))["error"]["code"] == "PERMISSION_DENIED"
    assert (await client.post(f"/v1/streams/{sid}/end", headers=other.headers)).status == 403
    assert (await client.delete(f"/v1/streams/{sid}", headers=other.headers)).status == 403
    assert (await client.post(f"/v1/streams/{sid}/start")).status == 401
    live = (await _json(await client.post(f"/v1/streams/{sid}/start", headers=host.headers), 200))["data"]
    assert live["status"] == "live" and live["started_at"]
    again = await client.post(f"/v1/streams/{sid}/start", headers=host.headers)
    assert (await _json(again, 409))["error"]["details"]["status"] == "live"
    ended = (await _json(await client.post(f"/v1/streams/{sid}/end", headers=admin.headers), 200))["data"]
    assert ended["status"] == "ended" and ended["ended_at"] and ended["viewer_count"] == 0
    assert (await client.post(f"/v1/streams/{sid}/end", headers=host.headers)).status == 409
    assert (await client.post(f"/v1/streams/{sid}/start", headers=host.headers)).status == 409
    # DELETE of an ended stream is a no-op that answers the stream
    deleted = (await _json(await client.delete(f"/v1/streams/{sid}", headers=host.headers), 200))["data"]
    assert deleted["ended_at"] == ended["ended_at"]


async def test_delete_ends_a_created_stream(client: TestClient, people: dict[str, TestUser]) -> None:
    stream = await new_stream(client, people["host"])
    data = (await _json(await client.delete(f"/v1/streams/{stream['id']}", headers=people["host"].headers),
                        200))["data"]
    assert data["status"] == "ended" and data["started_at"] is None


async def test_one_live_stream_per_host_even_when_started_concurrently(client: TestClient,
                                                                      people: dict[str, TestUser]) -> None:
    host = people["host"]
    ids = [(await new_stream(client, host))["id"] for _ in range(4)]
    resps = await asyncio.gather(*(client.post(f"/v1/streams/{sid}/start", headers=host.headers) for sid in ids))
    assert sorted(r.status for r in resps) == [200, 409, 409, 409]
    assert await client.app[keys.DB].fetchval("SELECT count(*) FROM streams WHERE status = 'live'") == 1


async def test_open_streams_cap_holds_under_concurrency(aiohttp_client, make_app, make_settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app(make_settings(streams_open_max_per_host=2)))
    host = await make_user(client.app, role="performer")
    resps = await asyncio.gather(*(client.post("/v1/streams", json={"title": f"s{i}"}, headers=host.headers)
                                   for i in range(6)))
    assert sorted(r.status for r in resps) == [201, 201, 409, 409, 409, 409]
    # ending one frees a place
    first = (await client.get("/v1/streams", params={"status": "all"}, headers=host.headers))
    sid = (await first.json())["data"][0]["id"]
    await client.delete(f"/v1/streams/{sid}", headers=host.headers)
    assert (await client.post("/v1/streams", json={"title": "again"}, headers=host.headers)).status == 201


async def test_patch(client: TestClient, people: dict[str, TestUser]) -> None:
    host = people["host"]
    stream = await new_stream(client, host, category="music", tags=["a"])
    url = f"/v1/streams/{stream['id']}"
    resp = await client.patch(url, json={"title": "New", "category": None, "access": "private"}, headers=host.headers)
    data = (await _json(resp, 200))["data"]
    assert (data["title"], data["category"], data["access"], data["tags"]) == ("New", None, "private", ["a"])
    assert await client.app[keys.DB].fetchval("SELECT access FROM rooms WHERE name = $1", data["room"]) == "private"
    for bad in ({"title": None}, {"title": " "}, {"tags": None}, {"access": None}, {"status": "live"},
                {"total_tokens_received": 5}):
        assert (await client.patch(url, json=bad, headers=host.headers)).status == 422, bad
    # another performer: the stream is private now, so for them it does not exist
    assert (await client.patch(url, json={"title": "mine"}, headers=people["performer2"].headers)).status == 404
    await client.patch(url, json={"access": "public"}, headers=host.headers)
    assert (await client.patch(url, json={"title": "mine"}, headers=people["performer2"].headers)).status == 403
    admin = await client.patch(url, json={"description": "by admin"}, headers=people["admin"].headers)
    assert (await _json(admin, 200))["data"]["description"] == "by admin"
    await client.delete(url, headers=host.headers)
    resp = await client.patch(url, json={"title": "late"}, headers=host.headers)
    assert (await _json(resp, 409))["error"]["code"] == "CONFLICT"


async def test_listing_filters_sorts_and_paginates(client: TestClient, people: dict[str, TestUser]) -> None:
    host, host2 = people["host"], people["performer2"]
    a = await new_stream(client, host, title="B show", category="music")
    b = await new_stream(client, host2, title="a show", category="games")
    c = await new_stream(client, host, title="C show", category="music")
    hidden = await new_stream(client, host2, title="secret", access="private")
    await client.post(f"/v1/streams/{a['id']}/start", headers=host.headers)
    await client.post(f"/v1/streams/{b['id']}/start", headers=host2.headers)
    await client.post(f"/v1/streams/{hidden['id']}/end", headers=host2.headers)

    async def ids(params: dict[str, str], who: TestUser | None = None) -> list[str]:
        resp = await client.get("/v1/streams", params=params, headers=who.headers if who else {})
        return [s["id"] for s in (await _json(resp, 200))["data"]]

    assert set(await ids({})) == {a["id"], b["id"]}  # live by default, public without a token
    assert await ids({"status": "live", "category": "MUSIC"}) == [a["id"]]
    assert await ids({"status": "created"}) == [c["id"]]
    assert await ids({"status": "all", "sort": "title"}) == [b["id"], a["id"], c["id"]]
    assert hidden["id"] not in await ids({"status": "all"}, people["viewer"])
    assert hidden["id"] in await ids({"status": "all"}, host2)
    assert hidden["id"] in await ids({"status": "all"}, people["admin"])
    assert await ids({"status": "all", "host_id": str(host.id), "sort": "created_at"}) == [a["id"], c["id"]]
    resp = await client.get("/v1/streams", params={"status": "all", "per_page": "2", "page": "2", "sort": "title"})
    body = await _json(resp, 200)
    assert [s["id"] for s in body["data"]] == [c["id"]]
    assert body["meta"] == {"page": 2, "per_page": 2, "total": 3, "pages": 2}
    past_end = await _json(await client.get("/v1/streams", params={"status": "all", "page": "9"}), 200)
    assert past_end["data"] == [] and past_end["meta"]["total"] == 3


async def test_listing_refuses_bad_query(client: TestClient) -> None:
    for params in ({"per_page": "101"}, {"per_page": "0"}, {"page": "0"}, {"page": "-1"}, {"page": "abc"},
                   {"status": "paused"}, {"sort": "viewer_count; drop"}, {"host_id": "nope"}, {"bogus": "1"}):
        resp = await client.get("/v1/streams", params=params)
        assert (await _json(resp, 422))["error"]["code"] == "VALIDATION_ERROR", params


async def test_private_stream_is_hidden_from_outsiders(client: TestClient, people: dict[str, TestUser]) -> None:
    stream = await new_stream(client, people["host"], access="private")
    url = f"/v1/streams/{stream['id']}"
    assert (await client.get(url)).status == 404
    assert (await client.get(url, headers=people["viewer"].headers)).status == 404
    assert (await client.post(url + "/join", headers=people["viewer"].headers)).status == 404
    await rooms.grant(client.app[keys.DB], room_of(stream), people["viewer"].id, "invite")
    assert (await client.get(url, headers=people["viewer"].headers)).status == 200
    assert (await client.post(url + "/join", headers=people["viewer"].headers)).status == 200
    assert (await client.get(url, headers=people["admin"].headers)).status == 200


async def test_join_tells_room_socket_and_rights(client: TestClient, people: dict[str, TestUser]) -> None:
    stream = await new_stream(client, people["host"])
    url = f"/v1/streams/{stream['id']}/join"
    guest = (await _json(await client.post(url), 200))["data"]
    assert guest["room"] == room_of(stream) and guest["ws_url"] == "/ws"
    assert (guest["role"], guest["can_chat"], guest["can_tip"], guest["can_moderate"]) == ("guest", False, False, False)
    viewer = (await _json(await client.post(url, headers=people["viewer"].headers), 200))["data"]
    assert (viewer["role"], viewer["can_chat"], viewer["can_tip"]) == ("viewer", True, True)
    host = (await _json(await client.post(url, headers=people["host"].headers), 200))["data"]
    assert (host["role"], host["can_tip"], host["can_moderate"]) == ("performer", False, True)
    assert host["stream"]["id"] == stream["id"]
    ticketed = await new_stream(client, people["host"], access="ticket")
    resp = await client.post(f"/v1/streams/{ticketed['id']}/join", headers=people["viewer"].headers)
    assert (await _json(resp, 403))["error"]["code"] == "PERMISSION_DENIED"
    await rooms.grant(client.app[keys.DB], room_of(ticketed), people["viewer"].id, "ticket")
    resp = await client.post(f"/v1/streams/{ticketed['id']}/join", headers=people["viewer"].headers)
    await _json(resp, 200)


async def test_viewers_count_for_all_list_for_staff(client: TestClient, people: dict[str, TestUser]) -> None:
    stream = await new_stream(client, people["host"])
    url = f"/v1/streams/{stream['id']}/viewers"
    public = (await _json(await client.get(url), 200))["data"]
    assert public == {"stream_id": stream["id"], "viewer_count": 0, "viewers": None}
    assert (await _json(await client.get(url, headers=people["viewer"].headers), 200))["data"]["viewers"] is None
    staff = await _json(await client.get(url, headers=people["host"].headers), 200)
    assert staff["data"]["viewers"] == [] and staff["meta"]["total"] == 0


async def test_moderators_and_bans_over_rest(client: TestClient, people: dict[str, TestUser]) -> None:
    host, viewer, viewer2 = people["host"], people["viewer"], people["viewer2"]
    stream = await new_stream(client, host)
    base = f"/v1/streams/{stream['id']}"
    # a viewer can neither appoint nor ban
    assert (await client.post(base + "/moderators", json={"user_id": str(viewer.id)},
                              headers=viewer2.headers)).status == 403
    assert (await client.post(base + "/bans", json={"user_id": str(viewer.id)}, headers=viewer2.headers)).status == 403
    resp = await client.post(base + "/moderators", json={"user_id": str(viewer2.id)}, headers=host.headers)
    assert (await _json(resp, 201))["data"] == {"user_id": str(viewer2.id), "role": "moderator"}
    # the new moderator bans a viewer, who can then not join
    resp = await client.post(base + "/bans", json={"user_id": str(viewer.id), "reason": "abuse", "duration_s": 600},
                             headers=viewer2.headers)
    ban = (await _json(resp, 201))["data"]
    assert ban["reason"] == "abuse" and ban["until"]
    resp = await client.post(base + "/join", headers=viewer.headers)
    assert (await _json(resp, 403))["error"]["code"] == "BANNED"
    listed = await _json(await client.get(base + "/bans", headers=host.headers), 200)
    assert [b["user_id"] for b in listed["data"]] == [str(viewer.id)] and listed["meta"]["total"] == 1
    assert (await client.get(base + "/bans", headers=viewer.headers)).status == 403
    # refusals: the host, oneself, an unknown user, bad bodies
    for body, status in [({"user_id": str(host.id)}, 403), ({"user_id": str(viewer2.id)}, 403),
                         ({"user_id": str(uuid.uuid4())}, 404), ({"user_id": "x"}, 422),
                         ({"user_id": str(viewer.id), "duration_s": 0}, 422),
                         ({"user_id": str(viewer.id), "duration_s": "60"}, 422)]:
        resp = await client.post(base + "/bans", json=body, headers=viewer2.headers)
        assert resp.status == status, (body, await resp.text())
    # a moderator may not dismiss moderators; the host may
    assert (await client.delete(f"{base}/moderators/{viewer2.id}", headers=viewer2.headers)).status == 403
    assert (await client.delete(f"{base}/bans/{viewer.id}", headers=viewer2.headers)).status == 200
    assert (await client.delete(f"{base}/bans/{viewer.id}", headers=viewer2.headers)).status == 404
    await _json(await client.post(base + "/join", headers=viewer.headers), 200)
    assert (await client.delete(f"{base}/moderators/{viewer2.id}", headers=host.headers)).status == 200
    assert (await client.delete(f"{base}/moderators/{viewer2.id}", headers=host.headers)).status == 404
    assert (await client.delete(f"{base}/bans/{viewer.id}", headers=viewer2.headers)).status == 403


async def test_stream_management_is_rate_limited(aiohttp_client, make_app, make_settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app(make_settings(rate_streaming_per_min=3)))
    host = await make_user(client.app, role="performer")
    statuses = [(await client.post("/v1/streams", json={"title": "t"}, headers=host.headers)).status
                for _ in range(4)]
    assert statuses == [201, 201, 201, 429]


async def test_lifecycle_events_and_viewers_over_the_socket(client: TestClient, people: dict[str, TestUser]) -> None:
    host, viewer, viewer2 = people["host"], people["viewer"], people["viewer2"]
    stream = await new_stream(client, host)
    base = f"/v1/streams/{stream['id']}"
    join = (await _json(await client.post(base + "/join", headers=viewer.headers), 200))["data"]
    socks = [await connect(client, token=viewer.token), await connect(client, token=viewer.token),
             await connect(client, token=viewer2.token), await connect(client, guest=True)]
    for sock in socks:
        await sock.ok("join", join["room"])
    live = (await _json(await client.post(base + "/start", headers=host.headers), 200))["data"]
    assert live["viewer_count"] == 3  # two tabs of one viewer count once; the guest counts
    ev = await socks[3].event("stream.started")
    assert ev["data"] == {"stream_id": stream["id"], "title": "Evening set", "started_at": live["started_at"]}
    listed = (await _json(await client.get("/v1/streams"), 200))["data"]
    assert [(s["id"], s["viewer_count"]) for s in listed] == [(stream["id"], 3)]
    public = (await _json(await client.get(base + "/viewers"), 200))["data"]
    assert public["viewer_count"] == 3 and public["viewers"] is None
    staff = await _json(await client.get(base + "/viewers", params={"per_page": "1"}, headers=host.headers), 200)
    assert staff["meta"]["total"] == 2 and len(staff["data"]["viewers"]) == 1
    names = {v["user_id"] for p in ("1", "2")
             for v in (await (await client.get(base + "/viewers", params={"per_page": "1", "page": p},
                                                headers=host.headers)).json())["data"]["viewers"]}
    assert names == {str(viewer.id), str(viewer2.id)}
    patched = await client.patch(base, json={"title": "Late set"}, headers=host.headers)
    await _json(patched, 200)
    assert (await socks[0].event("stream.updated"))["data"]["title"] == "Late set"
    ended = (await _json(await client.post(base + "/end", headers=host.headers), 200))["data"]
    ev = await socks[2].event("stream.ended")
    assert ev["data"] == {"stream_id": stream["id"], "ended_at": ended["ended_at"], "total_tokens_received": 0}


async def test_a_keyed_create_run_again_after_a_crash_makes_one_stream(aiohttp_client: Any, make_app: Any,
                                                                       make_settings: Any) -> None:
    """A keyed create whose first run committed but stored no answer (the process died, or the answer
    was a 5xx) runs again on the retry: it finds the stream it made (its id derives from the key)
    instead of making a second one, also when the host is at the open-stream limit."""
    client = await aiohttp_client(make_app(make_settings(streams_open_max_per_host=1)))
    host = await make_user(client.app, role="performer")
    headers = {**host.headers, "Idempotency-Key": "create-1"}
    first = (await _json(await client.post("/v1/streams", json={"title": "Once"}, headers=headers), 201))["data"]
    db = client.app[keys.DB]
    await db.execute("DELETE FROM idempotency_keys")  # no stored answer: the retry runs the handler again
    again = await client.post("/v1/streams", json={"title": "Once"}, headers=headers)
    assert again.headers.get("Idempotent-Replayed") is None, "the handler ran again"
    assert (await _json(again, 201))["data"]["id"] == first["id"]
    assert await db.fetchval("SELECT count(*) FROM streams WHERE host_id = $1", host.id) == 1
    assert await db.fetchval("SELECT count(*) FROM rooms WHERE host_id = $1", host.id) == 1
    # Another key is another stream (refused here: the host is at the limit).
    other = await client.post("/v1/streams", json={"title": "Once"}, headers={**host.headers, "Idempotency-Key": "2"})
    assert (await _json(other, 409))["error"]["code"] == "CONFLICT"
