"""A stream's tips (the tips themselves are sent with `tip.send` on the socket or `/v1/wallet/transfer`)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from rest.framework.access import anyone
from rest.framework.responses import ok, page_meta
from rest.framework.router import Call, Router
from rest.framework.schema import PageQuery
from rest.rooms.streams import STREAM
from signaling.features.tips import tips

router = Router("tips")


class StreamTipOut(BaseModel):
    id: str
    stream_id: str
    from_user_id: str
    from_display_name: str
    to_user_id: str
    tokens: int
    message: str
    is_private: bool
    created_at: str


@router.get("/v1/streams/{id}/tips", summary="A stream's tips, newest first", query=PageQuery, params=STREAM,
            response=StreamTipOut, list_response=True, auth="optional", access=anyone(200))  # a public stream
async def stream_tips(call: Call[None]) -> web.StreamResponse:
    q: PageQuery = call.query
    items, total = await tips.stream_tips(call.app, call.identity, call.path.uuid("id"), page=q.page,
                                          per_page=q.per_page)
    return ok(items, meta=page_meta(q.page, q.per_page, total))
