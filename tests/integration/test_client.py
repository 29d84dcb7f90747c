"""moerm.RewardClient / AsyncRewardClient against a real cluster."""

from __future__ import annotations

import time

import grpc
import pytest

from moerm.client import AsyncRewardClient, RetryPolicy, RewardClient
from moerm.embedded_redis import free_port
from moerm.errors import field_violations

pytestmark = pytest.mark.integration

ITEMS = [
    {
        "id": "a",
        "prompt": "Write a function that adds two numbers.",
        "response": "def add(a, b): return a + b",
    },
    ("Write a limerick about a cat.", "A cat with a hat sat on a mat."),
    {
        "id": "c",
        "messages": [{"role": "user", "content": "Sort [3, 1, 2] in Python."}],
        "response": "sorted([3, 1, 2])",
    },
    {
        "id": "d",
        "prompt": "Write a letter to my landlord.",
        "response": "Dear landlord, the heating is broken.",
    },
    {"id": "e", "prompt": "Write a function that adds two numbers.", "response": "lambda a, b: a + b"},
]


def test_sync_client_batches_and_keeps_order(cluster):
    with RewardClient(cluster.address, batch_size=2) as client:
        rewards = client.score(ITEMS, breakdown=True)
        assert [r.id for r in rewards] == ["a", "", "c", "d", "e"]
        assert all(r.capabilities for r in rewards)
        with RewardClient(cluster.address, batch_size=100) as one_batch:
            same = one_batch.score(ITEMS)
    assert [r.reward for r in same] == pytest.approx([r.reward for r in rewards], abs=1e-6)
    assert all(r.cached for r in same)


async def test_async_client(cluster):
    async with AsyncRewardClient(cluster.address, batch_size=2, concurrency=3) as client:
        rewards = await client.score(ITEMS)
    assert [r.id for r in rewards] == ["a", "", "c", "d", "e"]
    with RewardClient(cluster.address) as sync_client:
        again = sync_client.score(ITEMS)
    assert [r.reward for r in again] == pytest.approx([r.reward for r in rewards], abs=1e-6)


def test_bad_input_is_not_retried_and_names_the_field(cluster):
    with RewardClient(cluster.address, retry=RetryPolicy(attempts=5, initial_backoff_s=1.0)) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            client.score([{"prompt": "hi", "response": ""}])
        assert time.monotonic() - started < 1.0  # no backoff happened
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["items[0].response"]


def test_unavailable_is_retried_then_raised():
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.2, max_backoff_s=0.2)
    with RewardClient(f"127.0.0.1:{free_port()}", retry=retry, timeout_s=10) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            client.score([("hi", "hello")])
        elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed >= 2 * 0.1  # two jittered backoffs of 0.1-0.2 s each
