"""The reward-model pool over real gRPC: task base models (base:<task>), an external
reward model (another bundle's expert service registered by address), the ensemble
policies, the bandits' arms, and the per-(reward model, item) cache.

The bundle is the session's MiniLM bundle with base models added (no training); the
external is the untrained session bundle's "writing" expert service, declaring its
normalization in Describe.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from expert_svc.config import ExpertConfig
from moerm.bundle_build import with_random_base_models
from moerm.errors import field_violations
from moerm.metrics import sample
from moerm.tensors import from_proto
from moerm.v1 import expert_pb2, expert_pb2_grpc, reward_pb2, reward_pb2_grpc, tensor_pb2
from moerm_local import LocalCluster

pytestmark = pytest.mark.integration

POOL = ("dmoerm:code", "dmoerm:writing", "base:code", "base:writing", "other")
EXTERNAL_NORM = (0.5, 2.0)  # declared by the external's Describe
BASE_CODE_NORM = (0.1, 0.5)  # given by the router's --rm-norm
UWO_LAMBDA = 0.7


@pytest.fixture(scope="module")
def cluster(minilm_bundle: Path, redis_url: str, tmp_path_factory) -> Iterator[LocalCluster]:
    based = with_random_base_models(minilm_bundle, tmp_path_factory.mktemp("routing-pool") / "b")
    external = ExpertConfig(
        bundle=str(minilm_bundle), task="writing", norm_mean=EXTERNAL_NORM[0], norm_std=EXTERNAL_NORM[1]
    )
    running = LocalCluster(
        str(based),
        redis_url=redis_url,
        router_overrides={
            "cache_namespace": f"test-{uuid.uuid4().hex}:",
            "uwo_lambda": UWO_LAMBDA,
            "rm_norm": (f"base:code={BASE_CODE_NORM[0]}:{BASE_CODE_NORM[1]}",),
        },
        external_experts={"other": external},
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> Iterator[reward_pb2_grpc.RewardServiceStub]:
    with grpc.insecure_channel(cluster.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def items(tag: str) -> list[reward_pb2.ScoreItem]:
    """Items no other test scored (nothing cached yet)."""
    return [
        reward_pb2.ScoreItem(
            prompt="Write a Python function that reverses a list.",
            response=f"def rev(xs):\n    return xs[::-1]  # {tag}",
        ),
        reward_pb2.ScoreItem(
            prompt="Write a short poem about the sea.", response=f"Grey waves fold. ({tag})"
        ),
        reward_pb2.ScoreItem(
            messages=[
                tensor_pb2.Message(role="system", content="You are terse."),
                tensor_pb2.Message(role="user", content="Fix: for i in range(len(xs)) print(xs[i])"),
            ],
            response=f"for x in xs:\n    print(x)  # {tag}",
        ),
    ]


def score(stub, batch, **options) -> reward_pb2.ScoreResponse:
    return stub.Score(reward_pb2.ScoreRequest(items=batch, **options), timeout=120)


def direct(address: str, request: expert_pb2.ExpertRequest) -> expert_pb2.ExpertResponse:
    with grpc.insecure_channel(address) as channel:
        return expert_pb2_grpc.ExpertServiceStub(channel).ScoreBatch(request, timeout=120)


def expert_request(task: str, batch: list[reward_pb2.ScoreItem], **flags) -> expert_pb2.ExpertRequest:
    """The ExpertRequest the router sends for ``batch`` (a prompt is one user turn)."""
    out = []
    for item in batch:
        messages = list(item.messages) or [tensor_pb2.Message(role="user", content=item.prompt)]
        out.append(expert_pb2.ExpertItem(messages=messages, response=item.response))
    return expert_pb2.ExpertRequest(task=task, items=out, **flags)


def member_rewards(stub, batch) -> np.ndarray:
    """Each pool member's reward per item via the fixed policy. Shape: (N, K)."""
    columns = [[r.reward for r in score(stub, batch, reward_model=name).results] for name in POOL]
    return np.array(columns, dtype=np.float64).T


def test_pool_is_offered_in_order(cluster: LocalCluster) -> None:
    router = cluster.router.router
    assert router.reward_models == POOL
    assert router.pool["other"].task == "writing"  # from its Describe
    assert router.state.arms == POOL


def test_external_reward_model_is_called_over_grpc(cluster: LocalCluster, stub) -> None:
    batch = items("external")
    registry = cluster.externals["other"].metrics.registry
    before = sample(registry, "moerm_expert_batch_size_sum", task="writing")
    reply = score(stub, batch, reward_model="other", return_breakdown=True)
    assert sample(registry, "moerm_expert_batch_size_sum", task="writing") - before == len(batch)
    # Its reward is the first column of its scores, normalized as its Describe declared.
    own = direct(cluster.external_address("other"), expert_request("writing", batch))
    first = from_proto(own.scores)[:, 0]
    expected = (first - EXTERNAL_NORM[0]) / EXTERNAL_NORM[1]
    assert [r.reward for r in reply.results] == pytest.approx(expected.tolist(), abs=1e-5)
    for result, row in zip(reply.results, from_proto(own.scores), strict=True):
        assert list(result.reward_models) == ["other"]
        assert result.task == ""  # not a task of this bundle
        assert result.route_confidence == 1.0  # a fixed route
        assert dict(result.capabilities) == pytest.approx(
            dict(zip(own.capabilities, row.tolist(), strict=True))
        )


