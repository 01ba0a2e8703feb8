"""Ledger: double-entry token accounts and transfers, holds, idempotency, batching, audit.

Knows nothing of rooms or HTTP. Modelled on TigerBeetle (accounts with four counters, immutable
transfers with client-chosen ids, per-transfer result codes, linked chains, two-phase holds).

Writing (only through the engine; one per process, `app[money.LEDGER]` in the server)::

    engine = Engine(dsn, batch_max=..., batch_wait_ms=..., queue_max=...)
    await engine.start()
    outcomes = await engine.submit([Transfer(...), ...])   # one Outcome(id, result) per transfer
    await engine.close()                                   # applies what is queued (bounded)

- One engine per process, one writer task, its own connection. `start()` refuses to run with
  assertions off (`python -O`: `LedgerAssertionsOff`): the ledger's invariants are asserts, and
  a failed one stops the engine rather than let it write wrong. Submissions queue (bounded by
  `queue_max` transfers) and are applied in batches of at most `batch_max` in one transaction:
  accounts locked once each in id order, every transfer checked in queue order in memory, one
  write statement, one COMMIT. Figures: benchmarks/RESULTS.md. The queue and the writer task
  are `writer.BatchWriter` (generic; the stream tip recorder runs on it too).

- `submit` returns only after COMMIT (synchronous_commit on). Results are codes, never
  exceptions: `Result.OK`, `Result.EXISTS` (applied before with equal fields: nothing moved now;
  treat as ok, `Outcome.applied` is True for both), `EXISTS_WITH_DIFFERENT_FIELDS`,
  `INSUFFICIENT_FUNDS`, `ACCOUNT_NOT_FOUND`, `ACCOUNTS_MUST_BE_DIFFERENT`,
  `AMOUNT_MUST_BE_POSITIVE`, `PENDING_NOT_FOUND`, `PENDING_ALREADY_POSTED`,
  `PENDING_ALREADY_VOIDED`, `PENDING_EXPIRED`, `EXCEEDS_PENDING_AMOUNT`, `LINKED_EVENT_FAILED`,
  plus TigerBeetle's shape checks (`FLAGS_ARE_MUTUALLY_EXCLUSIVE`, `PENDING_ID_REQUIRED`,
  `PENDING_ID_MUST_BE_NONE`, `PENDING_ID_MUST_BE_DIFFERENT`,
  `TIMEOUT_RESERVED_FOR_PENDING_TRANSFER`, `PENDING_HAS_DIFFERENT_FIELDS`,
  `PENDING_HAS_DIFFERENT_AMOUNT`, `LINKED_EVENT_CHAIN_OPEN`, `OVERFLOWS`). See `model.Result`.
- Exceptions mean "not applied (as far as known)": `LedgerOverloaded` (queue full: fail fast,
  e.g. HTTP 503/429), `LedgerClosed` (shutting down), `LedgerUnavailable` (the database failed the
  batch). Resubmitting the same ids is always safe. TypeError/ValueError: malformed Transfer
  objects or a submission over `batch_max` (a programming error; nothing queued).
- Idempotency: the transfer id is the key. A failed transfer leaves no trace, so resubmitting
  it is checked afresh (e.g. after a top-up, an `insufficient_funds` tip can succeed).
- A business event with several legs is one submission with every leg but the last flagged
  `TransferFlags.LINKED`: all apply or none (a tip: wallet -> earnings, LINKED; wallet ->
  platform_revenue). A linked chain never spans submissions.
- Holds: `Transfer(..., flags=PENDING, timeout_s=600)` reserves funds (`available` drops,
  `reserved` rises). Post with `Transfer(new_id, 0, 0, amount_or_0, code, flags=POST_PENDING,
  pending_id=hold_id)` (0 accounts = the hold's, amount 0 = the whole hold, less = partial:
  the rest is released); void with `flags=VOID_PENDING` (amount 0 or the hold's). The code must
  equal the hold's. A hold resolves once; after `expires_at` it is `pending_expired` and the
  sweeper releases it (`Sweeper`, every `ledger_sweep_interval_s`), then tells its optional
  `on_expired` callback which holds it expired (`ExpiredHold`: id, accounts, amount, code,
  metadata; after the commit, bounded, best effort: see `ledger.sweeper`).
- Metadata: a small JSON object (`ledger_metadata_max_bytes`, no NUL characters) stored with
  the transfer (room, message, Stripe ids); part of the fields a resubmission must match
  (compared as JSON values: key order and number spelling do not matter).
- `Engine.expire(pending_ids)` releases due holds (the sweeper's call); `Engine.stats` counts
  batches, events, retried and failed batches; `Engine.queued` is the current queue depth.

Reading and creating accounts (any connection or pool; module `accounts`)::

    [wallet] = await create_accounts(db, [NewAccount(AccountKind.WALLET, user_id)])  # get or create
    await lookup_accounts(db, [id, ...])  -> list[Account]   (missing ids left out)
    await accounts_of(db, owner)          -> list[Account]
    await balances(db, account_id)        -> Balance | None  (available, reserved, incoming, posted)
    await account_transfers(db, account_id, cursor=None, limit=50, codes=..., since=..., until=...)
                                          -> Page(items: list[TransferRecord], next_cursor)

System accounts have fixed ids: `SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE]` (1),
`PAYMENT_CLEARING` (2, may go negative: the outside world), `PROMOTIONS` (3, may go negative).
Every other kind carries `DEBITS_MUST_NOT_EXCEED_CREDITS`.
`available = credits_posted - debits_posted - debits_pending`. Each `TransferRecord` carries
`debit_balance_after` / `credit_balance_after` (each side's `available` right after it).

Checking (module `audit`): `await audit(db) -> AuditReport` (`.ok`, `.checks[i].offending`,
`.format()`), also `greenroom audit`.
"""

from ledger.accounts import account_transfers, accounts_of, balances, create_accounts, lookup_accounts
from ledger.audit import AuditReport, audit
from ledger.engine import Engine
from ledger.errors import LedgerAssertionsOff, LedgerClosed, LedgerError, LedgerOverloaded, LedgerUnavailable
from ledger.model import (
    SYSTEM_ACCOUNT_IDS,
    Account,
    AccountFlags,
    AccountKind,
    Balance,
    Code,
    NewAccount,
    Outcome,
    Page,
    PendingStatus,
    Result,
    Transfer,
    TransferFlags,
    TransferRecord,
)
from ledger.sweeper import ExpiredHold, Sweeper

__all__ = [
    "SYSTEM_ACCOUNT_IDS",
    "Account",
    "AccountFlags",
    "AccountKind",
    "AuditReport",
    "Balance",
    "Code",
    "Engine",
    "ExpiredHold",
    "LedgerAssertionsOff",
    "LedgerClosed",
    "LedgerError",
    "LedgerOverloaded",
    "LedgerUnavailable",
    "NewAccount",
    "Outcome",
    "Page",
    "PendingStatus",
    "Result",
    "Sweeper",
    "Transfer",
    "TransferFlags",
    "TransferRecord",
    "account_transfers",
    "accounts_of",
    "audit",
    "balances",
    "create_accounts",
    "lookup_accounts",
]
