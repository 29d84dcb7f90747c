"""The policy table: what it holds, and that a new policy is one class and one row.

The toy policies here are registered for the test only (and removed after): a bandit
that always picks the arm with the best mean feedback so far, and a median ensemble.
The router's config, the router and the bandit state pick them up with no other change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import pytest

from moerm.routing import policies
from moerm.routing.policies import BANDIT, ENSEMBLE, FIXED, TASK, Hyperparameters, Policy
from moerm.routing.state import RoutingState
from moerm.routing.store import BanditStore
from moerm.v1 import reward_pb2, reward_pb2_grpc
from router_svc.config import RouterConfig


class GreedyMean:
    """A toy bandit: the arm with the best mean reward so far (ties: the lowest index)."""

    def __init__(self, arms: Sequence[str], dim: int):
        self.arms = tuple(arms)
        self.sums = np.zeros(len(self.arms))
        self.counts = np.zeros(len(self.arms))

    def choose(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        means = np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=self.counts > 0)
        return np.full(len(X), int(np.argmax(means)), dtype=np.int64)

    def update_many(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray) -> None:
        np.add.at(self.sums, arms, rewards)
        np.add.at(self.counts, arms, 1)

    def state(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums.copy(), "counts": self.counts.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.sums, self.counts = np.array(state["sums"]), np.array(state["counts"])


@pytest.fixture
def toys() -> Iterator[None]:
    policies.register(Policy("greedy", BANDIT, True, build=lambda arms, dim, h: GreedyMean(arms, dim)))
    policies.register(Policy("median", ENSEMBLE, True, combine=lambda scores, h: np.median(scores, axis=1)))
    try:
        yield
    finally:
        policies.unregister("greedy")
        policies.unregister("median")


def test_the_table_holds_the_built_in_policies() -> None:
    kinds = {name: policies.policy(name).kind for name in policies.names()}
    assert kinds == {
        "task": TASK,
        "fixed": FIXED,
        "linucb": BANDIT,
        "thompson": BANDIT,
        "mean": ENSEMBLE,
        "worst": ENSEMBLE,
        "uwo": ENSEMBLE,
    }
    assert [n for n in policies.names() if policies.policy(n).remembers] == [
        "linucb",
        "thompson",
        "mean",
        "worst",
        "uwo",
    ]
    scores = np.array([[0.0, 1.0, 2.0]])
    uwo = policies.policy("uwo").combine(scores, Hyperparameters(uwo_lambda=0.5))
    np.testing.assert_allclose(uwo, [1.0 - 0.5 * 2.0 / 3.0])


def test_register_refuses_incomplete_or_repeated_policies() -> None:
    with pytest.raises(ValueError, match="needs build"):
        policies.register(Policy("nobuild", BANDIT, True))
    with pytest.raises(ValueError, match="needs combine"):
        policies.register(Policy("nocombine", ENSEMBLE, True))
    with pytest.raises(ValueError, match="already registered"):
        policies.register(Policy("task", TASK))
    with pytest.raises(ValueError, match="unknown kind"):
        policies.register(Policy("odd", "oracle"))


async def test_a_registered_bandit_learns_from_the_shared_log(toys, redis_url: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    store = BanditStore(client, namespace=f"test-{uuid.uuid4().hex}:")
    state = RoutingState(("a", "b"), 3, store)
    try:
        assert set(state.bandits) == {"linucb", "thompson", "greedy"}
        x = np.ones(3)
        await store.append_feedback([("i1", "b", x, 1.0), ("i2", "a", x, 0.0)])
        assert (await state.choose("greedy", x[None])).tolist() == [1]  # choose syncs the log first
        assert state.bandits["greedy"].counts.tolist() == [1, 1]
        # A second replica replays the same log into its own toy bandit.
        replica = RoutingState(("a", "b"), 3, store)
        assert await replica.sync() == 2
        assert replica.bandits["greedy"].sums.tolist() == [0.0, 1.0]
    finally:
        await client.aclose()


def test_the_router_config_and_router_offer_registered_policies(toys, minilm_bundle, redis_url) -> None:
    from moerm_local import LocalCluster

    RouterConfig(bundle="b", aggregator="a", default_policy="greedy").validate()
    cluster = LocalCluster(str(minilm_bundle), redis_url=redis_url).start()
    try:
        assert {"greedy", "median"} <= set(cluster.router.router.policies)
        with grpc.insecure_channel(cluster.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            items = [
                reward_pb2.ScoreItem(prompt=f"toy {uuid.uuid4().hex}: fix my loop", response="use range")
            ]
            greedy = stub.Score(reward_pb2.ScoreRequest(items=items, policy="greedy"), timeout=60)
            median = stub.Score(reward_pb2.ScoreRequest(items=items, policy="median"), timeout=60)
            assert greedy.results[0].policy == "greedy" and len(greedy.results[0].reward_models) == 1
            assert median.results[0].policy == "median"
            assert len(median.results[0].reward_models) == len(cluster.router.router.pool.names)
            feedback = stub.Feedback(
                reward_pb2.FeedbackRequest(
                    items=[
                        reward_pb2.FeedbackItem(
                            id=greedy.results[0].id, reward=1.0, request_id=greedy.request_id
                        )
                    ]
                ),
                timeout=30,
            )
            assert feedback.results[0].outcome == reward_pb2.FEEDBACK_OUTCOME_APPLIED
    finally:
        cluster.stop()