def test_fixed_on_a_task_base_model(cluster: LocalCluster, stub) -> None:
    batch = items("base")
    reply = score(stub, batch, reward_model="base:code", return_breakdown=True)
    own = direct(cluster.expert_address("code"), expert_request("code", batch, base_only=True))
    expected = (from_proto(own.base_scores) - BASE_CODE_NORM[0]) / BASE_CODE_NORM[1]
    assert [r.reward for r in reply.results] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(list(r.reward_models) == ["base:code"] and r.task == "code" for r in reply.results)
    assert all(len(r.capabilities) == 0 for r in reply.results)  # a base model has no breakdown
    # Not the expert set's reward: another reward model of the same task.
    experts = score(stub, batch, reward_model="dmoerm:code")
    assert [r.reward for r in experts.results] != pytest.approx([r.reward for r in reply.results], abs=1e-3)


@pytest.mark.parametrize("rule", ["mean", "worst", "uwo"])
def test_ensemble_is_the_rule_over_normalized_members(stub, rule: str) -> None:
    batch = items(f"ensemble-{rule}")
    members = member_rewards(stub, batch)  # (N, K), each normalized by its reward model
    reply = score(stub, batch, policy=rule, return_breakdown=True)
    expected = {
        "mean": members.mean(axis=1),
        "worst": members.min(axis=1),
        "uwo": members.mean(axis=1)
        - UWO_LAMBDA * ((members - members.mean(axis=1, keepdims=True)) ** 2).mean(axis=1),
    }[rule]
    assert [r.reward for r in reply.results] == pytest.approx(expected.tolist(), abs=1e-5)
    routed = score(stub, batch, policy="task", return_breakdown=True)
    for result, row, task_result in zip(reply.results, members, routed.results, strict=True):
        assert result.policy == rule
        assert tuple(result.reward_models) == POOL
        assert [result.member_rewards[name] for name in POOL] == pytest.approx(row.tolist(), abs=1e-5)
        # task / route_confidence / breakdown: the classifier's route and its expert set.
        assert (result.task, result.route_confidence) == (task_result.task, task_result.route_confidence)
        assert dict(result.capabilities) == dict(task_result.capabilities)
        assert result.cached  # every member was scored (and cached) by the fixed calls


def test_uwo_differs_from_mean_by_the_variance_term(stub) -> None:
    batch = items("uwo-vs-mean")
    mean = score(stub, batch, policy="mean").results
    uwo = score(stub, batch, policy="uwo").results
    assert all(u.reward < m.reward for u, m in zip(uwo, mean, strict=True))


def test_ensemble_scores_are_reused_by_single_members(cluster: LocalCluster, stub) -> None:
    batch = items("reuse")
    first = score(stub, batch, policy="mean")
    assert [r.cached for r in first.results] == [False] * len(batch)
    calls = cluster.router.router.downstream.calls
    for name in POOL:
        again = score(stub, batch, reward_model=name)
        assert all(r.cached for r in again.results), name
    assert cluster.router.router.downstream.calls == calls  # no reward model was called again


def test_ensemble_ids_are_assigned_and_task_ids_left_alone(stub) -> None:
    batch = items("ids")
    batch[1].id = "mine"
    reply = score(stub, batch, policy="worst")
    assert len(reply.request_id) == 32
    assert [r.id for r in reply.results] == [f"{reply.request_id}/0", "mine", f"{reply.request_id}/2"]
    plain = score(stub, items("ids-task"))
    assert [r.id for r in plain.results] == ["", "", ""] and plain.request_id
    assert plain.request_id != reply.request_id


@pytest.mark.parametrize("policy", ["linucb", "thompson"])
def test_bandit_picks_an_arm_of_the_pool(stub, policy: str) -> None:
    prompt = "Write a Python class for a stack."
    batch = [
        reward_pb2.ScoreItem(prompt=prompt, response=f"class Stack: pass  # {policy} {k}") for k in range(4)
    ]
    batch += items(f"bandit-{policy}")
    reply = score(stub, batch, policy=policy, return_breakdown=True)
    arms = [tuple(r.reward_models) for r in reply.results]
    assert all(len(arm) == 1 and arm[0] in POOL for arm in arms)
    assert len(set(arms[:4])) == 1  # one arm per prompt, shared by all of its responses
    for result, item in zip(reply.results, batch, strict=True):
        (arm,) = result.reward_models
        assert result.policy == policy
        fixed = score(stub, [item], reward_model=arm).results[0]
        assert result.reward == pytest.approx(fixed.reward, abs=1e-6)
        assert result.task == (arm.partition(":")[2] if ":" in arm else "")
        assert math.isfinite(result.route_confidence) and 0.0 <= result.route_confidence <= 1.0


def test_bad_pool_requests_name_the_field(stub) -> None:
    for request, field in [
        (reward_pb2.ScoreRequest(items=items("bad"), reward_model="base:nope"), "reward_model"),
        (reward_pb2.ScoreRequest(items=items("bad"), policy="mean", reward_model="other"), "reward_model"),
        (reward_pb2.ScoreRequest(items=items("bad"), policy="ucb"), "policy"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Score(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in [v.field for v in field_violations(caught.value)]


def test_an_ensemble_without_a_member_says_which_is_missing(cluster: LocalCluster, stub) -> None:
    """Runs last in this module: it stops the external reward model. The ensemble
    combines the members that answer and names the missing one; the missing one's
    failed call caches nothing, and asking for it alone fails fast."""
    batch = items("failed")
    cluster.run(cluster.externals["other"].stop(grace_s=0))
    reply = score(stub, batch, policy="mean")
    for result in reply.results:
        assert list(result.missing_reward_models) == ["other"]
        assert list(result.reward_models) == list(POOL[:-1])
    with pytest.raises(grpc.RpcError) as caught:
        score(stub, batch, reward_model="other")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "other" in caught.value.details()
