"""The audit: every ledger invariant, checked over the whole database in one snapshot.

Recomputes what the engine maintains incrementally and compares: a pair to the assertions the
engine makes on every batch. Read-only; safe to run against a live system (REPEATABLE READ, so a
batch committing meanwhile is either wholly seen or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Offending ids listed per failed check; the count is always complete.
OFFENDERS_MAX = 100


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    description: str
    offending: list[str]  # at most OFFENDERS_MAX ids (accounts, transfers or holds)
    offending_count: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.offending_count == 0

    def format(self) -> list[str]:
        """One line when it holds; two (with the offending ids) when it fails."""
        detail = f" ({self.detail})" if self.detail else ""
        if self.ok:
            return [f"  ok    {self.name}: {self.description}{detail}"]
        hidden = self.offending_count - len(self.offending)
        more = f" (and {hidden} more)" if hidden else ""
        return [f"  FAIL  {self.name}: {self.description}{detail}",
                f"        offending: {', '.join(self.offending)}{more}"]


@dataclass(frozen=True, slots=True)
class AuditReport:
    checks: list[Check]
    accounts: int
    transfers: int
    holds_pending: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def format(self) -> str:
        lines = [f"ledger audit: {self.accounts} accounts, {self.transfers} transfers, "
                 f"{self.holds_pending} pending holds"]
        for c in self.checks:
            lines.extend(c.format())
        lines.append("ledger audit: " + ("clean" if self.ok else "INVARIANTS VIOLATED"))
        return "\n".join(lines)


# name, description, query returning offending ids as text
_CHECKS: list[tuple[str, str, str]] = [
    ("counters_match_transfers", "each account's four counters equal the sums of its transfers", """
WITH moves AS (
    SELECT debit_account_id AS account, amount AS dpo, 0::bigint AS cpo, 0::bigint AS dp, 0::bigint AS cp
    FROM ledger_transfers WHERE flags & 10 = 0  -- single-phase and post: posted
    UNION ALL
    SELECT credit_account_id, 0, amount, 0, 0 FROM ledger_transfers WHERE flags & 10 = 0
    UNION ALL
    SELECT t.debit_account_id, 0, 0, t.amount, 0
    FROM ledger_transfers t JOIN ledger_pending p ON p.pending_id = t.id WHERE p.status = 'pending'
    UNION ALL
    SELECT t.credit_account_id, 0, 0, 0, t.amount
    FROM ledger_transfers t JOIN ledger_pending p ON p.pending_id = t.id WHERE p.status = 'pending'
), sums AS (
    SELECT account, sum(dpo) AS dpo, sum(cpo) AS cpo, sum(dp) AS dp, sum(cp) AS cp FROM moves GROUP BY account
)
SELECT a.id::text FROM ledger_accounts a LEFT JOIN sums s ON s.account = a.id
WHERE a.debits_posted <> coalesce(s.dpo, 0) OR a.credits_posted <> coalesce(s.cpo, 0)
   OR a.debits_pending <> coalesce(s.dp, 0) OR a.credits_pending <> coalesce(s.cp, 0)
UNION ALL
SELECT s.account::text FROM sums s LEFT JOIN ledger_accounts a ON a.id = s.account WHERE a.id IS NULL"""),
    ("bounded_accounts_not_negative", "no account flagged debits_must_not_exceed_credits is overdrawn", """
SELECT id::text FROM ledger_accounts
WHERE flags & 1 = 1 AND debits_posted::numeric + debits_pending > credits_posted"""),
    ("counters_not_negative", "no counter is below zero", """
SELECT id::text FROM ledger_accounts
WHERE debits_pending < 0 OR debits_posted < 0 OR credits_pending < 0 OR credits_posted < 0"""),
    ("ids_applied_once", "each transfer id is stored once", """
SELECT id::text FROM ledger_transfers GROUP BY id HAVING count(*) > 1"""),
    ("transfers_well_formed", "transfers are positive, between two existing different accounts", """
