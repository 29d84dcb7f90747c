"""A real cluster on loopback with every port secured, certificates made in the
test: mutual TLS between the router, the experts and the aggregator, TLS and
bearer tokens with scopes on the router's public port. Plaintext, unknown-CA and
expired-certificate clients are refused; a ``score`` token cannot call Feedback."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moerm.client import RewardClient
from moerm.metrics import sample
from moerm.security import TlsFiles, channel_credentials
from moerm.v1 import reward_pb2, reward_pb2_grpc
from moerm_local import LocalCluster
from tests.security.certs import Authority, Issued

pytestmark = pytest.mark.integration

SCORER = "scorer-" + "s" * 24  # scope score
TRAINER = "trainer-" + "t" * 24  # scopes score, feedback
STEERER = "steerer-" + "f" * 24  # scope feedback only
NAME = "localhost"  # what the test certificates carry (and 127.0.0.1)


@dataclass(frozen=True)
class Pki:
    ca: Path
    service: Issued  # experts and aggregator (server), router (client)
    public: Issued  # the router's public port
    expired: Issued  # signed by the trusted CA, expired yesterday
    stranger: Issued  # valid, signed by a CA nobody trusts


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority(folder, "moerm"), Authority(folder, "other")
    return Pki(
        ca.path, ca.issue("service"), ca.issue("public"), ca.issue("old", expired=True), other.issue("x")
    )


@pytest.fixture(scope="module")
def cluster(minilm_bundle: Path, redis_url: str, pki: Pki, tmp_path_factory) -> Iterator[LocalCluster]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{SCORER} score\n{TRAINER} score,feedback\n{STEERER} feedback\n")
    internal = {"tls_cert": str(pki.service.cert), "tls_key": str(pki.service.key), "tls_ca": str(pki.ca)}
    running = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={
            "cache_namespace": f"test-{uuid.uuid4().hex}:",
            **internal,  # the router's client certificate to experts and aggregator
            "tls_server_name": NAME,
            "public_tls_cert": str(pki.public.cert),
            "public_tls_key": str(pki.public.key),
            "auth_tokens": str(tokens),
        },
        expert_overrides=internal,
        aggregator_overrides=internal,
    ).start()
    yield running
    running.stop()


def public_channel(cluster: LocalCluster, pki: Pki) -> grpc.Channel:
    credentials = channel_credentials(TlsFiles(ca=str(pki.ca)))
    return grpc.secure_channel(
        cluster.address, credentials, options=[("grpc.ssl_target_name_override", NAME)]
    )


def items(tag: str) -> list[reward_pb2.ScoreItem]:
    return [
        reward_pb2.ScoreItem(
            prompt="Write a Python function that reverses a list.", response=f"xs[::-1] [{tag}]"
        ),
        reward_pb2.ScoreItem(prompt="Write a short poem about the sea.", response=f"Grey waves. [{tag}]"),
    ]


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_scores_through_tls_and_mtls_with_a_token(cluster: LocalCluster, pki: Pki) -> None:
    """The router reaches experts and aggregator over mTLS; the caller uses TLS and a token."""
    credentials = channel_credentials(TlsFiles(ca=str(pki.ca)))
    with RewardClient(cluster.address, credentials=credentials, token=SCORER, server_name=NAME) as client:
        rewards = client.score(items("tls"), breakdown=True)
    assert [r.task for r in rewards] == ["code", "writing"]
    assert all(math.isfinite(r.reward) and r.capabilities for r in rewards)


def test_tokens_and_scopes_on_the_public_api(cluster: LocalCluster, pki: Pki) -> None:
    with public_channel(cluster, pki) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        score = reward_pb2.ScoreRequest(items=items("auth"))
        feedback = reward_pb2.FeedbackRequest(
            items=[reward_pb2.FeedbackItem(id="never-scored", reward=1.0, request_id="0" * 32)]
        )

        def bearer(token: str):
            return (("authorization", f"Bearer {token}"),)

        assert code_of(lambda: stub.Score(score, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: stub.Feedback(feedback, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        for wrong in (SCORER[:-1] + "x", SCORER + "s", "nobody"):
            assert code_of(lambda wrong=wrong: stub.Score(score, timeout=30, metadata=bearer(wrong))) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        malformed = (("authorization", SCORER),)  # no "Bearer"
        assert (
            code_of(lambda: stub.Score(score, timeout=30, metadata=malformed))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        # A score token scores and cannot steer the bandits.
        assert len(stub.Score(score, timeout=60, metadata=bearer(SCORER)).results) == 2
        with pytest.raises(grpc.RpcError) as denied:
            stub.Feedback(feedback, timeout=30, metadata=bearer(SCORER))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "feedback" in denied.value.details()
        assert code_of(lambda: stub.Score(score, timeout=30, metadata=bearer(STEERER))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # A feedback token gets past authentication (the id is unknown to the router).
        assert code_of(lambda: stub.Feedback(feedback, timeout=30, metadata=bearer(TRAINER))) == (
            grpc.StatusCode.NOT_FOUND
        )
        # Health needs no token (kubelet's probes have none).
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    registry = cluster.router.metrics.registry
    assert sample(registry, "moerm_grpc_requests_total", method="Score", code="UNAUTHENTICATED") == 5
    assert sample(registry, "moerm_grpc_requests_total", method="Feedback", code="PERMISSION_DENIED") == 1


def test_public_port_refuses_plaintext(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        metadata = (("authorization", f"Bearer {SCORER}"),)
        call = lambda: stub.Score(reward_pb2.ScoreRequest(items=items("plain")), timeout=5, metadata=metadata)  # noqa: E731
        assert code_of(call) == grpc.StatusCode.UNAVAILABLE


def health_check(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", NAME)])
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_internal_ports_require_a_client_certificate_of_the_ca(cluster: LocalCluster, pki: Pki) -> None:
    ca = str(pki.ca)
    refused = {
        "plaintext": None,
        "no client certificate": channel_credentials(TlsFiles(ca=ca)),
        "unknown CA": channel_credentials(TlsFiles(str(pki.stranger.cert), str(pki.stranger.key), ca)),
        "expired": channel_credentials(TlsFiles(str(pki.expired.cert), str(pki.expired.key), ca)),
    }
    good = channel_credentials(TlsFiles(str(pki.service.cert), str(pki.service.key), ca))
    addresses = {
        "aggregator": f"127.0.0.1:{cluster.aggregator.port}",
        **{f"expert {task}": cluster.expert_address(task) for task in cluster.experts},
    }
    for service, address in addresses.items():
        for client, credentials in refused.items():
            with pytest.raises(grpc.RpcError) as caught:
                health_check(address, credentials)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (service, client)
        assert health_check(address, good) == health_pb2.HealthCheckResponse.SERVING, service


def test_moerm_score_with_a_token_file_and_tls(
    cluster: LocalCluster, pki: Pki, tmp_path: Path, capsys
) -> None:
    from moerm.cli import main

    source = tmp_path / "items.jsonl"
    source.write_text(
        '{"id": "a", "prompt": "Write a haiku about rain.", "response": "Soft rain on the roof."}\n'
    )
    token = tmp_path / "token"
    token.write_text(SCORER + "\n")
    tls = ["--tls-ca", str(pki.ca), "--tls-server-name", NAME]
    assert main(["score", str(source), "--address", cluster.address, "--token-file", str(token), *tls]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and '"id": "a"' in out[0]
    # No token: refused, and the CLI says why.
    assert main(["score", str(source), "--address", cluster.address, *tls]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
