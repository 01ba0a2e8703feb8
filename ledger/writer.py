"""The batch writer: a bounded queue drained by one task that writes what queued as one batch.

Shared by the ledger engine (transfers: one transaction per batch on its own connection) and the
stream tip recorder (tip records and running totals); a webhook outbox is meant to be the next.
It lives here because `ledger` imports nothing of ours. Generic over the item (T) and the
per-item result (R); the owner supplies `write(items) -> one result per item, in order`.

The contract:
- Bounded by weight: every item carries a weight in 1..batch_max (the engine's is its transfer
  count). `submit` raises `WriterFull` at once when the queued weight would pass `queue_max`
  (fail fast: nothing queued; the owner answers 503/429 or retries later), and `WriterClosed`
  before `start()`, once `close()` began, after `stop()` or if the writer task died.
- One writer: one task writes one batch at a time, in queue order; a batch is taken from the head
  of the queue while it fits in `batch_max` weight. Items are never reordered or split.
- Group commit: a batch is what queued while the previous one was written. With `wait_ms` > 0 a
  batch also waits until its oldest item (or nudge) has waited that long, unless it reached
  `batch_max` or closing began: waiting only adds latency once batches form by themselves.
- `submit` returns a future resolved with the item's result only after `write` returned. If
  `write` raises, that batch's items and only they fail, each with `fail(error)` (called once per
  item, so each caller can get its own instance: a raised exception collects its raiser's
  traceback); the writer goes on with the next batch. An item whose caller stopped waiting is
  still written: it was queued.
- `nudge()` asks for a round although nothing is queued: `write` is then called with no items,
  and the owner's side work (the tip recorder's broadcast marks) rides on it.
- `stop(error)`, for the owner's `write` on a broken invariant: the batch being written ends as
  `write` decides, everything still queued fails with `fail(error)`, and the writer ends.
- `close()` stops taking items and writes what is queued, bounded by `close_timeout_s`; past the
  bound the batch in flight is cancelled (its items fail with `WriterInterrupted`: the owner
  cannot know whether it was written) and what is still queued fails with `WriterClosed` (not
  written).

What stays with each owner: what a batch means (the engine's retries, connection and counter
cache; the recorder's SQL and marks) and how its errors read to its callers (`fail`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("greenroom.writer")

T = TypeVar("T")
R = TypeVar("R")


class WriterFull(Exception):
    """The queue holds `queue_max` weight already; nothing was queued."""


class WriterClosed(Exception):
    """The writer is not running (not started, closing, stopped); the item was not written."""


class WriterInterrupted(Exception):
    """The writer was cancelled while writing this item's batch: whether it was written is unknown."""


def _same(error: Exception) -> Exception:
    return error


# A queued item: (item, weight, future, monotonic time queued). A plain tuple: one per submission
# on the ledger's hot path, and the cheapest object to build.
_Entry = tuple[T, int, asyncio.Future[R], float]


