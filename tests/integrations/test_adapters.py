"""Contract tests of the trainer adapters against a real cluster (MiniLM bundle):
shapes, order, None for a failed item, the truncation flag, coalescing, Feedback."""

from __future__ import annotations

import asyncio
import threading

import pytest

from moerm.client import RewardClient
from moerm.integrations import verl
from moerm.integrations.coalescing import CoalescingClient
from moerm.integrations.trl import AsyncMoermReward, MoermReward
from tests.integrations.conftest import score_requests

pytestmark = pytest.mark.integration

PROMPTS = [
    "Write a haiku about tea.",
    "Fix this Python: def f(x) return x",
    "Write a limerick about a cat.",
    "Reverse a list in Python.",
]
COMPLETIONS = [
    "Steam curls, leaves unfold.",
    "def f(x):\n    return x",
    "A cat on a mat sat flat.",
    "xs[::-1]",
]


@pytest.fixture(scope="module")
def reference(cluster):
    """moerm's own rewards for PROMPTS x COMPLETIONS (task policy)."""
    with RewardClient(cluster.address) as client:
        return [r.reward for r in client.score(list(zip(PROMPTS, COMPLETIONS, strict=True)))]


def test_twenty_concurrent_single_item_calls_share_one_to_three_requests(cluster, reference):
    items = [(PROMPTS[i % 4], COMPLETIONS[i % 4] + f" #{i}") for i in range(20)]
    with RewardClient(cluster.address) as client:
        expected = [r.reward for r in client.score(items)]
    with CoalescingClient(cluster.address, window_ms=20) as client:
        before = score_requests(cluster)

        async def one(item):
            return await client.score([item])

        async def all_of_them():
            return await asyncio.gather(*(one(item) for item in items))

        results = asyncio.run(all_of_them())
        sent = score_requests(cluster) - before
    print(f"20 concurrent single-item calls -> {sent} Score request(s)")
    assert 1 <= sent <= 3, sent
    assert client.stats.requests == sent and client.stats.calls == 20
    assert [r[0].reward for r in results] == pytest.approx(expected, abs=1e-6)


def test_threads_coalesce_too_and_a_bad_item_fails_alone(cluster, reference):
    client = CoalescingClient(cluster.address, window_ms=50)
    try:
        out: dict[int, object] = {}
        barrier = threading.Barrier(5)

        def call(i):
            barrier.wait()
            item = (PROMPTS[i], COMPLETIONS[i]) if i < 4 else (PROMPTS[0], "   ")
            out[i] = client.score_sync([item])[0]

        before = score_requests(cluster)
        threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert score_requests(cluster) - before <= 2
        assert [out[i].reward for i in range(4)] == pytest.approx(reference, abs=1e-6)
        assert out[4].reward is None and out[4].code == "INVALID_ARGUMENT"
        assert out[4].field == "items[0].response"  # the caller's index, not the merged request's
        assert out[4].error.startswith("items[0].response: ")
    finally:
        client.close()


def test_trl_reward_function_strings_messages_and_none(cluster, reference):
    reward = MoermReward(cluster.address)
    try:
        logged = {}
        rewards = reward(
            prompts=[*PROMPTS, PROMPTS[0]],
            completions=[*COMPLETIONS, ""],
            log_extra=lambda column, values: logged.setdefault(column, values),
        )
        assert rewards[:4] == pytest.approx(reference, abs=1e-6) and rewards[4] is None
        assert logged["moerm_outcome"] == ["ok"] * 4 + ["INVALID_ARGUMENT items[4].response"]
        conversational = reward(
            prompts=[[{"role": "user", "content": p}] for p in PROMPTS],
            completions=[[{"role": "assistant", "content": c}] for c in COMPLETIONS],
        )
        assert conversational == pytest.approx(reference, abs=1e-6)
        long = reward(prompts=[PROMPTS[3]], completions=["xs[::-1] " * 5000])
        assert long[0] is not None and reward.last_outcomes[0].truncated
    finally:
        reward.client.close()


def test_async_trl_reward_function(cluster, reference):
    reward = AsyncMoermReward(cluster.address)
    try:
        rewards = asyncio.run(reward(prompts=PROMPTS, completions=COMPLETIONS))
        assert rewards == pytest.approx(reference, abs=1e-6)
    finally:
        reward.client.close()


def test_trl_feedback_of_an_outcome_column_reaches_the_bandits(cluster):
    applied = cluster.router.router.metrics.feedback.labels("applied")
    before = applied._value.get()
    reward = MoermReward(cluster.address, policy="linucb", outcome_column="passed")
    try:
        rewards = reward(
            prompts=[*PROMPTS, PROMPTS[0]],
            completions=[*COMPLETIONS, " "],
            passed=[1.0, 0.0, 1.0, 0.0, 1.0],
        )
        assert rewards[4] is None and all(r is not None for r in rewards[:4])
        assert len(reward.feedback_outcomes) == 4
        assert set(reward.feedback_outcomes.values()) == {"applied"}
        assert applied._value.get() - before == 4  # the router's count of applied feedback
        with pytest.raises(KeyError, match="passed"):
            reward(prompts=PROMPTS[:1], completions=COMPLETIONS[:1])
    finally:
        reward.client.close()


@pytest.fixture
def verl_clients():
    yield
    verl.close_clients()


def test_verl_compute_score_sync_and_async(cluster, reference, monkeypatch, verl_clients):
    monkeypatch.setenv("MOERM_ADDRESS", cluster.address)
    got = [
        verl.compute_score("shared", completion, None, {"prompt": [{"role": "user", "content": prompt}]})
        for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True)
    ]
    assert [g["score"] for g in got] == pytest.approx(reference, abs=1e-6)
    assert all(g["moerm_ok"] == 1.0 and g["moerm_truncated"] == 0.0 for g in got)

    async def concurrently():
        calls = [
            verl.compute_score_async("shared", c, "gt", {"question": p})
            for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
        ]
        return await asyncio.gather(*calls)

    before = score_requests(cluster)
    got = asyncio.run(concurrently())
    assert score_requests(cluster) - before == 1
    assert [g["score"] for g in got] == pytest.approx(reference, abs=1e-6)
    failed = verl.compute_score("shared", "", None, {"question": PROMPTS[0]}, failure_score=-1.0)
    assert failed == {"score": -1.0, "moerm_ok": 0.0, "moerm_truncated": 0.0}
    with pytest.raises(ValueError, match="extra_info"):
        verl.compute_score("shared", "x", None, {"index": 3})


def test_an_unreachable_cluster_raises_instead_of_returning_none():
    import grpc

    reward = MoermReward("127.0.0.1:1", timeout_s=10)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            reward(prompts=PROMPTS[:1], completions=COMPLETIONS[:1])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        reward.client.close()
