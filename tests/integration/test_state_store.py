"""Bandit state never shares the score cache's eviction; with a state folder it survives a
router restart, and with a persistent state server a crash of that server loses no
Feedback and applies none twice."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import redis

from moerm.embedded_redis import EmbeddedRedis, free_port
from moerm.v1 import reward_pb2, reward_pb2_grpc
from moerm_local import LocalCluster

pytestmark = pytest.mark.integration


def policy_of(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return client.config_get("maxmemory-policy")["maxmemory-policy"]
    finally:
        client.close()


def test_the_embedded_state_server_never_evicts_and_persists(tmp_path) -> None:
    with EmbeddedRedis.for_state(tmp_path) as server:
        assert policy_of(server.url) == "noeviction"
        client = redis.Redis.from_url(server.url)
        client.set("marker", "1")
        client.close()
    with EmbeddedRedis.for_state(tmp_path) as server:  # the same folder: the same state
        client = redis.Redis.from_url(server.url)
        assert client.get("marker") == b"1"
        client.close()


def test_a_router_keeps_its_bandits_across_a_restart_with_a_state_folder(minilm_bundle, tmp_path) -> None:
    cluster = LocalCluster(
        str(minilm_bundle), redis_url="", router_overrides={"state_dir": str(tmp_path)}
    ).start()
    try:
        app = cluster.router
        assert app.embedded_state is not None and app.embedded_redis is not None
        assert app.embedded_state.url != app.embedded_redis.url
        assert policy_of(app.embedded_state.url) == "noeviction"
        assert policy_of(app.embedded_redis.url) == "allkeys-lru"  # the cache evicts, the state never
        with grpc.insecure_channel(cluster.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            items = [
                reward_pb2.ScoreItem(prompt=f"Fix my loop {k}.", response="Use range.") for k in range(6)
            ]
            reply = stub.Score(reward_pb2.ScoreRequest(items=items, policy="linucb"), timeout=60)
            stub.Feedback(
                reward_pb2.FeedbackRequest(
                    items=[
                        reward_pb2.FeedbackItem(id=r.id, reward=float(k), request_id=reply.request_id)
                        for k, r in enumerate(reply.results)
                    ]
                ),
                timeout=60,
            )
        before = cluster.router.router.state.bandits["linucb"].state()
        assert before["counts"].sum() == 6
        cluster.restart_router()  # its embedded servers stop and start again
        state = cluster.router.router.state
        cluster.run(state.sync())
        for key, value in before.items():
            assert np.array_equal(state.bandits["linucb"].state()[key], value), key
    finally:
        cluster.stop()


def feedback(stub, reply, rewards: dict[int, float]) -> list[int]:
    """Feedback for the reply's results at the given positions; the outcome of each."""
    request = reward_pb2.FeedbackRequest(
        items=[
            reward_pb2.FeedbackItem(id=reply.results[k].id, reward=r, request_id=reply.request_id)
            for k, r in rewards.items()
        ]
    )
    return [result.outcome for result in stub.Feedback(request, timeout=60).results]


def test_feedback_survives_a_crash_of_a_persistent_state_server(minilm_bundle, tmp_path) -> None:
    port = free_port()

    def state_server() -> EmbeddedRedis:  # one port and one folder: the same server after a crash
        return EmbeddedRedis(port, maxmemory="0", policy="noeviction", data_dir=tmp_path / "state").start()

    server = state_server()
    cluster = None
    try:
        cluster = LocalCluster(
            str(minilm_bundle), redis_url="", router_overrides={"state_redis_url": server.url}
        ).start()
        applied, duplicate = reward_pb2.FEEDBACK_OUTCOME_APPLIED, reward_pb2.FEEDBACK_OUTCOME_DUPLICATE
        with grpc.insecure_channel(cluster.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            items = [
                reward_pb2.ScoreItem(prompt=f"Sort my list {k}.", response="sorted(xs)") for k in range(6)
            ]
            reply = stub.Score(reward_pb2.ScoreRequest(items=items, policy="linucb"), timeout=60)
            assert feedback(stub, reply, {0: 1.0, 1: 0.0, 2: 0.5}) == [applied] * 3
            server.process.kill()  # SIGKILL: no shutdown, only what the append-only file holds
            server.process.wait()
            server.stop()
            server = state_server()
            # The trainer retries the whole step: the first three count once, the rest apply.
            outcomes = feedback(stub, reply, {k: float(k) for k in range(6)})
            assert outcomes == [duplicate] * 3 + [applied] * 3
        state = cluster.router.router.state
        assert cluster.run(state.store.log_length()) == 6
        cluster.run(state.sync())
        assert state.bandits["linucb"].counts.sum() == 6
        before = state.bandits["linucb"].state()
        cluster.restart_router()  # a new router replays the same six events
        state = cluster.router.router.state
        cluster.run(state.sync())
        for key, value in before.items():
            assert np.array_equal(state.bandits["linucb"].state()[key], value), key
    finally:
        if cluster is not None:
            cluster.stop()
        server.stop()
