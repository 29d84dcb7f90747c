"""End to end over real gRPC: router -> experts -> aggregator, with a real
Redis-protocol cache and the MiniLM backbone."""

from __future__ import annotations

import math
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moerm.bundle import Bundle
from moerm.embedded_redis import EmbeddedRedis
from moerm.metrics import sample
from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2
from tests.integration.conftest import start_cluster

pytestmark = pytest.mark.integration

ITEMS = [
    reward_pb2.ScoreItem(
        id="py",
        prompt="Write a Python function that reverses a list.",
        response="def rev(xs):\n    return xs[::-1]",
    ),
    reward_pb2.ScoreItem(
        id="poem",
        prompt="Write a short poem about the sea.",
        response="Grey waves fold over and over, patient as breath.",
    ),
    reward_pb2.ScoreItem(
        id="chat",
        messages=[
            tensor_pb2.Message(role="system", content="You are terse."),
            tensor_pb2.Message(role="user", content="Fix this bug: for i in range(len(xs)) print(xs[i])"),
        ],
        response="for x in xs:\n    print(x)",
    ),
]


def unique_items(tag: str) -> list[reward_pb2.ScoreItem]:
    """ITEMS with responses no other test has scored (so nothing is cached yet)."""
    out = []
    for item in ITEMS:
        copy = reward_pb2.ScoreItem()
        copy.CopyFrom(item)
        copy.response = f"{item.response} [{tag}]"
        out.append(copy)
    return out


def test_scores_come_back_in_order_with_breakdown(stub, minilm_bundle):
    manifest = Bundle.load(minilm_bundle).manifest
    items = unique_items("order")
    reply = stub.Score(reward_pb2.ScoreRequest(items=items, return_breakdown=True), timeout=60)
    assert [r.id for r in reply.results] == ["py", "poem", "chat"]
    assert reply.bundle_version == manifest.bundle_version
    for result in reply.results:
        assert math.isfinite(result.reward)
        assert result.task in manifest.tasks
        assert 0.0 < result.route_confidence <= 1.0
        assert set(result.capabilities) == set(manifest.tasks[result.task].capability_names)
        assert all(math.isfinite(v) for v in result.capabilities.values())
        assert list(result.reward_models) == [f"dmoerm:{result.task}"]
        assert not result.cached
    # The zero-shot router sends the code prompts to "code" and the poem to "writing".
    assert [r.task for r in reply.results] == ["code", "writing", "code"]
    # Different responses get different rewards.
    assert len({r.reward for r in reply.results}) == 3


def test_no_breakdown_unless_asked(stub):
    reply = stub.Score(reward_pb2.ScoreRequest(items=unique_items("nobreak")), timeout=60)
    assert all(len(r.capabilities) == 0 for r in reply.results)


def test_repeated_request_is_answered_from_the_cache(stub):
    request = reward_pb2.ScoreRequest(items=unique_items("cache"), return_breakdown=True)
    first = stub.Score(request, timeout=60)
    second = stub.Score(request, timeout=60)
    assert [r.cached for r in first.results] == [False, False, False]
    assert [r.cached for r in second.results] == [True, True, True]
    assert [r.reward for r in second.results] == [r.reward for r in first.results]
    assert [dict(r.capabilities) for r in second.results] == [dict(r.capabilities) for r in first.results]
    assert [r.task for r in second.results] == [r.task for r in first.results]


def test_order_kept_with_duplicates_and_partial_hits(stub):
    items = unique_items("partial")
    stub.Score(reward_pb2.ScoreRequest(items=items[:1]), timeout=60)  # warm one item
    mixed = [items[1], items[0], items[1], items[2]]
    reply = stub.Score(reward_pb2.ScoreRequest(items=mixed), timeout=60)
    assert [r.id for r in reply.results] == ["poem", "py", "poem", "chat"]
    assert [r.cached for r in reply.results] == [False, True, False, False]
    assert reply.results[0].reward == reply.results[2].reward


def test_results_do_not_depend_on_batch_company(stub):
    """An item scores the same alone and batched with others (padding is masked)."""
    items = unique_items("company")
    together = stub.Score(reward_pb2.ScoreRequest(items=items), timeout=60)
    alone = reward_pb2.ScoreRequest(
        items=[items[1]], policy="fixed", reward_model=f"dmoerm:{together.results[1].task}"
    )
    single = stub.Score(alone, timeout=60)
    assert single.results[0].reward == pytest.approx(together.results[1].reward, abs=1e-5)


def test_fixed_policy_uses_the_named_reward_model(stub):
    reply = stub.Score(
        reward_pb2.ScoreRequest(items=unique_items("fixed"), reward_model="dmoerm:writing"), timeout=60
    )
    assert [r.task for r in reply.results] == ["writing"] * 3
    assert all(r.route_confidence == 1.0 for r in reply.results)


def test_health_and_reflection(cluster):
    with grpc.insecure_channel(cluster.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "moerm.v1.RewardService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(cluster.expert_address("code")) as channel:
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service="moerm.v1.ExpertService"), timeout=5)
            .status
        )
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_caller_deadline_is_enforced(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(reward_pb2.ScoreRequest(items=unique_items("deadline")), timeout=0.001)
    # Past the deadline, or rejected at once by an expert's admission (it would not finish
    # within the millisecond left): either way the call ends, it does not run late.
    assert caught.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_expert_down_gives_unavailable_not_a_hang(minilm_bundle, redis_url):
    running = start_cluster(minilm_bundle, redis_url)
    try:
        running.stop_expert("code")
        with grpc.insecure_channel(running.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Score(reward_pb2.ScoreRequest(items=unique_items("down")[:1]), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "code" in caught.value.details()
            assert time.monotonic() - started < 10
            # Items for the live expert still score.
            ok = stub.Score(reward_pb2.ScoreRequest(items=unique_items("down")[1:2]), timeout=30)
            assert ok.results[0].task == "writing"
    finally:
        running.stop()


def test_cache_killed_mid_test_leaves_scoring_working(minilm_bundle):
    server = EmbeddedRedis().start()
    running = start_cluster(minilm_bundle, server.url)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            request = reward_pb2.ScoreRequest(items=unique_items("killed"))
            first = stub.Score(request, timeout=60)
            assert all(stub.Score(request, timeout=60).results[i].cached for i in range(3))
            server.stop()  # the cache dies
            # What this router scored is still in its in-process tier.
            after = stub.Score(request, timeout=60)
            assert [r.cached for r in after.results] == [True] * 3
            assert [r.reward for r in after.results] == [r.reward for r in first.results]
            # New items are scored with Redis down; the failed cache calls are bypassed.
            fresh = reward_pb2.ScoreRequest(items=unique_items("killed-fresh"))
            scored = stub.Score(fresh, timeout=60)
            assert [r.cached for r in scored.results] == [False] * 3
            registry = running.router.metrics.registry
            assert sample(registry, "moerm_cache_errors_total", op="read") >= 1
            # Still working while the cache is bypassed.
            again = stub.Score(fresh, timeout=60)
            assert len(again.results) == 3
    finally:
        running.stop()
        server.stop()
