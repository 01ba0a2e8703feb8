"""Hypothesis stateful test: random ledger histories through the engine against a pure-Python model.

Each step draws one of: new accounts; a burst of 1-4 submissions gathered concurrently (single
transfers, linked chains, holds, posts, voids, replays of earlier ids with equal or changed fields,
hostile amounts and unknown accounts); a jump of the clock; a sweep of due holds. Submissions
gathered together share batches and are applied in queue order, so the model applies them one
after another in the same order and must predict every result code exactly. After every step the
database must equal the model (counters of every account, hold states, which ids are stored) and
the audit must be clean.

The model below is written from the semantics (TigerBeetle's create_transfers as documented in
ledger/batch.py), with its own structure: chains snapshot and restore the whole state.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ledger import Code, Engine, Result, Sweeper, Transfer, TransferFlags, audit
from tests.support.ledger_support import CLEARING, PLATFORM, FakeClock, start_engine, wallets

INT64_MAX = 2**63 - 1
UNKNOWN_ACCOUNT = 987_654_321
R = Result


@dataclass
class MAccount:
    bounded: bool
    dp: int = 0
    dpo: int = 0
    cp: int = 0
    cpo: int = 0


@dataclass
class MHold:
    debit: int
    credit: int
    amount: int
    code: Code
    expires_at: datetime | None
    status: str = "pending"


@dataclass
class Model:
    now: datetime
    accounts: dict[int, MAccount] = field(default_factory=dict)
    stored: dict[uuid.UUID, tuple[Any, ...]] = field(default_factory=dict)
    holds: dict[uuid.UUID, MHold] = field(default_factory=dict)

    def submit(self, transfers: list[Transfer]) -> list[Result]:
        out: list[Result] = []
        i = 0
        while i < len(transfers):
            j = i
            while j < len(transfers) and transfers[j].flags & TransferFlags.LINKED:
                j += 1
            if j == len(transfers):
                out += [R.LINKED_EVENT_FAILED] * (j - i - 1) + [R.LINKED_EVENT_CHAIN_OPEN]
                break
            chain = transfers[i:j + 1]
            if len(chain) == 1:
                out.append(self.one(chain[0]))
            else:
                out += self.chain(chain)
            i = j + 1
        return out

    def chain(self, chain: list[Transfer]) -> list[Result]:
        saved = (copy.deepcopy(self.accounts), dict(self.stored), copy.deepcopy(self.holds))
        got: list[Result] = []
        for t in chain:
            got.append(self.one(t))
            if got[-1] is not R.OK and not all(r is R.EXISTS for r in got):
                break
        if len(got) == len(chain) and (all(r is R.OK for r in got) or all(r is R.EXISTS for r in got)):
            return got
        self.accounts, self.stored, self.holds = saved
        first = next(k for k, r in enumerate(got) if r is not R.OK)
        return [got[first] if k == first else R.LINKED_EVENT_FAILED for k in range(len(chain))]

    def one(self, t: Transfer) -> Result:
        phase = int(t.flags) & 14
        if phase not in (0, 2, 4, 8):
            return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if phase in (4, 8):
            return self.resolve(t)
        if t.pending_id is not None:
            return R.PENDING_ID_MUST_BE_NONE
        if t.timeout_s and phase != 2:
            return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.debit_account_id == t.credit_account_id:
            return R.ACCOUNTS_MUST_BE_DIFFERENT
        if t.amount <= 0:
            return R.AMOUNT_MUST_BE_POSITIVE
        if t.id in self.stored:
            return R.EXISTS if self.stored[t.id] == key(t) else R.EXISTS_WITH_DIFFERENT_FIELDS
        d, c = self.accounts.get(t.debit_account_id), self.accounts.get(t.credit_account_id)
        if d is None or c is None:
            return R.ACCOUNT_NOT_FOUND
        if phase == 2 and max(d.dp, c.cp) + t.amount > INT64_MAX:
            return R.OVERFLOWS
        if phase == 0 and max(d.dpo, c.cpo) + t.amount > INT64_MAX:
            return R.OVERFLOWS
        if d.bounded and d.dp + d.dpo + t.amount > d.cpo:
            return R.INSUFFICIENT_FUNDS
        if phase == 2:
            d.dp += t.amount
            c.cp += t.amount
            expires = self.now + timedelta(seconds=t.timeout_s) if t.timeout_s else None
            self.holds[t.id] = MHold(t.debit_account_id, t.credit_account_id, t.amount, t.code, expires)
        else:
            d.dpo += t.amount
            c.cpo += t.amount
        self.stored[t.id] = key(t)
        return R.OK

    def resolve(self, t: Transfer) -> Result:
        if t.pending_id is None:
            return R.PENDING_ID_REQUIRED
        if t.pending_id == t.id:
            return R.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout_s:
            return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.debit_account_id and t.debit_account_id == t.credit_account_id:
            return R.ACCOUNTS_MUST_BE_DIFFERENT
        if t.amount < 0:
            return R.AMOUNT_MUST_BE_POSITIVE
        h = self.holds.get(t.pending_id)
        if t.id in self.stored:
            if h is None:
                return R.EXISTS_WITH_DIFFERENT_FIELDS
            filled = t._replace(debit_account_id=t.debit_account_id or h.debit,
                                credit_account_id=t.credit_account_id or h.credit, amount=t.amount or h.amount)
            return R.EXISTS if self.stored[t.id] == key(filled) else R.EXISTS_WITH_DIFFERENT_FIELDS
        if h is None:
            return R.PENDING_NOT_FOUND
        if t.debit_account_id not in (0, h.debit) or t.credit_account_id not in (0, h.credit) or t.code != h.code:
            return R.PENDING_HAS_DIFFERENT_FIELDS
        gone = {"posted": R.PENDING_ALREADY_POSTED, "voided": R.PENDING_ALREADY_VOIDED, "expired": R.PENDING_EXPIRED}
        if h.status in gone:
            return gone[h.status]
        if h.expires_at is not None and self.now >= h.expires_at:
            return R.PENDING_EXPIRED
        posting = bool(t.flags & TransferFlags.POST_PENDING)
        amount = (t.amount or h.amount) if posting else h.amount
        if posting and amount > h.amount:
            return R.EXCEEDS_PENDING_AMOUNT
        if not posting and t.amount not in (0, h.amount):
            return R.PENDING_HAS_DIFFERENT_AMOUNT
        d, c = self.accounts[h.debit], self.accounts[h.credit]
        d.dp -= h.amount
        c.cp -= h.amount
        if posting:
            d.dpo += amount
            c.cpo += amount
        h.status = "posted" if posting else "voided"
        self.stored[t.id] = key(t._replace(debit_account_id=h.debit, credit_account_id=h.credit, amount=amount))
        return R.OK

    def expire_due(self) -> None:
        for h in self.holds.values():
            if h.status == "pending" and h.expires_at is not None and h.expires_at <= self.now:
                h.status = "expired"
                self.accounts[h.debit].dp -= h.amount
                self.accounts[h.credit].cp -= h.amount


def key(t: Transfer) -> tuple[Any, ...]:
    meta = orjson.dumps(t.metadata, option=orjson.OPT_SORT_KEYS) if t.metadata is not None else None
    return (t.debit_account_id, t.credit_account_id, t.amount, t.code, int(t.flags), t.pending_id, t.timeout_s, meta)


# Mostly valid amounts; now and then one that must be refused.
AMOUNTS = st.integers(0, 11).flatmap(lambda k: st.integers(1, 120) if k else st.sampled_from([0, -3, 2**63]))
CODES = st.sampled_from([Code.TIP, Code.BOOKING])


class LedgerMachine(RuleBasedStateMachine):
    dsn: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = FakeClock()
        self.engine: Engine = self.run(start_engine(self.dsn, clock=self.clock, batch_wait_ms=3))
        # Another process's writer: what it applies leaves `engine`'s cached counters stale.
        self.other: Engine = self.run(start_engine(self.dsn, clock=self.clock))
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(self.dsn))
        self.sweeper = Sweeper(self.engine, self.conn, interval_s=1, batch_max=1000)
        self.model = Model(now=self.clock.now)
        self.wallets: list[int] = []
        self.sent: list[Transfer] = []  # everything submitted, applied or not
        for system in (CLEARING, PLATFORM):
            row = self.run(self.conn.fetchrow("SELECT flags, debits_pending, debits_posted, credits_pending, "
                                              "credits_posted FROM ledger_accounts WHERE id = $1", system))
            assert row is not None
            self.model.accounts[system] = MAccount(bool(row[0]), row[1], row[2], row[3], row[4])
        self.open_wallets(3)

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        self.run(self.engine.close())
        self.run(self.other.close())
        self.run(self.conn.close())
        self.runner.close()

    @rule(count=st.integers(1, 2))
    def open_wallets(self, count: int) -> None:
        ids = self.run(wallets(self.conn, count))
        funding = [Transfer(uuid.uuid4(), CLEARING, account, 400, Code.PURCHASE) for account in ids]
        self.run(self.engine.submit(funding))
        self.model.accounts[CLEARING].dpo += 400 * len(ids)
        for account in ids:
            self.model.accounts[account] = MAccount(bounded=True, cpo=400)
        self.wallets += ids

    @rule(data=st.data(), count=st.integers(1, 4))
    def submit_concurrently(self, data: st.DataObject, count: int) -> None:
        submissions = [self.draw_submission(data) for _ in range(count)]

        async def gathered() -> list[list[Result]]:
            outcomes = await asyncio.gather(*(self.engine.submit(s) for s in submissions))
            return [[o.result for o in per] for per in outcomes]

        got = self.run(gathered())
        for submission, results in zip(submissions, got, strict=True):
            self.sent += submission
            assert results == self.model.submit(submission), submission

    @rule(data=st.data())
    def submit_through_another_process(self, data: st.DataObject) -> None:
        submission = self.draw_submission(data)
        got = self.run(self.other.submit(submission))
        self.sent += submission
        assert [o.result for o in got] == self.model.submit(submission), submission

    @rule(seconds=st.sampled_from([5, 10]))
    def time_passes(self, seconds: int) -> None:
        # Holds fall due without the sweeper: posts and voids must already refuse them.
        self.clock.advance(seconds)
        self.model.now = self.clock.now

    @rule()
    def sweep(self) -> None:
        for _ in range(20):  # a sweep expires at most batch_max holds
            if self.run(self.sweeper.sweep()) == 0:
                break
        self.model.expire_due()

    # --- drawing submissions -------------------------------------------------------------

    def draw_submission(self, data: st.DataObject) -> list[Transfer]:
        shape = data.draw(st.sampled_from(["single", "single", "chain", "chain", "hold", "hold", "resolve", "resolve",
                                           "replay", "fund"]))
        if shape == "chain":
            legs = [self.draw_leg(data) for _ in range(data.draw(st.integers(2, 3)))]
            return [t._replace(flags=t.flags | TransferFlags.LINKED) for t in legs[:-1]] + [legs[-1]]
        if shape == "replay" and self.sent:
            old = data.draw(st.sampled_from(self.sent))
            changed = data.draw(st.sampled_from(["same", "same", "amount", "metadata"]))
            if changed == "amount":
                return [old._replace(amount=old.amount + 1)]
            if changed == "metadata":
                return [old._replace(metadata={"changed": True})]
            return [old]
        if shape == "fund":
            return [Transfer(uuid.uuid4(), CLEARING, data.draw(st.sampled_from(self.wallets)),
                             data.draw(st.integers(1, 300)), Code.PURCHASE)]
        return [self.draw_leg(data, shape)]

    def draw_leg(self, data: st.DataObject, shape: str | None = None) -> Transfer:
        shape = shape or data.draw(st.sampled_from(["single", "hold", "resolve"]))
        if shape == "hold":
            debit, credit = data.draw(st.permutations(self.wallets))[:2]
            return Transfer(uuid.uuid4(), debit, credit, data.draw(AMOUNTS), data.draw(CODES), TransferFlags.PENDING,
                            timeout_s=data.draw(st.sampled_from([0, 10, 20])))
        if shape == "resolve":
            return self.draw_resolve(data)
        accounts = [*self.wallets, PLATFORM, CLEARING, UNKNOWN_ACCOUNT]
        debit = data.draw(st.sampled_from(accounts))
        credit = data.draw(st.sampled_from(accounts))
        metadata = data.draw(st.sampled_from([None, {"room": "r1"}]))
        return Transfer(uuid.uuid4(), debit, credit, data.draw(AMOUNTS), Code.TIP, metadata=metadata)

    def draw_resolve(self, data: st.DataObject) -> Transfer:
        # Mostly holds that applied (pending or already resolved), sometimes any hold sent or none.
        applied = [t for t in self.sent if t.id in self.model.holds]
        holds = applied if applied and data.draw(st.integers(0, 4)) else \
            [t for t in self.sent if t.flags & TransferFlags.PENDING]
        flags = data.draw(st.sampled_from([TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING]))
        if not holds or data.draw(st.integers(0, 9)) == 0:
            return Transfer(uuid.uuid4(), 0, 0, 0, Code.BOOKING, flags, uuid.uuid4())
        hold = data.draw(st.sampled_from(holds))
        amount = data.draw(st.sampled_from([0, hold.amount, max(hold.amount // 2, 1), hold.amount + 1]))
        code = hold.code if data.draw(st.integers(0, 9)) else Code.FEE
        debit = data.draw(st.sampled_from([0, hold.debit_account_id]))
        return Transfer(uuid.uuid4(), debit, 0, amount, code, flags, hold.id)

    # --- after every step ----------------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        ids = list(self.model.accounts)
        rows = self.run(self.conn.fetch("SELECT id, debits_pending, debits_posted, credits_pending, credits_posted "
                                        "FROM ledger_accounts WHERE id = ANY($1)", ids))
        for row in rows:
            m = self.model.accounts[row[0]]
            assert (row[1], row[2], row[3], row[4]) == (m.dp, m.dpo, m.cp, m.cpo), row[0]
        assert len(rows) == len(ids)
        sent_ids = list({t.id for t in self.sent})
        stored = self.run(self.conn.fetch("SELECT id FROM ledger_transfers WHERE id = ANY($1)", sent_ids))
        assert {r[0] for r in stored} == set(self.model.stored)
        holds = self.run(self.conn.fetch("SELECT pending_id, status FROM ledger_pending WHERE pending_id = ANY($1)",
                                         list(self.model.holds)))
        assert {r[0]: r[1] for r in holds} == {k: h.status for k, h in self.model.holds.items()}

    @invariant()
    def audit_is_clean(self) -> None:
        report = self.run(audit(self.conn))
        assert report.ok, report.format()


@pytest.mark.timeout(600)  # a pass takes ~25 s; shrinking a failure to its minimal history takes longer
async def test_ledger_matches_model_under_random_concurrent_histories(dsn: str) -> None:
    LedgerMachine.dsn = dsn
    # Its own thread: the machine drives its own event loop (hypothesis rules are synchronous).
    await asyncio.to_thread(
        run_state_machine_as_test, LedgerMachine,
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
