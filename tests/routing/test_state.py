"""RoutingState: feedback through the store, replicas and restarts on one Redis namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
import redis.asyncio as redis

from moerm.errors import InvalidArgument
from moerm.routing.feedback import FeedbackNormalizer
from moerm.routing.state import RoutingState
from moerm.routing.store import BanditStore, Decision

ARMS = ("dmoerm:code", "base:code", "ext:judge")
DIM = 4


def replica(clients: Callable[[], redis.Redis], namespace: str, **params) -> RoutingState:
    """A router process: its own client and state on the shared namespace."""
    return RoutingState(ARMS, DIM, BanditStore(clients(), namespace=namespace), **params)


async def remember_items(state: RoutingState, n: int, start: int = 0, seed: int = 0) -> list[str]:
    """Let ``state`` choose an arm (LinUCB) for n random contexts and remember the decisions."""
    X = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    chosen = await state.choose("linucb", X)
    ids = [f"item-{start + i}" for i in range(n)]
    await state.store.remember(
        {i: Decision(ARMS[k], x, "linucb") for i, k, x in zip(ids, chosen, X, strict=True)}
    )
    return ids


def assert_same_bandits(a: RoutingState, b: RoutingState) -> None:
    for name in ("linucb", "thompson"):
        left, right = a.bandits[name].state(), b.bandits[name].state()
        for key in left:
            assert np.array_equal(left[key], right[key]), f"{name}.{key}"


async def test_feedback_outcomes_per_item(clients, namespace) -> None:
    state = replica(clients, namespace)
    ids = await remember_items(state, 4)
    await state.store.remember({"ensemble": Decision("", np.ones(DIM), "uwo")})
    await state.store.remember({"old-pool": Decision("gone:rm", np.ones(DIM), "fixed")})
    status = await state.feedback(
        [ids[0], "unknown", "ensemble", ids[1], ids[0], "old-pool"], np.array([1.0, 0.0, 0.5, 0.2, 9.0, 1.0])
    )
    assert status == {
        ids[0]: "applied",
        "unknown": "not_found",
        "ensemble": "no_arm",
        ids[1]: "applied",
        "old-pool": "no_arm",
    }
    assert state.bandits["linucb"].counts.sum() == state.bandits["thompson"].counts.sum() == 2
    assert state.offset == await state.store.log_length() == 2


async def test_repeated_feedback_is_a_duplicate_and_changes_nothing(clients, namespace) -> None:
    state = replica(clients, namespace)
    ids = await remember_items(state, 6)
    raw = np.linspace(0.0, 1.0, 6)
    assert set((await state.feedback(ids, raw)).values()) == {"applied"}
    before = {"linucb": state.bandits["linucb"].state(), "thompson": state.bandits["thompson"].state()}
    history = await state.store.raw_history(100)
    assert set((await state.feedback(ids, raw)).values()) == {"duplicate"}
    for name, arrays in before.items():
        for key, value in arrays.items():
            assert np.array_equal(state.bandits[name].state()[key], value)
    assert np.array_equal(await state.store.raw_history(100), history)  # the history did not grow
    assert await state.store.log_length() == 6


async def test_restarted_router_and_second_replica_reach_the_same_state(clients, namespace) -> None:
    first = replica(clients, namespace, min_history=4)
    second = replica(clients, namespace, min_history=4)
    rng = np.random.default_rng(1)
    for round_ in range(5):
        ids = await remember_items(first, 8, start=8 * round_, seed=round_)
        await first.feedback(ids, rng.standard_normal(8))
        if round_ == 2:
            await second.sync()  # a replica that follows along part of the way
    assert first.bandits["linucb"].counts.sum() == 40
    assert first.bandits["thompson"].counts.sum() == 40
    restarted = replica(clients, namespace, min_history=4)  # a new process: prior state
    assert restarted.bandits["linucb"].counts.sum() == 0
    assert await restarted.sync() == 40
    assert await second.sync() == 16
    assert_same_bandits(first, restarted)
    assert_same_bandits(first, second)
    X = np.random.default_rng(2).standard_normal((10, DIM))
    assert np.array_equal(await first.choose("linucb", X), await restarted.choose("linucb", X))


async def test_choose_syncs_first(clients, namespace) -> None:
    writer, reader = replica(clients, namespace), replica(clients, namespace)
    ids = await remember_items(writer, 5)
    await writer.feedback(ids, np.arange(5.0))
    await reader.choose("thompson", np.ones((1, DIM)))
    assert reader.offset == 5
    assert_same_bandits(writer, reader)


async def test_concurrent_syncs_apply_each_event_once(clients, namespace) -> None:
    writer, reader = replica(clients, namespace), replica(clients, namespace)
    await writer.feedback(await remember_items(writer, 12), np.arange(12.0))
    applied = await asyncio.gather(reader.sync(), reader.sync(), reader.sync())
    assert sum(applied) == 12
    assert reader.bandits["linucb"].counts.sum() == 12


async def test_rewards_are_normalized_against_the_shared_history(clients, namespace) -> None:
    first = replica(clients, namespace, min_history=4)
    second = replica(clients, namespace, min_history=4)
    batches = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([5.0, 5.5, 9.0]), np.array([1.0, -1.0, 0.0])]
    reference = FeedbackNormalizer(min_history=4)
    expected = []
    for i, (state, raw) in enumerate(zip((first, second, first), batches, strict=True)):
        ids = await remember_items(state, len(raw), start=10 * i, seed=i)
        await state.feedback(ids, raw)
        expected += reference.normalize(raw).tolist()  # one normalizer seeing every batch
    logged, _, _ = await first.store.events_since(0)
    assert [r for _, _, r in logged] == pytest.approx(expected)
    assert expected[:4] == [0.5] * 4 and expected[4:] != [0.5] * 6


async def test_bad_feedback_names_the_field(clients, namespace) -> None:
    state = replica(clients, namespace)
    with pytest.raises(InvalidArgument) as error:
        await state.feedback(["a", "", "c"], np.array([1.0, 2.0, float("nan")]))
    assert [v.field for v in error.value.violations] == ["items[1].id", "items[2].reward"]
    with pytest.raises(InvalidArgument, match="items"):
        await state.feedback(["a", "b"], np.array([1.0]))
    with pytest.raises(InvalidArgument) as error:
        await state.choose("uwo", np.ones((1, DIM)))
    assert error.value.violations[0].field == "policy"
    assert await state.store.log_length() == 0


async def test_compaction_keeps_the_log_bounded_and_the_state_exact(clients, namespace) -> None:
    writer = replica(clients, namespace, compact_every=5)
    lagging = replica(clients, namespace, compact_every=0)
    for batch in range(4):  # 4 x 4 events: compacted after 8 and after 16 (5 or more past the base)
        ids = await remember_items(writer, 4, start=10 * batch, seed=batch)
        await writer.feedback(ids, np.arange(4.0) + batch)
        if batch == 0:
            await lagging.sync()  # read the first 4 events, then falls behind
    assert writer.compactions == 2
    assert await writer.store.base() == 16 and await writer.store.log_length() == 16
    assert await writer.store.redis.llen(writer.store.log_key) == 0
    # A restarted replica loads the snapshot; one that had read 4 events jumps to it too.
    restarted = replica(clients, namespace)
    assert await restarted.sync() == 16 and await lagging.sync() == 12
    for other in (restarted, lagging):
        assert other.offset == 16 and other.skipped == 0
        assert_same_bandits(writer, other)  # bitwise: the writer applied all 16 events one by one
    # After the cut, new events replay on top of the snapshot, and retries stay duplicates.
    more = await remember_items(writer, 3, start=100, seed=9)
    await writer.feedback(more, np.arange(3.0))
    assert await writer.feedback(ids, np.arange(4.0)) == dict.fromkeys(ids, "duplicate")
    await restarted.sync()
    assert restarted.offset == 19
    assert_same_bandits(writer, restarted)


async def test_a_replica_of_another_pool_skips_the_compacted_events(clients, namespace) -> None:
    writer = replica(clients, namespace, compact_every=3)
    await writer.feedback(await remember_items(writer, 4), np.arange(4.0))
    assert writer.compactions == 1
    other = RoutingState(ARMS[:2], DIM, BanditStore(clients(), namespace=namespace))
    assert await other.sync() == 0
    assert (other.offset, other.skipped) == (4, 4)
    assert other.bandits["linucb"].counts.sum() == 0


async def test_concurrent_compactions_cut_the_log_once(clients, namespace) -> None:
    first = replica(clients, namespace, compact_every=0)
    ids = await remember_items(first, 6)
    await first.feedback(ids, np.arange(6.0))
    first.compact_every = 2
    second = replica(clients, namespace, compact_every=2)
    done = await asyncio.gather(first.compact(), second.compact())
    assert sorted(done) == [False, True]
    assert await first.store.base() == 6
    restarted = replica(clients, namespace)
    await restarted.sync()
    assert_same_bandits(first, restarted)
