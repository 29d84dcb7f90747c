"""A real cluster (MiniLM bundle, embedded Redis) for the trainer adapters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moerm_local import LocalCluster
from tests.integration.conftest import start_cluster


@pytest.fixture(scope="module")
def cluster(minilm_bundle, redis_url) -> Iterator[LocalCluster]:
    """Router (default --max-text-chars 32768) + aggregator + one expert per task."""
    running = start_cluster(minilm_bundle, redis_url, max_items=64)
    yield running
    running.stop()


def score_requests(cluster: LocalCluster) -> int:
    """Score requests the router has answered so far (its gRPC metrics, every status)."""
    return int(
        sum(
            sample.value
            for metric in cluster.router.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "moerm_grpc_requests_total" and sample.labels.get("method") == "Score"
        )
    )
