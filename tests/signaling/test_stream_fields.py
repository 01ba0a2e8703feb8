"""Stream field rules and the ban-reason limit live in the domain: every adapter gets the same ones."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from rest.rooms.streams import BanIn, StreamCreate, StreamPatch
from server.kernel import keys
from server.kernel.errors import ApiError
from server.kernel.patterns import NOT_BLANK
from signaling.features.rooms import moderation
from signaling.features.rooms import ops as room_ops
from signaling.features.streams import streams
from tests.support.factories import make_user
from tests.support.rooms_support import call_op, identity, new_stream, room_of


def test_fields_are_normalised() -> None:
    out = streams.checked_fields({"title": "  Jazz night ", "category": " Music ", "tags": ["Jazz", " jazz", "Piano"],
                                  "description": "  kept as is ", "access": "pass"})
    assert out == {"title": "Jazz night", "category": "music", "tags": ["jazz", "piano"],
                   "description": "  kept as is ", "access": "pass"}
    assert streams.checked_fields({"category": "   "}) == {"category": None}
    assert streams.checked_fields({"category": None}) == {"category": None}
    assert streams.checked_fields({"title": "x" * streams.TITLE_MAX})["title"] == "x" * streams.TITLE_MAX
    assert streams.checked_fields({"tags": ["a"] * streams.TAGS_MAX})["tags"] == ["a"]


@pytest.mark.parametrize(("fields", "field"), [
    ({"title": "   "}, "title"),
    ({"title": ""}, "title"),
    ({"title": None}, "title"),
    ({"title": 5}, "title"),
    ({"title": "x" * (streams.TITLE_MAX + 1)}, "title"),
    ({"description": "x" * (streams.DESCRIPTION_MAX + 1)}, "description"),
    ({"description": None}, "description"),
    ({"category": "c" * (streams.CATEGORY_MAX + 1)}, "category"),
    ({"category": 7}, "category"),
    ({"tags": ["a"] * (streams.TAGS_MAX + 1)}, "tags"),
    ({"tags": [" "]}, "tags"),
    ({"tags": ["x" * (streams.TAG_MAX + 1)]}, "tags"),
    ({"tags": "jazz"}, "tags"),
    ({"tags": [1]}, "tags"),
    ({"tags": None}, "tags"),
    ({"access": "friends"}, "access"),
    ({"access": None}, "access"),
])
def test_bad_fields_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        streams.checked_fields(fields)
    assert caught.value.status == 422 and caught.value.code == "VALIDATION_ERROR"
    assert [e["field"] for e in (caught.value.details or {})["errors"]] == [field]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(ApiError) as caught:
        streams.checked_fields({"title": " ", "tags": [""], "access": "x", "description": "fine"})
    assert [e["field"] for e in (caught.value.details or {})["errors"]] == ["title", "tags", "access"]


def test_the_rest_schema_declares_the_domain_limits() -> None:
    create = StreamCreate.model_json_schema()["properties"]
    assert create["title"]["maxLength"] == streams.TITLE_MAX
    assert create["tags"]["maxItems"] == streams.TAGS_MAX
    assert create["tags"]["items"]["maxLength"] == streams.TAG_MAX
    assert create["category"]["anyOf"][0]["maxLength"] == streams.CATEGORY_MAX
    patch = StreamPatch.model_json_schema()["properties"]
    # absent-or-a-value: the document does not offer null where the domain refuses it
    assert patch["title"] == {"type": "string", "minLength": 1, "maxLength": streams.TITLE_MAX, "title": "Title",
                              "pattern": NOT_BLANK}
    assert {"type": "null"} in patch["category"]["anyOf"]


async def test_domain_callers_get_the_rules_without_the_rest_schema(client: TestClient) -> None:
    app = client.app
    host = identity(await make_user(app, role="performer"))
    made = await streams.create_stream(app, host, title="  Seeded ", category=" Demo ", tags=["A", "a"])
    assert (made["title"], made["category"], made["tags"]) == ("Seeded", "demo", ["a"])
    with pytest.raises(ApiError) as caught:
        await streams.create_stream(app, host, title="   ")
    assert caught.value.code == "VALIDATION_ERROR"
    with pytest.raises(ApiError) as caught:
        await streams.update_stream(app, host, uuid.UUID(made["id"]), {"title": None})
    assert caught.value.code == "VALIDATION_ERROR"
    assert await app[keys.DB].fetchval("SELECT count(*) FROM streams") == 1
    page = await streams.list_streams(app, host, status=None, category="  DEMO ", host_id=None, sort="title",
                                      page=1, per_page=10)
    assert [s["id"] for s in page.items] == [made["id"]]


async def test_rest_refuses_null_where_the_domain_does(client: TestClient) -> None:
    host = await make_user(client.app, role="performer")
    stream = await new_stream(client, host)
    for body in ({"title": None}, {"tags": None}, {"access": None}, {"description": None}):
        resp = await client.patch(f"/v1/streams/{stream['id']}", json=body, headers=host.headers)
        assert resp.status == 422, body
    resp = await client.patch(f"/v1/streams/{stream['id']}", json={"category": None}, headers=host.headers)
    assert resp.status == 200 and (await resp.json())["data"]["category"] is None


# --- one ban-reason limit ----------------------------------------------------------------------

def test_both_adapters_declare_the_domain_ban_reason_limit() -> None:
    assert BanIn.model_json_schema()["properties"]["reason"]["maxLength"] == moderation.BAN_REASON_MAX
    assert room_ops.BanData.model_json_schema()["properties"]["reason"]["maxLength"] == moderation.BAN_REASON_MAX


async def test_ban_reason_is_bounded_and_trimmed_in_the_domain(client: TestClient) -> None:
    app = client.app
    host, viewer = await make_user(app, role="performer"), await make_user(app)
    room = room_of(await new_stream(client, host))
    with pytest.raises(ApiError) as caught:
        await moderation.ban(app, identity(host), room, viewer.id, "x" * (moderation.BAN_REASON_MAX + 1), None)
    assert caught.value.code == "VALIDATION_ERROR"
    assert await app[keys.DB].fetchval("SELECT count(*) FROM room_bans") == 0
    # blanks do not count against the limit and are not stored
    out = await moderation.ban(app, identity(host), room, viewer.id, f"  {'y' * moderation.BAN_REASON_MAX}  ", None)
    assert out["reason"] == "y" * moderation.BAN_REASON_MAX
    # the socket op and REST refuse the same length
    other = await make_user(app)
    with pytest.raises(ValidationError, match="500 characters"):  # the op schema, before the domain
        await call_op(app, "room.ban", host, room, {"user_id": str(other.id), "reason": "z" * 501})
    sid = room.split(":", 1)[1]
    resp = await client.post(f"/v1/streams/{sid}/bans", json={"user_id": str(other.id), "reason": "z" * 501},
                             headers=host.headers)
    assert resp.status == 422
    resp = await client.post(f"/v1/streams/{sid}/bans", json={"user_id": str(other.id), "reason": " spam "},
                             headers=host.headers)
    assert resp.status == 201 and (await resp.json())["data"]["reason"] == "spam"
