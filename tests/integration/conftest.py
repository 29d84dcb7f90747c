"""Fixtures that start real services on loopback port 0."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from moerm.v1 import reward_pb2, reward_pb2_grpc
from moerm_local import LocalCluster


def score_code(stub, request: reward_pb2.ScoreRequest, timeout: float = 30) -> grpc.StatusCode:
    """The status a Score call ends with (OK or the error's code)."""
    try:
        stub.Score(request, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def start_cluster(bundle, redis_url: str, **router_overrides) -> LocalCluster:
    # A fresh namespace per cluster: a shared Redis may hold this bundle's keys
    # from an earlier run.
    overrides = {"cache_namespace": f"test-{uuid.uuid4().hex}:", **router_overrides}
    return LocalCluster(str(bundle), redis_url=redis_url, router_overrides=overrides).start()


@pytest.fixture(scope="module")
def cluster(minilm_bundle, redis_url) -> Iterator[LocalCluster]:
    """Router + aggregator + one expert per task of the session bundle."""
    running = start_cluster(minilm_bundle, redis_url, max_items=16, max_text_chars=2000)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(cluster) -> Iterator[reward_pb2_grpc.RewardServiceStub]:
    with grpc.insecure_channel(cluster.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)
