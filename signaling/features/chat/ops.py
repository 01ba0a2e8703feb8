"""Chat over the socket: `chat.send` and `chat.delete` (the domain is `chat.py`)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field

from server.kernel.access import Access
from signaling.core.ops import UUID_PATTERN, OpContext, OpData, OpGroup
from signaling.features.chat.chat import SCHEMA_MAX_CHARS, delete_message, send_message

OPS = OpGroup()

class ChatSend(OpData):
    text: str = Field(max_length=SCHEMA_MAX_CHARS)


class ChatDelete(OpData):
    id: str = Field(pattern=UUID_PATTERN)


@OPS.op("chat.send", schema=ChatSend, auth="user", room="joined",
         access=Access.every("ok", anonymous="AUTHENTICATION_REQUIRED"))
async def chat_send(ctx: OpContext, data: ChatSend) -> dict[str, Any]:
    return await send_message(ctx.app, ctx.user, ctx.room_name, data.text)


@OPS.op("chat.delete", schema=ChatDelete, auth="user", room="joined",  # someone else's message
         access=Access.every("ok", anonymous="AUTHENTICATION_REQUIRED", viewer="PERMISSION_DENIED",
                             performer="PERMISSION_DENIED"))
async def chat_delete(ctx: OpContext, data: ChatDelete) -> dict[str, Any]:
    return await delete_message(ctx.app, ctx.user, ctx.room_name, uuid.UUID(data.id))
