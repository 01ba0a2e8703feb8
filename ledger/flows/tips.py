"""Tips: a viewer's tokens to a performer, split between the performer and the platform.

Rounding rule: `fee = amount * fee_bps // 10_000` (rounded down) and the performer gets
`amount - fee`. Rounding down means the platform never takes a fraction it is not owed: a
1-token tip at 20 % carries no fee. A fee of 0 leaves the fee leg out (the ledger refuses
zero amounts).

Legs, one linked chain (all or nothing):
  1. wallet -> platform_revenue, `fee`, code `fee`, LINKED   (left out when fee is 0)
  2. wallet -> earnings, `amount - fee`, code `tip`
The fee leg comes first so the performer leg's `debit_balance_after` is the wallet after the
whole tip: the history shows one `tip_sent` row carrying the gross amount and the fee.
Leg ids are uuid5 of the client-chosen tip id, so a retried tip id moves nothing twice; the same
id with any field changed moves nothing and answers `exists_with_different_fields`, also when the
fee leg is unchanged (another message, or another amount with the same fee: `chain_result`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger.accounts import Db
from ledger.chain import chain_result
from ledger.directory import AccountDirectory
from ledger.engine import Engine
from ledger.ids import derived_id
from ledger.model import SYSTEM_ACCOUNT_IDS, AccountKind, Code, Result, Transfer, TransferFlags

BPS_DENOMINATOR = 10_000


@dataclass(frozen=True, slots=True)
class Split:
    share: int  # to the performer
    fee: int  # to the platform


@dataclass(frozen=True, slots=True)
class TipOutcome:
    tip_id: UUID
    result: Result  # OK, EXISTS (an earlier submission of this tip id applied), or why it failed
    amount: int
    share: int
    fee: int

    @property
    def applied(self) -> bool:
        return self.result is Result.OK or self.result is Result.EXISTS


def split(amount: int, fee_bps: int) -> Split:
    """The fee rounded down; the performer gets the rest. `share + fee == amount` always."""
    if amount <= 0:
        raise ValueError("a tip amount is positive")
    if not 0 <= fee_bps <= BPS_DENOMINATOR:
        raise ValueError("fee_bps is in 0..10000")
    fee = amount * fee_bps // BPS_DENOMINATOR
    result = Split(share=amount - fee, fee=fee)
    assert result.share + result.fee == amount and 0 <= result.fee <= amount
    return result


def leg_ids(tip_id: UUID) -> tuple[UUID, UUID]:
    """(performer leg, fee leg) transfer ids of a tip."""
    return derived_id("tip", tip_id, "share"), derived_id("tip", tip_id, "fee")


def tip_transfers(tip_id: UUID, wallet_id: int, earnings_id: int, amount: int, fee_bps: int,
                  metadata: Mapping[str, Any]) -> list[Transfer]:
    """The legs of one tip (see the module doc); `metadata` goes on the performer leg."""
    parts = split(amount, fee_bps)
    share_id, fee_id = leg_ids(tip_id)
    share_meta = {**metadata, "tip": str(tip_id), "gross": amount, "fee": parts.fee}
    legs: list[Transfer] = []
    if parts.fee:
        legs.append(Transfer(fee_id, wallet_id, SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE], parts.fee,
                             Code.FEE, TransferFlags.LINKED, metadata={"tip": str(tip_id)}))
    if parts.share:
        legs.append(Transfer(share_id, wallet_id, earnings_id, parts.share, Code.TIP, metadata=share_meta))
    else:
        # A 100 % fee: the fee leg is the whole tip; it carries what the share leg would have.
        legs = [Transfer(fee_id, wallet_id, SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE], parts.fee,
                         Code.FEE, metadata={**share_meta})]
    return legs


async def tip_applied(db: Db, tip_id: UUID) -> bool:
    """Whether the ledger holds the tip (its legs apply together: any one of them tells)."""
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM ledger_transfers WHERE id = ANY($1::uuid[]))",
                                  list(leg_ids(tip_id))))


async def transfer_tip(engine: Engine, directory: AccountDirectory, *, tip_id: UUID, sender: UUID,
                       recipient: UUID, amount: int, fee_bps: int,
                       metadata: Mapping[str, Any] | None = None) -> TipOutcome:
    """Move one tip from `sender`'s wallet to `recipient`'s earnings (and the fee to the platform).

    Who may tip whom is the caller's rule; this refuses only what the ledger must:
    `sender == recipient` (ValueError, a programming error) and non-positive amounts.
    Raises the engine's `LedgerError`s (nothing known applied; retry with the same tip id).
    """
    if sender == recipient:
        raise ValueError("a tip needs two different users")
    wallet_id, earnings_id = await directory.ids([(AccountKind.WALLET, sender), (AccountKind.EARNINGS, recipient)])
    legs = tip_transfers(tip_id, wallet_id, earnings_id, amount, fee_bps,
                         {**(metadata or {}), "from": str(sender), "to": str(recipient)})
    outcomes = await engine.submit(legs)
    parts = split(amount, fee_bps)
    return TipOutcome(tip_id, chain_result(outcomes), amount, parts.share, parts.fee)
