"""An HTTP reward model speaking OpenRLHF's /get_reward protocol as a pool member by URL:
moerm's own gateway_svc in front of one real cluster is the member ``gw`` of a second
cluster's router (``--external gw=http://.../get_reward``), scored with the fixed
policy and compared with scoring the first cluster directly; a URL nobody answers is
UNAVAILABLE at once, and the ensembles keep serving without it."""

from __future__ import annotations

import math
import socket
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from gateway_svc.app import GatewayServer
from gateway_svc.config import GatewayConfig
from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2
from moerm_local import LocalCluster
from tests.integration.conftest import start_cluster

pytestmark = pytest.mark.integration

SCALED = (0.5, 2.0)  # --rm-norm of the member gw-scaled (the same URL)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(minilm_bundle, redis_url) -> Iterator[LocalCluster]:
    """The cluster behind the gateway."""
    running = start_cluster(minilm_bundle, redis_url, max_items=64)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(served: LocalCluster) -> Iterator[GatewayServer]:
    server = GatewayServer(GatewayConfig(router=served.address, port=0, log_level="WARNING")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def router(minilm_bundle, redis_url, gateway: GatewayServer) -> Iterator[LocalCluster]:
    """A second cluster whose pool has the gateway twice (raw and normalized) and a dead URL."""
    url = f"{gateway.url}/get_reward"
    running = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={
            "cache_namespace": f"test-{uuid.uuid4().hex}:",
            "external": (
                f"gw={url}",
                f"gw-scaled={url}",
                f"down=http://127.0.0.1:{closed_port()}/get_reward",
            ),
            "rm_norm": (f"gw-scaled={SCALED[0]}:{SCALED[1]}",),
        },
    ).start()
    yield running
    running.stop()


def score(cluster: LocalCluster, batch: list[reward_pb2.ScoreItem], **options) -> reward_pb2.ScoreResponse:
    with grpc.insecure_channel(cluster.address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        return stub.Score(reward_pb2.ScoreRequest(items=batch, **options), timeout=120)


def items(tag: str) -> list[reward_pb2.ScoreItem]:
    return [
        reward_pb2.ScoreItem(
            prompt="Write a short poem about the sea.", response=f"Grey waves fold. ({tag})"
        ),
        reward_pb2.ScoreItem(
            messages=[
                tensor_pb2.Message(role="system", content="You are a careful programmer."),
                tensor_pb2.Message(role="user", content="Reverse a list in Python."),
                tensor_pb2.Message(role="assistant", content="In place or a copy?"),
                tensor_pb2.Message(role="user", content="A copy."),
            ],
            response=f"Use xs[::-1]; it returns a new list. ({tag})",
        ),
        reward_pb2.ScoreItem(
            prompt="Tell a story about a fox.",
            response="The fox ran across the field and back again. " * 200 + tag,  # beyond 512 tokens
        ),
    ]


def test_the_http_member_scores_as_the_cluster_behind_it(served, router) -> None:
    batch = items("http")
    direct = score(served, batch).results
    reply = score(router, batch, reward_model="gw")
    assert [r.reward for r in reply.results] == pytest.approx([r.reward for r in direct], abs=1e-5)
    for result in reply.results:
        assert (list(result.reward_models), result.task, result.cached) == (["gw"], "", False)
    # The expert's token cut behind the gateway comes back through its extra_logs.
    assert [r.truncated for r in reply.results] == [False, False, True] == [r.truncated for r in direct]
    scaled = score(router, batch, reward_model="gw-scaled")
    expected = [(r.reward - SCALED[0]) / SCALED[1] for r in direct]
    assert [r.reward for r in scaled.results] == pytest.approx(expected, abs=1e-5)
    again = score(router, batch, reward_model="gw")
    assert all(r.cached for r in again.results)
    assert [r.truncated for r in again.results] == [False, False, True]


def test_a_url_nobody_answers_is_unavailable_and_ensembles_go_on(router) -> None:
    batch = items("down")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        score(router, batch, reward_model="down")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "'down'" in caught.value.details()
    assert time.monotonic() - started < 5
    pool = router.router.router.reward_models
    for _ in range(2):  # just failed (left out as not live), then tried again and missing
        reply = score(router, batch, policy="mean")
        for result in reply.results:
            assert list(result.missing_reward_models) == ["down"]
            assert list(result.reward_models) == [name for name in pool if name != "down"]
            assert math.isfinite(result.reward)
        time.sleep(1.1)  # past RECHECK_S
