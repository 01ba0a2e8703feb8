"""The `greenroom` command: serve, migrate, demo, audit, users."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from server.kernel.settings import Settings, SettingsError, load_settings

Command = Callable[[Settings, argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str,
            args: Callable[[argparse.ArgumentParser], None] = lambda p: None) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, args, help_text)
        return fn

    return register


def run_async(settings: Settings, body: Callable[[str], Coroutine[Any, Any, int]]) -> int:
    """Run `body(dsn)` against the configured or embedded database (migrated first)."""
    from server.db import connect
    from server.migrator import migrate
    from server.services import database_dsn

    async def main(dsn: str) -> int:
        conn = await connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return await body(dsn)

    with database_dsn(settings) as dsn:
        return asyncio.run(main(dsn))


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)


@command("serve", "run the server", _serve_args)
def serve(settings: Settings, ns: argparse.Namespace) -> int:
    from server.runner import serve_forever

    return serve_forever(settings)


@command("migrate", "apply database migrations and exit")
def migrate_cmd(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        print("database is up to date")
        return 0

    return run_async(settings, body)


def main(argv: list[str] | None = None) -> int:
    # Importing the modules that register commands (kept here so `--help` lists them all).
    from server import cli_commands  # noqa: F401

    parser = argparse.ArgumentParser(prog="greenroom", description=__doc__)
    parser.add_argument("--data-dir", help="data directory (embedded PostgreSQL, keys)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--data-dir", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        add_args(p)
    ns = parser.parse_args(argv)
    overrides = {k: getattr(ns, k, None) for k in ("host", "port", "workers", "data_dir")}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"greenroom: {exc}", file=sys.stderr)
        return 2
    fn = COMMANDS[ns.command][0]
    return fn(settings, ns)


if __name__ == "__main__":
    # Commands register into the importable `server.cli`, not into this `__main__` copy of it.
    from server.cli import main as _main

    multiprocessing.freeze_support()
    sys.exit(_main())
