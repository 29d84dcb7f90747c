"""The K x K table of capability experts on held-out contrast pairs
(moerm/evaluate/contrast.py): counting on written margins, then real scoring
with the session's MiniLM bundle, then the command on the shared data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from moerm.bundle import Bundle
from moerm.data.records import PreferencePair
from moerm.data.synthetic import synthetic_pairs
from moerm.evaluate.contrast import (
    BASE,
    DMOERM,
    evaluate_contrast,
    markdown,
    summary,
    tabulate,
    write_contrast_report,
)
from moerm.judges.contrast import ContrastPair, build_contrast_pairs
from moerm.models.loading import load_task_experts
from moerm.text import Turn
from moerm.train.loop import PairTokenizer


def _item(i: int, family: str, capabilities: tuple[str, ...]) -> ContrastPair:
    pair = PreferencePair(f"c{i}", "contrast", "t", (Turn("user", "q"),), "original", "edited")
    return ContrastPair(pair, family, capabilities, (f"p{i}",))


def test_tabulate_counts_each_pair_in_every_column_it_is_labelled_for():
    # Columns: a (4 pairs, one also labelled b), b (3 pairs). Expert "a" gets its own
    # edits right, expert "b" only b's; ties (margin 0) are counted, never scored.
    contrast = [
        _item(0, "f1", ("a",)),
        _item(1, "f1", ("a",)),
        _item(2, "f1", ("a",)),
        _item(3, "f2", ("a", "b")),
        _item(4, "f3", ("b",)),
        _item(5, "f3", ("b",)),
    ]
    margins = {
        "a": [1.0, 2.0, 0.5, 1.0, -1.0, 0.0],
        "b": [-1.0, -1.0, 1.0, 1.0, 2.0, 3.0],
        DMOERM: [1.0] * 6,
    }
    table = tabulate("t", ("a", "b"), contrast, margins, {"a": True, "b": False})
    assert table.columns == ("a", "b")
    assert table.rows == ("a", "b", DMOERM)  # no base model row without its margins
    a_on_a, a_on_b = table.cells["a"]["a"], table.cells["a"]["b"]
    assert (a_on_a.correct, a_on_a.n, a_on_a.ties) == (4, 4, 0)
    assert (a_on_b.correct, a_on_b.n, a_on_b.ties) == (1, 2, 1)  # pair 3 counts in b too; pair 5 ties
    b_on_a, b_on_b = table.cells["b"]["a"], table.cells["b"]["b"]
    assert (b_on_a.correct, b_on_a.n) == (2, 4)
    assert (b_on_b.correct, b_on_b.n) == (3, 3)
    assert table.dominant("a") and table.dominant("b")
    assert table.off_diagonal("a").value == pytest.approx(0.5)
    assert table.by_family["b"]["f1"].correct == 1 and table.by_family["b"]["f1"].n == 3
    # Experts x families: f2 is the one pair labelled for both capabilities.
    assert table.by_family["a"]["f2"].n == 1

    s = summary([table])
    assert s["experts"] == 2 and s["experts_at_0.9"] == 2 and s["dominant_columns"] == 2
    assert s["own"]["correct"] == 7 and s["own"]["n"] == 7
    assert s["other"]["correct"] == 3 and s["other"]["n"] == 6

    text = markdown([table], "# header")
    assert "| `a` | **1.000 [0.51, 1.00]** |" in text  # the diagonal, bold, with its Wilson interval
    assert "| `b` (untrained) |" in text
    assert "| n (ties) | 4 (0) | 2 (1) |" in text


def test_tabulate_rejects_margins_of_another_length():
    with pytest.raises(ValueError, match="t/a: 1 margins for 2 contrast pairs"):
        tabulate("t", ("a",), [_item(0, "f", ("a",)), _item(1, "f", ("a",))], {"a": [1.0]})


def test_a_column_won_by_another_expert_is_not_dominant():
    contrast = [_item(i, "f", ("a",)) for i in range(4)]
    table = tabulate("t", ("a", "b"), contrast, {"a": [1, -1, -1, 1], "b": [1, 1, 1, -1]})
    assert table.columns == ("a",)  # b has no pairs: no column
    assert not table.dominant("a")
    assert table.diagonal()["a"].value == 0.5
    assert math.isnan(table.off_diagonal("a").value)  # no other column


def test_evaluate_contrast_scores_with_each_expert_of_the_bundle(minilm_bundle, tmp_path):
    bundle = Bundle.load(minilm_bundle)
    capabilities = {task: spec.capabilities for task, spec in bundle.manifest.tasks.items()}
    pairs, _ = synthetic_pairs(4)
    contrast, _ = build_contrast_pairs([p for p in pairs if p.task in capabilities], capabilities, seed=0)
    assert {item.pair.task for item in contrast} == {"code", "writing"}
    tables = evaluate_contrast(bundle, contrast, max_length=64)
    by_task = {t.task: t for t in tables}
    assert set(by_task) == {"code", "writing"}
    writing = by_task["writing"]
    assert writing.experts == ("relevance", "fluency")
    assert set(writing.columns) == {"relevance", "fluency"}  # other_prompt and typos reach them
    items = [item for item in contrast if item.pair.task == "writing"]
    for column in writing.columns:
        cell = writing.cells["fluency"][column]
        assert cell.n + cell.ties == sum(column in item.capabilities for item in items)

    # The table's verdicts are the experts' own scores, one text at a time.
    experts, tokenizer = load_task_experts(bundle, "writing")
    encode = PairTokenizer(tokenizer, 64)
    with torch.inference_mode():
        for k, cap in enumerate(experts.capabilities):
            right = 0
            for item in items:
                if "fluency" not in item.capabilities:
                    continue
                texts = [encode.texts(item.pair.turns, r) for r in (item.pair.chosen, item.pair.rejected)]
                scores = [experts(*encode.encode([text]))[0][0, k].item() for text in texts]
                right += scores[0] > scores[1]
            assert writing.cells[cap]["fluency"].correct == right

    path = write_contrast_report(tables, tmp_path, header="# test")
    saved = json.loads((tmp_path / "contrast.json").read_text())
    assert [t["task"] for t in saved["tasks"]] == [t.task for t in tables]
    assert "### writing" in path.read_text()
    assert BASE not in writing.rows  # the session bundle is untrained: no task base model


def test_the_command_measures_a_bundle_on_the_test_splits_edits(minilm_bundle, shared_dir, tmp_path):
    from moerm.cli import main
    from moerm.data.splits import load_shared

    split = tmp_path / "split.json"
    load_shared(shared_dir).split(0).save(split)
    out = tmp_path / "report"
    code = main(
        [
            "evaluate-contrast",
            "--bundle",
            str(minilm_bundle),
            "--split-file",
            str(split),
            "--data-dir",
            str(shared_dir),
            "--max-per-family",
            "2",
            "--max-length",
            "64",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    saved = json.loads((out / "contrast.json").read_text())
    # Only the bundle's tasks with edits of their (the bundle's) capabilities: the shared
    # data's "code" task, edited for correctness / readability.
    assert [t["task"] for t in saved["tasks"]] == ["code"]
    code_table = saved["tasks"][0]
    assert code_table["experts"] == ["correctness", "efficiency", "readability"]
    assert set(code_table["columns"]) <= {"correctness", "readability"} and code_table["columns"]
    assert saved["heldout"]["contrast_pairs"] == sum(f["kept"] for f in saved["heldout"]["by_family"])
    assert all(f["kept"] <= 2 for f in saved["heldout"]["by_family"])
    assert "Produced by" in (out / "contrast.md").read_text()
