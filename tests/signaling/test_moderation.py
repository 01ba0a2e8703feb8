"""Room access (authorize_join for every access rule and role), moderation ranks, bans, mutes,
reports and the chat retention purge; real PostgreSQL throughout."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient

from server.kernel import keys
from server.kernel.errors import ApiError
from signaling.features.chat import retention
from signaling.features.rooms import access as rooms
from signaling.features.rooms import moderation
from tests.support.factories import TestUser, make_user
from tests.support.rooms_support import call_op, identity, new_stream, room_of


@pytest.fixture
async def cast(client: TestClient) -> dict[str, TestUser]:
    app = client.app
    return {
        "host": await make_user(app, role="performer", display_name="Host"),
        "other_performer": await make_user(app, role="performer"),
        "moderator": await make_user(app, role="viewer", display_name="Mod"),
        "admin": await make_user(app, role="admin"),
        "viewer": await make_user(app, role="viewer", display_name="Viewer"),
        "viewer2": await make_user(app, role="viewer"),
    }


async def _show(client: TestClient, host: TestUser, access: rooms.Access) -> str:
    return await rooms.create_show_room(client.app[keys.DB], host.id, uuid.uuid4(), access)


async def _code(coro: object) -> str:
    try:
        await coro  # type: ignore[misc]
    except ApiError as exc:
        return exc.code
    return "OK"


# --- authorize_join --------------------------------------------------------------------------

ACCESS_MATRIX = {
    # who: (public, ticket, pass, private)
    "guest": ("OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "viewer": ("OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "other_performer": ("OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "ticket_holder": ("OK", "OK", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "pass_holder": ("OK", "PERMISSION_DENIED", "OK", "PERMISSION_DENIED"),
    "invited": ("OK", "OK", "OK", "OK"),
    "expired_ticket": ("OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "moderator": ("OK", "OK", "OK", "OK"),
    "host": ("OK", "OK", "OK", "OK"),
    "admin": ("OK", "OK", "OK", "OK"),
}


async def test_authorize_join_for_every_access_rule_and_role(client: TestClient,
                                                             cast: dict[str, TestUser]) -> None:
    app, db = client.app, client.app[keys.DB]
    extra = {name: await make_user(app) for name in ("ticket_holder", "pass_holder", "invited", "expired_ticket")}
    people = {**cast, **extra}
    past = datetime.now(UTC) - timedelta(minutes=1)
    for column, access in enumerate(rooms.ACCESS):
        room = await _show(client, cast["host"], access)
        await rooms.grant(db, room, extra["ticket_holder"].id, "ticket",
                          datetime.now(UTC) + timedelta(hours=1))
        await rooms.grant(db, room, extra["pass_holder"].id, "pass")
        await rooms.grant(db, room, extra["invited"].id, "invite")
        await rooms.grant(db, room, extra["expired_ticket"].id, "ticket", past)
        await db.execute("INSERT INTO room_moderators (room, user_id) VALUES ($1, $2)", room, cast["moderator"].id)
        for who, expected in ACCESS_MATRIX.items():
            ident = None if who == "guest" else identity(people[who])
            got = await _code(rooms.authorize_join(app, ident, room))
            assert got == expected[column], (who, access, got)


async def test_join_grant_rights_by_role(client: TestClient, cast: dict[str, TestUser]) -> None:
    app = client.app
    room = await _show(client, cast["host"], "public")
    await app[keys.DB].execute("INSERT INTO room_moderators (room, user_id) VALUES ($1, $2)",
                                  room, cast["moderator"].id)
    host = await rooms.authorize_join(app, identity(cast["host"]), room)
    assert (host.role, host.can_chat, host.can_tip, host.can_moderate) == ("performer", True, False, True)
    assert host.kind == "show" and str(host.room_id) == room.split(":")[1] and host.announce
    mod = await rooms.authorize_join(app, identity(cast["moderator"]), room)
    assert (mod.role, mod.can_chat, mod.can_tip, mod.can_moderate) == ("moderator", True, True, True)
    admin = await rooms.authorize_join(app, identity(cast["admin"]), room)
    assert (admin.role, admin.can_moderate) == ("moderator", True)
    viewer = await rooms.authorize_join(app, identity(cast["viewer"]), room)
    assert (viewer.role, viewer.can_chat, viewer.can_tip, viewer.can_moderate) == ("viewer", True, True, False)
    assert not viewer.announce
    guest = await rooms.authorize_join(app, None, room)
    assert (guest.role, guest.can_chat, guest.can_tip, guest.can_moderate) == ("guest", False, False, False)


async def test_malformed_room_names_are_not_found(client: TestClient) -> None:
    one = str(uuid.UUID(int=1))
    for name in ("", "stream", "stream:", "stream:not-a-uuid", f"lobby:{one}", f"STREAM:{one}", f"stream:{one} ",
                 f"stream:{one.upper()}", "stream:%27;drop table rooms", f"stream:{one}:x"):
        assert await _code(rooms.authorize_join(client.app, None, name)) == "NOT_FOUND", name


async def test_unknown_room_is_not_found(client: TestClient, cast: dict[str, TestUser]) -> None:
    room = f"show:{uuid.uuid4()}"
    assert await _code(rooms.authorize_join(client.app, identity(cast["viewer"]), room)) == "NOT_FOUND"


async def test_show_room_creation_is_idempotent_for_its_host_only(client: TestClient,
                                                                  cast: dict[str, TestUser]) -> None:
    db = client.app[keys.DB]
    show_id = uuid.uuid4()
    name = await rooms.create_show_room(db, cast["host"].id, show_id)
    assert name == f"show:{show_id}"
    assert await rooms.create_show_room(db, cast["host"].id, show_id) == name
    assert await _code(rooms.create_show_room(db, cast["other_performer"].id, show_id)) == "CONFLICT"
    assert await db.fetchval("SELECT access FROM rooms WHERE name = $1", name) == "ticket"


# --- bans, mutes, kicks and ranks ----------------------------------------------------------------

async def test_banned_user_rejoining_is_refused_until_unbanned(client: TestClient, cast: dict[str, TestUser]) -> None:
    app = client.app
    stream = await new_stream(client, cast["host"])
    room = room_of(stream)
    out = await call_op(app, "room.ban", cast["host"], room, {"user_id": str(cast["viewer"].id), "reason": "spam"})
    assert out["user_id"] == str(cast["viewer"].id) and out["until"] is None
    assert await _code(rooms.authorize_join(app, identity(cast["viewer"]), room)) == "BANNED"
    # durable: it is a row, not node memory
    assert await app[keys.DB].fetchval("SELECT reason FROM room_bans WHERE room = $1", room) == "spam"
    await call_op(app, "room.unban", cast["host"], room, {"user_id": str(cast["viewer"].id)})
    assert await _code(rooms.authorize_join(app, identity(cast["viewer"]), room)) == "OK"
    assert await _code(call_op(app, "room.unban", cast["host"], room,
                               {"user_id": str(cast["viewer"].id)})) == "NOT_FOUND"


async def test_timed_ban_lapses(client: TestClient, cast: dict[str, TestUser]) -> None:
    app = client.app
    room = room_of(await new_stream(client, cast["host"]))
    out = await call_op(app, "room.ban", cast["host"], room, {"user_id": str(cast["viewer"].id), "duration_s": 60})
    assert out["until"] is not None
    assert await _code(rooms.authorize_join(app, identity(cast["viewer"]), room)) == "BANNED"
    await app[keys.DB].execute("UPDATE room_bans SET until = now() - interval '1 second'")
    assert await _code(rooms.authorize_join(app, identity(cast["viewer"]), room)) == "OK"


async def test_ban_duration_is_bounded(client: TestClient, cast: dict[str, TestUser]) -> None:
    app = client.app
    room = room_of(await new_stream(client, cast["host"]))
    too_long = app[keys.SETTINGS].room_ban_max_s + 1
    assert await _code(call_op(app, "room.ban", cast["host"], room,
                               {"user_id": str(cast["viewer"].id), "duration_s": too_long})) == "VALIDATION_ERROR"


async def test_rank_rules(client: TestClient, cast: dict[str, TestUser]) -> None:
    app = client.app
    room = room_of(await new_stream(client, cast["host"]))
    await moderation.add_moderator(app, identity(cast["host"]), room, cast["moderator"].id)
    mod_id, viewer_id, host_id = (str(cast[n].id) for n in ("moderator", "viewer", "host"))
    # a viewer moderates nobody
    assert await _code(call_op(app, "room.kick", cast["viewer2"], room, {"user_id": viewer_id})) == "PERMISSION_DENIED"
    # a global performer has no rights in someone else's room
    assert await _code(call_op(app, "room.mute", cast["other_performer"], room,
                               {"user_id": viewer_id, "duration_s": 30})) == "PERMISSION_DENIED"
    # the host is untouchable in its room, even by an admin
    for actor in ("moderator", "admin"):
        assert await _code(call_op(app, "room.ban", cast[actor], room, {"user_id": host_id})) == "PERMISSION_DENIED"
    # a moderator cannot act on a moderator or an admin; nobody acts on themselves
    mod2 = await make_user(app)
    await moderation.add_moderator(app, identity(cast["host"]), room, mod2.id)
    assert await _code(call_op(app, "room.kick", cast["moderator"], room, {"user_id": str(mod2.id)})) \
        == "PERMISSION_DENIED"
    assert await _code(call_op(app, "room.kick", cast["moderator"], room, {"user_id": str(cast["admin"].id)})) \
        == "PERMISSION_DENIED"
    assert await _code(call_op(app, "room.kick", cast["moderator"], room, {"user_id": mod_id})) == "PERMISSION_DENIED"
    # only the host (or an admin) appoints moderators
    assert await _code(moderation.add_moderator(app, identity(cast["moderator"]), room, cast["viewer"].id)) \
        == "PERMISSION_DENIED"
    # unknown target
    assert await _code(call_op(app, "room.kick", cast["host"], room, {"user_id": str(uuid.uuid4())})) == "NOT_FOUND"
    # what is allowed: moderator kicks a viewer, host bans a moderator (who then loses the role)
    assert (await call_op(app, "room.kick", cast["moderator"], room, {"user_id": viewer_id}))["user_id"] == viewer_id
    await call_op(app, "room.ban", cast["host"], room, {"user_id": mod_id})
    assert await app[keys.DB].fetchval("SELECT count(*) FROM room_moderators WHERE user_id = $1",
                                          cast["moderator"].id) == 0


async def test_moderator_cap_holds_under_concurrency(client: TestClient, make_settings, make_app,  # type: ignore[no-untyped-def]
                                                     aiohttp_client) -> None:
    app_client = await aiohttp_client(make_app(make_settings(room_moderators_max=3)))
    app = app_client.app
    host = await make_user(app, role="performer")
    room = room_of(await new_stream(app_client, host))
    users = [await make_user(app) for _ in range(8)]
    results = await asyncio.gather(*(_code(moderation.add_moderator(app, identity(host), room, u.id)) for u in users))
    assert sorted(results) == ["CONFLICT"] * 5 + ["OK"] * 3
    assert await app[keys.DB].fetchval("SELECT count(*) FROM room_moderators WHERE room = $1", room) == 3


@pytest.mark.parametrize("data", [
    {"user_id": "not-a-uuid", "duration_s": 10},
    {"user_id": str(uuid.UUID(int=5)), "duration_s": 0},
    {"user_id": str(uuid.UUID(int=5)), "duration_s": "10"},
    {"user_id": str(uuid.UUID(int=5))},
    {"user_id": str(uuid.UUID(int=5)), "duration_s": 10, "extra": 1},
])
def test_mute_schema_refuses_bad_data(data: dict[str, object]) -> None:
    from pydantic import ValidationError

    from signaling.features.rooms.ops import MuteData

    with pytest.raises(ValidationError):
        MuteData.model_validate(data)


# --- reports and flags -------------------------------------------------------------------------

async def test_reports_and_flags(client: TestClient, cast: dict[str, TestUser]) -> None:
    app = client.app
    stream = await new_stream(client, cast["host"])
    room = room_of(stream)
    sent = await call_op(app, "chat.send", cast["viewer"], room, {"text": "buy followers at example.test"})
    body = {"target_type": "chat_message", "target_id": sent["id"], "reason": "spam", "details": " bot "}
    resp = await client.post("/v1/moderation/report", json=body, headers=cast["viewer2"].headers)
    assert resp.status == 201, await resp.text()
    report = (await resp.json())["data"]
    assert report["snapshot"]["text"] == "buy followers at example.test" and report["details"] == "bot"
    assert report["snapshot"]["author_id"] == str(cast["viewer"].id) and report["status"] == "open"
    again = await client.post("/v1/moderation/report", json=body, headers=cast["viewer2"].headers)
    assert again.status == 409
    # a second reporter on the same message, and a report on the stream
    assert (await client.post("/v1/moderation/report", json=body, headers=cast["host"].headers)).status == 201
    s_body = {"target_type": "stream", "target_id": stream["id"], "reason": "other"}
    assert (await client.post("/v1/moderation/report", json=s_body, headers=cast["viewer"].headers)).status == 201
    # refusals
    for bad, status in [({**body, "target_id": str(uuid.uuid4())}, 404),
                        ({**body, "reason": "meh"}, 422),
                        ({**body, "target_type": "planet"}, 422),
                        ({"target_type": "user", "target_id": str(cast["viewer2"].id), "reason": "spam"}, 400),
                        ({**body, "details": "x" * 2001}, 422)]:
        resp = await client.post("/v1/moderation/report", json=bad, headers=cast["viewer2"].headers)
        assert resp.status == status, (bad, await resp.text())
    assert (await client.post("/v1/moderation/report", json=body)).status == 401
    # flags: admins only
    assert (await client.get("/v1/moderation/flags", headers=cast["viewer"].headers)).status == 403
    resp = await client.get("/v1/moderation/flags", params={"target_type": "chat_message"},
                            headers=cast["admin"].headers)
    assert resp.status == 200
    page = await resp.json()
    assert page["meta"]["total"] == 2
    assert all(f["open_reports_on_target"] == 2 for f in page["data"])
    resp = await client.get("/v1/moderation/flags", params={"per_page": "1", "page": "3", "status": "all"},
                            headers=cast["admin"].headers)
    page = await resp.json()
    assert page["data"] and page["meta"] == {"page": 3, "per_page": 1, "total": 3, "pages": 3}
    bad = await client.get("/v1/moderation/flags", params={"per_page": "500"}, headers=cast["admin"].headers)
    assert bad.status == 422


async def test_reports_only_on_what_the_reporter_can_see(client: TestClient, cast: dict[str, TestUser]) -> None:
    """A report answers with a snapshot of its target: on a private stream, or a message in a room
    the reporter may not enter, it is NOT_FOUND, as for a target that does not exist."""
    app = client.app
    db = app[keys.DB]
    host, outsider, invited = cast["host"], cast["viewer2"], cast["viewer"]
    private = await new_stream(client, host, access="private", title="Secret set")
    ticketed = await new_stream(client, host, access="ticket", title="Ticketed set")
    await rooms.grant(db, room_of(private), invited.id, "invite")
    said = await call_op(app, "chat.send", host, room_of(private), {"text": "the address is 1 Hidden Lane"})
    said_ticketed = await call_op(app, "chat.send", host, room_of(ticketed), {"text": "for ticket holders"})
    missing = {"target_type": "chat_message", "target_id": str(uuid.uuid4()), "reason": "spam"}
    unknown = await client.post("/v1/moderation/report", json=missing, headers=outsider.headers)
    assert unknown.status == 404
    hidden = [{"target_type": "stream", "target_id": private["id"], "reason": "other"},
              {"target_type": "chat_message", "target_id": said["id"], "reason": "spam"},
              {"target_type": "chat_message", "target_id": said_ticketed["id"], "reason": "spam"}]
    for body in hidden:
        resp = await client.post("/v1/moderation/report", json=body, headers=outsider.headers)
        text = await resp.text()
        assert resp.status == 404, (body, text)
        assert "Secret" not in text and "Hidden Lane" not in text and str(host.id) not in text
        assert (await resp.json())["error"]["code"] == (await unknown.json())["error"]["code"]
    assert await db.fetchval("SELECT count(*) FROM moderation_reports") == 0
    # A ticketed stream is listed for everyone, so anyone may report it; its chat is for ticket holders.
    resp = await client.post("/v1/moderation/report", json={"target_type": "stream", "target_id": ticketed["id"],
                                                            "reason": "other"}, headers=outsider.headers)
    assert resp.status == 201 and (await resp.json())["data"]["snapshot"]["title"] == "Ticketed set"
    # Whoever may enter the private room may report what is in it, and sees the snapshot.
    for body in hidden[:2]:
        resp = await client.post("/v1/moderation/report", json=body, headers=invited.headers)
        assert resp.status == 201, (body, await resp.text())
    snapshot = (await resp.json())["data"]["snapshot"]
    assert snapshot["text"] == "the address is 1 Hidden Lane" and snapshot["author_id"] == str(host.id)
    # So may room staff and admins (a report by the admin on the ticketed chat).
    resp = await client.post("/v1/moderation/report", json=hidden[2], headers=cast["admin"].headers)
    assert resp.status == 201


# --- retention -------------------------------------------------------------------------------

async def test_retention_purge_deletes_only_old_rows_in_bounded_batches(client: TestClient, make_settings,  # type: ignore[no-untyped-def]
                                                                        cast: dict[str, TestUser]) -> None:
    app = client.app
    db = app[keys.DB]
    room = room_of(await new_stream(client, cast["host"]))
    old = [uuid.uuid4() for _ in range(5)]
    fresh = [uuid.uuid4() for _ in range(3)]
    for mid in old:
        await db.execute("INSERT INTO chat_messages (id, room, author_id, text, created_at) "
                         "VALUES ($1, $2, $3, 'old', now() - interval '31 days')", mid, room, cast["viewer"].id)
    for mid in fresh:
        await db.execute("INSERT INTO chat_messages (id, room, author_id, text, created_at) "
                         "VALUES ($1, $2, $3, 'new', now() - interval '29 days')", mid, room, cast["viewer"].id)
    await db.execute("INSERT INTO room_mutes (room, user_id, until) VALUES ($1, $2, now() - interval '1 s'), "
                     "($1, $3, now() + interval '1 h')", room, cast["viewer"].id, cast["viewer2"].id)
    await db.execute("INSERT INTO room_bans (room, user_id, until) VALUES ($1, $2, now() - interval '1 s'), "
                     "($1, $3, NULL)", room, cast["viewer"].id, cast["viewer2"].id)
    small = make_settings(chat_retention_days=30, chat_purge_batch=2, chat_purge_max_batches=2)
    first = await retention.purge(db, small)
    assert first == {"chat_messages": 4, "room_mutes": 1, "room_bans": 1}
    second = await retention.purge(db, small)
    assert second == {"chat_messages": 1, "room_mutes": 0, "room_bans": 0}
    left = {r["id"] for r in await db.fetch("SELECT id FROM chat_messages")}
    assert left == set(fresh)
    assert await db.fetchval("SELECT user_id FROM room_mutes") == cast["viewer2"].id
    assert await db.fetchval("SELECT user_id FROM room_bans") == cast["viewer2"].id


# --- ranks both ways: nobody acts on an equal or higher rank, or undoes what one did ------------

async def test_a_muted_moderator_is_muted_and_cannot_unmute_himself(client: TestClient,
                                                                     cast: dict[str, TestUser]) -> None:
    app = client.app
    host, mod = identity(cast["host"]), identity(cast["moderator"])
    room = await _show(client, cast["host"], "public")
    await moderation.add_moderator(app, host, room, cast["moderator"].id)
    await moderation.mute(app, host, room, cast["moderator"].id, 600)
    assert await _code(call_op(app, "chat.send", cast["moderator"], room, {"text": "hello"})) == "MUTED"
    assert await _code(moderation.unmute(app, mod, room, cast["moderator"].id)) == "PERMISSION_DENIED"
    assert await app[keys.DB].fetchval("SELECT count(*) FROM room_mutes WHERE room = $1", room) == 1
    await moderation.unmute(app, host, room, cast["moderator"].id)  # whoever muted may lift it
    assert (await call_op(app, "chat.send", cast["moderator"], room, {"text": "hello"}))["offset"] > 0


async def test_a_moderator_cannot_lift_what_the_host_or_an_admin_placed(client: TestClient,
                                                                         cast: dict[str, TestUser]) -> None:
    app = client.app
    host, mod, admin = identity(cast["host"]), identity(cast["moderator"]), identity(cast["admin"])
    room = await _show(client, cast["host"], "public")
    await moderation.add_moderator(app, host, room, cast["moderator"].id)
    await moderation.ban(app, host, room, cast["viewer"].id, "by the host", None)
    await moderation.ban(app, admin, room, cast["viewer2"].id, "by an admin", None)
    assert await _code(moderation.unban(app, mod, room, cast["viewer"].id)) == "PERMISSION_DENIED"
    assert await _code(moderation.unban(app, mod, room, cast["viewer2"].id)) == "PERMISSION_DENIED"
    assert await _code(moderation.unban(app, host, room, cast["viewer2"].id)) == "PERMISSION_DENIED"
    assert await app[keys.DB].fetchval("SELECT count(*) FROM room_bans WHERE room = $1", room) == 2
    # A mute the host placed: the moderator may not lift it either; the admin may.
    await moderation.mute(app, host, room, cast["viewer"].id, 60)
    assert await _code(moderation.unmute(app, mod, room, cast["viewer"].id)) == "PERMISSION_DENIED"
    await moderation.unmute(app, admin, room, cast["viewer"].id)
    # What the moderator placed, the moderator (or anyone above) may lift.
    other = await make_user(app)
    await moderation.ban(app, mod, room, other.id, "by the moderator", None)
    assert (await moderation.unban(app, mod, room, other.id))["unbanned"] is True
    await moderation.unban(app, admin, room, cast["viewer2"].id)
    await moderation.unban(app, host, room, cast["viewer"].id)
    assert await app[keys.DB].fetchval("SELECT count(*) FROM room_bans WHERE room = $1", room) == 0
