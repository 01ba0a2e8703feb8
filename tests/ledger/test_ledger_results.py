"""Every per-transfer result code, produced through the engine against a real database.

Each test states a situation, submits, and checks both the code and that nothing moved when the
code is a rejection (counters and stored rows unchanged).
"""

from __future__ import annotations

import asyncpg
import pytest

from ledger import Code, Engine, Result, Transfer, TransferFlags
from tests.support.ledger_support import (
    CLEARING,
    LINKED,
    PENDING,
    PLATFORM,
    POST,
    PROMOTIONS,
    VOID,
    FakeClock,
    counters,
    fund,
    move,
    tid,
    wallets,
)

SEEN: set[Result] = set()


async def submit(engine: Engine, *transfers: Transfer) -> list[Result]:
    results = [o.result for o in await engine.submit(list(transfers))]
    SEEN.update(results)
    return results


async def rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ledger_transfers"))


async def test_ok_moves_amount_between_both_counters(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    assert await submit(engine, move(a, b, 30)) == [Result.OK]
    assert await counters(db, a) == (0, 30, 0, 100)
    assert await counters(db, b) == (0, 0, 0, 30)


async def test_exists_and_exists_with_different_fields_move_nothing(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    t = move(a, b, 30, metadata={"room": "r1", "n": 1})
    assert await submit(engine, t) == [Result.OK]
    before = (await counters(db, a), await rows(db))
    assert await submit(engine, t) == [Result.EXISTS]
    # Same fields in another key order is the same metadata.
    assert await submit(engine, t._replace(metadata={"n": 1, "room": "r1"})) == [Result.EXISTS]
    for changed in (t._replace(amount=31), t._replace(credit_account_id=PLATFORM), t._replace(code=Code.FEE),
                    t._replace(metadata={"room": "r2", "n": 1}), t._replace(metadata=None),
                    t._replace(flags=PENDING)):
        assert await submit(engine, changed) == [Result.EXISTS_WITH_DIFFERENT_FIELDS], changed
    assert (await counters(db, a), await rows(db)) == before


async def test_insufficient_funds_on_bounded_account_only(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 50)
    assert await submit(engine, move(a, b, 51)) == [Result.INSUFFICIENT_FUNDS]
    assert await submit(engine, move(a, b, 50)) == [Result.OK]
    assert await submit(engine, move(a, b, 1)) == [Result.INSUFFICIENT_FUNDS]
    # Promotions and payment clearing stand for the outside world: they may go negative.
    assert await submit(engine, move(PROMOTIONS, a, 10**9, Code.ADJUSTMENT)) == [Result.OK]
    assert await counters(db, PROMOTIONS) == (0, 10**9, 0, 0)


async def test_account_not_found_for_unknown_and_impossible_ids(engine: Engine, db: asyncpg.Connection) -> None:
    [a] = await wallets(db, 1)
    await fund(engine, a, 10)
    for other in (999_999, -1, 2**63, 2**70):
        assert await submit(engine, move(a, other, 1)) == [Result.ACCOUNT_NOT_FOUND]
        assert await submit(engine, move(other, a, 1)) == [Result.ACCOUNT_NOT_FOUND]
    assert await counters(db, a) == (0, 0, 0, 10)


async def test_accounts_must_be_different(engine: Engine, db: asyncpg.Connection) -> None:
    [a] = await wallets(db, 1)
    assert await submit(engine, move(a, a, 1)) == [Result.ACCOUNTS_MUST_BE_DIFFERENT]


@pytest.mark.parametrize("amount", [0, -1, -(2**63)])
async def test_amount_must_be_positive(engine: Engine, db: asyncpg.Connection, amount: int) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 10)
    assert await submit(engine, move(a, b, amount)) == [Result.AMOUNT_MUST_BE_POSITIVE]
    assert await rows(db) == 1


async def test_overflows_instead_of_a_database_error(engine: Engine, db: asyncpg.Connection) -> None:
    [a] = await wallets(db, 1)
    assert await submit(engine, move(CLEARING, a, 2**63)) == [Result.OVERFLOWS]
    assert await submit(engine, move(CLEARING, a, 2**63 - 1)) == [Result.OK]
    assert await submit(engine, move(PROMOTIONS, a, 1)) == [Result.OVERFLOWS]
    assert await counters(db, a) == (0, 0, 0, 2**63 - 1)


async def test_shape_checks(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    hold = move(a, b, 10, Code.BOOKING, PENDING)
    assert await submit(engine, hold) == [Result.OK]
    cases = [
        (move(a, b, 1, flags=PENDING | POST), Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (move(a, b, 1, flags=POST | VOID, pending_id=hold.id), Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (move(a, b, 1, pending_id=hold.id), Result.PENDING_ID_MUST_BE_NONE),
        (move(0, 0, 0, Code.BOOKING, POST), Result.PENDING_ID_REQUIRED),
        (move(a, b, 1, timeout_s=5), Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (move(0, 0, 0, Code.BOOKING, VOID, pending_id=hold.id, timeout_s=5),
         Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (move(a, a, 0, Code.BOOKING, POST, pending_id=hold.id), Result.ACCOUNTS_MUST_BE_DIFFERENT),
        (move(0, 0, -1, Code.BOOKING, POST, pending_id=hold.id), Result.AMOUNT_MUST_BE_POSITIVE),
    ]
    for transfer, expected in cases:
        assert await submit(engine, transfer) == [expected], transfer
    same = tid()
    assert await submit(engine, Transfer(same, 0, 0, 0, Code.BOOKING, POST, same)) == \
        [Result.PENDING_ID_MUST_BE_DIFFERENT]
    assert await counters(db, a) == (10, 0, 0, 100)


async def test_pending_codes(engine: Engine, db: asyncpg.Connection, clock: FakeClock) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    hold = move(a, b, 40, Code.BOOKING, PENDING, timeout_s=60)
    assert await submit(engine, hold) == [Result.OK]
    assert await submit(engine, move(0, 0, 0, Code.BOOKING, POST, pending_id=tid())) == [Result.PENDING_NOT_FOUND]
    # The id of a single-phase transfer is not a hold.
    plain = move(a, b, 1)
    assert await submit(engine, plain) == [Result.OK]
    assert await submit(engine, move(0, 0, 0, Code.TIP, POST, pending_id=plain.id)) == [Result.PENDING_NOT_FOUND]
    assert await submit(engine, move(0, 0, 41, Code.BOOKING, POST, pending_id=hold.id)) == \
        [Result.EXCEEDS_PENDING_AMOUNT]
    assert await submit(engine, move(0, 0, 39, Code.BOOKING, VOID, pending_id=hold.id)) == \
        [Result.PENDING_HAS_DIFFERENT_AMOUNT]
    assert await submit(engine, move(0, 0, 0, Code.TIP, POST, pending_id=hold.id)) == \
        [Result.PENDING_HAS_DIFFERENT_FIELDS]
    assert await submit(engine, move(b, 0, 0, Code.BOOKING, POST, pending_id=hold.id)) == \
        [Result.PENDING_HAS_DIFFERENT_FIELDS]
    assert await submit(engine, move(0, PLATFORM, 0, Code.BOOKING, POST, pending_id=hold.id)) == \
        [Result.PENDING_HAS_DIFFERENT_FIELDS]
    post = move(a, b, 0, Code.BOOKING, POST, pending_id=hold.id)
    assert await submit(engine, post) == [Result.OK]
    assert await submit(engine, move(0, 0, 0, Code.BOOKING, POST, pending_id=hold.id)) == \
        [Result.PENDING_ALREADY_POSTED]
    assert await submit(engine, move(0, 0, 0, Code.BOOKING, VOID, pending_id=hold.id)) == \
        [Result.PENDING_ALREADY_POSTED]
    hold2 = move(a, b, 5, Code.BOOKING, PENDING)
    assert await submit(engine, hold2, move(0, 0, 5, Code.BOOKING, VOID, pending_id=hold2.id)) == \
        [Result.OK, Result.OK]
    assert await submit(engine, move(0, 0, 0, Code.BOOKING, POST, pending_id=hold2.id)) == \
        [Result.PENDING_ALREADY_VOIDED]
    hold3 = move(a, b, 5, Code.BOOKING, PENDING, timeout_s=10)
    assert await submit(engine, hold3) == [Result.OK]
    clock.advance(10)
    assert await submit(engine, move(0, 0, 0, Code.BOOKING, POST, pending_id=hold3.id)) == [Result.PENDING_EXPIRED]
    assert await engine.expire([hold3.id, hold.id, hold2.id, tid()]) == [
        Result.OK, Result.PENDING_ALREADY_POSTED, Result.PENDING_ALREADY_VOIDED, Result.PENDING_NOT_FOUND]
    hold4 = move(a, b, 5, Code.BOOKING, PENDING, timeout_s=10)
    assert await submit(engine, hold4) == [Result.OK]
    assert await engine.expire([hold4.id, hold3.id]) == [Result.PENDING_NOT_EXPIRED, Result.PENDING_EXPIRED]
    SEEN.update([Result.PENDING_NOT_EXPIRED])
    # a: 100 in; 40 posted to b; 1 single-phase; hold4 (5) still reserved.
    assert await counters(db, a) == (5, 41, 0, 100)
    assert await counters(db, b) == (0, 0, 5, 41)


async def test_linked_chain_fails_together(engine: Engine, db: asyncpg.Connection) -> None:
    a, b, c = await wallets(db, 3)
    await fund(engine, a, 100)
    before = await rows(db)
    results = await submit(engine, move(a, b, 60, flags=LINKED), move(a, c, 30, flags=LINKED), move(a, c, 20),
                           move(a, b, 5))
    # The third leg would overdraw: the whole chain fails, the next (unlinked) transfer stands alone.
    assert results == [Result.LINKED_EVENT_FAILED, Result.LINKED_EVENT_FAILED, Result.INSUFFICIENT_FUNDS,
                       Result.OK]
    assert await rows(db) == before + 1
    assert await counters(db, a) == (0, 5, 0, 100)
    assert await counters(db, c) == (0, 0, 0, 0)


async def test_linked_chain_open_at_end_of_submission(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    assert await submit(engine, move(a, b, 1), move(a, b, 2, flags=LINKED), move(a, b, 3, flags=LINKED)) == \
        [Result.OK, Result.LINKED_EVENT_FAILED, Result.LINKED_EVENT_CHAIN_OPEN]
    assert await counters(db, a) == (0, 1, 0, 100)


async def test_linked_chain_replayed_whole_answers_exists(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    chain = [move(a, b, 80, flags=LINKED), move(a, PLATFORM, 10)]
    assert await submit(engine, *chain) == [Result.OK, Result.OK]
    assert await submit(engine, *chain) == [Result.EXISTS, Result.EXISTS]
    # A chain mixing an applied member with a new one is refused whole: the new leg never applies
    # without the old one's chain.
    mixed = [chain[0], move(a, PLATFORM, 1)]
    assert await submit(engine, *mixed) == [Result.EXISTS, Result.LINKED_EVENT_FAILED]
    mixed = [move(a, PLATFORM, 1, flags=LINKED), chain[1]]
    assert await submit(engine, *mixed) == [Result.LINKED_EVENT_FAILED, Result.EXISTS]
    assert await counters(db, a) == (0, 90, 0, 100)


async def test_linked_chain_undoes_its_holds_and_posts(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 100)
    hold = Transfer(tid(), a, b, 50, Code.BOOKING, PENDING | LINKED)
    post = Transfer(tid(), 0, 0, 20, Code.BOOKING, POST | LINKED, hold.id)
    bad = move(a, b, 1000)
    assert await submit(engine, hold, post, bad) == \
        [Result.LINKED_EVENT_FAILED, Result.LINKED_EVENT_FAILED, Result.INSUFFICIENT_FUNDS]
    assert await counters(db, a) == (0, 0, 0, 100)
    assert await db.fetchval("SELECT count(*) FROM ledger_pending") == 0
    # The same ids were never stored: they apply now.
    assert await submit(engine, hold, post._replace(flags=POST)) == [Result.OK, Result.OK]
    assert await counters(db, a) == (0, 20, 0, 100)


async def test_flags_as_plain_int_are_accepted(engine: Engine, db: asyncpg.Connection) -> None:
    a, b = await wallets(db, 2)
    await fund(engine, a, 10)
    outcomes = await engine.submit([Transfer(tid(), a, b, 1, Code.TIP, TransferFlags(1)),
                                    Transfer(tid(), a, b, 1, Code.TIP, 0)])  # type: ignore[arg-type]
    assert [o.result for o in outcomes] == [Result.OK, Result.OK]


def test_every_result_code_was_produced(request: pytest.FixtureRequest) -> None:
    """Defined last, so it runs last: the tests above must have produced every code there is."""
    selected = {item.name for item in request.session.items if getattr(item, "module", None) is request.module}
    if len(selected) < 10:
        pytest.skip("meaningful only when the whole module runs")
    missing = set(Result) - SEEN
    assert not missing, f"no test produced {sorted(missing)}"
