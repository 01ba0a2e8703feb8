"""The single result of a linked chain (or a lone transfer) from its per-transfer outcomes."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.model import Outcome, Result


def chain_result(outcomes: Sequence[Outcome]) -> Result:
    """OK when the chain applied now, EXISTS when it had applied before, else the failure's cause.

    Members of a failed chain answer `linked_event_failed` except the one that failed; that one
    is the reason reported. A failed chain with a member that answered `exists` collided with
    transfers stored under its ids that are not this chain (the batch stops at the first member
    that breaks a replay, and reports the `exists` before it as the failure): its ids were used
    for a different request, EXISTS_WITH_DIFFERENT_FIELDS. A tip id resubmitted with another
    message keeps its fee leg equal, for one.
    """
    assert outcomes, "a chain has at least one transfer"
    if all(o.applied for o in outcomes):
        # A chain applies as a whole, so its members are all new or all replays.
        return Result.OK if any(o.result is Result.OK for o in outcomes) else Result.EXISTS
    for o in outcomes:
        if not o.applied and o.result is not Result.LINKED_EVENT_FAILED:
            return o.result
    if any(o.result is Result.EXISTS for o in outcomes):
        return Result.EXISTS_WITH_DIFFERENT_FIELDS
    return Result.LINKED_EVENT_FAILED
