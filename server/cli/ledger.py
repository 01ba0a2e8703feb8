"""CLI: `greenroom audit` checks every ledger invariant; exit 1 (with the offending ids) when one fails."""

from __future__ import annotations

import argparse

import ledger
from server.app.db import connect
from server.cli.command import command, run_async
from server.kernel.settings import Settings


@command("audit", "check every ledger invariant over the whole database (exit 1 when one fails)")
def audit(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        conn = await connect(dsn)
        try:
            report = await ledger.audit(conn)
        finally:
            await conn.close()
        print(report.format())
        return 0 if report.ok else 1

    return run_async(settings, body)
