"""Bandit routing and the Feedback RPC over real gRPC with a real Redis: decisions
remembered per item, idempotent feedback, bad feedback, a bandit choice that follows
the shared log (not the cache), and state that survives a router restart and is
shared by a second replica."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from moerm.errors import field_violations
from moerm.metrics import sample
from moerm.v1 import reward_pb2, reward_pb2_grpc
from moerm_local import LocalCluster
from router_svc.router import decision_id

pytestmark = pytest.mark.integration

APPLIED = reward_pb2.FEEDBACK_OUTCOME_APPLIED
DUPLICATE = reward_pb2.FEEDBACK_OUTCOME_DUPLICATE
NOT_FOUND = reward_pb2.FEEDBACK_OUTCOME_NOT_FOUND
NO_ARM = reward_pb2.FEEDBACK_OUTCOME_NO_ARM
DECISION_TTL_S = 600


@pytest.fixture(scope="module")
def cluster(minilm_bundle: Path, redis_url: str) -> Iterator[LocalCluster]:
    running = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={"cache_namespace": f"test-{uuid.uuid4().hex}:", "decision_ttl_s": DECISION_TTL_S},
    ).start()
    yield running
    running.stop()


def stub_for(address: str) -> reward_pb2_grpc.RewardServiceStub:
    return reward_pb2_grpc.RewardServiceStub(grpc.insecure_channel(address))


@pytest.fixture
def stub(cluster: LocalCluster) -> reward_pb2_grpc.RewardServiceStub:
    return stub_for(cluster.address)  # per test: the router may have been restarted


def items(tag: str, n: int = 4) -> list[reward_pb2.ScoreItem]:
    """``n`` items with distinct prompts no other test used."""
    prompts = [
        "Write a Python function that reverses a list.",
        "Write a short poem about the sea.",
        "Fix this bug: for i in range(len(xs)) print(xs[i])",
        "Write a letter to my landlord about the heating.",
    ]
    return [
        reward_pb2.ScoreItem(prompt=f"{prompts[k % 4]} ({tag} {k})", response=f"An answer. [{tag} {k}]")
        for k in range(n)
    ]


def score(stub, batch, **options) -> reward_pb2.ScoreResponse:
    return stub.Score(reward_pb2.ScoreRequest(items=batch, **options), timeout=120)


def feedback(stub, rows) -> reward_pb2.FeedbackResponse:
    """(id, reward, request_id) rows; (id, reward) rows get a well-formed request_id
    that no Score call made."""
    request = reward_pb2.FeedbackRequest(
        items=[
            reward_pb2.FeedbackItem(id=row[0], reward=row[1], request_id=row[2] if len(row) > 2 else NO_CALL)
            for row in rows
        ]
    )
    return stub.Feedback(request, timeout=60)


NO_CALL = "0" * 32  # the form of a request_id, of no Score call


def snapshot(cluster: LocalCluster, app=None) -> dict[str, np.ndarray]:
    """Both bandits' state of a router (the cluster's by default), after a sync."""
    state = (app or cluster.router).router.state
    cluster.run(state.sync())
    out = {f"linucb.{k}": v for k, v in state.bandits["linucb"].state().items()}
    out.update({f"thompson.{k}": v for k, v in state.bandits["thompson"].state().items()})
    return out


def same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_decisions_are_remembered_per_item_with_a_ttl(cluster: LocalCluster, stub, redis_url: str) -> None:
    batch = items("remember")
    batch[2].id = "caller-id"
    reply = score(stub, batch, policy="thompson")
    ids = [r.id for r in reply.results]
    assert ids == [f"{reply.request_id}/0", f"{reply.request_id}/1", "caller-id", f"{reply.request_id}/3"]
    router = cluster.router.router
    kept = [decision_id(reply.request_id, i) for i in ids]  # decisions belong to the call
    decisions = dict(zip(ids, cluster.run(router.state.store.recall(kept)).values(), strict=True))
    contexts = cluster.run(router.contexts.embed([item.turns for item in _parsed(batch)]))
    for result, context in zip(reply.results, contexts, strict=True):
        decision = decisions[result.id]
        assert (decision.arm, decision.policy) == (result.reward_models[0], "thompson")
        np.testing.assert_array_equal(decision.context, context)  # the classifier's embedding, reused
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = client.ttl(router.state.store.decision_key(kept[0]))
    finally:
        client.close()
    assert 0 < ttl <= DECISION_TTL_S


def _parsed(batch: list[reward_pb2.ScoreItem]):
    from router_svc.validation import parse_request

    return parse_request(
        reward_pb2.ScoreRequest(items=batch),
        max_items=100,
        max_text_chars=10_000,
        max_item_chars=100_000,
        max_messages=256,
        default_policy="task",
        policies=("task",),
        reward_models=(),
    ).items


def test_feedback_is_applied_once(cluster: LocalCluster, stub) -> None:
    reply = score(stub, items("idempotent"), policy="linucb")
    pairs = [(r.id, float(k), reply.request_id) for k, r in enumerate(reply.results)]
    before = snapshot(cluster)
    first = feedback(stub, pairs)
    assert [r.outcome for r in first.results] == [APPLIED] * 4 and first.applied == 4
    assert [r.id for r in first.results] == [i for i, *_ in pairs]
    after = snapshot(cluster)
    assert not same_state(before, after)
    assert after["linucb.counts"].sum() == before["linucb.counts"].sum() + 4
    log_length = cluster.run(cluster.router.router.state.store.log_length())

    again = feedback(stub, pairs)  # e.g. a retry after a lost reply
    assert [r.outcome for r in again.results] == [DUPLICATE] * 4 and again.applied == 0
    assert same_state(after, snapshot(cluster))
    assert cluster.run(cluster.router.router.state.store.log_length()) == log_length


def test_some_unknown_ids_are_reported_per_item(cluster: LocalCluster, stub) -> None:
    bandit = score(stub, items("mixed-bandit", 2), policy="thompson")
    ensemble = score(stub, items("mixed-ensemble", 1), policy="mean")
    reply = feedback(
        stub,
        [
            (bandit.results[0].id, 1.0, bandit.request_id),
            ("never-scored", 0.0, bandit.request_id),
            (ensemble.results[0].id, 0.5, ensemble.request_id),
            (bandit.results[1].id, 0.0, bandit.request_id),
        ],
    )
    assert [r.outcome for r in reply.results] == [APPLIED, NOT_FOUND, NO_ARM, APPLIED]
    assert reply.applied == 2


@pytest.mark.parametrize(
    ("pairs", "field"),
    [
        ([], "items"),
        ([("a", 1.0), ("b", float("nan"))], "items[1].reward"),
        ([("a", float("inf"))], "items[0].reward"),
        ([("", 1.0)], "items[0].id"),
        ([("a", 1.0), ("a", 0.0)], "items[1].id"),
        ([("a", 1.0, "")], "items[0].request_id"),
        ([("a", 1.0), ("b", 1.7e308)], "items[1].reward"),
    ],
    ids=["empty", "nan", "inf", "empty-id", "repeated-id", "no-request-id", "huge-reward"],
)
def test_bad_feedback_is_invalid_argument(stub, pairs, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        feedback(stub, pairs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == [field]


def test_unknown_ids_are_not_found(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        feedback(stub, [("no-such-id", 1.0), ("nor-this", 0.0)])  # no call made NO_CALL
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'no-such-id'" in caught.value.details() and "'nor-this'" in caught.value.details()
    # The task policy keeps no decisions: its items cannot take feedback.
    batch = items("task-policy", 1)
    batch[0].id = f"task-{uuid.uuid4().hex}"
    score(stub, batch, policy="task")
    with pytest.raises(grpc.RpcError) as caught:
        feedback(stub, [(batch[0].id, 1.0, NO_CALL)])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_bandit_choice_follows_the_log_not_the_cache(cluster: LocalCluster, stub) -> None:
    batch = items("unfrozen", 1)
    reply = score(stub, batch, policy="linucb")
    first, score_request_id = reply.results[0], reply.request_id
    (chosen,) = first.reward_models
    (other,) = set(cluster.router.router.state.arms) - {chosen}
    # Evidence in the shared log (as another replica's feedback would put it there):
    # on this prompt the arm not chosen is right and the chosen one wrong.
    state = cluster.router.router.state
    key = decision_id(score_request_id, first.id)
    context = cluster.run(state.store.recall([key]))[key].context
    events = [(f"evidence-{uuid.uuid4().hex}", other, context, 1.0) for _ in range(10)]
    events += [(f"evidence-{uuid.uuid4().hex}", chosen, context, 0.0) for _ in range(10)]
    assert all(cluster.run(state.store.append_feedback(events)))
    second = score(stub, batch, policy="linucb").results[0]
    assert tuple(second.reward_models) == (other,)  # the cached score of `chosen` did not stick
    fixed = score(stub, batch, reward_model=other).results[0]
    assert second.reward == pytest.approx(fixed.reward, abs=1e-6)
    assert second.task == other.removeprefix("dmoerm:")


def test_state_survives_a_router_restart(cluster: LocalCluster) -> None:
    stub = stub_for(cluster.address)
    scored = score(stub, items("restart"), policy="thompson")
    feedback(stub, [(r.id, float(k % 2), scored.request_id) for k, r in enumerate(scored.results)])
    before = snapshot(cluster)
    offset = cluster.router.router.state.offset
    assert before["thompson.counts"].sum() > 0

    cluster.restart_router()
    state = cluster.router.router.state
    assert state.offset == offset  # replayed at start-up, before any call
    assert same_state(before, snapshot(cluster))
    # Items scored before the restart still take feedback (decisions live in Redis).
    stub = stub_for(cluster.address)
    late_reply = score(stub, items("restart-late", 1), policy="linucb")
    late = late_reply.results[0]
    reply = feedback(
        stub, [(late.id, 1.0, late_reply.request_id), (scored.results[0].id, 1.0, scored.request_id)]
    )
    assert [r.outcome for r in reply.results] == [APPLIED, DUPLICATE]


def test_two_replicas_share_the_state(cluster: LocalCluster) -> None:
    replica = cluster.start_replica()
    main, other = stub_for(cluster.address), stub_for(replica.address)
    scored = score(main, items("replicas"), policy="linucb")
    reply = feedback(other, [(r.id, float(k), scored.request_id) for k, r in enumerate(scored.results)])
    assert [r.outcome for r in reply.results] == [APPLIED] * 4
    assert same_state(snapshot(cluster), snapshot(cluster, replica))
    again = feedback(main, [(scored.results[0].id, 5.0, scored.request_id)])  # done markers are shared too
    assert [r.outcome for r in again.results] == [DUPLICATE]


def test_sync_client_feedback(cluster: LocalCluster) -> None:
    from moerm.client import RewardClient

    with RewardClient(cluster.address, batch_size=2) as client:
        rewards = client.score(
            [(f"Sum 1..{k} in Python (client)", f"sum(range({k + 1}))") for k in range(3)], policy="linucb"
        )
        assert all(r.policy == "linucb" and r.id for r in rewards)
        # Three batches of two: the last holds only unknown ids, reported per id.
        outcomes = client.feedback([(r.id, 1.0) for r in rewards] + [("unknown-1", 0.0), ("unknown-2", 0.0)])
        assert outcomes == {
            **{r.id: "applied" for r in rewards},
            "unknown-1": "not_found",
            "unknown-2": "not_found",
        }
        assert client.feedback({rewards[0].id: 0.0}) == {rewards[0].id: "duplicate"}
        with pytest.raises(grpc.RpcError) as caught:
            client.feedback({"unknown-3": 1.0})
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            client.feedback({rewards[1].id: float("nan")})
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_async_client_feedback(cluster: LocalCluster) -> None:
    from moerm.client import AsyncRewardClient

    async with AsyncRewardClient(cluster.address, batch_size=2) as client:
        rewards = await client.score(
            [
                (f"Write a haiku about {topic} (async)", f"A haiku about {topic}.")
                for topic in ("tea", "snow", "rain")
            ],
            policy="uwo",
            breakdown=True,
        )
        assert all(r.member_rewards and r.policy == "uwo" for r in rewards)
        outcomes = await client.feedback({r.id: 1.0 for r in rewards})
        assert outcomes == {r.id: "no_arm" for r in rewards}
        with pytest.raises(grpc.RpcError) as caught:
            await client.feedback([("unknown-4", 1.0)])
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_bandit_store_down_degrades_score_and_fails_feedback(minilm_bundle: Path) -> None:
    from moerm.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis().start()
    running = LocalCluster(str(minilm_bundle), redis_url=server.url).start()
    try:
        stub = stub_for(running.address)
        scored = score(stub, items("store-down", 2), policy="linucb")
        rows = [(r.id, 1.0, scored.request_id) for r in scored.results]
        assert [r.outcome for r in feedback(stub, rows).results] == [APPLIED] * 2
        server.stop()  # the store dies
        again = score(stub, items("store-down-later", 2), policy="thompson")  # still answers
        assert all(len(r.reward_models) == 1 for r in again.results)
        assert sample(running.router.metrics.registry, "moerm_bandit_store_errors_total") >= 1
        with pytest.raises(grpc.RpcError) as caught:
            feedback(stub, [(r.id, 1.0, again.request_id) for r in again.results])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "bandit store" in caught.value.details()
    finally:
        running.stop()
        server.stop()


def test_without_redis_there_are_no_bandits(minilm_bundle: Path) -> None:
    running = LocalCluster(str(minilm_bundle), redis_url="off").start()
    try:
        stub = stub_for(running.address)
        with pytest.raises(grpc.RpcError) as caught:
            score(stub, items("off", 1), policy="linucb")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(caught.value)] == ["policy"]
        ensemble = score(stub, items("off", 1), policy="mean")  # ensembles need no store
        assert ensemble.results[0].id == ""  # nothing remembered, so no id assigned
        with pytest.raises(grpc.RpcError) as caught:
            feedback(stub, [("anything", 1.0)])
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        running.stop()


def test_feedback_is_bound_to_the_call_that_scored(cluster: LocalCluster, stub) -> None:
    """Another caller cannot give feedback for an item without its call's request_id,
    and the owner's own feedback is then still applied (not a duplicate)."""
    reply = score(stub, items("owned", 2), policy="linucb")
    stranger = "f" * 32
    with pytest.raises(grpc.RpcError) as caught:
        feedback(stub, [(r.id, 1.0, stranger) for r in reply.results])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    mine = feedback(stub, [(r.id, float(k), reply.request_id) for k, r in enumerate(reply.results)])
    assert [r.outcome for r in mine.results] == [APPLIED, APPLIED]
    assert [r.request_id for r in mine.results] == [reply.request_id] * 2


