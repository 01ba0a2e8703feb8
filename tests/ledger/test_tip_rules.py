"""Tip fee split and leg construction: the rounding rule, derived ids, the omitted zero fee leg."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import Code, Outcome, Result, TransferFlags
from ledger.chain import chain_result
from ledger.flows.tips import leg_ids, split, tip_transfers
from ledger.model import INT64_MAX


@pytest.mark.parametrize(("amount", "bps", "share", "fee"), [
    (1, 2000, 1, 0),  # 0.2 token rounds down to no fee
    (4, 2000, 4, 0),
    (5, 2000, 4, 1),
    (9, 2000, 8, 1),  # 1.8 rounds down to 1
    (100, 2000, 80, 20),
    (100, 0, 100, 0),
    (100, 10000, 0, 100),
    (7, 3333, 5, 2),
])
def test_split_rounds_the_fee_down(amount: int, bps: int, share: int, fee: int) -> None:
    parts = split(amount, bps)
    assert (parts.share, parts.fee) == (share, fee)


@given(st.integers(1, INT64_MAX // 10_000), st.integers(0, 10_000))
def test_split_always_adds_up(amount: int, bps: int) -> None:
    parts = split(amount, bps)
    assert parts.share + parts.fee == amount
    assert parts.fee * 10_000 <= amount * bps < (parts.fee + 1) * 10_000


@pytest.mark.parametrize(("amount", "bps"), [(0, 2000), (-1, 2000), (10, -1), (10, 10_001)])
def test_split_refuses_bad_input(amount: int, bps: int) -> None:
    with pytest.raises(ValueError):
        split(amount, bps)


def test_legs_fee_first_linked_and_ids_derived_from_the_tip() -> None:
    tip = uuid.uuid4()
    legs = tip_transfers(tip, 100, 200, 50, 2000, {"message": "hi"})
    assert [leg.code for leg in legs] == [Code.FEE, Code.TIP]
    assert legs[0].flags == TransferFlags.LINKED and legs[1].flags == TransferFlags.NONE
    assert (legs[0].amount, legs[1].amount) == (10, 40)
    assert legs[0].credit_account_id == 1 and legs[1].credit_account_id == 200
    assert {legs[0].debit_account_id, legs[1].debit_account_id} == {100}
    share_id, fee_id = leg_ids(tip)
    assert (legs[1].id, legs[0].id) == (share_id, fee_id)
    assert leg_ids(tip) == leg_ids(uuid.UUID(str(tip))), "the same tip id gives the same legs"
    assert leg_ids(uuid.uuid4()) != leg_ids(tip)
    assert legs[1].metadata is not None and legs[1].metadata["gross"] == 50 and legs[1].metadata["fee"] == 10


def test_zero_fee_leaves_the_fee_leg_out() -> None:
    legs = tip_transfers(uuid.uuid4(), 100, 200, 1, 2000, {})
    assert len(legs) == 1 and legs[0].code is Code.TIP and legs[0].amount == 1
    assert legs[0].flags == TransferFlags.NONE


def test_whole_fee_is_one_fee_leg_carrying_the_tip() -> None:
    legs = tip_transfers(uuid.uuid4(), 100, 200, 30, 10_000, {})
    assert len(legs) == 1 and legs[0].code is Code.FEE and legs[0].amount == 30
    assert legs[0].metadata is not None and legs[0].metadata["gross"] == 30


def test_chain_result() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert chain_result([Outcome(a, Result.OK), Outcome(b, Result.OK)]) is Result.OK
    assert chain_result([Outcome(a, Result.EXISTS), Outcome(b, Result.EXISTS)]) is Result.EXISTS
    assert chain_result([Outcome(a, Result.LINKED_EVENT_FAILED),
                         Outcome(b, Result.INSUFFICIENT_FUNDS)]) is Result.INSUFFICIENT_FUNDS
    assert chain_result([Outcome(a, Result.EXISTS_WITH_DIFFERENT_FIELDS),
                         Outcome(b, Result.LINKED_EVENT_FAILED)]) is Result.EXISTS_WITH_DIFFERENT_FIELDS
    # What the batch answers when a stored member is equal and the next one differs (or is new):
    # the chain's ids hold another chain.
    assert chain_result([Outcome(a, Result.EXISTS),
                         Outcome(b, Result.LINKED_EVENT_FAILED)]) is Result.EXISTS_WITH_DIFFERENT_FIELDS
