"""Two replicas of one task's expert behind one target: the router's channel
balances round-robin over them, and when one is killed (SIGKILL) under load the
gRPC retry policy sends its calls to the other, so the Score calls still succeed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moerm.embedded_redis import free_port
from moerm.launcher import wait_serving
from moerm.v1 import reward_pb2, reward_pb2_grpc
from moerm_local import LocalCluster
from router_svc.app import build_router
from tests.integration.conftest import score_code

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CALLS = 240  # Score calls in all; one replica dies after a third of them
CONCURRENCY = 4


def scored_batches(metrics_port: int) -> float:
    """ScoreBatch calls the replica answered OK, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "moerm_grpc_requests_total" and s.labels == {"method": "ScoreBatch", "code": "OK"}
    )


@pytest.fixture
def replicas(minilm_bundle: Path, tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen, int, int]]]:
    """Two expert_svc processes of task "code": (process, gRPC port, metrics port)."""
    started = []
    try:
        for k in range(2):
            port_file, metrics_port = tmp_path / f"code-{k}.port", free_port()
            command = [
                sys.executable, "-m", "expert_svc", "--bundle", str(minilm_bundle), "--task", "code",
                "--port-file", str(port_file), "--metrics-port", str(metrics_port),
                "--torch-threads", "1", "--log-level", "WARNING",
            ]  # fmt: skip
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
            log = open(tmp_path / f"code-{k}.log", "wb")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            log.close()
            started.append([process, port_file, metrics_port])
        out = []
        for process, port_file, metrics_port in started:
            deadline = time.monotonic() + 180
            while not port_file.exists():
                assert process.poll() is None, (tmp_path / "code-0.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "expert did not start"
                time.sleep(0.2)
            port = int(port_file.read_text())
            wait_serving(f"127.0.0.1:{port}", 180)
            out.append((process, port, metrics_port))
        yield out
    finally:
        for process, *_ in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def test_one_replica_killed_under_load(minilm_bundle: Path, redis_url: str, replicas) -> None:
    (victim, port_a, metrics_a), (_, port_b, metrics_b) = replicas
    cluster = LocalCluster(
        str(minilm_bundle),
        redis_url=redis_url,
        router_overrides={"cache_namespace": f"test-{uuid.uuid4().hex}:"},
    ).start()
    router = None
    try:
        config = replace(
            cluster.router_config,
            experts=(
                f"code=ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}",
                f"writing={cluster.expert_address('writing')}",
            ),
            cluster=True,  # as on Kubernetes: wait for a ready replica, retry UNAVAILABLE
        )

        async def start_router():
            app = build_router(config)
            await app.start()
            return app

        router = cluster.run(start_router())
        tag = uuid.uuid4().hex[:8]

        def score(i: int) -> grpc.StatusCode:
            request = reward_pb2.ScoreRequest(
                items=[
                    reward_pb2.ScoreItem(prompt="Reverse a list in Python.", response=f"xs[::-1] # {tag} {i}")
                ],
                policy="fixed",
                reward_model="dmoerm:code",
            )
            return score_code(stub, request)

        with grpc.insecure_channel(router.address) as channel, ThreadPoolExecutor(CONCURRENCY) as pool:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            before = list(pool.map(score, range(CALLS // 3)))
            # Both replicas took calls (round robin over the two addresses).
            served = scored_batches(metrics_a), scored_batches(metrics_b)
            assert min(served) >= 1, f"calls per replica before the kill: {served}"
            # The rest run while replica A dies.
            rest = [pool.submit(score, i) for i in range(CALLS // 3, CALLS)]
            time.sleep(0.3)
            victim.send_signal(signal.SIGKILL)
            left = sum(not future.done() for future in rest)
            after = [future.result() for future in rest]
        assert left >= CALLS // 3, f"only {left} calls were left when the replica died: not under load"
        codes = before + after
        ok = sum(code == grpc.StatusCode.OK for code in codes)
        rate = ok / len(codes)
        failures = sorted({code.name for code in codes if code != grpc.StatusCode.OK})
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert rate >= 0.999, f"{ok}/{len(codes)} Score calls succeeded ({rate:.2%}); failures: {failures}"
        print(f"\n{ok}/{len(codes)} Score calls succeeded ({rate:.2%}) with a replica killed; calls per replica "
              f"before the kill {served}, {left} calls left at the kill")  # fmt: skip
    finally:
        if router is not None:
            cluster.run(router.stop(grace_s=0))
        cluster.stop()
