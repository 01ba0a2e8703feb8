"""CLI: `greenroom serve` and `greenroom migrate`."""

from __future__ import annotations

import argparse
import sys

from ledger import LedgerAssertionsOff
from ledger.engine import require_assertions
from server.app.runner import serve_forever
from server.cli.command import command, run_async
from server.kernel.settings import Settings


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)


@command("serve", "run the server", _serve_args)
def serve(settings: Settings, ns: argparse.Namespace) -> int:
    # Before the database or any worker starts: every worker's engine would refuse anyway, but
    # only after the embedded PostgreSQL and the migrations, and one worker's refusal reads as a crash.
    try:
        require_assertions()
    except LedgerAssertionsOff as exc:
        print(f"greenroom: refusing to serve: {exc}", file=sys.stderr)
        return 2
    return serve_forever(settings)


@command("migrate", "apply database migrations and exit")
def migrate(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        print("database is up to date")
        return 0

    return run_async(settings, body)
