"""Typed keys of the ledger services an application holds (aiohttp AppKey); the Stripe gateway's
key is beside it in `payments.py`."""

from __future__ import annotations

from aiohttp import web

from ledger import Engine
from ledger.directory import AccountDirectory

LEDGER = web.AppKey("ledger", Engine)  # the batching engine: `await app[LEDGER].submit(transfers)`
ACCOUNTS = web.AppKey("accounts", AccountDirectory)  # ledger account ids by (kind, owner), cached
