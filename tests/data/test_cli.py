"""``moerm data split`` / ``pairs`` / ``stats`` through add_data_commands."""

from __future__ import annotations

import argparse

import pytest

from moerm.data.cli import add_data_commands
from moerm.data.splits import SplitManifest


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="moerm")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def test_split_writes_the_shared_manifest(shared, shared_dir, tmp_path, capsys):
    out, classifier_out = tmp_path / "split.json", tmp_path / "classifier.json"
    argv = ["data", "split", "--out", str(out), "--seed", "3", "--data-dir", str(shared_dir)]
    assert _run([*argv, "--classifier-out", str(classifier_out)]) == 0
    assert out.read_bytes() == shared.split(seed=3).to_bytes()
    assert classifier_out.read_bytes() == shared.classifier_split(seed=3).to_bytes()
    printed = capsys.readouterr().out
    assert "harmlessness" in printed and "validation (non-tie/tie)" in printed
    manifest = SplitManifest.load(out)
    test_harmless = manifest.counts()["test"]["harmlessness"]
    assert f"{test_harmless[0]}/0" in printed


def test_pairs_writes_the_pairs_of_the_chosen_splits(shared, shared_dir, tmp_path, capsys):
    from moerm.data.io import read_capabilities, read_pairs

    manifest = shared.split(seed=0)
    manifest.save(tmp_path / "split.json")
    out, caps = tmp_path / "pairs.jsonl", tmp_path / "caps.json"
    argv = ["data", "pairs", "--out", str(out), "--split-file", str(tmp_path / "split.json")]
    argv += ["--splits", "validation,test", "--capabilities-out", str(caps), "--data-dir", str(shared_dir)]
    assert _run(argv) == 0
    expected = manifest.select(shared.pairs, "validation") + manifest.select(shared.pairs, "test")
    assert read_pairs(out) == expected
    assert read_capabilities(caps) == shared.capabilities
    assert f"{len(expected)} pairs of validation, test" in capsys.readouterr().out
    assert _run(["data", "pairs", "--out", str(out), "--splits", "dev"]) == 2
    assert "--splits takes names among train, validation, test" in capsys.readouterr().err


def test_stats(shared_dir, capsys):
    assert _run(["data", "stats", "--data-dir", str(shared_dir)]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()]
    assert ["hh-rlhf", "harmlessness", "2312", "0", "2312"] in rows
    assert ["autoj", "exam", "42", "30", "72"] in rows
    assert ["pandalm", "(none)", "894", "105", "999"] in rows
    assert ["total", "4225", "478", "4703"] in rows
    assert "dropped from train (no task): default 317, peer_review 7" in printed
    assert "code: code_correctness" in printed


@pytest.mark.parametrize("command", [["stats"], ["split", "--out", "never.json"]])
def test_missing_data_dir(tmp_path, capsys, command):
    assert _run(["data", *command, "--data-dir", str(tmp_path)]) == 2
    assert "shared data not found" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


def test_bad_fractions(capsys):
    with pytest.raises(SystemExit):
        _run(["data", "split", "--out", "x.json", "--fractions", "0.7,0.3"])
    assert "three numbers" in capsys.readouterr().err
