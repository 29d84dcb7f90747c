"""`moerm up` (ProcessCluster) restarts a service that died, on the same port, and its
services never outlive it, whatever signal kills it; `--gateway-port` adds the HTTP
gateway, supervised like the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from moerm.cli import build_parser
from moerm.launcher import ProcessCluster, wait_http_ok, wait_serving
from moerm.v1 import reward_pb2, reward_pb2_grpc
from tests.integration.conftest import score_code

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def score_once(address: str) -> reward_pb2.ScoreResponse:
    with grpc.insecure_channel(address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        return stub.Score(
            reward_pb2.ScoreRequest(
                items=[reward_pb2.ScoreItem(prompt="Write a poem about rain.", response="Rain falls.")],
                policy="mean",
            ),
            timeout=60,
        )


def test_a_killed_expert_is_restarted_on_its_port(minilm_bundle, tmp_path) -> None:
    with ProcessCluster(minilm_bundle, log_dir=tmp_path, torch_threads=1, log_level="WARNING") as cluster:
        expert = next(child for child in cluster.children if child.name == "expert-writing")
        port, old_pid = expert.port, expert.process.pid
        score_once(cluster.address)
        started = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while expert.process.pid == old_pid and time.monotonic() < deadline:
            time.sleep(0.1)
        assert expert.process.pid != old_pid, "not restarted"
        wait_serving(f"127.0.0.1:{port}", 60, expert)
        back_after = time.monotonic() - started
        assert cluster.restarts["expert-writing"] == 1
        assert expert.port == port
        assert len(score_once(cluster.address).results) == 1
        # the first restart waits 1 s; loading MiniLM takes a few more
        assert back_after < 30, f"back after {back_after:.1f}s"


LAUNCHER = """
import json, sys, time
from moerm.launcher import ProcessCluster
cluster = ProcessCluster(sys.argv[1], log_dir=sys.argv[2], torch_threads=1, log_level="WARNING").start()
pids = [child.process.pid for child in cluster.children]
pids += [cluster.redis.process.pid, cluster.state_redis.process.pid]
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def test_services_die_with_a_killed_launcher(minilm_bundle, tmp_path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(minilm_bundle), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    pids: list[int] = []
    try:
        line = launcher.stdout.readline()
        assert line, "the launcher printed nothing"
        pids = json.loads(line)
        assert len(pids) == 6 and all(alive(pid) for pid in pids)  # aggregator, 2 experts, router, 2 servers
        launcher.kill()  # SIGKILL: no handler in the launcher runs
        launcher.wait()
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in pids if alive(pid)], "services outlived the launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in pids:  # only if the test failed: the processes it started, by PID
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_with_two_replicas_a_killed_one_costs_no_call(minilm_bundle, tmp_path) -> None:
    """`moerm up --replicas 2`: the router spreads calls over both experts of a task; one
    killed under load, the calls retry on the other and all succeed, and it comes back."""
    from concurrent.futures import ThreadPoolExecutor

    with ProcessCluster(
        minilm_bundle, log_dir=tmp_path, torch_threads=1, log_level="WARNING", replicas=2
    ) as cluster:
        names = sorted(child.name for child in cluster.children)
        assert names == [
            "aggregator",
            "expert-code-0",
            "expert-code-1",
            "expert-writing-0",
            "expert-writing-1",
            "router",
        ]
        victim = next(child for child in cluster.children if child.name == "expert-writing-0")
        with grpc.insecure_channel(cluster.address) as channel, ThreadPoolExecutor(4) as pool:
            stub = reward_pb2_grpc.RewardServiceStub(channel)

            def score(i: int) -> grpc.StatusCode:
                request = reward_pb2.ScoreRequest(
                    items=[reward_pb2.ScoreItem(prompt="Write a poem about rain.", response=f"Rain {i}.")],
                    policy="fixed",
                    reward_model="dmoerm:writing",
                )
                return score_code(stub, request)

            calls = [pool.submit(score, i) for i in range(120)]
            time.sleep(0.5)
            os.kill(victim.process.pid, signal.SIGKILL)
            codes = [call.result() for call in calls]
        assert codes.count(grpc.StatusCode.OK) == len(codes), sorted({c.name for c in codes})
        deadline = time.monotonic() + 60
        while cluster.restarts["expert-writing-0"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.restarts["expert-writing-0"] == 1


def post_reward(url: str) -> dict:
    """One ChatML query to the gateway's /get_reward, as OpenRLHF posts it."""
    prompt = "<|im_start|>user\nWrite a poem about rain.<|im_end|>\n<|im_start|>assistant\n"
    body = json.dumps({"query": [prompt + "Rain falls.<|im_end|>"], "prompts": [prompt]}).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def test_up_starts_the_gateway_and_restarts_it(minilm_bundle, tmp_path) -> None:
    """`moerm up --gateway-port 0`: the gateway answers /get_reward with the router's reward
    and, killed, is started again on its port."""
    assert build_parser().parse_args(["up", "--gateway-port", "0"]).gateway_port == 0
    assert build_parser().parse_args(["up"]).gateway_port is None
    with ProcessCluster(
        minilm_bundle, log_dir=tmp_path, torch_threads=1, log_level="WARNING", gateway_port=0
    ) as cluster:
        assert [child.name for child in cluster.children][-2:] == ["router", "gateway"]
        gateway = cluster.gateway
        url = f"{cluster.gateway_url}/get_reward"
        first = post_reward(url)
        direct = score_once_with(cluster.address, "Write a poem about rain.", "Rain falls.")
        assert first["rewards"] == pytest.approx([direct], abs=1e-5) and first["errors"] == []
        port, old_pid = gateway.port, gateway.process.pid
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while gateway.process.pid == old_pid and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gateway.process.pid != old_pid, "not restarted"
        wait_http_ok(f"{cluster.gateway_url}/health", 60, gateway)
        assert (cluster.restarts["gateway"], gateway.port) == (1, port)
        assert post_reward(url)["rewards"] == first["rewards"]


def score_once_with(address: str, prompt: str, response: str) -> float:
    with grpc.insecure_channel(address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        request = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=prompt, response=response)])
        return stub.Score(request, timeout=60).results[0].reward
