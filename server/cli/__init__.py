"""The `greenroom` command: serve, migrate, demo, audit, users, keys."""

from __future__ import annotations

import argparse
import sys

from server.cli import demo, ledger, serve, users
from server.cli.command import Command
from server.kernel.settings import SettingsError, load_settings

COMMANDS: tuple[Command, ...] = (serve.serve, serve.migrate, demo.demo, ledger.audit, users.users, users.keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="greenroom", description=__doc__)
    parser.add_argument("--data-dir", help="data directory (embedded PostgreSQL, keys)")
    sub = parser.add_subparsers(dest="command", required=True)
    by_name = {c.name: c for c in COMMANDS}
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help)
        p.add_argument("--data-dir", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        c.args(p)
    ns = parser.parse_args(argv)
    overrides = {k: getattr(ns, k, None) for k in ("host", "port", "workers", "data_dir")}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"greenroom: {exc}", file=sys.stderr)
        return 2
    return by_name[ns.command].run(settings, ns)
