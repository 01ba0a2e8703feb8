"""The API's description of itself: the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from rest.framework.access import anyone
from rest.framework.openapi import build_openapi
from rest.framework.responses import document
from rest.framework.router import MOUNTED, Call, Router
from server.kernel import keys

router = Router("meta")


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document, served as is (not in the `{data}` envelope)."""

    model_config = ConfigDict(extra="allow")

    openapi: Literal["3.1.0"]
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


@router.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document", response=OpenApiDocument, envelope=False,
            auth="public", rate="none", database=False, access=anyone(200))
async def openapi(call: Call[None]) -> web.StreamResponse:
    routers: list[Router] = call.app[MOUNTED]
    return document(build_openapi(routers, call.app[keys.SETTINGS]))
