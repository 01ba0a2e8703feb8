"""CLI: `greenroom serve` and `greenroom migrate`."""

from __future__ import annotations

import argparse

from server.app.runner import serve_forever
from server.cli.command import command, run_async
from server.kernel.settings import Settings


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)


@command("serve", "run the server", _serve_args)
def serve(settings: Settings, ns: argparse.Namespace) -> int:
    return serve_forever(settings)


@command("migrate", "apply database migrations and exit")
def migrate(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        print("database is up to date")
        return 0

    return run_async(settings, body)