SELECT t.id::text FROM ledger_transfers t
LEFT JOIN ledger_accounts d ON d.id = t.debit_account_id LEFT JOIN ledger_accounts c ON c.id = t.credit_account_id
WHERE t.amount <= 0 OR d.id IS NULL OR c.id IS NULL OR t.debit_account_id = t.credit_account_id"""),
    ("holds_tracked", "each hold has exactly one state row, with its expiry", """
SELECT t.id::text FROM ledger_transfers t LEFT JOIN ledger_pending p ON p.pending_id = t.id
WHERE t.flags & 2 = 2 AND (p.pending_id IS NULL OR p.expires_at IS DISTINCT FROM t.expires_at)
UNION ALL
SELECT p.pending_id::text FROM ledger_pending p LEFT JOIN ledger_transfers t ON t.id = p.pending_id
WHERE t.id IS NULL OR t.flags & 2 = 0"""),
    ("holds_resolved_once", "a hold is posted, voided or expired at most once, as its state says", """
SELECT p.pending_id::text
FROM ledger_pending p JOIN ledger_transfers h ON h.id = p.pending_id
LEFT JOIN ledger_transfers r ON r.id = p.resolved_by
WHERE (p.status = 'posted' AND (r.id IS NULL OR r.flags & 4 = 0 OR r.amount > h.amount))
   OR (p.status = 'voided' AND (r.id IS NULL OR r.flags & 8 = 0 OR r.amount <> h.amount))
   OR (p.status IN ('posted', 'voided') AND (r.pending_id <> p.pending_id
       OR r.debit_account_id <> h.debit_account_id OR r.credit_account_id <> h.credit_account_id))
   OR (p.status = 'expired' AND (h.expires_at IS NULL OR p.resolved_at < h.expires_at))
UNION ALL
SELECT r.id::text FROM ledger_transfers r LEFT JOIN ledger_pending p ON p.pending_id = r.pending_id
WHERE r.flags & 12 <> 0 AND p.resolved_by IS DISTINCT FROM r.id"""),
]


async def audit(db: asyncpg.Pool | asyncpg.Connection) -> AuditReport:
    """Check every invariant; `report.ok` is False when any fails, with the offending ids."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _audit(conn)
    return await _audit(db)


async def _audit(conn: asyncpg.Connection) -> AuditReport:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        totals = await conn.fetchrow("""
            SELECT count(*), coalesce(sum(debits_posted), 0), coalesce(sum(credits_posted), 0),
                   coalesce(sum(debits_pending), 0), coalesce(sum(credits_pending), 0) FROM ledger_accounts""")
        transfers = await conn.fetchval("SELECT count(*) FROM ledger_transfers")
        holds = await conn.fetchval("SELECT count(*) FROM ledger_pending WHERE status = 'pending'")
        assert totals is not None
        _, debits_posted, credits_posted, debits_pending, credits_pending = totals
        balanced = debits_posted == credits_posted and debits_pending == credits_pending
        checks = [Check("debits_equal_credits", "sum of debits equals sum of credits, posted and pending",
                        [] if balanced else ["totals"], 0 if balanced else 1,
                        f"posted {debits_posted} = {credits_posted}, pending {debits_pending} = {credits_pending}"
                        if balanced else
                        f"posted {debits_posted} vs {credits_posted}, pending {debits_pending} vs {credits_pending}")]
        for name, description, query in _CHECKS:
            checks.append(await run_check(conn, name, description, query))
    return AuditReport(checks=checks, accounts=totals[0], transfers=transfers, holds_pending=holds)


async def run_check(conn: asyncpg.Connection, name: str, description: str, query: str, *args: object) -> Check:
    """A check from a query returning the offending ids as text (at most OFFENDERS_MAX kept)."""
    rows = await conn.fetch(f"SELECT q.id, count(*) OVER () FROM ({query}) AS q(id) ORDER BY q.id "
                            f"LIMIT {OFFENDERS_MAX}", *args)
    return Check(name, description, [r[0] for r in rows], rows[0][1] if rows else 0)
