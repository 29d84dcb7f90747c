"""`moerm train` and `moerm evaluate` end to end on the synthetic data."""

from __future__ import annotations

import json

from moerm.bundle import Bundle
from moerm.cli import main

FLAGS = [
    "--data",
    "synthetic",
    "--synthetic-per-task",
    "12",
    "--epochs",
    "1",
    "--lr",
    "1e-3",
    "--max-length",
    "64",
    "--no-progress",
]


def test_train_steps_then_evaluate(tmp_path, capsys):
    work, out, report = tmp_path / "work", tmp_path / "bundle", tmp_path / "report"
    for step in ("router", "phase1", "phase2", "phase3", "baseline"):
        assert main(["train", step, "--work", str(work), *FLAGS]) == 0
    assert main(["train", "assemble", "--work", str(work), "--out", str(out), *FLAGS]) == 0
    bundle = Bundle.load(out)
    assert bundle.manifest.router.trained
    assert all(spec.base_lora is not None for spec in bundle.manifest.tasks.values())
    capsys.readouterr()
    assert main(["evaluate", "--work", str(work), "--bundle", str(out), "--out", str(report), *FLAGS]) == 0
    data = json.loads((report / "report.json").read_text())
    # 8 synthetic test pairs per task (max(8, 12 // 4)), 4 tasks.
    assert data["gold_routing"]["dmoerm"]["all"]["n"] == 32
    for system in ("single", "base", "mean", "worst", "uwo", "dmoerm"):
        cell = data["gold_routing"][system]["all"]
        assert 0.0 <= cell["ci95"][0] <= cell["accuracy"] <= cell["ci95"][1] <= 1.0
    assert {"accuracy.png", "confusion.png", "report.md"} <= {p.name for p in report.iterdir()}
    assert "moerm evaluate" in (report / "report.md").read_text()


def test_settings_must_match_the_work_directory(tmp_path):
    import pytest

    work = tmp_path / "work"
    assert main(["train", "router", "--work", str(work), *FLAGS]) == 0
    with pytest.raises(ValueError, match="other settings"):
        main(["train", "phase1", "--work", str(work), *FLAGS[:-1], "--epochs", "3"])
