"""The admin audit log: who did what to whom, append-only (the database refuses edits)."""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def record(db: Db, *, id: uuid.UUID, actor_id: uuid.UUID, action: str, target_user_id: uuid.UUID | None,
                 details: dict[str, Any]) -> bool:
    """Log one admin action; a second call with the same id (a retry) logs nothing. True if logged now.

    `db` must carry the app's JSON codecs (`server.app.db`): `details` is passed as a dict.
    """
    logged = await db.fetchval(
        """INSERT INTO admin_audit_log (id, actor_id, action, target_user_id, details)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING true""",
        id, actor_id, action, target_user_id, details)
    return bool(logged)