class BatchWriter(Generic[T, R]):
    """See the module docstring. Create, `start()`, `submit`..., `await close()`."""

    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R]]], *, name: str, batch_max: int,
                 queue_max: int, wait_ms: float = 0.0, close_timeout_s: float = 10.0,
                 fail: Callable[[Exception], Exception] = _same) -> None:
        assert 1 <= batch_max <= queue_max
        assert wait_ms >= 0
        assert close_timeout_s > 0
        self._write = write
        self._name = name
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._wait_s = wait_ms / 1000
        self._close_timeout_s = close_timeout_s
        self._fail_with = fail
        self._queue: deque[_Entry[T, R]] = deque()
        self._queued = 0  # weight in `_queue`
        self._nudged_at: float | None = None  # when a round was asked for with nothing queued
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._open = False  # taking items: started, and not closing, stopped or ended (one test per submit)
        self._closing = False
        self._stopped: Exception | None = None

    @property
    def queued(self) -> int:
        """The weight queued now (the batch being written not included)."""
        return self._queued

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def closing(self) -> bool:
        return self._closing

    def has_room(self, weight: int = 1) -> bool:
        """Whether `submit` of this weight would be taken now."""
        return self._open and self._queued + weight <= self._queue_max

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._run(), name=self._name)
        self._open = True

    def submit(self, item: T, weight: int = 1) -> asyncio.Future[R]:
        """Queue `item`; the future resolves with its result once its batch is written.

        Raises WriterClosed, WriterFull (nothing queued), ValueError for a weight outside 1..batch_max.
        """
        if not self._open:
            raise WriterClosed(f"{self._name} is not running")
        if not 1 <= weight <= self._batch_max:
            raise ValueError(f"an item weighs 1..{self._batch_max}, got {weight}")
        if self._queued + weight > self._queue_max:
            raise WriterFull(f"{self._name} queue is full ({self._queued} of {self._queue_max} queued)")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # The time queued only matters to a batch that waits (`_collect`).
        self._queue.append((item, weight, future, time.monotonic() if self._wait_s else 0.0))
        self._queued += weight
        # Wake the writer only when it may be idle or waiting for a full batch, not per item.
        if len(self._queue) == 1 or self._queued >= self._batch_max:
            self._wake.set()
        return future

    def nudge(self) -> None:
        """Ask for a write round even if nothing is queued (`write` gets the items queued, maybe none)."""
        if self._nudged_at is None:
            self._nudged_at = time.monotonic()
        self._wake.set()

    def stop(self, error: Exception) -> None:
        """End the writer after the batch being written; what is queued fails with `fail(error)`."""
        if self._stopped is None:
            self._stopped = error
        self._open = False
        self._wake.set()

    async def close(self) -> None:
        """Stop taking items, write what is queued (bounded by close_timeout_s), fail what is left."""
        self._open = False
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(self._close_timeout_s):
                    await asyncio.shield(task)
            except TimeoutError:
                log.error("%s: close timed out after %s s; failing the batch in flight and %d queued",
                          self._name, self._close_timeout_s, self._queued)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._fail_queued(WriterClosed(f"{self._name} closed before writing this item"))

    # --- the writer ----------------------------------------------------------------------

    async def _run(self) -> None:
        # Runs for the writer's life: ends when closing has drained the queue, or on stop().
        try:
            while self._stopped is None:
                if not self._queue and self._nudged_at is None:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._wait_s:
                    await self._collect()
                await self._write_batch(self._take())
        finally:
            self._open = False
            # Empty unless stopped, cancelled by close(), or broken by a bug here: never leave a caller waiting.
            stopped = self._stopped
            self._fail_queued(stopped if stopped is not None else WriterClosed(f"{self._name} stopped"))

    async def _collect(self) -> None:
        """Wait until the batch is full, closing began, or its oldest item (or nudge) waited wait_s."""
        first = [self._queue[0][3]] if self._queue else []
        if self._nudged_at is not None:
            first.append(self._nudged_at)
        deadline = min(first) + self._wait_s
        while self._queued < self._batch_max and not self._closing and self._stopped is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _take(self) -> list[_Entry[T, R]]:
        batch: list[_Entry[T, R]] = []
        weight = 0
        queue = self._queue
        while queue and weight + queue[0][1] <= self._batch_max:
            entry = queue.popleft()
            weight += entry[1]
            batch.append(entry)
        self._queued -= weight
        self._nudged_at = None  # this round carries the side work asked for so far
        assert self._queued >= 0
        assert batch or not queue, "an item never weighs more than batch_max"
        return batch

    async def _write_batch(self, batch: list[_Entry[T, R]]) -> None:
        items = [entry[0] for entry in batch]
        try:
            results = await self._write(items)
            assert len(results) == len(items), f"write returned {len(results)} results for {len(items)} items"
        except Exception as exc:
            self._fail(batch, exc)
            return
        except BaseException:  # cancelled (close timed out) or the process is going down
            self._fail(batch, WriterInterrupted(f"{self._name} stopped while writing this batch"))
            raise
        for entry, result in zip(batch, results, strict=True):
            future = entry[2]
            if not future.done():  # the caller may have been cancelled
                future.set_result(result)

    def _fail(self, batch: list[_Entry[T, R]], error: Exception) -> None:
        for entry in batch:
            future = entry[2]
            if not future.done():
                future.set_exception(self._fail_with(error))

    def _fail_queued(self, error: Exception) -> None:
        batch = list(self._queue)
        self._queue.clear()
        self._queued = 0
        self._fail(batch, error)
