"""Dynamic batching: merge concurrent requests into batches for one model.

A batch holds at most ``max_batch_size`` items and ``max_batch_tokens`` tokens (each
item's cost, given at submit); requests wait at most ``max_delay_s`` for company. A
request larger than a batch is split over several, in order; a batch that is not full
takes the next requests' items.

Closed-loop callers (a trainer's workers, each sending its next request once the last
is answered) come back together after a batch: without care, batches settle into
alternating sizes (1 item, then 31, then 1, ...), and a small batch wastes the model's
time. So a batch may also wait up to ``refill_wait_s`` until it holds as many items as
the previous batch did (a lone caller refills it at once and waits for nobody). The model function runs on one dedicated worker
thread, never on the event loop. Callers that have gone (cancelled, or past their
deadline) are dropped before their items run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moerm.errors import Internal, ResourceExhausted, Unavailable
from moerm.metrics import BatcherMetrics

log = logging.getLogger(__name__)

# fn(items) -> arrays whose first axis is the item axis
BatchFn = Callable[[Sequence[Any]], tuple[np.ndarray, ...]]


@dataclass
class _Pending:
    items: Sequence[Any]
    costs: Sequence[float]
    future: asyncio.Future
    submitted: float = 0.0  # loop time at submit
    taken: int = 0  # items handed to batches so far
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # outputs, in order
    done: int = 0  # items whose outputs are in parts

    @property
    def gone(self) -> bool:
        return self.future.done()


@dataclass(frozen=True)
class _Slice:
    pending: _Pending
    start: int
    end: int


class DynamicBatcher:
    def __init__(
        self,
        fn: BatchFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_items: int,
        max_batch_tokens: float = float("inf"),
        refill_wait_s: float = 0.0,
        metrics: BatcherMetrics | None = None,
    ):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_delay_s = max_delay_s
        self.refill_wait_s = refill_wait_s
        self.max_queue_items = max_queue_items
        self._last_batch_items = 0
        # Queue gauges, batch histograms, time in queue (a private registry unless given).
        self.metrics = metrics or BatcherMetrics()
        self.metrics.watch(lambda: self._queued_items, lambda: len(self._queue))
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._queued_items = 0  # submitted and not yet finished (queued or running)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._worker: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.gone:
                pending.future.set_exception(Unavailable("expert is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(
        self, items: Sequence[Any], costs: Sequence[float] | None = None
    ) -> tuple[np.ndarray, ...]:
        """Outputs for ``items``, computed in batches with other callers' items.
        ``costs``: each item's tokens (default 1)."""
        if self._worker is None:
            raise Unavailable("batcher not running")
        if self._queued_items + len(items) > self.max_queue_items:
            self.metrics.rejected.inc()
            raise ResourceExhausted(
                f"expert queue full ({self._queued_items} items queued, limit {self.max_queue_items})"
            )
        costs = list(costs) if costs is not None else [1.0] * len(items)
        loop = asyncio.get_running_loop()
        pending = _Pending(items, costs, loop.create_future(), submitted=loop.time())
        self._queued_items += len(items)
        self._queue.append(pending)
        self._arrived.set()
        try:
            return await pending.future
        finally:
            if not pending.future.done():  # cancelled while queued: its items never run
                pending.future.cancel()

    def _drop_gone(self) -> None:
        while self._queue and self._queue[0].gone:
            gone = self._queue.popleft()
            self._queued_items -= len(gone.items) - gone.taken

    def _fill(self, batch: list[_Slice], size: int, tokens: float) -> tuple[int, float, bool]:
        """Move queued items into ``batch`` while they fit; True when the batch is full."""
        while True:
            self._drop_gone()
            if not self._queue:
                return size, tokens, False
            pending = self._queue[0]
            start = end = pending.taken
            while end < len(pending.items):
                cost = pending.costs[end]
                if size >= self.max_batch_size or (size and tokens + cost > self.max_batch_tokens):
                    break
                size, tokens, end = size + 1, tokens + cost, end + 1
            if end > start:
                batch.append(_Slice(pending, start, end))
                pending.taken = end
            if pending.taken == len(pending.items):
                self._queue.popleft()
            else:
                return size, tokens, True

    async def _collect(self) -> tuple[list[_Slice], float]:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_gone()
            if self._queue:
                break
            self._arrived.clear()
            await self._arrived.wait()
        batch: list[_Slice] = []
        size, tokens, full = self._fill(batch, 0, 0.0)
        started = loop.time()
        deadline = started + self.max_delay_s
        refill = min(self._last_batch_items, self.max_batch_size)
        refill_deadline = started + self.refill_wait_s
        while not full:
            now = loop.time()
            until = deadline if size >= refill else max(deadline, refill_deadline)
            remaining = until - now
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
            size, tokens, full = self._fill(batch, size, tokens)
        return batch, tokens

    def _finish(self, part: _Slice, outputs: tuple[np.ndarray, ...], offset: int) -> None:
        pending = part.pending
        n = part.end - part.start
        pending.parts.append(tuple(o[offset : offset + n] for o in outputs))
        pending.done += n
        if pending.done == len(pending.items) and not pending.gone:
            pending.future.set_result(
                tuple(np.concatenate(columns, axis=0) for columns in zip(*pending.parts, strict=True))
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, tokens = await self._collect()
            size = sum(part.end - part.start for part in batch)
            # Callers that went away while their batch was filling are not computed.
            live = [part for part in batch if not part.pending.gone]
            try:
                if live:
                    items = [item for part in live for item in part.pending.items[part.start : part.end]]
                    now = loop.time()
                    for part in live:
                        if part.start == 0:  # the request's first items run now
                            self.metrics.queue_seconds.observe(now - part.pending.submitted)
                    outputs = await loop.run_in_executor(self._executor, self.fn, items)
                    self._last_batch_items = len(items)
                    self.metrics.batch_size.observe(len(items))
                    self.metrics.batch_tokens.observe(tokens)
                    offset = 0
                    for part in live:
                        self._finish(part, outputs, offset)
                        offset += part.end - part.start
            except Exception as error:
                log.exception("scoring a batch of %d items failed", size)
                for part in live:
                    if not part.pending.gone:
                        part.pending.future.set_exception(Internal(f"scoring failed: {type(error).__name__}"))
            finally:
                self._queued_items -= size
