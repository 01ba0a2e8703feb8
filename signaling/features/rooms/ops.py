"""Room moderation over the socket: mute, kick, ban, unban, slow mode.

Each op calls the same domain function as the REST routes (`moderation.py`); the rank rules there
decide who may act on whom.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field, StrictInt

from server.kernel.access import Access
from signaling.core.ops import UUID_PATTERN, OpContext, OpData, OpGroup
from signaling.features.rooms import moderation

REASON_MAX_CHARS = moderation.BAN_REASON_MAX

OPS = OpGroup()
# The host (`owner`) and admins moderate; in the table, moderators are not among the callers.
STAFF = Access.every("ok", anonymous="AUTHENTICATION_REQUIRED", viewer="PERMISSION_DENIED",
                     performer="PERMISSION_DENIED")


class Target(OpData):
    user_id: str = Field(pattern=UUID_PATTERN)


class MuteData(Target):
    duration_s: StrictInt = Field(ge=1)


class BanData(Target):
    reason: str = Field(default="", max_length=REASON_MAX_CHARS)
    duration_s: StrictInt | None = Field(default=None, ge=1)


class SlowModeData(OpData):
    seconds: StrictInt = Field(ge=0)


@OPS.op("room.mute", schema=MuteData, auth="user", room="joined", access=STAFF)
async def room_mute(ctx: OpContext, data: MuteData) -> dict[str, Any]:
    return await moderation.mute(ctx.app, ctx.user, ctx.room_name, uuid.UUID(data.user_id), data.duration_s)


@OPS.op("room.unmute", schema=Target, auth="user", room="joined", access=STAFF)
async def room_unmute(ctx: OpContext, data: Target) -> dict[str, Any]:
    return await moderation.unmute(ctx.app, ctx.user, ctx.room_name, uuid.UUID(data.user_id))


@OPS.op("room.kick", schema=Target, auth="user", room="joined", access=STAFF)
async def room_kick(ctx: OpContext, data: Target) -> dict[str, Any]:
    return await moderation.kick(ctx.app, ctx.user, ctx.room_name, uuid.UUID(data.user_id))


@OPS.op("room.ban", schema=BanData, auth="user", room="joined", access=STAFF)
async def room_ban(ctx: OpContext, data: BanData) -> dict[str, Any]:
    return await moderation.ban(ctx.app, ctx.user, ctx.room_name, uuid.UUID(data.user_id), data.reason.strip(),
                           data.duration_s)


@OPS.op("room.unban", schema=Target, auth="user", room="joined", access=STAFF)
async def room_unban(ctx: OpContext, data: Target) -> dict[str, Any]:
    return await moderation.unban(ctx.app, ctx.user, ctx.room_name, uuid.UUID(data.user_id))


@OPS.op("room.slow_mode", schema=SlowModeData, auth="user", room="joined", access=STAFF)
async def room_slow_mode(ctx: OpContext, data: SlowModeData) -> dict[str, Any]:
    return await moderation.set_slow_mode(ctx.app, ctx.user, ctx.room_name, data.seconds)
