"""Fuzzing every service over real gRPC: 10,000 generated requests (2,500 per method:
raw bytes, and structured messages with hostile field values). Every answer is OK or
a caller-side status: never UNKNOWN or INTERNAL, details at most 4 KB, and every
service still serves at the end."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moerm.errors import MAX_DETAILS_BYTES
from moerm.v1 import aggregator_pb2, expert_pb2, reward_pb2, tensor_pb2
from tests.integration.conftest import start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES_PER_METHOD = 2500
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FUZZ = settings(
    max_examples=CASES_PER_METHOD,
    deadline=None,
    derandomize=True,  # the same cases every run
    suppress_health_check=list(HealthCheck),
    database=None,
)

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n\n", "user", "assistant", "system", "dmoerm:code", "linucb", "mean"]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=500, max_size=3000),
)
messages = st.builds(tensor_pb2.Message, role=texts, content=texts)
score_items = st.builds(
    reward_pb2.ScoreItem,
    id=texts,
    prompt=texts,
    messages=st.lists(messages, max_size=3),
    response=texts,
)
score_requests = st.builds(
    reward_pb2.ScoreRequest,
    items=st.lists(score_items, max_size=5),
    return_breakdown=st.booleans(),
    policy=texts,
    reward_model=texts,
)
floats = st.floats(allow_nan=True, allow_infinity=True)
feedback_requests = st.builds(
    reward_pb2.FeedbackRequest,
    items=st.lists(
        st.builds(
            reward_pb2.FeedbackItem,
            id=texts,
            reward=floats,
            request_id=st.one_of(texts, st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)),
        ),
        max_size=5,
    ),
)
expert_requests = st.builds(
    expert_pb2.ExpertRequest,
    task=st.one_of(texts, st.just("code")),
    items=st.lists(
        st.builds(expert_pb2.ExpertItem, messages=st.lists(messages, max_size=3), response=texts), max_size=4
    ),
    return_hidden=st.booleans(),
    return_base=st.booleans(),
    base_only=st.booleans(),
)
dims = st.lists(st.one_of(st.integers(0, 4), st.integers(-(2**63), 2**63 - 1)), max_size=4)
tensors = st.builds(tensor_pb2.Tensor, shape=dims, data=st.binary(max_size=64))
aggregate_requests = st.builds(
    aggregator_pb2.AggregateRequest,
    batches=st.lists(
        st.builds(
            aggregator_pb2.TaskOutputs,
            task=st.one_of(texts, st.just("code")),
            capabilities=st.lists(texts, max_size=4),
            scores=tensors,
            hidden=tensors,
        ),
        max_size=2,
    ),
)
raw_bytes = st.binary(max_size=300)

METHODS = {
    "Score": ("/moerm.v1.RewardService/Score", score_requests),
    "Feedback": ("/moerm.v1.RewardService/Feedback", feedback_requests),
    "ScoreBatch": ("/moerm.v1.ExpertService/ScoreBatch", expert_requests),
    "Aggregate": ("/moerm.v1.AggregatorService/Aggregate", aggregate_requests),
}


@pytest.fixture(scope="module")
def cluster(minilm_bundle, redis_url) -> Iterator:
    running = start_cluster(minilm_bundle, redis_url, max_items=8, max_text_chars=4000)
    yield running
    running.stop()


def target(cluster, method: str) -> str:
    if method in ("Score", "Feedback"):
        return cluster.address
    if method == "Aggregate":
        return f"127.0.0.1:{cluster.aggregator.port}"
    return cluster.expert_address("code")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fuzzed_requests_never_fault_a_service(cluster, method: str) -> None:
    path, messages_of_method = METHODS[method]
    seen: dict[str, int] = {}
    with grpc.insecure_channel(target(cluster, method)) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)

        @FUZZ
        @given(st.one_of(raw_bytes, messages_of_method.map(lambda m: m.SerializeToString())))
        def send(payload: bytes) -> None:
            try:
                call(payload, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                size = len((error.details() or "").encode()) + sum(
                    len(v) for _, v in error.trailing_metadata() or ()
                )
                assert size <= MAX_DETAILS_BYTES, f"{code.name}: {size} bytes of details"
                assert code not in SERVER_FAULTS, f"{code.name}: {error.details()}"
            seen[code.name] = seen.get(code.name, 0) + 1

        send()
    assert sum(seen.values()) >= CASES_PER_METHOD, seen
    assert "INVALID_ARGUMENT" in seen, seen  # the generator does reach the validation
    print(f"{method}: {seen}")
