"""Prometheus metrics of a real cluster (router, one expert per task, aggregator
and a Redis-protocol cache on loopback): after a known sequence of calls, the
text each service serves on its /metrics port holds exactly the counts that
sequence implies. The expected counts are derived from the calls and their
answers (which task each item went to, which reward model a bandit chose), not
written down."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from moerm.v1 import reward_pb2, reward_pb2_grpc
from moerm_local import LocalCluster

pytestmark = pytest.mark.integration

PROMPTS = [
    "Write a Python function that reverses a list.",
    "Write a short poem about the sea.",
    "Fix this bug: for i in range(len(xs)) print(xs[i])",
]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """``GET /metrics`` parsed: (sample name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def cluster(minilm_bundle: Path, redis_url: str) -> Iterator[LocalCluster]:
    running = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={"cache_namespace": f"test-{uuid.uuid4().hex}:", "metrics_port": 0},
        expert_overrides={"metrics_port": 0},
        aggregator_overrides={"metrics_port": 0},
    ).start()
    yield running
    running.stop()


def test_scraped_counts_match_the_calls(cluster: LocalCluster) -> None:
    tag = uuid.uuid4().hex[:8]
    first = [reward_pb2.ScoreItem(prompt=p, response=f"An answer [{tag} {i}]") for i, p in enumerate(PROMPTS)]
    bandit = [
        reward_pb2.ScoreItem(prompt=p, response=f"Another [{tag} {i}]") for i, p in enumerate(PROMPTS[:2])
    ]
    with grpc.insecure_channel(cluster.address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        # Health checks are not counted.
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        scored = stub.Score(reward_pb2.ScoreRequest(items=first), timeout=60)  # 3 computed
        again = stub.Score(reward_pb2.ScoreRequest(items=first), timeout=60)  # 3 from the cache
        with pytest.raises(grpc.RpcError) as bad:  # 2 items, one without a response
            stub.Score(
                reward_pb2.ScoreRequest(items=[first[0], reward_pb2.ScoreItem(prompt="x")]), timeout=60
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chosen = stub.Score(reward_pb2.ScoreRequest(items=bandit, policy="linucb"), timeout=60)
        ids = [r.id for r in chosen.results]
        applied = stub.Feedback(
            reward_pb2.FeedbackRequest(
                items=[reward_pb2.FeedbackItem(id=i, reward=1.0, request_id=chosen.request_id) for i in ids]
            ),
            timeout=30,
        )
        repeated = stub.Feedback(
            reward_pb2.FeedbackRequest(
                items=[
                    reward_pb2.FeedbackItem(id=i, reward=1.0, request_id=chosen.request_id) for i in ids[:1]
                ]
            ),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Feedback(
                reward_pb2.FeedbackRequest(
                    items=[reward_pb2.FeedbackItem(id=f"nobody-{tag}", reward=0.0, request_id="0" * 32)]
                ),
                timeout=30,
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert all(r.cached for r in again.results) and not any(r.cached for r in scored.results)
    assert applied.applied == 2 and repeated.applied == 0

    # A call is counted when its handler returns, which may be just after the client has
    # its answer: wait until the last call (Feedback NOT_FOUND) is in.
    deadline = time.monotonic() + 10
    router = scrape(cluster.router.metrics.http.port)
    while value(router, "moerm_grpc_requests_total", method="Feedback", code="NOT_FOUND") < 1:
        assert time.monotonic() < deadline, "the last call was never counted"
        time.sleep(0.05)
        router = scrape(cluster.router.metrics.http.port)
    # Calls and items by method and status code, latency by method.
    assert value(router, "moerm_grpc_requests_total", method="Score", code="OK") == 3
    assert value(router, "moerm_grpc_requests_total", method="Score", code="INVALID_ARGUMENT") == 1
    assert value(router, "moerm_grpc_items_total", method="Score", code="OK") == 3 + 3 + 2
    assert value(router, "moerm_grpc_items_total", method="Score", code="INVALID_ARGUMENT") == 2
    assert value(router, "moerm_grpc_requests_total", method="Feedback", code="OK") == 2
    assert value(router, "moerm_grpc_requests_total", method="Feedback", code="NOT_FOUND") == 1
    assert value(router, "moerm_grpc_items_total", method="Feedback", code="OK") == 3
    assert value(router, "moerm_grpc_request_seconds_count", method="Score") == 4
    assert value(router, "moerm_grpc_request_seconds_count", method="Feedback") == 3
    assert not any(name.startswith("moerm_grpc") and ("method", "Check") in labels for name, labels in router)
    # Routes, scores computed per reward model, cache, bandits, Feedback outcomes.
    routed = Counter(r.task for r in [*scored.results, *again.results, *chosen.results])
    for task, count in routed.items():
        assert value(router, "moerm_router_routed_items_total", task=task) == count
    computed = Counter(r.reward_models[0] for r in [*scored.results, *chosen.results])
    for name, count in computed.items():
        assert value(router, "moerm_router_scores_computed_total", reward_model=name) == count
    # Score keys: 3 + 3 missed, 3 found in the router's own tier; prompt embeddings: the
    # 3 distinct prompts missed once (later calls find them in the router's embedding memory).
    assert value(router, "moerm_cache_misses_total") == 3 + 3 + 2
    assert value(router, "moerm_cache_hits_total", tier="local") == 3
    assert value(router, "moerm_cache_hits_total", tier="redis") == 0
    assert value(router, "moerm_cache_writes_total") == 3 + 3 + 2
    assert value(router, "moerm_cache_bypasses_total") == 0
    assert value(router, "moerm_bandit_updates_total") == 2
    assert value(router, "moerm_bandit_store_errors_total") == 0
    assert value(router, "moerm_feedback_items_total", outcome="applied") == 2
    assert value(router, "moerm_feedback_items_total", outcome="duplicate") == 1
    assert value(router, "moerm_feedback_items_total", outcome="not_found") == 1

    # Experts: one ScoreBatch per task per Score call that missed the cache.
    per_call = [Counter(r.task for r in scored.results), Counter(r.task for r in chosen.results)]
    for task, app in cluster.experts.items():
        expert = scrape(app.metrics.http.port)
        calls = sum(task in tasks for tasks in per_call)
        items = sum(tasks[task] for tasks in per_call)
        assert value(expert, "moerm_grpc_requests_total", method="ScoreBatch", code="OK") == calls, task
        assert value(expert, "moerm_grpc_items_total", method="ScoreBatch", code="OK") == items, task
        assert value(expert, "moerm_expert_batch_size_sum", task=task) == items, task
        assert value(expert, "moerm_expert_queue_seconds_count", task=task) == calls, task
        assert value(expert, "moerm_expert_batch_tokens_count", task=task) >= 1, task
        assert value(expert, "moerm_expert_queue_items", task=task) == 0, task
        assert value(expert, "moerm_expert_queue_requests", task=task) == 0, task
        assert value(expert, "moerm_expert_rejected_total", task=task) == 0, task

    # Aggregator: one Aggregate per Score call that computed anything.
    aggregator = scrape(cluster.aggregator.metrics.http.port)
    assert value(aggregator, "moerm_grpc_requests_total", method="Aggregate", code="OK") == 2
    assert value(aggregator, "moerm_grpc_items_total", method="Aggregate", code="OK") == 3 + 2
