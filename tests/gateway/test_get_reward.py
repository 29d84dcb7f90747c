"""gateway_svc against a real cluster: OpenRLHF's /get_reward with SmolLM2's chat
template gives the rewards gRPC gives for the same messages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway_svc.app import GatewayServer
from gateway_svc.config import GatewayConfig
from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2
from moerm_local import LocalCluster
from tests.integration.conftest import start_cluster

pytestmark = pytest.mark.integration

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a careful programmer."},
        {"role": "user", "content": "Reverse a list in Python."},
    ],
    [
        {"role": "system", "content": "You write short poems."},
        {"role": "user", "content": "Write a haiku about tea."},
        {"role": "assistant", "content": "Which tea?"},
        {"role": "user", "content": "Green tea."},
    ],
]
RESPONSES = ["Use xs[::-1] or xs.reverse().", "Steam curls, leaves unfold,\ngreen tea in a quiet cup."]


@pytest.fixture(scope="module")
def cluster(minilm_bundle, redis_url) -> Iterator[LocalCluster]:
    running = start_cluster(minilm_bundle, redis_url, max_items=64)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(cluster) -> Iterator[GatewayServer]:
    server = GatewayServer(GatewayConfig(router=cluster.address, port=0, log_level="WARNING")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from moerm.models.backbones import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2"))


def post(url: str, body: bytes | dict, path: str = "/get_reward") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def grpc_rewards(cluster) -> list[float]:
    items = [
        reward_pb2.ScoreItem(
            messages=[tensor_pb2.Message(role=m["role"], content=m["content"]) for m in conversation],
            response=response,
        )
        for conversation, response in zip(CONVERSATIONS, RESPONSES, strict=True)
    ]
    with grpc.insecure_channel(cluster.address) as channel:
        reply = reward_pb2_grpc.RewardServiceStub(channel).Score(
            reward_pb2.ScoreRequest(items=items), timeout=60
        )
    return [r.reward for r in reply.results]


def test_smollm2_templated_queries_get_the_grpc_rewards(cluster, gateway, tokenizer):
    prompts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS
    ]
    queries = [
        tokenizer.apply_chat_template([*c, {"role": "assistant", "content": r}], tokenize=False)
        + tokenizer.eos_token
        for c, r in zip(CONVERSATIONS, RESPONSES, strict=True)
    ]
    assert queries[0].startswith(prompts[0]) and "<|im_start|>" in queries[0]
    expected = grpc_rewards(cluster)
    status, with_prompts = post(gateway.url, {"query": queries, "prompts": prompts, "labels": ["", ""]})
    assert status == 200, with_prompts
    assert with_prompts["rewards"] == pytest.approx(expected, abs=1e-6)
    assert with_prompts["scores"] == with_prompts["rewards"]
    assert with_prompts["extra_logs"] == {"moerm_ok": [1.0, 1.0], "moerm_truncated": [0.0, 0.0]}
    status, parsed = post(gateway.url, {"query": queries})
    assert status == 200 and parsed["rewards"] == pytest.approx(expected, abs=1e-6)
    # Scored as the whole templated string (the template applied twice), the reward differs.
    with grpc.insecure_channel(cluster.address) as channel:
        twice = reward_pb2_grpc.RewardServiceStub(channel).Score(
            reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=prompts[0], response=RESPONSES[0])]),
            timeout=60,
        )
    assert twice.results[0].reward != pytest.approx(expected[0], abs=1e-4)


def test_an_unscorable_query_gets_its_own_error_and_the_rest_are_scored(cluster, gateway, tokenizer):
    good = tokenizer.apply_chat_template(
        [*CONVERSATIONS[0], {"role": "assistant", "content": RESPONSES[0]}], tokenize=False
    )
    no_response = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    huge = tokenizer.apply_chat_template(
        [*CONVERSATIONS[0], {"role": "assistant", "content": "Use slicing. " * 3500}], tokenize=False
    )
    status, body = post(gateway.url, {"query": [good, no_response, huge]})
    assert status == 200, body
    assert body["rewards"][0] == pytest.approx(grpc_rewards(cluster)[0], abs=1e-6)
    assert body["rewards"][1] == 0.0 and body["extra_logs"]["moerm_ok"] == [1.0, 0.0, 1.0]
    assert body["extra_logs"]["moerm_truncated"] == [0.0, 0.0, 1.0]
    assert [(e["index"], e["field"], e["code"]) for e in body["errors"]] == [
        (1, "query[1]", "INVALID_ARGUMENT")
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        ([1, 2], "body"),
        ({"prompts": []}, "query"),
        ({"query": ["ok", 7]}, "query[1]"),
        ({"query": ["a", "b"], "prompts": ["only one"]}, "prompts"),
        ({"query": ["a"], "prompts": [3]}, "prompts[0]"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(gateway, body, field):
    status, reply = post(gateway.url, body if isinstance(body, bytes) else body)
    assert status == 400 and reply["error"]["field"] == field, reply
    assert len(reply["error"]["message"]) <= 1024


def test_health_follows_the_router(gateway):
    with urllib.request.urlopen(gateway.url + "/health", timeout=10) as reply:
        assert reply.status == 200 and json.loads(reply.read())["status"] == "ok"


def test_health_is_503_without_a_router(cluster):
    server = GatewayServer(GatewayConfig(router="127.0.0.1:1", port=0, log_level="WARNING")).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "/health", timeout=10)
        assert caught.value.code == 503
        status, reply = post(
            server.url, {"query": ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo"]}
        )
        assert status == 503 and reply["error"]["code"] == "UNAVAILABLE"
    finally:
        server.stop()


def test_openrlhf_reward_func_file_gives_the_gateway_rewards(cluster, gateway, tokenizer, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("MOERM_ADDRESS", cluster.address)
    path = Path(__file__).resolve().parents[2] / "examples" / "openrlhf_reward_func.py"
    spec = importlib.util.spec_from_file_location("openrlhf_reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS
    ]
    queries = [p + r + "<|im_end|>" for p, r in zip(prompts, RESPONSES, strict=True)] + [prompts[0]]
    try:
        out = module.reward_func(queries, [*prompts, prompts[0]], ["", "", ""])
    finally:
        module.client().close()
    assert out["rewards"].tolist()[:2] == pytest.approx(grpc_rewards(cluster), abs=1e-6)
    assert out["rewards"].tolist()[2] == 0.0 and out["extra_logs"]["moerm_ok"].tolist() == [1.0, 1.0, 0.0]
    assert out["scores"].tolist() == out["rewards"].tolist()


def test_python_m_gateway_svc_serves_and_stops_on_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway_svc",
            "--router",
            "127.0.0.1:1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), process.stdout.read() if process.poll() is not None else "no port file"
        url = f"http://127.0.0.1:{port_file.read_text()}"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url + "/health", timeout=10)
        assert caught.value.code == 503
        process.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the shutdown (closing the router client), then re-raises
        # the signal so the parent sees how the process ended.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
