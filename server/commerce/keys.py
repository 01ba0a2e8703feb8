"""Typed keys of the money services an application holds (aiohttp AppKey)."""

from __future__ import annotations

from aiohttp import web

from ledger import Engine
from ledger.directory import AccountDirectory
from server.commerce.payments import StripeGateway

LEDGER = web.AppKey("ledger", Engine)  # the batching engine: `await app[LEDGER].submit(transfers)`
ACCOUNTS = web.AppKey("accounts", AccountDirectory)  # ledger account ids by (kind, owner), cached
PAYMENTS = web.AppKey("payments", StripeGateway)  # the Stripe client of this worker
