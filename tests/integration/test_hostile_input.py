"""Hostile input found by a fuzz campaign (D1-D4, and an item of 1,500 messages): each is the caller's
INVALID_ARGUMENT with a bounded error, never UNKNOWN, INTERNAL or a retryable
RESOURCE_EXHAUSTED, and the services keep serving."""

from __future__ import annotations

import grpc
import pytest

from moerm.errors import MAX_DETAILS_BYTES, field_violations
from moerm.v1 import aggregator_pb2, expert_pb2, reward_pb2, tensor_pb2

pytestmark = pytest.mark.integration

METHODS = {
    "router": "/moerm.v1.RewardService/Score",
    "feedback": "/moerm.v1.RewardService/Feedback",
    "aggregator": "/moerm.v1.AggregatorService/Aggregate",
    "expert": "/moerm.v1.ExpertService/ScoreBatch",
}


def address(cluster, service: str) -> str:
    if service in ("router", "feedback"):
        return cluster.address
    if service == "aggregator":
        return f"127.0.0.1:{cluster.aggregator.port}"
    return cluster.expert_address("code")


def rejected(target: str, method: str, request) -> grpc.RpcError:
    """The error a call of ``method`` gets: ``request`` a message, or raw bytes sent as
    the request (as a client with a broken encoder would)."""
    serializer = None if isinstance(request, bytes) else type(request).SerializeToString
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=serializer, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
    return caught.value


def details_size(error: grpc.RpcError) -> int:
    """Bytes of the status as the client received it: message and binary details."""
    trailing = sum(len(value) for _, value in error.trailing_metadata() or ())
    return len((error.details() or "").encode()) + trailing


# A string field whose bytes are not UTF-8: the encoding of a lone surrogate (U+D800).
LONE_SURROGATE = (
    b"\x0a\x08" + b"\x22\x03\xed\xa0\x80" + b"\x2a\x01x"
)  # items { prompt: <bad>, response: "x" }


@pytest.mark.parametrize("service", sorted(METHODS))
@pytest.mark.parametrize(
    "payload", [b"\x0a\x05", b"\xff\xff\xff", LONE_SURROGATE], ids=["truncated", "garbage", "surrogate"]
)
def test_undecodable_bytes_are_invalid_argument(cluster, service: str, payload: bytes) -> None:
    """D1: bytes that do not parse were UNKNOWN with a traceback in the log per call."""
    error = rejected(address(cluster, service), METHODS[service], payload)
    if payload == LONE_SURROGATE and service in ("aggregator", "expert", "feedback"):
        # Field 1 of those messages is not a string: the bytes may parse. Whatever they
        # parse to, the answer is the caller's error, never a server fault.
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        return
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert [v.field for v in field_violations(error)] == ["request"]
    assert "not a valid" in error.details()


def test_a_huge_policy_name_gives_a_bounded_error(cluster) -> None:
    """D2: a 20,000-character policy name made details over gRPC's 16 KB metadata
    limit, so the client saw RESOURCE_EXHAUSTED (which clients retry)."""
    request = reward_pb2.ScoreRequest(
        items=[reward_pb2.ScoreItem(prompt="hi", response="x")], policy="p" * 20_000
    )
    error = rejected(cluster.address, METHODS["router"], request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_size(error) <= MAX_DETAILS_BYTES
    assert [v.field for v in field_violations(error)] == ["policy"]


def test_many_bad_items_give_a_bounded_error(cluster) -> None:
    """D2: 1,024 empty responses listed one violation each, over the metadata limit.
    (The module's router allows 16 items; the expert takes up to its request bound.)"""
    request = expert_pb2.ExpertRequest(
        task="code",
        items=[
            expert_pb2.ExpertItem(messages=[tensor_pb2.Message(role="user", content="hi")], response="")
            for _ in range(1024)
        ],
    )
    error = rejected(cluster.expert_address("code"), METHODS["expert"], request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_size(error) <= MAX_DETAILS_BYTES
    violations = field_violations(error)
    assert 1 <= len(violations) <= 16 and violations[0].field == "items[0].response"
    assert "and 1020 more" in error.details()


@pytest.mark.parametrize(
    ("shape", "data"),
    [([2**62, 4], b"\0" * 16), ([0, 2**61], b"")],
    ids=["overflowing", "empty-but-huge"],  # the second was found by the fuzz test
)
def test_a_huge_tensor_shape_is_invalid_argument(cluster, shape, data) -> None:
    """D3: scores.shape = [2**62, 4] overflowed the size check into INTERNAL; [0, 2**61]
    holds no bytes, passed the size check, and numpy could not shape it."""
    request = aggregator_pb2.AggregateRequest(
        batches=[
            aggregator_pb2.TaskOutputs(
                task="code",
                capabilities=["correctness", "efficiency", "readability"],
                scores=tensor_pb2.Tensor(shape=shape, data=data),
                hidden=tensor_pb2.Tensor(shape=[*shape, 2], data=data),
            )
        ]
    )
    error = rejected(f"127.0.0.1:{cluster.aggregator.port}", METHODS["aggregator"], request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["batches[0].scores"]


def test_more_items_than_an_expert_takes_is_invalid_argument(cluster) -> None:
    """D4: more items than the expert's queue can ever hold was RESOURCE_EXHAUSTED,
    which a client retries forever."""
    limit = cluster.experts["code"].servicer.max_request_items
    request = expert_pb2.ExpertRequest(
        task="code",
        items=[expert_pb2.ExpertItem(messages=[tensor_pb2.Message(role="user", content="hi")], response="x")]
        * (limit + 1),
    )
    error = rejected(cluster.expert_address("code"), METHODS["expert"], request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["items"]


def test_an_item_of_1500_messages_is_bounded(cluster, stub) -> None:
    """One item of 1,500 messages took an expert from 0.6 to 4.8 GB: the bounds are per item
    now (--max-messages, --max-item-chars). Rejected by default; with per-item errors its
    most recent turns are scored and it says it was cut."""
    turns = [
        tensor_pb2.Message(role=("user", "assistant")[k % 2], content=f"turn {k}: " + "words " * 40)
        for k in range(1500)
    ]
    item = reward_pb2.ScoreItem(messages=turns, response="The answer is 4.")
    error = rejected(cluster.address, METHODS["router"], reward_pb2.ScoreRequest(items=[item]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["items[0].messages", "items[0]"]
    reply = stub.Score(reward_pb2.ScoreRequest(items=[item], per_item_errors=True), timeout=60)
    assert reply.results[0].truncated and not reply.results[0].HasField("error")


def test_everything_still_serves_after_the_hostile_calls(stub) -> None:
    reply = stub.Score(
        reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="Fix my loop.", response="Use range.")]),
        timeout=60,
    )
    assert len(reply.results) == 1
