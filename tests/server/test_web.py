"""The web client's routes: the page, its ES modules, and nothing else from the disk."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient


async def test_index_is_the_page(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    body = await resp.text()
    assert '<script type="module" src="/static/app.js">' in body
    # The page runs only its own scripts: an injected <script> or inline handler does not execute.
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


@pytest.mark.parametrize(("path", "content_type"), [
    ("/static/greenroom.js", "text/javascript"),
    ("/static/app.js", "text/javascript"),
    ("/static/style.css", "text/css"),
])
async def test_static_assets_are_served_with_their_types(client: TestClient, path: str, content_type: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    # Browsers refuse to run an ES module served with a non-JavaScript type.
    assert resp.content_type in ({content_type, "application/javascript"} if content_type == "text/javascript"
                                 else {content_type})
    assert len(await resp.read()) > 100


async def test_socket_module_exports_the_client(client: TestClient) -> None:
    text = await (await client.get("/static/greenroom.js")).text()
    assert "export class GreenroomSocket" in text
    assert "export class GreenroomError" in text


@pytest.mark.parametrize("path", [
    "/static/../settings.py",
    "/static/%2e%2e/settings.py",
    "/static/..%2fsettings.py",
    "/static/",
    "/static/nope.js",
])
async def test_nothing_outside_the_static_folder_and_no_listing(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status in (403, 404)
    assert "BaseSettings" not in await resp.text()


async def test_api_routes_still_answer_json(client: TestClient) -> None:
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
