"""REST routes: one module per resource. `ROUTERS` is what the app mounts and documents."""

from rest import admin_wallet, auth, health, meta, moderation, payouts, streams, tips, users, wallet, webhooks_stripe
from server.routing import Router

ROUTERS: list[Router] = [meta.router, health.router, auth.router, users.router, streams.router,
                          moderation.router, wallet.router, tips.router, payouts.router, admin_wallet.router,
                          webhooks_stripe.router]
