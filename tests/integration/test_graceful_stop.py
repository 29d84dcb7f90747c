"""SIGTERM drains: a call in flight when the signal arrives still completes,
health turns NOT_SERVING, and the process exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from moerm.launcher import wait_serving
from moerm.v1 import expert_pb2, expert_pb2_grpc

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_calls(minilm_bundle, tmp_path):
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "expert_svc",
            "--bundle",
            str(minilm_bundle),
            "--task",
            "code",
            "--port-file",
            str(port_file),
            "--max-batch-size",
            "8",
            "--grace-s",
            "60",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text()}"
        wait_serving(address, timeout_s=120)
        # Enough work to take a few seconds on 2 cores: 16 batches of 8.
        items = [expert_pb2.ExpertItem(response=f"response number {i} " * 40) for i in range(128)]
        outcome: dict = {}

        def call() -> None:
            with grpc.insecure_channel(address) as channel:
                stub = expert_pb2_grpc.ExpertServiceStub(channel)
                try:
                    outcome["reply"] = stub.ScoreBatch(
                        expert_pb2.ExpertRequest(task="code", items=items), timeout=120
                    )
                except grpc.RpcError as error:
                    outcome["error"] = error

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)  # the call is now being scored
        process.send_signal(signal.SIGTERM)
        caller.join(timeout=120)
        assert "error" not in outcome, outcome.get("error")
        assert list(outcome["reply"].scores.shape) == [128, 3]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
