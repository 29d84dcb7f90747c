"""Each bad input gets INVALID_ARGUMENT naming the item and field; a request
with one bad item fails whole and caches nothing."""

from __future__ import annotations

import grpc
import pytest

from moerm.errors import field_violations
from moerm.v1 import reward_pb2, tensor_pb2

pytestmark = pytest.mark.integration

GOOD = reward_pb2.ScoreItem(prompt="Say hello.", response="Hello!")


def item(**fields) -> reward_pb2.ScoreItem:
    return reward_pb2.ScoreItem(**fields)


# (request, expected field) -- the cluster allows 16 items and 2000 characters.
CASES = {
    "empty items": (reward_pb2.ScoreRequest(), "items"),
    "too many items": (reward_pb2.ScoreRequest(items=[GOOD] * 17), "items"),
    "no prompt or messages": (reward_pb2.ScoreRequest(items=[GOOD, item(response="x")]), "items[1].prompt"),
    "empty response": (reward_pb2.ScoreRequest(items=[item(prompt="hi", response="")]), "items[0].response"),
    "blank response": (
        reward_pb2.ScoreRequest(items=[GOOD, GOOD, item(prompt="hi", response="  \n")]),
        "items[2].response",
    ),
    "prompt too long": (
        reward_pb2.ScoreRequest(items=[item(prompt="a" * 2001, response="x")]),
        "items[0].prompt",
    ),
    "response too long": (
        reward_pb2.ScoreRequest(items=[item(prompt="a", response="b" * 2001)]),
        "items[0].response",
    ),
    "message too long": (
        reward_pb2.ScoreRequest(
            items=[GOOD, item(messages=[tensor_pb2.Message(role="user", content="c" * 2001)], response="x")]
        ),
        "items[1].messages[0].content",
    ),
    "unknown role": (
        reward_pb2.ScoreRequest(
            items=[
                item(
                    messages=[
                        tensor_pb2.Message(role="user", content="hi"),
                        tensor_pb2.Message(role="robot", content="x"),
                    ],
                    response="x",
                )
            ]
        ),
        "items[0].messages[1].role",
    ),
    "unknown policy": (reward_pb2.ScoreRequest(items=[GOOD], policy="oracle"), "policy"),
    "unknown reward model": (
        reward_pb2.ScoreRequest(items=[GOOD], reward_model="dmoerm:astrology"),
        "reward_model",
    ),
    "fixed without reward model": (reward_pb2.ScoreRequest(items=[GOOD], policy="fixed"), "reward_model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_field(stub, case):
    request, field = CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in field_violations(caught.value)]
    assert field in fields, (fields, caught.value.details())


def test_one_bad_item_fails_the_request_and_caches_nothing(stub):
    good = [
        item(prompt="Write a haiku about tea.", response=f"Steam curls, leaves unfold {n}") for n in range(3)
    ]
    bad = item(prompt="Write a haiku about tea.", response="")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(reward_pb2.ScoreRequest(items=[good[0], bad, good[1], good[2]]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["items[1].response"]
    reply = stub.Score(reward_pb2.ScoreRequest(items=good), timeout=60)
    assert [r.cached for r in reply.results] == [False, False, False]


def test_server_keeps_serving_after_bad_input(stub):
    with pytest.raises(grpc.RpcError):
        stub.Score(reward_pb2.ScoreRequest(), timeout=30)
    reply = stub.Score(reward_pb2.ScoreRequest(items=[GOOD]), timeout=60)
    assert len(reply.results) == 1
