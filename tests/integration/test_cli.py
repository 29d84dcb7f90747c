"""The moerm command line: bundle create / show, and score against a cluster."""

from __future__ import annotations

import json

import pytest

from moerm.bundle import Bundle
from moerm.cli import main

pytestmark = pytest.mark.integration


def test_bundle_create_and_show(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(
        [
            "bundle",
            "create",
            "--out",
            str(out),
            "--task",
            "math=correctness,clarity:arithmetic and algebra",
            "--task",
            "chat=helpfulness:small talk",
            "--lora-r",
            "4",
            "--lora-fraction",
            "0.5",
        ]
    )
    assert code == 0
    bundle = Bundle.load(out)
    assert bundle.manifest.tasks["math"].capability_names == ("correctness", "clarity")
    assert bundle.manifest.tasks["math"].lora.layers == (3, 4, 5)
    assert bundle.manifest.tasks["math"].lora.r == 4
    capsys.readouterr()
    assert main(["bundle", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert bundle.version in shown and "math" in shown


def test_bundle_show_names_a_corrupt_file(tmp_path, minilm_bundle, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(minilm_bundle, copy)
    heads = copy / "tasks" / "code" / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:-8] + b"garbage!")
    assert main(["bundle", "show", str(copy)]) == 2
    assert "tasks/code/heads.safetensors" in capsys.readouterr().err


def test_score_prints_one_line_per_item(cluster, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(
        "\n".join(
            json.dumps(i)
            for i in [
                {
                    "id": "x",
                    "prompt": "Write a Python class for a stack.",
                    "response": "class Stack: pass  # cli",
                },
                {
                    "id": "y",
                    "messages": [{"role": "user", "content": "A poem about snow?"}],
                    "response": "White hush. (cli)",
                },
            ]
        )
        + "\n"
    )
    assert main(["score", str(items), "--address", cluster.address, "--breakdown"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["x", "y"]
    assert all(r["capabilities"] and r["bundle_version"] for r in rows)


def test_score_reports_bad_input(cluster, tmp_path, capsys):
    items = tmp_path / "bad.jsonl"
    items.write_text(json.dumps({"prompt": "hi", "response": ""}) + "\n")
    assert main(["score", str(items), "--address", cluster.address]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "items[0].response" in err
