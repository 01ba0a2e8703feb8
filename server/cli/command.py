"""What a CLI command is, and the helper that runs one against the database."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from server.app.db import connect, database_dsn
from server.app.migrator import migrate
from server.kernel.settings import Settings

Runner = Callable[[Settings, argparse.Namespace], int]


def _no_args(parser: argparse.ArgumentParser) -> None:
    """A command without arguments of its own."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    run: Runner
    args: Callable[[argparse.ArgumentParser], None] = _no_args


def command(name: str, help_text: str,
            args: Callable[[argparse.ArgumentParser], None] = _no_args) -> Callable[[Runner], Command]:
    """Declare a command; `server.cli.COMMANDS` lists the declared ones explicitly."""

    def declare(fn: Runner) -> Command:
        return Command(name, help_text, fn, args)

    return declare


def run_async(settings: Settings, body: Callable[[str], Coroutine[Any, Any, int]]) -> int:
    """Run `body(dsn)` against the configured or embedded database (migrated first)."""

    async def main(dsn: str) -> int:
        conn = await connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return await body(dsn)

    with database_dsn(settings) as dsn:
        return asyncio.run(main(dsn))
