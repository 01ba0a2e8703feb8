"""Streams: create, list, read, edit, go live, end, join, viewers, and the room's staff and bans."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from rest.framework.access import Access, anyone, owner_or_admin
from rest.framework.fields import INTEGRAL
from rest.framework.params import uuid_param
from rest.framework.responses import ok, page_meta
from rest.framework.router import Call, Router, idempotent_id
from rest.framework.schema import PageQuery, Schema, from_settings, not_null
from server.kernel.errors import ErrorCode
from server.kernel.patterns import NOT_BLANK
from signaling.features.rooms import moderation
from signaling.features.streams import streams

router = Router("streams")

AccessIn = Literal["public", "ticket", "pass", "private"]
# Types and limits only: trimming, blank checks, lower-casing and de-duplication are the domain's
# (`streams.checked_fields`), which every caller goes through.
Tag = Annotated[str, Field(min_length=1, max_length=streams.TAG_MAX, json_schema_extra={"pattern": NOT_BLANK})]


class StreamCreate(Schema):
    title: str = Field(min_length=1, max_length=streams.TITLE_MAX, description="Trimmed; not blank.",
                       json_schema_extra={"pattern": NOT_BLANK})
    description: str = Field("", max_length=streams.DESCRIPTION_MAX)
    category: str | None = Field(None, max_length=streams.CATEGORY_MAX,
                                 description="Stored trimmed and lower-case; blank means none.")
    tags: list[Tag] = Field(default_factory=list, max_length=streams.TAGS_MAX,
                            description="Stored trimmed, lower-case, each once.")
    access: AccessIn = "public"


def _title_patch(schema: dict[str, Any]) -> None:
    not_null(schema)
    schema["pattern"] = NOT_BLANK


class StreamPatch(Schema):
    """Fields to change; absent fields stay, `null` clears `category` (and is refused elsewhere)."""

    title: str | None = Field(None, min_length=1, max_length=streams.TITLE_MAX, json_schema_extra=_title_patch)
    description: str | None = Field(None, max_length=streams.DESCRIPTION_MAX, json_schema_extra=not_null)
    category: str | None = Field(None, max_length=streams.CATEGORY_MAX)
    tags: list[Tag] | None = Field(None, max_length=streams.TAGS_MAX, json_schema_extra=not_null)
    access: AccessIn | None = Field(None, json_schema_extra=not_null)

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class StreamQuery(PageQuery):
    status: Literal["created", "live", "ended", "all"] = "live"
    category: str | None = Field(None, max_length=streams.CATEGORY_MAX)
    host_id: uuid.UUID | None = None
    sort: Literal["-started_at", "started_at", "-created_at", "created_at", "-total_tokens_received",
                  "title"] = "-started_at"



class StreamOut(BaseModel):
    id: str
    host_id: str
    host_name: str
    title: str
    description: str
    category: str | None
    tags: list[str]
    status: Literal["created", "live", "ended"]
    access: AccessIn
    viewer_count: int
    total_tokens_received: int
    room: str
    started_at: str | None
    ended_at: str | None
    created_at: str


class JoinOut(BaseModel):
    stream: StreamOut
    room: str
    ws_url: str
    role: Literal["performer", "moderator", "viewer", "guest"]
    can_chat: bool
    can_tip: bool
    can_moderate: bool


class ViewerOut(BaseModel):
    user_id: str
    display_name: str


class ViewersOut(BaseModel):
    stream_id: str
    viewer_count: int
    viewers: list[ViewerOut] | None = Field(description="Listed for the host, moderators and admins only.")


class UserRef(Schema):
    user_id: uuid.UUID


class BanIn(Schema):
    user_id: uuid.UUID
    reason: str = Field("", max_length=moderation.BAN_REASON_MAX, description="Trimmed.")
    duration_s: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(None, description="Omit for a permanent ban.",
                                   json_schema_extra=from_settings(maximum="room_ban_max_s"))


class RoleOut(BaseModel):
    user_id: str
    role: Literal["moderator", "viewer"]


class BanOut(BaseModel):
    user_id: str
    until: str | None
    reason: str


class UnbanOut(BaseModel):
    user_id: str
    unbanned: Literal[True]


class BanListItem(BanOut):
    display_name: str
    banned_by: str | None
    created_at: str


STREAM = {"id": uuid_param("stream")}
STREAM_USER = {"id": uuid_param("stream"), "user_id": uuid_param("user")}


@router.post("/v1/streams", summary="Create a stream (and its room) as a performer", body=StreamCreate,
             response=StreamOut, status=201, roles=("performer", "admin"), rate="streaming", idempotent=True,
             errors=(ErrorCode.CONFLICT,), access=Access.every(201, anonymous=401, viewer=403))
async def create_stream(call: Call[StreamCreate]) -> web.StreamResponse:
    b = call.body
    # The id derives from the Idempotency-Key: a retry that runs again finds the stream made before.
    stream = await streams.create_stream(call.app, call.user, title=b.title, description=b.description,
                                         category=b.category, tags=b.tags, access=b.access,
                                         stream_id=idempotent_id(call, "stream"))
    return ok(stream, status=201)


@router.get("/v1/streams", summary="Streams, live ones by default (public); filter, sort, paginate",
            query=StreamQuery, response=StreamOut, auth="optional", list_response=True, access=anyone(200))
async def list_streams(call: Call[None]) -> web.StreamResponse:
    q: StreamQuery = call.query
    page = await streams.list_streams(call.app, call.identity, status=None if q.status == "all" else q.status,
                                      category=q.category, host_id=q.host_id, sort=q.sort,
                                      page=q.page, per_page=q.per_page)
    return ok(page.items, meta=page_meta(q.page, q.per_page, page.total))


@router.get("/v1/streams/{id}", params=STREAM, summary="A stream's details", response=StreamOut, auth="optional",
            access=anyone(200))  # a public stream (a private one is 404 to whoever may not enter it)
async def get_stream(call: Call[None]) -> web.StreamResponse:
    return ok(await streams.get_stream(call.app, call.path.uuid("id"), call.identity))


@router.patch("/v1/streams/{id}", summary="Edit a stream (host or admin)", body=StreamPatch,
              params=STREAM, response=StreamOut, rate="streaming", access=owner_or_admin(200),
              errors=(ErrorCode.PERMISSION_DENIED, ErrorCode.CONFLICT))
async def patch_stream(call: Call[StreamPatch]) -> web.StreamResponse:
    return ok(await streams.update_stream(call.app, call.user, call.path.uuid("id"), call.body.changes()))


@router.delete("/v1/streams/{id}", summary="End a stream (host or admin); ending an ended stream is a no-op",
               params=STREAM, response=StreamOut, rate="streaming", errors=(ErrorCode.PERMISSION_DENIED,),
               access=owner_or_admin(200))
async def delete_stream(call: Call[None]) -> web.StreamResponse:
    return ok(await streams.end_stream(call.app, call.user, call.path.uuid("id"), already_ended_ok=True))


@router.post("/v1/streams/{id}/start", summary="Go live (host); publishes `stream.started` to the room",
             params=STREAM, response=StreamOut, rate="streaming",
             access=Access.every(403, anonymous=401, owner=200),  # the host only, not an admin
             errors=(ErrorCode.PERMISSION_DENIED, ErrorCode.CONFLICT))
async def start_stream(call: Call[None]) -> web.StreamResponse:
    return ok(await streams.start_stream(call.app, call.user, call.path.uuid("id")))


@router.post("/v1/streams/{id}/end", summary="End the stream (host or admin); publishes `stream.ended`",
             params=STREAM, response=StreamOut, rate="streaming", access=owner_or_admin(200),
             errors=(ErrorCode.PERMISSION_DENIED, ErrorCode.CONFLICT))
async def end_stream(call: Call[None]) -> web.StreamResponse:
    return ok(await streams.end_stream(call.app, call.user, call.path.uuid("id")))


@router.post("/v1/streams/{id}/join", summary="What a client needs to join the stream's room over `/ws`",
             params=STREAM, response=JoinOut, auth="optional", access=anyone(200),  # a public stream
             # AUTHENTICATION_REQUIRED: the token's account no longer exists
             errors=(ErrorCode.AUTHENTICATION_REQUIRED, ErrorCode.BANNED, ErrorCode.PERMISSION_DENIED))
async def join_stream(call: Call[None]) -> web.StreamResponse:
    return ok(await streams.join_stream(call.app, call.identity, call.path.uuid("id")))


@router.get("/v1/streams/{id}/viewers", summary="How many are watching; the host and staff also see who",
            params=STREAM, query=PageQuery, response=ViewersOut, auth="optional",
            access=anyone(200))  # the count for all; the names for the host and staff
async def stream_viewers(call: Call[None]) -> web.StreamResponse:
    q: PageQuery = call.query
    data, total = await streams.viewers(call.app, call.identity, call.path.uuid("id"), page=q.page, per_page=q.per_page)
    meta = page_meta(q.page, q.per_page, total) if data["viewers"] is not None else {}
    return ok(data, meta=meta)


@router.post("/v1/streams/{id}/moderators", summary="Appoint a room moderator (host or admin)", body=UserRef,
             params=STREAM, response=RoleOut, status=201, rate="streaming", access=owner_or_admin(201),
             errors=(ErrorCode.PERMISSION_DENIED, ErrorCode.CONFLICT))
async def add_moderator(call: Call[UserRef]) -> web.StreamResponse:
    room = await streams.stream_room(call.app, call.user, call.path.uuid("id"))
    return ok(await moderation.add_moderator(call.app, call.user, room, call.body.user_id), status=201)


@router.delete("/v1/streams/{id}/moderators/{user_id}", summary="Dismiss a room moderator (host or admin)",
               params=STREAM_USER, response=RoleOut, rate="streaming", errors=(ErrorCode.PERMISSION_DENIED,),
               access=owner_or_admin(200))
async def remove_moderator(call: Call[None]) -> web.StreamResponse:
    room = await streams.stream_room(call.app, call.user, call.path.uuid("id"))
    return ok(await moderation.remove_moderator(call.app, call.user, room, call.path.uuid("user_id")))


@router.get("/v1/streams/{id}/bans", summary="Active bans in the stream's room (host, moderators, admins)",
            params=STREAM, query=PageQuery, response=BanListItem, list_response=True, rate="streaming",
            errors=(ErrorCode.PERMISSION_DENIED,), access=owner_or_admin(200))
async def list_bans(call: Call[None]) -> web.StreamResponse:
    q: PageQuery = call.query
    room = await streams.stream_room(call.app, call.user, call.path.uuid("id"))
    items, total = await moderation.list_bans(call.app, call.user, room, q.page, q.per_page)
    return ok(items, meta=page_meta(q.page, q.per_page, total))


@router.post("/v1/streams/{id}/bans", summary="Ban a user from the stream's room and remove them at once",
             params=STREAM, body=BanIn, response=BanOut, status=201, rate="streaming", access=owner_or_admin(201),
             errors=(ErrorCode.PERMISSION_DENIED,))
async def ban_user(call: Call[BanIn]) -> web.StreamResponse:
    room = await streams.stream_room(call.app, call.user, call.path.uuid("id"))
    b = call.body
    return ok(await moderation.ban(call.app, call.user, room, b.user_id, b.reason, b.duration_s), status=201)


@router.delete("/v1/streams/{id}/bans/{user_id}", summary="Lift a ban (host, moderators, admins)",
               params=STREAM_USER, response=UnbanOut, rate="streaming", errors=(ErrorCode.PERMISSION_DENIED,),
               access=owner_or_admin(200))
async def unban_user(call: Call[None]) -> web.StreamResponse:
    room = await streams.stream_room(call.app, call.user, call.path.uuid("id"))
    return ok(await moderation.unban(call.app, call.user, room, call.path.uuid("user_id")))
