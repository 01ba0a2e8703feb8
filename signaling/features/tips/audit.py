"""The stream side of tips checked against the ledger: what `greenroom audit` and
`GET /v1/admin/ledger/audit` add to the ledger's own invariants.

The ledger holds the money; `stream_tips`, `stream_tippers` and `streams.total_tokens_received`
hold each stream's view of it (written by `recorder.TipRecorder` just after the ledger commits).
A tip's carrier leg in the ledger is the transfer whose metadata has `tip` and `gross` (the
performer's leg, or the only leg of a 100 % fee; see `ledger.flows.tips`); a tip in a stream also
has `stream` there. The checks, all in one snapshot:

- every stream tip record is backed by a ledger tip with the same stream, people, amount, fee and
  message (a record without money is a forged or corrupted row);
- every ledger tip naming a stream has its record, once older than `tip_audit_settle_s`: "tip
  applied but not recorded" happens when the process died between the ledger commit and the
  record and the client never retried; the tip id names what to repair (retrying the tip with
  that id records it and moves nothing);
- every stream's `total_tokens_received` is the sum of its tip records;
- every tipper's `stream_tippers.total` is the sum of their tip records in that stream.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

import ledger
from ledger.audit import Check, run_check
from server.kernel import keys

# The carrier leg of every tip, its metadata as text (compared as text: a malformed value in a
# transfer's metadata must show up as a mismatch, not stop the audit with a cast error).
_LEDGER_TIPS = """
SELECT t.metadata->>'tip' AS tip, t.metadata->>'stream' AS stream, t.metadata->>'from' AS from_user,
       t.metadata->>'to' AS to_user, t.metadata->>'gross' AS gross, t.metadata->>'fee' AS fee,
       coalesce(t.metadata->>'message', '') AS message, t.created_at
FROM ledger_transfers t
WHERE t.code IN ('tip', 'fee') AND t.metadata ? 'tip' AND t.metadata ? 'gross'"""

_CHECKS: list[tuple[str, str, str]] = [
    ("stream_tips_in_ledger", "each stream tip record matches a tip in the ledger (stream, people, amount, fee, "
     "message)", f"""
WITH l AS ({_LEDGER_TIPS})
SELECT s.tip_id::text FROM stream_tips s LEFT JOIN l ON l.tip = s.tip_id::text
WHERE l.tip IS NULL OR l.stream IS DISTINCT FROM s.stream_id::text
   OR l.from_user IS DISTINCT FROM s.from_user_id::text OR l.to_user IS DISTINCT FROM s.to_user_id::text
   OR l.gross IS DISTINCT FROM s.amount::text OR l.fee IS DISTINCT FROM s.fee::text
   OR l.message IS DISTINCT FROM s.message"""),
    ("ledger_stream_tips_recorded", "each tip in the ledger naming a stream has its stream record (offending: "
     "tip applied but not recorded; retry the tip id to record it)", f"""
WITH l AS ({_LEDGER_TIPS})
SELECT l.tip FROM l LEFT JOIN stream_tips s ON s.tip_id::text = l.tip
WHERE l.stream IS NOT NULL AND s.tip_id IS NULL AND l.created_at < now() - make_interval(secs => $1)"""),
    ("stream_totals_match_tips", "each stream's total_tokens_received is the sum of its tip records", """
SELECT st.id::text FROM streams st
LEFT JOIN (SELECT stream_id, sum(amount) AS total FROM stream_tips GROUP BY stream_id) s ON s.stream_id = st.id
WHERE st.total_tokens_received <> coalesce(s.total, 0)"""),
    ("stream_tippers_match_tips", "each stream's per-tipper totals are the sums of their tip records", """
SELECT DISTINCT coalesce(p.stream_id, s.stream_id)::text
FROM stream_tippers p
FULL JOIN (SELECT stream_id, from_user_id, sum(amount) AS total FROM stream_tips
           GROUP BY stream_id, from_user_id) s ON s.stream_id = p.stream_id AND s.from_user_id = p.user_id
WHERE p.total IS DISTINCT FROM s.total"""),
]


async def audit(db: asyncpg.Pool | asyncpg.Connection, *, settle_s: float) -> list[Check]:
    """The checks of the module doc; each `Check.offending` lists tip or stream ids."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _audit(conn, settle_s)
    return await _audit(db, settle_s)


async def _audit(conn: asyncpg.Connection, settle_s: float) -> list[Check]:
    # One snapshot: a tip recorded meanwhile is seen with its ledger legs or not at all.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        checks = []
        for name, description, query in _CHECKS:
            args: tuple[object, ...] = (float(settle_s),) if "$1" in query else ()
            checks.append(await run_check(conn, name, description, query, *args))
    return checks


async def report(app: web.Application) -> dict[str, Any]:
    """Every ledger invariant over the whole database, then the streams' tip records and totals
    against the ledger; `ok: false` lists the offending ids (the admin audit route's answer)."""
    db = app[keys.DB]
    ledger_report = await ledger.audit(db)
    tip_checks = await audit(db, settle_s=app[keys.SETTINGS].tip_audit_settle_s)
    checks = [*ledger_report.checks, *tip_checks]
    return {"ok": all(c.ok for c in checks), "accounts": ledger_report.accounts,
            "transfers": ledger_report.transfers, "holds_pending": ledger_report.holds_pending,
            "checks": [{"name": c.name, "description": c.description, "ok": c.ok, "offending": c.offending,
                        "offending_count": c.offending_count, "detail": c.detail} for c in checks]}
