"""DynamicBatcher: merging, ordering, splitting, back-pressure, failures, threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from moerm.batching import DynamicBatcher
from moerm.errors import DeadlineExceeded, Internal, ResourceExhausted, Unavailable
from moerm.metrics import sample


def metric(batcher: DynamicBatcher, name: str) -> float:
    return sample(batcher.metrics.registry, f"moerm_batcher_{name}")


class Recorder:
    """A batch function: item x -> (2x, [x, -x]); records every call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[int] = set()
        self.fail = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, items):
        self.threads.add(threading.get_ident())
        self.calls.append(list(items))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("model exploded")
        x = np.asarray(items, dtype=np.float32)
        return x * 2, np.stack([x, -x], axis=1)


@pytest.fixture
def fn() -> Recorder:
    return Recorder()


@pytest.fixture
async def make(fn: Recorder) -> AsyncIterator[Callable[..., DynamicBatcher]]:
    started: list[DynamicBatcher] = []

    def factory(**kwargs) -> DynamicBatcher:
        options = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queue_items": 100, **kwargs}
        batcher = DynamicBatcher(fn, **options)
        batcher.start()
        started.append(batcher)
        return batcher

    yield factory
    if fn.gate is not None:
        fn.gate.set()
    for batcher in started:
        await batcher.stop()


def check(items, outputs) -> None:
    doubled, pairs = outputs
    x = np.asarray(items, dtype=np.float32)
    np.testing.assert_array_equal(doubled, x * 2)
    np.testing.assert_array_equal(pairs, np.stack([x, -x], axis=1))


async def test_concurrent_submits_share_one_call(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=16, max_delay_s=0.2)
    requests = [[1, 2], [3], [4, 5, 6]]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    assert len(fn.calls) == 1
    assert fn.calls[0] == [1, 2, 3, 4, 5, 6]  # in submission order
    for request, outputs in zip(requests, results, strict=True):
        check(request, outputs)
    assert (metric(batcher, "batch_size_count"), metric(batcher, "batch_size_sum")) == (1, 6)
    assert metric(batcher, "queue_seconds_count") == 3  # each request waited once


