"""The batch writer on its own (ledger.writer.BatchWriter): bounded queue, order, group commit,
failures per batch, nudges, stop, and a bounded close. `write` here is an in-memory function that
records its batches; the engine's and the tip recorder's tests cover it over PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.writer import BatchWriter, WriterClosed, WriterFull, WriterInterrupted


class Sink:
    """A `write` that records each batch, answers item * 10, can be held at a gate, and fails
    every batch that holds a poisoned item."""

    def __init__(self, *, gated: bool = False, poison: Sequence[int] = ()) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.entered = asyncio.Event()
        self.poison = set(poison)

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        await self.gate.wait()
        if self.poison & set(items):
            raise RuntimeError(f"poisoned batch {items}")
        return [i * 10 for i in items]


def make(sink: Sink, **kw: object) -> BatchWriter[int, int]:
    options: dict[str, object] = {"name": "test-writer", "batch_max": 4, "queue_max": 100}
    options.update(kw)
    writer: BatchWriter[int, int] = BatchWriter(sink, **options)  # type: ignore[arg-type]
    writer.start()
    return writer


async def test_a_full_queue_refuses_at_once_and_queues_nothing() -> None:
    sink = Sink(gated=True)
    writer = make(sink, batch_max=3, queue_max=5)
    first = writer.submit(1)
    await sink.entered.wait()  # the writer holds [1]; the queue is empty again
    queued = [writer.submit(2, weight=2), writer.submit(3, weight=3)]
    assert writer.queued == 5
    assert not writer.has_room()
    with pytest.raises(WriterFull, match="5 of 5"):
        writer.submit(4)
    assert writer.queued == 5
    with pytest.raises(ValueError):
        writer.submit(5, weight=4)  # over batch_max: could never be written
    with pytest.raises(ValueError):
        writer.submit(5, weight=0)
    sink.gate.set()
    assert [await first] + [await q for q in queued] == [10, 20, 30]
    assert sink.batches == [[1], [2], [3]]  # 2 + 3 > batch_max: not one batch
    assert writer.has_room(5)
    await writer.close()


@settings(max_examples=60, deadline=None)
@given(batch_max=st.integers(1, 6),
       steps=st.lists(st.one_of(st.integers(1, 6), st.just(0)), min_size=1, max_size=60))
def test_batches_keep_queue_order_fit_batch_max_and_take_what_queued(batch_max: int, steps: list[int]) -> None:
    """Steps are submissions (their weight, capped at batch_max) or 0: let the writer run a little."""

    async def run() -> None:
        sink = Sink()
        weights: dict[int, int] = {}
        writer = make(sink, batch_max=batch_max, queue_max=10_000)
        futures: list[asyncio.Future[int]] = []
        for step in steps:
            if step == 0:
                await asyncio.sleep(0)
                continue
            item = len(futures)
            weights[item] = min(step, batch_max)
            futures.append(writer.submit(item, weight=weights[item]))
        await writer.close()
        assert [f.result() for f in futures] == [i * 10 for i in range(len(futures))]
        assert [i for batch in sink.batches for i in batch] == list(range(len(futures)))
        for batch in sink.batches:
            assert 1 <= sum(weights[i] for i in batch) <= batch_max
        assert writer.queued == 0

    asyncio.run(run())


async def test_a_batch_is_what_queued_while_the_previous_one_was_written() -> None:
    sink = Sink(gated=True)
    writer = make(sink, batch_max=10)
    first = writer.submit(0)
    await sink.entered.wait()
    rest = [writer.submit(i) for i in range(1, 6)]
    sink.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert sink.batches == [[0], [1, 2, 3, 4, 5]]
    await writer.close()


async def test_a_failing_write_fails_only_its_batch_and_the_writer_goes_on() -> None:
    sink = Sink(gated=True, poison=[2])
    made: list[Exception] = []

    def fail(error: Exception) -> Exception:
        made.append(RuntimeError(*error.args))
        return made[-1]

    writer = make(sink, batch_max=2, fail=fail)
    futures = [writer.submit(0)]
    await sink.entered.wait()
    futures += [writer.submit(i) for i in range(1, 5)]  # batches [1, 2] (poisoned) and [3, 4]
    sink.gate.set()
    got = await asyncio.gather(*futures, return_exceptions=True)
    assert got[0] == 0 and got[3:] == [30, 40]
    assert all(isinstance(g, RuntimeError) and "poisoned batch [1, 2]" in str(g) for g in got[1:3]), got
    assert got[1] is not got[2]  # `fail` made one instance per caller
    assert made == [got[1], got[2]]
    assert sink.batches == [[0], [1, 2], [3, 4]]
    assert await writer.submit(5) == 50
    await writer.close()


async def test_a_cancelled_caller_does_not_stop_its_item_from_being_written() -> None:
    sink = Sink(gated=True)
    writer = make(sink)
    blocker = writer.submit(0)
    await sink.entered.wait()
    waiter = asyncio.ensure_future(writer.submit(1))
    later = writer.submit(2)
    waiter.cancel()
    sink.gate.set()
    assert await asyncio.gather(blocker, later) == [0, 20]
    assert sink.batches == [[0], [1, 2]]
    await writer.close()


async def test_wait_collects_until_the_oldest_item_waited_or_the_batch_is_full() -> None:
    sink = Sink()
    writer = make(sink, batch_max=3, wait_ms=150)
    started = time.monotonic()
    first = writer.submit(0)
    await asyncio.sleep(0.01)
    second = writer.submit(1)
    assert await asyncio.gather(first, second) == [0, 10]
    assert time.monotonic() - started >= 0.15
    assert sink.batches == [[0, 1]]
    # A full batch does not wait (the bound here is far below the 10 s wait).
    full = make(Sink(), batch_max=3, wait_ms=10_000)
    started = time.monotonic()
    assert await asyncio.gather(*(full.submit(i) for i in range(3))) == [0, 10, 20]
    assert time.monotonic() - started < 5
    await writer.close()
    await full.close()


async def test_a_nudge_runs_a_round_with_nothing_queued() -> None:
    sink = Sink()
    writer = make(sink, wait_ms=20)
    writer.nudge()
    await asyncio.sleep(0.2)
    assert sink.batches == [[]]
    writer.nudge()
    writer.nudge()
    item = writer.submit(7)
    assert await item == 70
    assert sink.batches == [[], [7]]  # the nudges rode on the next batch
    await writer.close()


async def test_stop_fails_what_is_queued_and_refuses_more() -> None:
    writer: BatchWriter[int, int]
    stopped = RuntimeError("invariant broken")

    async def write(items: list[int]) -> list[int]:
        if 1 in items:
            writer.stop(stopped)
            raise RuntimeError("this batch failed")
        await asyncio.sleep(0)
        return items

    writer = BatchWriter(write, name="test-writer", batch_max=1, queue_max=10)
    writer.start()
    futures = [writer.submit(i) for i in range(4)]
    got = await asyncio.gather(*futures, return_exceptions=True)
    assert got[0] == 0
    assert str(got[1]) == "this batch failed"
    assert got[2] is stopped and got[3] is stopped
    with pytest.raises(WriterClosed):
        writer.submit(9)
    assert not writer.has_room()
    await writer.close()


async def test_close_writes_what_is_queued_then_refuses() -> None:
    sink = Sink(gated=True)
    writer = make(sink, batch_max=2)
    futures = [writer.submit(i) for i in range(5)]
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)
    with pytest.raises(WriterClosed):
        writer.submit(9)
    assert not writer.has_room()
    sink.gate.set()
    await closing
    assert [f.result() for f in futures] == [0, 10, 20, 30, 40]
    assert sink.batches == [[0, 1], [2, 3], [4]]


async def test_close_is_bounded_when_the_write_hangs() -> None:
    sink = Sink(gated=True)  # never opened
    writer = make(sink, batch_max=1, close_timeout_s=0.2)
    in_flight = writer.submit(0)
    await sink.entered.wait()
    queued = writer.submit(1)
    started = time.monotonic()
    await asyncio.wait_for(writer.close(), timeout=5)
    assert time.monotonic() - started < 2
    with pytest.raises(WriterInterrupted):
        await in_flight  # whether it was written is unknown
    with pytest.raises(WriterClosed):
        await queued  # never handed to write
    assert sink.batches == [[0]]


async def test_submit_before_start_is_refused() -> None:
    writer: BatchWriter[int, int] = BatchWriter(Sink(), name="test-writer", batch_max=1, queue_max=1)
    with pytest.raises(WriterClosed):
        writer.submit(1)
    await writer.close()
