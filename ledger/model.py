"""The ledger's nouns: accounts, transfers, flags, codes and per-transfer results.

Modelled on TigerBeetle: an account has four counters and flags; a transfer moves a positive
integer amount from one debit account to one credit account, so every transfer is balanced by
construction. Amounts are integer tokens stored as PostgreSQL bigint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntFlag, StrEnum
from typing import Any, NamedTuple
from uuid import UUID

INT64_MAX = 2**63 - 1
# A hold's timeout is stored as PostgreSQL integer.
TIMEOUT_S_MAX = 2**31 - 1
# Most rows one `account_transfers` call returns; callers page with the cursor.
PAGE_LIMIT_MAX = 1000


class AccountKind(StrEnum):
    WALLET = "wallet"  # a user's spendable tokens
    EARNINGS = "earnings"  # a performer's tips and sales, paid out later
    PLATFORM_REVENUE = "platform_revenue"
    PAYMENT_CLEARING = "payment_clearing"  # the outside world: purchases come from it, payouts go to it
    ESCROW = "escrow"  # tokens held for a booking until it settles
    PROMOTIONS = "promotions"  # source of granted tokens


class AccountFlags(IntFlag):
    NONE = 0
    # debits_posted + debits_pending <= credits_posted: the account can never go below zero.
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1


# System accounts exist once each (owner is NULL), seeded by migration with these ids.
SYSTEM_ACCOUNT_IDS: dict[AccountKind, int] = {
    AccountKind.PLATFORM_REVENUE: 1,
    AccountKind.PAYMENT_CLEARING: 2,
    AccountKind.PROMOTIONS: 3,
}
# Kinds that stand for the outside world may go negative; everything a person owns may not.
UNBOUNDED_KINDS = frozenset({AccountKind.PAYMENT_CLEARING, AccountKind.PROMOTIONS})
assert set(SYSTEM_ACCOUNT_IDS) >= UNBOUNDED_KINDS, "only system accounts may go negative"


def flags_for(kind: AccountKind) -> AccountFlags:
    """The flags every account of `kind` carries (flags follow from the kind, never from callers)."""
    if kind in UNBOUNDED_KINDS:
        return AccountFlags.NONE
    return AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1  # succeeds or fails together with the next transfer of the same submission
    PENDING = 2  # a hold: reserves funds until posted, voided or expired
    POST_PENDING = 4  # posts (all or part of) the hold named by pending_id
    VOID_PENDING = 8  # releases the hold named by pending_id


TRANSFER_FLAGS_ALL = TransferFlags.LINKED | TransferFlags.PENDING | TransferFlags.POST_PENDING | \
    TransferFlags.VOID_PENDING
TWO_PHASE_RESOLVE = TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING


class Code(StrEnum):
    """Why a transfer happened (TigerBeetle's `code`)."""

    PURCHASE = "purchase"
    TIP = "tip"
    FEE = "fee"
    BOOKING = "booking"
    REFUND = "refund"
    PAYOUT = "payout"
    REVERSAL = "reversal"
    ADJUSTMENT = "adjustment"


class Result(StrEnum):
    """The outcome of one transfer; listed in descending precedence where several apply."""

    OK = "ok"
    LINKED_EVENT_FAILED = "linked_event_failed"  # another transfer of its linked chain failed
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"  # the submission's last transfer is linked
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    PENDING_ID_MUST_BE_NONE = "pending_id_must_be_none"  # pending_id on a non post/void transfer
    PENDING_ID_REQUIRED = "pending_id_required"  # post/void without pending_id
    PENDING_ID_MUST_BE_DIFFERENT = "pending_id_must_be_different"  # post/void naming itself
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    EXISTS = "exists"  # the same transfer was applied before: nothing moved this time
    ACCOUNT_NOT_FOUND = "account_not_found"
    PENDING_NOT_FOUND = "pending_not_found"
    PENDING_HAS_DIFFERENT_FIELDS = "pending_has_different_fields"  # accounts or code differ from the hold
    PENDING_ALREADY_POSTED = "pending_already_posted"
    PENDING_ALREADY_VOIDED = "pending_already_voided"
    PENDING_EXPIRED = "pending_expired"
    PENDING_NOT_EXPIRED = "pending_not_expired"  # only for expiries: the hold is not due yet
    EXCEEDS_PENDING_AMOUNT = "exceeds_pending_amount"  # post of more than the hold
    PENDING_HAS_DIFFERENT_AMOUNT = "pending_has_different_amount"  # void naming another amount
    OVERFLOWS = "overflows"  # a counter would pass the bigint range
    INSUFFICIENT_FUNDS = "insufficient_funds"


class PendingStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


# Transfer and Outcome are NamedTuples (immutable like a frozen dataclass, but about 4x cheaper to
# create): the engine handles tens of thousands per second.
class Transfer(NamedTuple):
    """One movement of `amount` tokens, identified by a client-chosen id.

    Post and void transfers (flags POST_PENDING / VOID_PENDING) name the hold in `pending_id`;
    their account ids may be 0 (taken from the hold) and their amount may be 0 (the whole hold).
    A post of less than the hold posts that much and releases the rest.
    """

    id: UUID
    debit_account_id: int
    credit_account_id: int
    amount: int
    code: Code
    flags: TransferFlags = TransferFlags.NONE
    pending_id: UUID | None = None
    timeout_s: int = 0  # holds only: seconds until the sweeper voids it; 0 never expires
    metadata: Mapping[str, Any] | None = None


class Outcome(NamedTuple):
    id: UUID
    result: Result

    @property
    def applied(self) -> bool:
        """True when the transfer is in the ledger: applied now (`ok`) or before (`exists`)."""
        return self.result is Result.OK or self.result is Result.EXISTS


@dataclass(frozen=True, slots=True)
class NewAccount:
    kind: AccountKind
    owner: UUID | None  # the user (wallet, earnings) or booking (escrow); None for system accounts


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    kind: AccountKind
    owner: UUID | None
    flags: AccountFlags
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    created_at: datetime

    @property
    def available(self) -> int:
        """What the account can spend now: posted credits minus posted debits and holds."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    @property
    def reserved(self) -> int:
        """Tokens held by pending debits (not spendable until posted or voided)."""
        return self.debits_pending


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: int
    available: int  # credits_posted - debits_posted - debits_pending
    reserved: int  # debits_pending
    incoming: int  # credits_pending: held for this account, not yet posted
    posted: int  # credits_posted - debits_posted


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A transfer as stored. Post/void records carry the hold's accounts and the amount that moved."""

    id: UUID
    seq: int  # order of application; the cursor of `account_transfers`
    debit_account_id: int
    credit_account_id: int
    amount: int
    code: Code
    flags: TransferFlags
    pending_id: UUID | None
    timeout_s: int
    expires_at: datetime | None
    # `available` of each account right after this transfer (expiries between rows are not rows).
    debit_balance_after: int
    credit_balance_after: int
    metadata: dict[str, Any] | None
    created_at: datetime
    pending_status: PendingStatus | None  # for holds: what became of them; None otherwise


@dataclass(frozen=True, slots=True)
class Page:
    items: list[TransferRecord]
    next_cursor: int | None  # pass back to get older rows; None when there are none