async def test_results_stay_with_their_caller(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=64, max_delay_s=0.1)
    requests = [list(range(10 * i, 10 * i + 1 + i % 4)) for i in range(12)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for request, outputs in zip(requests, results, strict=True):
        check(request, outputs)
    assert len(fn.calls) < len(requests)


async def test_large_request_is_split(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=4)
    items = list(range(10))
    check(items, await batcher.submit(items))
    assert [len(c) for c in fn.calls] == [4, 4, 2]
    assert [x for c in fn.calls for x in c] == items
    assert metric(batcher, "batch_size_count") == 3


async def test_batch_does_not_exceed_max_batch_size_across_callers(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=4, max_delay_s=0.1)
    requests = [[i, i + 100] for i in range(6)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for request, outputs in zip(requests, results, strict=True):
        check(request, outputs)
    assert all(len(c) <= 4 for c in fn.calls)
    assert sum(len(c) for c in fn.calls) == 12


async def test_queue_limit(make, fn: Recorder) -> None:
    batcher = make(max_queue_items=5)
    with pytest.raises(ResourceExhausted, match="queue full"):
        await batcher.submit(list(range(6)))
    # Items in flight count against the limit until their batch finishes.
    fn.gate = threading.Event()
    first = asyncio.create_task(batcher.submit([1, 2, 3, 4]))
    while not fn.entered.is_set():
        await asyncio.sleep(0.005)
    with pytest.raises(ResourceExhausted):
        await batcher.submit([5, 6])
    seventh = asyncio.create_task(batcher.submit([7]))  # fits: 4 + 1 items
    await asyncio.sleep(0)
    fn.gate.set()
    check([7], await asyncio.wait_for(seventh, 5))
    check([1, 2, 3, 4], await first)
    assert metric(batcher, "rejected_total") == 2
    check([1, 2, 3, 4, 5], await batcher.submit([1, 2, 3, 4, 5]))  # the limit is freed again


async def test_failure_reaches_every_caller_and_batcher_recovers(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=16, max_delay_s=0.1)
    fn.fail = True
    results = await asyncio.gather(batcher.submit([1]), batcher.submit([2, 3]), return_exceptions=True)
    assert len(fn.calls) == 1
    assert all(isinstance(r, Internal) for r in results), results
    assert "RuntimeError" in str(results[0])
    fn.fail = False
    check([4, 5], await batcher.submit([4, 5]))
    assert len(fn.calls) == 2


async def test_fn_runs_off_the_event_loop_thread(make, fn: Recorder) -> None:
    batcher = make()
    await batcher.submit([1])
    await batcher.submit([2])
    assert fn.threads
    assert threading.get_ident() not in fn.threads
    assert len(fn.threads) == 1  # one dedicated worker thread


async def test_submit_needs_a_running_batcher(fn: Recorder) -> None:
    batcher = DynamicBatcher(fn, max_batch_size=4, max_delay_s=0.01, max_queue_items=10)
    with pytest.raises(Unavailable, match="not running"):
        await batcher.submit([1])
    batcher.start()
    check([1], await batcher.submit([1]))
    await batcher.stop()
    with pytest.raises(Unavailable):
        await batcher.submit([1])
    assert len(fn.calls) == 1


async def test_token_budget_bounds_a_batch(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=64, max_batch_tokens=10, max_delay_s=0.1)
    results = await asyncio.gather(
        batcher.submit([1, 2, 3], costs=[4, 4, 4]), batcher.submit([4], costs=[50])
    )
    check([1, 2, 3], results[0])
    check([4], results[1])
    # 4 + 4 fit in 10 tokens, the third does not; an item over the budget runs alone; the
    # rest of the split request waits behind the request that was already waiting.
    assert fn.calls == [[1, 2], [4], [3]]
    assert metric(batcher, "batch_tokens_sum") == 62


async def test_a_split_request_shares_batches_with_the_next(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=4, max_delay_s=0.1)
    results = await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4, 5, 6]))
    check([1, 2, 3], results[0])
    check([4, 5, 6], results[1])
    assert fn.calls == [[1, 2, 3, 4], [5, 6]]


async def test_a_request_that_straddles_a_batch_keeps_its_place(make, fn: Recorder) -> None:
    """[4, 5, 6] fits in a batch but straddled the first one's end: its rest runs before
    [7, 8], which arrived while the first batch ran (served in order, as admission
    expects); only a request larger than a batch gives way (the test below)."""
    batcher = make(max_batch_size=4, max_delay_s=0.0)
    fn.gate = threading.Event()
    first = asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4, 5, 6]))
    await asyncio.to_thread(fn.entered.wait, 5)
    later = asyncio.create_task(batcher.submit([7, 8]))
    await asyncio.sleep(0.05)
    fn.gate.set()
    await first
    check([7, 8], await later)
    assert fn.calls == [[1, 2, 3, 4], [5, 6, 7, 8]]


async def test_a_cancelled_caller_is_not_computed(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=2, max_delay_s=0.01)
    fn.gate = threading.Event()
    first = asyncio.create_task(batcher.submit([1, 2]))
    while not fn.entered.is_set():
        await asyncio.sleep(0.005)
    doomed = asyncio.create_task(batcher.submit([3, 4, 5]))
    await asyncio.sleep(0.01)
    assert batcher.queued_items == 5
    doomed.cancel()
    fn.gate.set()
    check([1, 2], await first)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    check([6], await batcher.submit([6]))
    assert fn.calls == [[1, 2], [6]]
    assert batcher.queued_items == 0


