"""REST routes: one module per resource. `ROUTERS` is what the app mounts and documents."""

from server.routing import Router

from . import meta

ROUTERS: list[Router] = [meta.router]
