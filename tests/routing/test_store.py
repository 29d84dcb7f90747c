"""BanditStore against a real Redis-protocol server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
import redis.asyncio as redis

from moerm.routing.store import BanditStore, Decision


def context(seed: int, dim: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def events(ids: list[str]) -> list[tuple[str, str, np.ndarray, float]]:
    return [(item_id, "rm-a", context(i), 0.25 * (i % 4)) for i, item_id in enumerate(ids)]


async def test_remember_then_recall_round_trip(store: BanditStore) -> None:
    decisions = {"req/0": Decision("rm-a", context(0), "linucb"), "req/1": Decision("", context(1), "uwo")}
    await store.remember(decisions)
    recalled = await store.recall(["req/1", "unknown", "req/0"])
    assert list(recalled) == ["req/1", "unknown", "req/0"]
    assert recalled["unknown"] is None
    for item_id in ("req/0", "req/1"):
        got, sent = recalled[item_id], decisions[item_id]
        assert (got.arm, got.policy) == (sent.arm, sent.policy)
        assert got.context.dtype == np.float32
        assert np.array_equal(got.context, sent.context)


async def test_decisions_carry_the_ttl_and_expire(store: BanditStore) -> None:
    await store.remember({"item": Decision("rm-a", context(0), "thompson")})
    ttl = await store.redis.ttl(store.decision_key("item"))
    assert 0 < ttl <= store.ttl_s
    await store.redis.pexpire(store.decision_key("item"), 1)  # let it expire now
    await asyncio.sleep(0.05)
    assert await store.recall(["item"]) == {"item": None}


def test_decision_context_is_float32_vector() -> None:
    assert Decision("a", np.arange(3, dtype=np.float64), "linucb").context.dtype == np.float32
    with pytest.raises(ValueError, match=r"shape \(d,\)"):
        Decision("a", np.zeros((2, 3)), "linucb")


async def test_same_id_twice_is_logged_once(store: BanditStore) -> None:
    assert await store.append_feedback(events(["x", "y"])) == [True, True]
    assert await store.append_feedback(events(["y", "z"])) == [False, True]  # a retried call
    assert await store.append_feedback(events(["w", "w"])) == [True, False]  # repeated in one call
    assert await store.log_length() == 4
    logged, offset, base = await store.events_since(0)
    assert (offset, base) == (4, 0)
    assert [arm for arm, _, _ in logged] == ["rm-a"] * 4
    ttl = await store.redis.ttl(store.done_key("x"))
    assert 0 < ttl <= store.ttl_s


async def test_concurrent_appends_from_two_stores_count_each_id_once(
    clients: Callable[[], redis.Redis], namespace: str
) -> None:
    first = BanditStore(clients(), namespace=namespace)
    second = BanditStore(clients(), namespace=namespace)
    ids = [f"item-{i}" for i in range(40)]
    # Both replicas receive the same Feedback (a retry racing the original), in many calls.
    results = await asyncio.gather(
        *(store.append_feedback(events(ids[i : i + 5])) for i in range(0, 40, 5) for store in (first, second))
    )
    flags = np.array(results).reshape(8, 2, 5)
    assert (flags.sum(axis=1) == 1).all()  # exactly one of the two logged each id
    logged, offset, _ = await first.events_since(0)
    assert offset == len(logged) == 40


async def test_events_since_pages_through_the_log(store: BanditStore) -> None:
    sent = events([f"id-{i}" for i in range(7)])
    await store.append_feedback(sent)
    page, offset, _ = await store.events_since(0, count=3)
    assert offset == 3
    rest, offset, _ = await store.events_since(offset)
    assert offset == 7
    assert await store.events_since(offset) == ([], 7, 0)
    for (arm, x, r), (_, sent_arm, sent_x, sent_r) in zip(page + rest, sent, strict=True):
        assert arm == sent_arm and r == sent_r and np.array_equal(x, sent_x)


async def test_stores_in_other_namespaces_do_not_see_each_other(
    clients: Callable[[], redis.Redis], namespace: str
) -> None:
    mine = BanditStore(clients(), namespace=namespace)
    other = BanditStore(clients(), namespace=namespace + "other:")
    await mine.append_feedback(events(["a"]))
    await mine.remember({"a": Decision("rm-a", context(0), "linucb")})
    assert await other.append_feedback(events(["a"])) == [True]
    assert await other.recall(["a"]) == {"a": None}
    assert await mine.log_length() == await other.log_length() == 1


async def test_raw_history_is_capped_and_exact(store: BanditStore) -> None:
    assert len(await store.raw_history(10)) == 0
    await store.push_raw(np.array([0.1, -0.2, 1 / 3]), cap=4)
    await store.push_raw(np.array([5.0, 6.0]), cap=4)
    assert (await store.raw_history(10)).tolist() == [-0.2, 1 / 3, 5.0, 6.0]
    assert (await store.raw_history(2)).tolist() == [5.0, 6.0]