async def test_callers_coming_back_refill_the_next_batch(make, fn: Recorder) -> None:
    """After a batch of 3, three callers return 20 ms apart: with a refill wait they
    make one batch again, without it the first returns alone."""

    async def round_trip(batcher) -> None:
        await asyncio.gather(*(batcher.submit([i]) for i in range(3)))

        async def later(i: int) -> None:
            await asyncio.sleep(0.02 * i)
            await batcher.submit([10 + i])

        await asyncio.gather(*(later(i) for i in range(3)))

    await round_trip(make(max_batch_size=8, max_delay_s=0.005, refill_wait_s=0.5))
    assert fn.calls == [[0, 1, 2], [10, 11, 12]]
    fn.calls.clear()
    await round_trip(make(max_batch_size=8, max_delay_s=0.005))
    assert fn.calls[0] == [0, 1, 2] and fn.calls[1] == [10]


async def test_a_lone_caller_does_not_wait_for_company(make, fn: Recorder) -> None:
    batcher = make(max_batch_size=8, max_delay_s=0.005, refill_wait_s=5.0)
    for i in range(3):
        started = asyncio.get_running_loop().time()
        check([i], await batcher.submit([i]))
        assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_large_request_is_interleaved_with_other_callers(make, fn: Recorder) -> None:
    """One caller's 40 items take 5 batches of 8; a caller arriving meanwhile is served
    in the next batch, not after all of them."""
    batcher = make(max_batch_size=8, max_delay_s=0.0)
    fn.gate = threading.Event()
    large = asyncio.create_task(batcher.submit(list(range(100, 140))))
    await asyncio.to_thread(fn.entered.wait, 5)  # the first batch of the large request runs
    small = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.sleep(0.05)
    fn.gate.set()
    check([1, 2], await small)
    check(list(range(100, 140)), await large)
    batch_of_small = next(i for i, call in enumerate(fn.calls) if 1 in call)
    assert batch_of_small == 1, fn.calls  # right after the batch that was running


async def test_a_request_that_would_finish_too_late_is_rejected_at_once(make, fn: Recorder) -> None:
    """Admission: with the measured rate, a request whose expected wait exceeds its
    remaining deadline (or max_wait_s) is RESOURCE_EXHAUSTED before it queues."""
    batcher = make(max_batch_size=4, max_delay_s=0.0, max_wait_s=30.0, max_queue_items=1000)
    with pytest.raises(DeadlineExceeded):  # a caller already past its deadline
        await batcher.submit([1], time_left_s=-1.0)
    check([1, 2], await batcher.submit([1, 2], time_left_s=5.0))  # nothing measured: no estimate
    batcher.rate.tokens_per_s = 10.0  # as if measured: 10 items/s
    fn.gate = threading.Event()
    queued = asyncio.create_task(batcher.submit(list(range(100))))  # 10 s of work
    await asyncio.to_thread(fn.entered.wait, 5)
    assert 9.0 < batcher.expected_wait_s(1) < 11.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(ResourceExhausted, match="deadline"):
        await batcher.submit([7], time_left_s=2.0)
    assert asyncio.get_running_loop().time() - started < 0.1  # answered at once
    assert metric(batcher, "rejected_late_total") == 1
    # 10.1 s expected: within a 12 s deadline, but not within 0.8 of it.
    batcher.deadline_share = 0.8
    with pytest.raises(ResourceExhausted, match="deadline"):
        await batcher.submit([7], time_left_s=12.0)
    batcher.deadline_share = 1.0
    admitted = asyncio.create_task(batcher.submit([7], time_left_s=12.0))
    await asyncio.sleep(0)  # admitted and queued
    batcher.max_wait_s = 5.0
    with pytest.raises(ResourceExhausted, match="bound"):
        await batcher.submit([7], time_left_s=60.0)
    fn.gate.set()
    check(list(range(100)), await queued)
    check([7], await admitted)


def test_the_service_rate_follows_recent_batches() -> None:
    from moerm.batching import ServiceRate

    rate = ServiceRate(smoothing=0.5)
    assert rate.seconds_for(100) == 0.0  # nothing measured: never reject
    rate.observe(100, 1.0)
    assert rate.seconds_for(100) == pytest.approx(1.0)
    rate.observe(300, 1.0)
    assert rate.tokens_per_s == pytest.approx(200.0)
