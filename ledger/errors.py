"""Operating errors of the ledger engine. Per-transfer rejections are `Result` codes, not these."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of the engine's errors: the submission was not (known to be) applied."""


class LedgerAssertionsOff(LedgerError):
    """Python runs with assertions off (`python -O`, PYTHONOPTIMIZE): the engine refuses to start.

    The ledger's invariants (debits equal credits, counters never below zero, a hold resolved once)
    are plain `assert`s, and the engine stops writing when one fails; without them it would write on.
    """


class LedgerOverloaded(LedgerError):
    """The engine's queue is full; nothing was queued. Retry later with the same ids."""


class LedgerClosed(LedgerError):
    """The engine is shutting down or stopped; nothing was queued or the submission was dropped unapplied."""


class LedgerUnavailable(LedgerError):
    """The batch failed in the database (connection lost, timeout, unexpected error).

    The outcome is unknown only if the failure hit the COMMIT itself; resubmitting the same ids is
    always safe: what was applied answers `exists`, the rest is applied once.
    """
