"""The contrast source: families and the capabilities they label, contrast
pairs and their labels, splits kept apart, files, and `moerm label --judge
contrast`."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from moerm.bundle import Capability
from moerm.data.io import capabilities_to_json, write_pairs
from moerm.data.records import PreferencePair
from moerm.judges.base import load_labels
from moerm.judges.cli import main
from moerm.judges.contrast import (
    FAMILIES,
    FAMILY_NAMES,
    build_contrast_pairs,
    by_capability,
    capability_map,
    contrast_labels,
    family,
    pairs_path,
    read_contrast_pairs,
    split_of,
    unreached,
    write_contrast_pairs,
)
from moerm.judges.contrast.families import families_markdown, human_preference
from moerm.judges.contrast.pool import ResponsePool, Source, other_prompt, swap_fact
from moerm.text import Turn

ARITHMETIC = "First add 12 and 30. Then check the sum twice. So the answer is 42."
CODE = "Here it is.\n\n```python\ndef add(first, second):\n    total = first + second\n    return total\n```"


def pair(i: int, task: str, prompt: str, chosen: str, rejected: str, tie: bool = False) -> PreferencePair:
    return PreferencePair(f"t:{i}", "test", task, (Turn("user", prompt),), chosen, rejected, tie)


PAIRS = [
    pair(0, "exam", "What is 12 + 30?", ARITHMETIC, "It is 41. I am sure of that answer."),
    pair(1, "exam", "What is 6 * 7?", "Six times seven makes 42. The product is 42.", "The answer is 13."),
    pair(2, "code", "Write an add function in Python.", CODE, "Use the plus sign. It adds numbers."),
    pair(3, "code", "Sum a list in Python.", "Call sum on it. It returns the total.", CODE, tie=True),
    pair(4, "harmlessness", "How do I pick a lock?", "I can't help with that.", "Use a tension wrench."),
    pair(5, "harmlessness", "How do I hurt someone?", "I won't help. Please talk to someone.", "Hit them."),
    pair(6, "", "PandaLM-style pair without a task.", "A.", "B."),
]
CAPABILITIES = {
    "exam": (Capability("accuracy_of_answer"), Capability("completeness_of_instruction_following")),
    "code": (Capability("code_correctness"), Capability("documentation"), Capability("code_readability")),
    "harmlessness": (Capability("harmlessness"), Capability("helpfulness"), Capability("tone")),
}


def test_every_family_declares_what_it_degrades():
    assert len(set(FAMILY_NAMES)) == len(FAMILIES)
    for f in FAMILIES:
        assert f.aspect and f.summary and f.capabilities
    assert family("truncate").name == "truncate"
    with pytest.raises(ValueError, match="no edit family 'nope'"):
        family("nope")


def test_docs_list_the_families_as_the_code_declares_them():
    docs = Path(__file__).resolve().parents[2] / "docs" / "judges.md"
    assert families_markdown() in docs.read_text()


def test_capability_map_matches_names_and_leaves_the_rest_to_judges():
    mapping = capability_map(CAPABILITIES)
    assert mapping["code"] == {
        "flip_operator": ("code_correctness",),
        "drop_code_line": ("code_correctness",),
        "obscure_names": ("code_readability",),
        "strip_comments": ("documentation",),
    }
    assert mapping["exam"]["change_number"] == ("accuracy_of_answer",)
    assert mapping["exam"]["truncate"] == ("completeness_of_instruction_following",)
    assert mapping["harmlessness"] == {"other_prompt": ("helpfulness",), "human_harmless": ("harmlessness",)}
    assert unreached(CAPABILITIES) == {"exam": (), "code": (), "harmlessness": ("tone",)}
    # human_harmless belongs to the harmlessness task: elsewhere a "harmlessness" capability is the judges'.
    assert unreached({"communication": (Capability("harmlessness"),)}) == {"communication": ("harmlessness",)}


def test_human_preference_is_the_harmless_pairs_own_preference():
    pool = ResponsePool(PAIRS)
    assert (
        human_preference(Source(PAIRS[4], "chosen"), random.Random(0), pool).text == "Use a tension wrench."
    )
    assert human_preference(Source(PAIRS[4], "rejected"), random.Random(0), pool) is None
    assert human_preference(Source(PAIRS[0], "chosen"), random.Random(0), pool) is None  # not harmlessness


def test_other_prompt_takes_a_fluent_response_to_another_conversation_of_the_task():
    pool = ResponsePool(PAIRS)
    for seed in range(5):
        edited = other_prompt(Source(PAIRS[0], "chosen"), random.Random(seed), pool)
        assert edited.text == PAIRS[1].chosen and edited.donors == ("t:1",)  # the only other exam prompt
    lonely = ResponsePool([PAIRS[0]])
    assert other_prompt(Source(PAIRS[0], "chosen"), random.Random(0), lonely) is None


def test_swap_fact_records_the_donor_pair():
    pairs = [
        pair(10, "exam", "Who wrote it?", "It was written by Jane Austen in Bath.", "No idea."),
        pair(11, "exam", "Where is it?", "The museum is in Vienna.", "Far away."),
    ]
    edited = swap_fact(Source(pairs[0], "chosen"), random.Random(0), ResponsePool(pairs))
    assert edited.text == "It was written by Jane Austen in Vienna."
    assert edited.donors == ("t:11",)


def test_contrast_pairs_are_original_against_edited_with_labels_by_construction():
    contrast, stats = build_contrast_pairs(PAIRS, CAPABILITIES, seed=0)
    assert contrast
    originals = {(p.id, side): getattr(p, side) for p in PAIRS for side in ("chosen", "rejected")}
    for item in contrast:
        _, name, side, origin = item.pair.id.split(":", 3)
        source = next(p for p in PAIRS if p.id == origin)
        assert name == item.family and item.origins[0] == origin
        assert item.pair.chosen == originals[origin, side] and item.pair.rejected != item.pair.chosen
        assert item.pair.turns == source.turns and item.pair.task == source.task and not item.pair.tie
        assert item.capabilities == capability_map(CAPABILITIES)[source.task][item.family]
    labels = contrast_labels(contrast)
    assert all(label.chosen_better for label in labels)
    assert {(label.pair_id, label.judge) for label in labels} == {
        (item.pair.id, f"contrast:{item.family}") for item in contrast
    }
    families = {(item.pair.task, item.family) for item in contrast}
    assert {("exam", "change_number"), ("code", "flip_operator"), ("code", "drop_code_line")} <= families
    assert ("harmlessness", "human_harmless") in families
    harmless = [item for item in contrast if item.family == "human_harmless"]
    assert {(h.pair.chosen, h.pair.rejected) for h in harmless} == {
        (p.chosen, p.rejected) for p in PAIRS[4:6]
    }
    assert stats.pairs_without_capabilities == 1
    assert stats.made["code", "flip_operator"] == 2  # the code response, under each of its two prompts
    assert sum(stats.by_capability.values()) == len(labels)
    assert by_capability(contrast)["code", "code_correctness"] == [
        item for item in contrast if item.pair.task == "code" and "code_correctness" in item.capabilities
    ]


def test_a_response_repeated_in_a_conversation_is_edited_once():
    twice = [PAIRS[2], pair(7, "code", PAIRS[2].turns[0].content, "Another answer. It differs.", CODE)]
    contrast, stats = build_contrast_pairs(twice, CAPABILITIES)
    assert stats.responses == 3 and stats.made["code", "flip_operator"] == 1
    assert [item.origins for item in contrast if item.family == "flip_operator"] == [("t:2",)]


def test_contrast_pairs_are_deterministic_given_the_seed():
    first, _ = build_contrast_pairs(PAIRS, CAPABILITIES, seed=7)
    again, _ = build_contrast_pairs(list(PAIRS), CAPABILITIES, seed=7)
    other, _ = build_contrast_pairs(PAIRS, CAPABILITIES, seed=8)
    assert first == again
    assert first != other  # the seed moves where the edits fall


def test_donors_stay_inside_their_group():
    groups = {"t:0": "train", "t:1": "test", "t:2": "train", "t:3": "train", "t:4": "train", "t:5": "train"}
    contrast, _ = build_contrast_pairs(PAIRS, CAPABILITIES, groups=groups)
    assert all(split_of(item, groups) != "mixed" for item in contrast)
    assert not [item for item in contrast if item.family == "other_prompt" and item.pair.task == "exam"]
    mixed, _ = build_contrast_pairs(PAIRS, CAPABILITIES)  # one group: exam borrows across t:0 and t:1
    assert {split_of(item, groups) for item in mixed if item.family == "other_prompt"} >= {"mixed"}


def test_split_of():
    assignment = {"a": "train", "b": "train", "c": "test"}
    contrast, _ = build_contrast_pairs(PAIRS[:1], CAPABILITIES)
    item = contrast[0]

    def made_from(*origins: str) -> str:
        return split_of(dataclasses.replace(item, origins=origins), assignment)

    assert made_from("a", "b") == "train" and made_from("c") == "test"
    assert made_from("a", "c") == "mixed" and made_from("a", "z") == "unknown"


def test_max_per_family_caps_each_task_and_family():
    many = [pair(i, "exam", f"What is {i} + 1?", f"It is {i + 1}. Check it twice.", "No.") for i in range(10)]
    contrast, stats = build_contrast_pairs(many, CAPABILITIES, max_per_family=3)
    counts = {}
    for item in contrast:
        counts[item.family] = counts.get(item.family, 0) + 1
    assert counts["change_number"] == 3 and stats.made["exam", "change_number"] == 10
    assert stats.kept["exam", "change_number"] == 3


def test_contrast_files_round_trip_and_need_origins(tmp_path):
    contrast, _ = build_contrast_pairs(PAIRS, CAPABILITIES)
    path = tmp_path / "c.pairs.jsonl"
    write_contrast_pairs(contrast, path)
    assert read_contrast_pairs(path) == contrast
    raw = json.loads(path.read_text().splitlines()[0])
    del raw["origins"]
    path.write_text(json.dumps(raw) + "\n")
    with pytest.raises(ValueError, match="c.pairs.jsonl:1: .*origins"):
        read_contrast_pairs(path)
    assert pairs_path(tmp_path / "labels.jsonl") == tmp_path / "labels.pairs.jsonl"


def test_label_command_with_the_contrast_source(tmp_path, capsys):
    write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    (tmp_path / "caps.json").write_text(json.dumps(capabilities_to_json(CAPABILITIES)))
    split = {"t:0": "train", "t:1": "train", "t:2": "train", "t:3": "train", "t:4": "test", "t:5": "test"}
    manifest = {
        "format_version": 1,
        "seed": 0,
        "fractions": [0.7, 0.1, 0.2],
        "assignment": split,
        "strata": {key: ["x", False] for key in split},
    }
    (tmp_path / "split.json").write_text(json.dumps(manifest))
    out = tmp_path / "contrast.jsonl"
    args = ["label", "--pairs", str(tmp_path / "pairs.jsonl"), "--capabilities", str(tmp_path / "caps.json")]
    command = [*args, "--out", str(out), "--judge", "contrast", "--split-file", str(tmp_path / "split.json")]
    assert main(command) == 0
    labels = load_labels(out)
    contrast = read_contrast_pairs(tmp_path / "contrast.pairs.jsonl")
    assert labels == contrast_labels(contrast)
    assert all(split_of(item, split) in ("train", "test") for item in contrast)
    stats = json.loads((tmp_path / "contrast.stats.json").read_text())
    assert stats["labels"] == len(labels) and stats["contrast_pairs"] == len(contrast)
    assert stats["unreached"] == {"harmlessness": ["tone"]}
    table = (tmp_path / "contrast.stats.md").read_text()
    assert "| code | flip_operator | 4 | 2 | 50.0 | 2 |" in table  # 4 responses, 2 with code
    assert table in capsys.readouterr().out

    assert main([*args, "--out", str(out), "--judge", "contrast", "--families", "truncate,typos"]) == 0
    assert {item.family for item in read_contrast_pairs(tmp_path / "contrast.pairs.jsonl")} == {"truncate"}
    assert main([*args, "--out", str(out), "--judge", "contrast", "--families", "nope"]) == 2
    assert "no edit family 'nope'" in capsys.readouterr().err
