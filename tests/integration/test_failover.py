"""A dead expert takes down its own task only: ensembles score with the live members
and name the missing ones, bandits choose the best live arm, the task's health name
turns NOT_SERVING while the router and the other task keep serving. (The module's own cluster, from the package's
module-scoped ``cluster`` fixture: this test stops one of its experts.)"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moerm.v1 import reward_pb2
from router_svc.app import task_service_name

pytestmark = pytest.mark.integration

CODE = "Fix this bug: for i in range(len(xs)) print(xs[i])"


def health(cluster, service: str) -> int:
    with grpc.insecure_channel(cluster.address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


def items(n: int = 4) -> list[reward_pb2.ScoreItem]:
    tag = uuid.uuid4().hex[:8]  # never cached
    return [
        reward_pb2.ScoreItem(prompt=f"{CODE} ({tag} {k})", response=f"Use range. [{k}]") for k in range(n)
    ]


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_dead_expert_leaves_its_task_only(cluster, stub) -> None:
    pool = cluster.router.router.pool.names
    assert set(pool) >= {"dmoerm:code", "dmoerm:writing"}
    before = stub.Score(reward_pb2.ScoreRequest(items=items(), policy="mean"), timeout=60)
    assert all(not r.missing_reward_models and len(r.reward_models) == len(pool) for r in before.results)
    assert health(cluster, task_service_name("writing")) == health_pb2.HealthCheckResponse.SERVING

    cluster.stop_expert("writing")
    wait_for(
        lambda: health(cluster, task_service_name("writing")) == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    assert health(cluster, "") == health_pb2.HealthCheckResponse.SERVING  # the router itself
    assert health(cluster, task_service_name("code")) == health_pb2.HealthCheckResponse.SERVING
    registry = cluster.router.router.metrics.registry
    assert registry.get_sample_value("moerm_router_task_live", {"task": "writing"}) == 0
    assert registry.get_sample_value("moerm_router_task_live", {"task": "code"}) == 1

    ensemble = stub.Score(reward_pb2.ScoreRequest(items=items(), policy="mean"), timeout=60)
    for result in ensemble.results:
        assert "dmoerm:writing" in result.missing_reward_models
        assert "dmoerm:writing" not in result.reward_models and "dmoerm:code" in result.reward_models

    for policy in ("linucb", "thompson"):
        chosen = stub.Score(reward_pb2.ScoreRequest(items=items(8), policy=policy), timeout=60)
        assert all(r.reward_models[0] != "dmoerm:writing" for r in chosen.results), policy

    code = stub.Score(
        reward_pb2.ScoreRequest(items=items(), policy="fixed", reward_model="dmoerm:code"), timeout=60
    )
    assert {r.task for r in code.results} == {"code"}  # the other task still answers

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(
            reward_pb2.ScoreRequest(
                items=[reward_pb2.ScoreItem(prompt="hi", response="x")],
                policy="fixed",
                reward_model="dmoerm:writing",
            ),
            timeout=60,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5  # fails fast, not at the deadline
