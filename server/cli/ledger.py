"""CLI: `greenroom audit` checks every ledger invariant, then the streams' tip records and totals
against the ledger; exit 1 (with the offending ids) when one fails."""

from __future__ import annotations

import argparse

import ledger
from server.app.db import connect
from server.cli.command import command, run_async
from server.kernel.settings import Settings
from signaling.features.tips import audit as tips_audit


@command("audit", "check every ledger invariant and the stream tip records against it (exit 1 when one fails)")
def audit(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        conn = await connect(dsn)
        try:
            report = await ledger.audit(conn)
            tip_checks = await tips_audit.audit(conn, settle_s=settings.tip_audit_settle_s)
        finally:
            await conn.close()
        print(report.format())
        print("stream tips audit: tip records and stream totals against the ledger")
        for check in tip_checks:
            print("\n".join(check.format()))
        tips_ok = all(c.ok for c in tip_checks)
        print("stream tips audit: " + ("clean" if tips_ok else "MISMATCHES FOUND"))
        return 0 if report.ok and tips_ok else 1

    return run_async(settings, body)
