"""A real GRPO run: TRL's GRPOTrainer trains SmolLM2-135M-Instruct for 2 optimizer
steps on CPU against `moerm up` (MiniLM bundle), with moerm as its reward function
(examples/trl_grpo.py). The rewards the trainer logged are moerm's, and the
verifier's Feedback reached the bandit state."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moerm.client import RewardClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def moerm_up(minilm_bundle, tmp_path_factory):
    pytest.importorskip("trl", reason="pip install '.[integrations]'")
    logs = tmp_path_factory.mktemp("up-logs")
    process = subprocess.Popen(
        [str(BIN / "moerm"), "up", "--bundle", str(minilm_bundle), "--port", "0", "--log-dir", str(logs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True,
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
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("moerm up did not start:\n" + "".join(seen))
    yield address
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def test_grpo_trains_on_moerm_rewards(moerm_up, tmp_path, shared_dir):
    """Prompts from the shared data (skipped where it is absent)."""
    report_path = tmp_path / "grpo.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "trl_grpo.py"),
            "--address",
            moerm_up,
            "--steps",
            "2",
            "--output-dir",
            str(tmp_path / "run"),
            "--report",
            str(report_path),
            "--data-dir",
            str(shared_dir),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    report = json.loads(report_path.read_text())
    print(run.stdout.strip().splitlines()[-1])  # steps, last batch rewards, feedback applied
    assert report["global_step"] >= 2
    steps = [entry for entry in report["log_history"] if "rewards/moerm/mean" in entry]
    assert len(steps) >= 2

    # The trainer's logged rewards are moerm's answers, item by item ...
    logged, answered = report["logged"], report["moerm"]
    assert len(logged) == len(answered) == 4
    assert all(a["reward"] is not None for a in answered)
    assert [x["reward"] for x in logged] == pytest.approx([a["reward"] for a in answered], abs=1e-6)
    # ... and the rewards moerm gives those completions when asked again (the reward
    # model the bandit picked, fixed).
    with RewardClient(moerm_up) as client:
        again = [
            client.score(
                [{"messages": x["prompt"], "response": x["completion"][-1]["content"]}],
                policy="fixed",
                reward_model=a["reward_models"][0],
            )[0].reward
            for x, a in zip(logged, answered, strict=True)
        ]
        assert again == pytest.approx([x["reward"] for x in logged], abs=1e-6)
        # The step's logged mean reward is the mean of what moerm returned for it.
        assert steps[-1]["rewards/moerm/mean"] == pytest.approx(sum(again) / len(again), abs=1e-5)

        # The verifier's outcomes reached the bandit state: every item applied once, and
        # the same feedback again is recognized as a duplicate by the router's store.
        feedback = report["feedback"]
        assert len(feedback) == 4 * report["global_step"]
        assert set(feedback.values()) == {"applied"}
        repeat = client.feedback([(a["id"], 1.0, a["request_id"]) for a in answered])
    assert set(repeat.values()) == {"duplicate"}
