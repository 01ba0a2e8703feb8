"""Derived transfer ids: business events name their legs by uuid5 of their own key.

A retry of the same event (a tip id, a Stripe session, a payout) therefore resubmits the same
transfer ids, and the ledger answers `exists` instead of moving tokens twice.
"""

from __future__ import annotations

import uuid

# Fixed forever: changing it would give every past event new leg ids.
NAMESPACE = uuid.UUID("0f6f1c9e-3a52-5c1b-9d7e-6772656e726d")


def derived_id(*parts: object) -> uuid.UUID:
    """The id of one leg of an event, e.g. `derived_id("tip", tip_id, "share")`."""
    assert parts, "a derived id needs at least one part"
    return uuid.uuid5(NAMESPACE, ":".join(str(p) for p in parts))
