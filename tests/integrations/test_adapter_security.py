"""The coalescing client, the TRL and verl adapters and the gateway against a router that
asks for bearer tokens (``--auth-tokens``, scopes) on a TLS port, certificates made in the
test: given as arguments or read from MOERM_* variables."""

from __future__ import annotations

import json
import math
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway_svc.app import GatewayServer
from gateway_svc.config import GatewayConfig
from moerm.client import connection_from_env
from moerm.integrations import verl
from moerm.integrations.coalescing import CoalescingClient
from moerm.integrations.trl import MoermReward
from moerm.security import TlsFiles, channel_credentials
from moerm_local import LocalCluster
from tests.security.certs import Authority

pytestmark = pytest.mark.integration

SCORER = "scorer-" + "s" * 24  # scope score
TRAINER = "trainer-" + "t" * 24  # scopes score, feedback
NAME = "localhost"  # what the test certificates carry
PROMPT, RESPONSE = "Write a haiku about tea.", "Steam curls, leaves unfold."


@dataclass(frozen=True)
class Secured:
    cluster: LocalCluster
    ca: Path  # the CA that signed the router's public certificate

    @property
    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(TlsFiles(ca=str(self.ca)))


@pytest.fixture(scope="module")
def secured(minilm_bundle, redis_url, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("adapter-pki")
    authority = Authority(folder, "moerm")
    public = authority.issue("public")
    tokens = folder / "tokens"
    tokens.write_text(f"{SCORER} score\n{TRAINER} score,feedback\n")
    running = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={
            "cache_namespace": f"test-{uuid.uuid4().hex}:",
            "public_tls_cert": str(public.cert),
            "public_tls_key": str(public.key),
            "auth_tokens": str(tokens),
        },
    ).start()
    yield Secured(running, authority.path)
    running.stop()


@pytest.fixture
def secured_env(secured: Secured, monkeypatch) -> Secured:
    """The router's CA and name in the MOERM_ROUTER_TLS* variables, a score token in MOERM_TOKEN."""
    monkeypatch.setenv("MOERM_TOKEN", SCORER)
    monkeypatch.setenv("MOERM_ROUTER_TLS_CA", str(secured.ca))
    monkeypatch.setenv("MOERM_ROUTER_TLS_SERVER_NAME", NAME)
    return secured


def test_the_coalescing_client_sends_its_token_over_tls(secured: Secured) -> None:
    with CoalescingClient(
        secured.cluster.address,
        policy="mean",
        credentials=secured.credentials,
        server_name=NAME,
        token=TRAINER,
        raise_errors=True,
    ) as client:
        (outcome,) = client.score_sync([(PROMPT, RESPONSE)])
        assert outcome.ok and math.isfinite(outcome.reward)
        assert client.feedback_sync({outcome.id: 1.0}) == {outcome.id: "no_arm"}  # an ensemble has no arm
    with CoalescingClient(
        secured.cluster.address,
        policy="mean",
        credentials=secured.credentials,
        server_name=NAME,
        token=SCORER,
    ) as client:
        (outcome,) = client.score_sync([(PROMPT, RESPONSE)])
        assert outcome.ok
        with pytest.raises(grpc.RpcError) as caught:  # a score token cannot steer the bandits
            client.feedback_sync({outcome.id: 1.0})
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with CoalescingClient(
        secured.cluster.address, credentials=secured.credentials, server_name=NAME
    ) as client:  # no token
        (outcome,) = client.score_sync([(PROMPT, RESPONSE)])
        assert not outcome.ok and outcome.code == "UNAUTHENTICATED"


def test_trl_takes_the_connection_from_the_environment_or_its_arguments(secured_env: Secured) -> None:
    address = secured_env.cluster.address
    reward = MoermReward(address)
    try:
        assert all(r is not None and math.isfinite(r) for r in reward([PROMPT], [RESPONSE]))
    finally:
        reward.client.close()
    wrong = MoermReward(address, token="unknown-" + "u" * 24)  # an argument wins over MOERM_TOKEN
    try:
        with pytest.raises(grpc.RpcError) as caught:
            wrong([PROMPT], [RESPONSE])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        wrong.client.close()


def test_verl_takes_the_connection_from_the_environment(secured_env: Secured) -> None:
    try:
        result = verl.compute_score(
            "moerm", RESPONSE, extra_info={"prompt": PROMPT}, address=secured_env.cluster.address
        )
    finally:
        verl.close_clients()
    assert result["moerm_ok"] == 1.0 and math.isfinite(result["score"])


def test_the_gateway_reaches_a_secured_router(secured_env: Secured) -> None:
    server = GatewayServer(
        GatewayConfig(router=secured_env.cluster.address, port=0, log_level="WARNING")
    ).start()
    try:
        with urllib.request.urlopen(f"{server.url}/health", timeout=30) as reply:
            assert reply.status == 200
        prompt = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
        body = json.dumps({"query": [f"{prompt}{RESPONSE}<|im_end|>"], "prompts": [prompt]}).encode()
        request = urllib.request.Request(
            f"{server.url}/get_reward", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
    finally:
        server.stop()
    assert answer["errors"] == [] and math.isfinite(answer["rewards"][0])


def test_connection_from_env(tmp_path: Path) -> None:
    assert connection_from_env({}) == {"token": "", "credentials": None, "server_name": ""}
    token_file = tmp_path / "token"
    token_file.write_text(f"{SCORER}\n")
    got = connection_from_env({"MOERM_TOKEN_FILE": str(token_file), "MOERM_ROUTER_TLS": "1"})
    assert got["token"] == SCORER and got["credentials"] is not None
    assert (
        connection_from_env({"MOERM_TOKEN": TRAINER, "MOERM_TOKEN_FILE": str(token_file)})["token"] == TRAINER
    )
    with pytest.raises(ValueError, match="MOERM_TOKEN_FILE"):
        connection_from_env({"MOERM_TOKEN_FILE": str(tmp_path / "absent")})
    with pytest.raises(ValueError, match="MOERM_ROUTER_TLS"):
        connection_from_env({"MOERM_ROUTER_TLS_CA": str(tmp_path / "absent.pem")})
    with pytest.raises(ValueError, match="needs its key"):
        connection_from_env({"MOERM_ROUTER_TLS_CERT": str(token_file)})