def test_scoring_an_id_again_keeps_both_decisions(cluster: LocalCluster, stub) -> None:
    first_batch, second_batch = items("again-1", 1), items("again-2", 1)
    first_batch[0].id = second_batch[0].id = f"step-item-{uuid.uuid4().hex[:8]}"
    first = score(stub, first_batch, policy="thompson")
    second = score(stub, second_batch, policy="thompson")
    reply = feedback(
        stub, [(first.results[0].id, 1.0, first.request_id), (second.results[0].id, 0.0, second.request_id)]
    )
    assert [r.outcome for r in reply.results] == [APPLIED, APPLIED]


def test_huge_rewards_never_poison_the_normalization(cluster: LocalCluster, stub) -> None:
    """Two finite but huge rewards once overflowed the shared history to -inf, and every
    later Feedback failed. Now they are INVALID_ARGUMENT and the store keeps working."""
    reply = score(stub, items("huge", 2), policy="linucb")
    rows = [(r.id, 1.7e308, reply.request_id) for r in reply.results]
    with pytest.raises(grpc.RpcError) as caught:
        feedback(stub, rows)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    history = cluster.run(cluster.router.router.state.store.raw_history(10_000))
    assert np.isfinite(history).all()
    after = feedback(stub, [(r.id, float(k), reply.request_id) for k, r in enumerate(reply.results)])
    assert [r.outcome for r in after.results] == [APPLIED, APPLIED]
