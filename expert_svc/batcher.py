"""Dynamic batching: merge concurrent requests into batches for one model.

Requests wait at most ``max_delay_s`` for company; a batch holds at most
``max_batch_size`` items (a larger request runs as several). The model
function runs on one dedicated worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from moerm.errors import Internal, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

# fn(items) -> arrays whose first axis is the item axis
BatchFn = Callable[[Sequence[Any]], tuple[np.ndarray, ...]]


@dataclass
class _Pending:
    items: Sequence[Any]
    future: asyncio.Future


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    requests: int = 0
    rejected: int = 0


class DynamicBatcher:
    def __init__(self, fn: BatchFn, *, max_batch_size: int, max_delay_s: float, max_queue_items: int):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_items = max_queue_items
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_items = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._worker: asyncio.Task | None = None

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
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(Unavailable("expert is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Any]) -> tuple[np.ndarray, ...]:
        """Outputs for ``items``, computed in a batch with other callers' items."""
        if self._worker is None:
            raise Unavailable("batcher not running")
        if self._queued_items + len(items) > self.max_queue_items:
            self.stats.rejected += 1
            raise ResourceExhausted(
                f"expert queue full ({self._queued_items} items queued, limit {self.max_queue_items})"
            )
        future = asyncio.get_running_loop().create_future()
        self._queued_items += len(items)
        self.stats.requests += 1
        self._queue.put_nowait(_Pending(items, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        size = len(batch[0].items)
        deadline = loop.time() + self.max_delay_s
        while size < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                pending = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            batch.append(pending)
            size += len(pending.items)
        return batch

    def _run_chunks(self, items: list[Any]) -> tuple[np.ndarray, ...]:
        outputs = [
            self.fn(items[i : i + self.max_batch_size]) for i in range(0, len(items), self.max_batch_size)
        ]
        self.stats.batches += len(outputs)
        return tuple(np.concatenate(parts, axis=0) for parts in zip(*outputs, strict=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            size = sum(len(p.items) for p in batch)
            # Callers whose deadline passed while queued are not computed.
            live = [p for p in batch if not p.future.done()]
            try:
                if live:
                    items = [item for p in live for item in p.items]
                    outputs = await loop.run_in_executor(self._executor, self._run_chunks, items)
                    self.stats.items += len(items)
                    start = 0
                    for pending in live:
                        end = start + len(pending.items)
                        if not pending.future.done():
                            pending.future.set_result(tuple(o[start:end] for o in outputs))
                        start = end
            except Exception as error:
                log.exception("scoring a batch of %d items failed", size)
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(Internal(f"scoring failed: {type(error).__name__}"))
            finally:
                self._queued_items -= size
