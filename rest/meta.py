"""The API's description of itself: the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from server.openapi import build_openapi
from server.routing import Call, Router, json_response

router = Router("meta")


@router.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document", auth="public", rate="none")
async def openapi(call: Call[None]) -> web.StreamResponse:
    from rest import ROUTERS

    return json_response(build_openapi(ROUTERS))
