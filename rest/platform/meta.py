"""The API's description of itself: the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from rest.framework.openapi import build_openapi
from rest.framework.responses import document
from rest.framework.router import MOUNTED, Call, Router

router = Router("meta")


@router.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document", auth="public", rate="none")
async def openapi(call: Call[None]) -> web.StreamResponse:
    routers: list[Router] = call.app[MOUNTED]
    return document(build_openapi(routers))
