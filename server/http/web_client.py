"""The browser client: `/` serves the single page, `/static/*` its modules and styles."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")
# The page and its modules change with every release and are small: revalidate rather than cache stale code.
NO_CACHE = {"Cache-Control": "no-cache"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; media-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'")


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={**NO_CACHE, "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})


def add_web_routes(app: web.Application) -> None:
    """Mount the web client: `GET /` and `GET /static/{path}` (no directory listings)."""
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False,
                          append_version=False)
