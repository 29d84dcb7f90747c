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

Fairness: a request larger than a batch goes, with the items it has left, behind every
request that arrived while its batch ran, so one caller's large request is interleaved
batch by batch with the other callers' work instead of blocking them until it is done
(and a GRPO group still fills a batch together, for prefix sharing). A request no larger
than a batch that only straddled a batch's end keeps its place at the head: requests of
ordinary size are served in order, as admission's estimate assumes.

Admission: the batcher measures its service rate (tokens per second over recent
batches). A request is rejected at once (RESOURCE_EXHAUSTED) when the expected wait
for the work ahead of it and its own items exceeds ``deadline_share`` of the caller's
remaining deadline, or ``max_wait_s``: it would not finish in time anyway, and computing
it would only delay the callers who can still be served. The rest of the deadline is
kept for what follows the batcher (the aggregator, the replies) and for the estimate's
error: the rate drops when other processes take the CPU.
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

from moerm.errors import DeadlineExceeded, Internal, ResourceExhausted, Unavailable
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


class ServiceRate:
    """Tokens per second of the model function, smoothed over recent batches."""

    def __init__(self, smoothing: float = 0.3):
        self.smoothing = smoothing
        self.tokens_per_s: float | None = None  # None until a batch has run

    def observe(self, tokens: float, seconds: float) -> None:
        if seconds <= 0 or tokens <= 0:
            return
        rate = tokens / seconds
        if self.tokens_per_s is None:
            self.tokens_per_s = rate
        else:
            self.tokens_per_s += self.smoothing * (rate - self.tokens_per_s)

    def seconds_for(self, tokens: float) -> float:
        """Expected time to compute ``tokens`` (0 while nothing has been measured)."""
        return tokens / self.tokens_per_s if self.tokens_per_s else 0.0


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
        max_wait_s: float = float("inf"),
        deadline_share: float = 1.0,
        metrics: BatcherMetrics | None = None,
    ):
        if not 0 < deadline_share <= 1:
            raise ValueError(f"deadline_share must be in (0, 1], got {deadline_share}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_delay_s = max_delay_s
        self.refill_wait_s = refill_wait_s
        self.max_queue_items = max_queue_items
        self.max_wait_s = max_wait_s
        self.deadline_share = deadline_share
        self.rate = ServiceRate()
        self._queued_cost = 0.0  # tokens submitted and not yet finished
        self._last_batch_items = 0
        # Queue gauges, batch histograms, time in queue (a private registry unless given).
        self.metrics = metrics or BatcherMetrics()
        self.metrics.watch(lambda: self._queued_items, lambda: self.queued_requests)
        self._queue: deque[_Pending] = deque()
        self._resume: deque[_Pending] = deque()  # split requests, queued again at the next batch
        self._arrived = asyncio.Event()
        self._queued_items = 0  # submitted and not yet finished (queued or running)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._worker: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def queued_requests(self) -> int:
        return len(self._queue) + len(self._resume)

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
        self._queue.extend(self._resume)
        self._resume.clear()
        while self._queue:
            pending = self._queue.popleft()
            if not pending.gone:
                pending.future.set_exception(Unavailable("expert is shutting down"))
        self._executor.shutdown(wait=True)

    def expected_wait_s(self, cost: float) -> float:
        """Expected seconds until work of ``cost`` tokens submitted now is done."""
        return self.rate.seconds_for(self._queued_cost + cost)

    def admit(self, items: int, cost: float, time_left_s: float | None) -> None:
        """Raise unless ``items`` items of ``cost`` tokens may queue now: the queue has room
        and they are expected to finish within ``deadline_share`` of ``time_left_s`` (the
        caller's remaining deadline; None: none) and within ``max_wait_s``. Callers may ask
        before they prepare a request (cost 0: the queue alone), so that a request that
        cannot be served costs no tokenizing."""
        if self._worker is None:
            raise Unavailable("batcher not running")
        if self._queued_items + items > self.max_queue_items:
            self.metrics.rejected.inc()
            raise ResourceExhausted(
                f"expert queue full ({self._queued_items} items queued, limit {self.max_queue_items})"
            )
        if time_left_s is not None and time_left_s <= 0:
            raise DeadlineExceeded("the caller's deadline passed before its items were queued")
        wait = self.expected_wait_s(cost)
        share = self.deadline_share * time_left_s if time_left_s is not None else float("inf")
        bound = min(self.max_wait_s, share)
        if wait > bound:
            self.metrics.rejected_late.inc()
            limit = (
                f"{self.deadline_share:g} of the remaining deadline is {bound:.1f}s"
                if share < self.max_wait_s
                else f"the bound is {bound:.1f}s"
            )
            raise ResourceExhausted(f"expert overloaded: expected to finish in {wait:.1f}s; {limit}")

    async def submit(
        self,
        items: Sequence[Any],
        costs: Sequence[float] | None = None,
        *,
        time_left_s: float | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Outputs for ``items``, computed in batches with other callers' items.
        ``costs``: each item's tokens (default 1). ``time_left_s``: the caller's
        remaining deadline; the request is rejected at once when it is not expected to
        finish within ``deadline_share`` of it (or within ``max_wait_s``)."""
        costs = list(costs) if costs is not None else [1.0] * len(items)
        cost = float(sum(costs))
        self.admit(len(items), cost, time_left_s)
        loop = asyncio.get_running_loop()
        pending = _Pending(items, costs, loop.create_future(), submitted=loop.time())
        self._queued_items += len(items)
        self._queued_cost += cost
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
            self._queued_cost -= sum(gone.costs[gone.taken :])

    def _large(self, pending: _Pending) -> bool:
        """More than one batch holds: its rest gives way to later callers."""
        return len(pending.items) > self.max_batch_size or sum(pending.costs) > self.max_batch_tokens

    def _fill(self, batch: list[_Slice], size: int, tokens: float) -> tuple[int, float, bool]:
        """Move queued items into ``batch`` while they fit; True when the batch is full.
        A large request (more than a batch) with items left over waits for the next batch
        behind every request that arrives meanwhile (:meth:`_collect` queues it again); a
        request that only straddled this batch's end keeps its place at the head, so that
        a request no larger than a batch is served in order (what admission expects)."""
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
            if pending.taken < len(pending.items):
                if self._large(pending):
                    self._queue.popleft()
                    self._resume.append(pending)
                return size, tokens, True
            self._queue.popleft()

    async def _collect(self) -> tuple[list[_Slice], float]:
        loop = asyncio.get_running_loop()
        self._queue.extend(self._resume)  # split requests: behind those that came meanwhile
        self._resume.clear()
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
                    started = loop.time()
                    for part in live:
                        if part.start == 0:  # the request's first items run now
                            self.metrics.queue_seconds.observe(started - part.pending.submitted)
                    outputs = await loop.run_in_executor(self._executor, self.fn, items)
                    live_tokens = sum(sum(p.pending.costs[p.start : p.end]) for p in live)
                    self.rate.observe(live_tokens, loop.time() - started)
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
                self._queued_cost -= sum(sum(p.pending.costs[p.start : p.end]) for p in batch)
