"""REST routes: one module per resource. `ROUTERS` is what the app mounts and documents."""

from server.routing import Router

from . import auth, health, meta, moderation, streams, users

ROUTERS: list[Router] = [meta.router, health.router, auth.router, users.router, streams.router,
                          moderation.router]
