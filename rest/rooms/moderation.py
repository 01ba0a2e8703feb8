"""Moderation: users report content or users; admins read the reports as flags."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from rest.framework.access import admins, signed_in
from rest.framework.responses import ok, page_meta
from rest.framework.router import Call, Router
from rest.framework.schema import PageQuery, Schema
from server.kernel.errors import ErrorCode
from signaling.features.rooms import reports
from signaling.features.rooms.reports import Reason, ReportStatus, TargetType

router = Router("moderation")

DETAILS_MAX = 2000


class ReportIn(Schema):
    target_type: TargetType
    target_id: uuid.UUID
    reason: Reason
    details: str = Field("", max_length=DETAILS_MAX)


class ReportOut(BaseModel):
    id: str
    reporter_id: str
    target_type: TargetType
    target_id: str
    reason: Reason
    details: str
    snapshot: dict[str, Any] = Field(description="The target as it was when reported (a chat message's text).")
    status: Literal["open", "reviewed", "dismissed"]
    created_at: str


class FlagOut(ReportOut):
    open_reports_on_target: int


class FlagQuery(PageQuery):
    status: ReportStatus | Literal["all"] = "open"
    target_type: TargetType | None = None


@router.post("/v1/moderation/report", summary="Report a user, a stream or a chat message", body=ReportIn,
             response=ReportOut, status=201, access=signed_in(201),
             errors=(ErrorCode.NOT_FOUND, ErrorCode.BAD_REQUEST, ErrorCode.CONFLICT))
async def report(call: Call[ReportIn]) -> web.StreamResponse:
    b = call.body
    out = await reports.file_report(call.app, call.user, target_type=b.target_type, target_id=b.target_id,
                                    reason=b.reason, details=b.details.strip())
    return ok(out, status=201)


@router.get("/v1/moderation/flags", summary="Reports to review, newest first (admin)", query=FlagQuery,
            response=FlagOut, list_response=True, roles=("admin",), access=admins(200))
async def flags(call: Call[None]) -> web.StreamResponse:
    q: FlagQuery = call.query
    items, total = await reports.list_flags(call.app, status=None if q.status == "all" else q.status,
                                            target_type=q.target_type, page=q.page, per_page=q.per_page)
    return ok(items, meta=page_meta(q.page, q.per_page, total))
