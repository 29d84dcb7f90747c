"""RewardClient over several router replicas: calls go to each in turn, and a
replica that is gone costs no failed call (the retry goes to the next one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moerm.client import RetryPolicy, RewardClient
from moerm.metrics import sample
from moerm_local import LocalCluster
from tests.integration.conftest import start_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def two_routers(minilm_bundle: Path, redis_url: str) -> Iterator[LocalCluster]:
    running = start_cluster(minilm_bundle, redis_url)
    try:
        running.start_replica()
        yield running
    finally:
        running.stop()


def score_calls(app) -> float:
    return sample(app.metrics.registry, "moerm_grpc_requests_total", method="Score", code="OK")


def test_calls_spread_over_replicas_and_survive_one_gone(two_routers: LocalCluster) -> None:
    first, second = two_routers.router, two_routers.replicas[0]
    item = [("Write a short poem about the sea.", "Grey waves fold over and over.")]
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
    with RewardClient([first.address, second.address], retry=retry) as client:
        for _ in range(6):
            assert len(client.score(item)) == 1
        assert (score_calls(first), score_calls(second)) == (3, 3)
        two_routers.run(second.stop(grace_s=0))
        rewards = [client.score(item)[0].reward for _ in range(6)]  # every other call finds it gone
    assert len(set(rewards)) == 1
    assert score_calls(first) == 3 + 6
