"""The application factory: one worker's app, its middlewares, contexts, socket and routes."""

from __future__ import annotations

import time

from aiohttp import web

from rest import ROUTERS
from rest.framework.router import mount
from rest.platform.health import DEPENDENCIES, DependencyCheck
from server.app import lifecycle
from server.http.access_log import access_middleware
from server.http.error_middleware import error_middleware
from server.http.web_client import add_web_routes
from server.kernel import keys
from server.kernel.metrics import Metrics
from server.kernel.settings import Settings
from signaling.core.endpoint import mount_socket


def create_app(settings: Settings, dsn: str) -> web.Application:
    """Build the application for one worker; `dsn` is the resolved PostgreSQL DSN."""
    # The access log is outermost so it records the status the error middleware settled on; the
    # body timeout is inside the error middleware, so its 408 leaves in the error shape.
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[access_middleware, error_middleware])
    app[keys.SETTINGS] = settings
    app[keys.STARTED_AT] = time.time()
    app[keys.BACKGROUND] = []
    app[keys.METRICS] = Metrics(lambda: app.get(keys.DB))
    app[DEPENDENCIES] = DependencyCheck()
    app.cleanup_ctx.extend(lifecycle.contexts(dsn))
    mount_socket(app)
    mount(app, ROUTERS)
    app.on_startup.append(lifecycle.freeze_startup_heap)  # runs after the cleanup contexts have started
    add_web_routes(app)
    return app
