"""Per-item outcomes over real gRPC: one bad or huge item no longer fails the batch."""

from __future__ import annotations

import math

import grpc
import pytest

from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2

pytestmark = pytest.mark.integration

GOOD = reward_pb2.ScoreItem(prompt="Write a haiku about tea.", response="Steam curls, leaves unfold.")
HUGE = reward_pb2.ScoreItem(
    prompt="Explain recursion.", response="Recursion calls itself. " * 1700
)  # 40,800 chars


@pytest.fixture(scope="module")
def stub(cluster):
    with grpc.insecure_channel(cluster.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def test_a_40000_character_response_fails_the_batch_without_per_item_errors(stub):
    assert len(HUGE.response) > 40_000
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(reward_pb2.ScoreRequest(items=[GOOD, HUGE]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_per_item_outcomes_score_the_good_items_and_name_the_bad_ones(stub):
    bad_role = reward_pb2.ScoreItem(
        messages=[tensor_pb2.Message(role="robot", content="beep")], response="boop", id="r"
    )
    blank = reward_pb2.ScoreItem(prompt="Say hi.", response="   ", id="b")
    reply = stub.Score(
        reward_pb2.ScoreRequest(items=[GOOD, blank, HUGE, bad_role], per_item_errors=True), timeout=120
    )
    results = reply.results
    assert len(results) == 4
    assert not results[0].HasField("error") and not results[0].truncated
    assert not results[2].HasField("error") and results[2].truncated and results[2].task
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[1].error.field == "items[1].response" and results[1].id == "b"
    assert results[3].error.field == "items[3].messages[0].role" and "robot" in results[3].error.description
    # The good items' rewards are the ones they get on their own.
    alone = stub.Score(reward_pb2.ScoreRequest(items=[GOOD]), timeout=60).results[0]
    assert results[0].reward == pytest.approx(alone.reward, abs=1e-6)
    cut = reward_pb2.ScoreItem(prompt=HUGE.prompt, response=HUGE.response.strip()[-32768:])
    assert results[2].reward == pytest.approx(
        stub.Score(reward_pb2.ScoreRequest(items=[cut]), timeout=60).results[0].reward, abs=1e-6
    )


def test_every_item_rejected_still_answers_per_item(stub):
    blank = reward_pb2.ScoreItem(prompt="Say hi.", response="")
    reply = stub.Score(reward_pb2.ScoreRequest(items=[blank, blank], per_item_errors=True), timeout=60)
    assert [r.error.field for r in reply.results] == ["items[0].response", "items[1].response"]
    assert reply.request_id


def test_an_item_beyond_the_backbone_context_comes_back_truncated(stub):
    """Within --max-text-chars (32,768) but beyond MiniLM's 512 tokens: the expert cuts it
    and says so, and the router marks the result (with or without per_item_errors, and
    again when the score comes from the cache)."""
    long = reward_pb2.ScoreItem(
        prompt="Tell a story about a fox.", response="The fox ran across the field and back again. " * 200
    )
    short = reward_pb2.ScoreItem(prompt="Tell a story about a fox.", response="The fox ran, briefly.")
    assert len(long.response) < 32_768
    for per_item in (True, False):
        reply = stub.Score(reward_pb2.ScoreRequest(items=[long, short], per_item_errors=per_item), timeout=60)
        assert [r.truncated for r in reply.results] == [True, False]
        assert all(math.isfinite(r.reward) and not r.HasField("error") for r in reply.results)
    assert all(r.cached for r in reply.results)
    mean = stub.Score(reward_pb2.ScoreRequest(items=[long, short], policy="mean"), timeout=60)
    assert [r.truncated for r in mean.results] == [True, False]
