"""REST routes: one module per resource, grouped by area. `ROUTERS` is what the app mounts and documents."""

from rest.accounts import auth, users
from rest.admin import wallet as admin_wallet
from rest.commerce import payouts, wallet
from rest.framework.router import Router
from rest.platform import health, meta
from rest.rooms import moderation, streams, tips
from rest.webhooks import stripe as webhooks_stripe

ROUTERS: list[Router] = [meta.router, health.router, auth.router, users.router, streams.router,
                          moderation.router, wallet.router, tips.router, payouts.router, admin_wallet.router,
                          webhooks_stripe.router]
