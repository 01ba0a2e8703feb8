"""Tips over the socket: `tip.send` (the domain is `tips.py`); it spends the `tips` rate budget,
shared with `POST /v1/wallet/transfer`."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field, StrictInt

from ledger.model import INT64_MAX
from server.kernel.access import Access
from server.kernel.errors import ApiError, ErrorCode, forbidden
from signaling.core.ops import UUID_PATTERN, OpContext, OpData, OpGroup
from signaling.features.rooms.access import grant_of, parse_room
from signaling.features.tips.tips import SCHEMA_MESSAGE_MAX, send_tip

OPS = OpGroup()

class TipSend(OpData):
    id: str = Field(pattern=UUID_PATTERN, description="Client-chosen tip id (uuid); retry with the same id.")
    amount: StrictInt = Field(ge=1, le=INT64_MAX)
    message: str = Field("", max_length=SCHEMA_MESSAGE_MAX)


@OPS.op("tip.send", schema=TipSend, auth="user", room="joined", rate="tips",  # not the host, in its own room
         access=Access.every("ok", anonymous="AUTHENTICATION_REQUIRED", owner="PERMISSION_DENIED"))
async def tip_send(ctx: OpContext, data: TipSend) -> dict[str, Any]:
    """Tip the host of the stream room this connection joined (its grant must allow tipping)."""
    kind, stream_id = parse_room(ctx.room_name)
    if kind != "stream":
        raise ApiError(ErrorCode.BAD_REQUEST, "tips are sent in a stream's room")
    grant = grant_of(ctx.session.rooms.get(ctx.room_name))
    if grant is None or not grant.can_tip:
        raise forbidden("you may not tip in this room")
    return await send_tip(ctx.app, ctx.user, tip_id=uuid.UUID(data.id), amount=data.amount, message=data.message,
                          stream_id=stream_id, grant=grant)
