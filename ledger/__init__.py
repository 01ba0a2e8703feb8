"""Ledger: double-entry token accounts and transfers, holds, idempotency, batching, audit."""
