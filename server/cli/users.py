"""CLI: `greenroom users create` (bootstraps admins) and `greenroom keys rotate|list`."""

from __future__ import annotations

import argparse
import sys

from server.accounts.tokens import ensure_keys
from server.accounts.users import create_user
from server.app.db import connect
from server.cli.command import command, run_async
from server.kernel.errors import ApiError
from server.kernel.identity import ROLES
from server.kernel.settings import Settings


def _users_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="users_command", required=True)
    create = sub.add_parser("create", help="create an account (any role, admin included)")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True, help="the password, or - to read one line from stdin")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--display-name")
    create.add_argument("--username")


@command("users", "manage accounts", _users_args)
def users(settings: Settings, ns: argparse.Namespace) -> int:
    password: str = ns.password
    if password == "-":
        password = sys.stdin.readline().rstrip("\n")

    async def body(dsn: str) -> int:
        conn = await connect(dsn)
        try:
            user = await create_user(conn, settings, email=ns.email, password=password,
                                     display_name=ns.display_name, role=ns.role, username=ns.username,
                                     email_verified=True)
        except ApiError as exc:
            problems = [f"{e['field']}: {e['issue']}" for e in (exc.details or {}).get("errors", [])]
            print(f"greenroom: {exc.message}" + (f" ({'; '.join(problems)})" if problems else ""),
                  file=sys.stderr)
            return 1
        finally:
            await conn.close()
        print(f"created {user.role} {user.email} id={user.id}")
        return 0

    return run_async(settings, body)


def _keys_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True)
    sub.add_parser("rotate", help="create a new signing key now; older tokens stay valid until they expire")
    sub.add_parser("list", help="list signing keys")


@command("keys", "manage the access-token signing keys", _keys_args)
def keys(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        conn = await connect(dsn)
        try:
            if ns.keys_command == "rotate":
                kid = await ensure_keys(conn, settings, force=True)
                print(f"new signing key {kid}: published now, signs after {settings.key_publish_delay_s:g} s "
                      f"(running servers load it within {settings.key_cache_refresh_s:g} s)")
                return 0
            rows = await conn.fetch("SELECT kid, alg, created_at, activates_at, retired_at FROM signing_keys "
                                    "ORDER BY activates_at DESC")
            for r in rows:
                retired = r["retired_at"].isoformat() if r["retired_at"] else "-"
                print(f"{r['kid']}  {r['alg']}  created {r['created_at'].isoformat()}  "
                      f"signs from {r['activates_at'].isoformat()}  retired {retired}")
            return 0
        finally:
            await conn.close()

    return run_async(settings, body)
