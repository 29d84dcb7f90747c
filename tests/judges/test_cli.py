"""The ``label`` command (rules, and an OpenAI-style judge against FakeChatAPI)."""

from __future__ import annotations

import argparse
import json

from moerm.bundle import Capability
from moerm.data.io import (
    capabilities_to_json,
    write_pairs,
)
from moerm.judges.base import load_labels
from moerm.judges.cli import add_label_commands, main, side_path
from tests.judges.conftest import Reply, completion, make_pair


def test_side_path(tmp_path):
    assert side_path(tmp_path / "labels.jsonl", ".stats.json") == tmp_path / "labels.stats.json"
    assert side_path(tmp_path / "out", ".stats.md") == tmp_path / "out.stats.md"


def write_inputs(tmp_path, pairs, caps):
    write_pairs(pairs, tmp_path / "pairs.jsonl")
    (tmp_path / "caps.json").write_text(json.dumps(capabilities_to_json(caps)))
    return ["--pairs", str(tmp_path / "pairs.jsonl"), "--capabilities", str(tmp_path / "caps.json")]


def test_label_command_with_rules(tmp_path, capsys):
    pair = make_pair(0, task="exam", prompt="What is 6 * 7?")
    pairs = [
        pair.__class__(**{**pair.__dict__, "chosen": "It is 42", "rejected": "It is 41"}),
        make_pair(1, tie=True),
    ]
    args = write_inputs(tmp_path, pairs, {"exam": (Capability("correctness"), Capability("clarity"))})
    out = tmp_path / "labels.jsonl"
    assert main(["label", *args, "--out", str(out), "--judge", "rules", "--quiet"]) == 0
    labels = load_labels(out)
    assert [(label.capability, label.chosen_better, label.judge) for label in labels] == [
        ("correctness", True, "rules")
    ]
    stats = json.loads((tmp_path / "labels.stats.json").read_text())
    assert stats["total"]["asked"] == 2 and stats["total"]["consistent"] == 1 and stats["ties_skipped"] == 1
    table = (tmp_path / "labels.stats.md").read_text()
    assert "| exam | correctness | 1 | 1 | 1 |" in table
    assert table in capsys.readouterr().out


def test_label_command_with_an_openai_judge_resumes_from_its_cache(tmp_path, fake_api, capsys):
    fake_api.answer = lambda body: Reply(
        body=completion("A" if "[Response A]\ngood" in body["messages"][1]["content"] else "B")
    )
    pairs = [make_pair(i) for i in range(4)] + [make_pair(9, tie=True)]
    args = write_inputs(tmp_path, pairs, {"code": (Capability("correctness"),)})
    out = tmp_path / "labels.jsonl"
    command = ["label", *args, "--out", str(out), "--url", fake_api.base_url, "--model", "m", "--quiet"]
    assert main([*command, "--limit", "3", "--rps", "1000"]) == 0
    assert fake_api.count == 6 and len(load_labels(out)) == 3
    assert (tmp_path / "labels.cache.jsonl").is_file()
    assert main(command) == 0  # the 3 cached pairs cost nothing; the 4th is new
    assert fake_api.count == 8 and len(load_labels(out)) == 4
    assert "cache_hits=6" in capsys.readouterr().err


def test_label_command_reports_judge_failures(tmp_path, fake_api, capsys):
    fake_api.answer = lambda body: Reply(401, {"error": {"message": "invalid api key"}})
    args = write_inputs(tmp_path, [make_pair(0)], {"code": (Capability("correctness"),)})
    out = tmp_path / "labels.jsonl"
    command = ["label", *args, "--out", str(out), "--url", fake_api.base_url, "--model", "m", "--quiet"]
    assert main([*command, "--no-logprobs"]) == 1
    assert "invalid api key" in capsys.readouterr().err
    assert main(["label", *args, "--out", str(out)]) == 2  # --judge openai needs --model


def test_commands_are_added_to_a_parser():
    parser = argparse.ArgumentParser()
    add_label_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["judge-serve", "--port", "9000"])
    assert args.port == 9000 and args.model == "smollm2" and callable(args.run)
    args = parser.parse_args(
        ["label", "--pairs", "p", "--capabilities", "c", "--out", "o", "--judge", "local"]
    )
    assert args.judge == "local" and args.concurrency == 8
