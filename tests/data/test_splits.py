"""Deterministic stratified splits, the manifest file, the shared bundle."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from moerm.data.records import ClassifierExample, PreferencePair
from moerm.data.splits import (
    SPLITS,
    SplitManifest,
    pair_counts,
    split_examples,
    split_pairs,
)
from moerm.data.tasks import TASKS
from moerm.text import Turn, render_conversation

# task -> (non-tie, tie) pairs of the synthetic set
SIZES = {"code": (40, 12), "exam": (9, 1), "tiny": (2, 0), "writing": (120, 30), "": (25, 5)}


def _pairs(shared_prompts: bool = False) -> list[PreferencePair]:
    pairs = []
    for task, (non_tie, tie) in SIZES.items():
        for i in range(non_tie + tie):
            prompt = f"{task} prompt {i // 3 if shared_prompts else i}"
            pairs.append(
                PreferencePair(
                    id=f"syn:{task}:{i}",
                    source="syn",
                    task=task,
                    turns=(Turn("user", prompt),),
                    chosen="good",
                    rejected="bad",
                    tie=i >= non_tie,
                )
            )
    return pairs


def test_same_seed_same_bytes_regardless_of_order():
    pairs = _pairs()
    reference = split_pairs(pairs, seed=7).to_bytes()
    for shuffle_seed in range(3):
        shuffled = list(pairs)
        random.Random(shuffle_seed).shuffle(shuffled)
        assert split_pairs(shuffled, seed=7).to_bytes() == reference
    assert split_pairs(list(reversed(pairs)), seed=7).to_bytes() == reference
    assert split_pairs(pairs, seed=8).to_bytes() != reference
    assert split_pairs(pairs, seed=8).assignment != split_pairs(pairs, seed=7).assignment


@pytest.mark.parametrize("group_by", ["conversation", "id"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stratified(seed, group_by):
    pairs = _pairs(shared_prompts=group_by == "conversation")
    manifest = split_pairs(pairs, seed=seed, group_by=group_by)
    assert set(manifest.assignment) == {p.id for p in pairs}
    assert set(manifest.assignment.values()) <= set(SPLITS)
    selected = [manifest.select(pairs, split) for split in SPLITS]
    assert sum(len(s) for s in selected) == len(pairs)
    assert len({p.id for s in selected for p in s}) == len(pairs)  # no id in two splits
    counts = manifest.counts()
    for task, (non_tie, tie) in SIZES.items():
        if non_tie + tie >= 10:
            for split in SPLITS:
                assert sum(counts[split].get(task, (0, 0))) > 0, (task, split)
    if group_by == "id":
        # each (task, tie) stratum is split in the fractions to within one pair
        for task, sizes in SIZES.items():
            for tie, n in zip((False, True), sizes, strict=True):
                for split, fraction in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
                    got = counts[split].get(task, (0, 0))[tie]
                    assert abs(got - fraction * n) < 1 + 1e-9, (task, tie, split, got, n)


def test_conversations_stay_in_one_split():
    pairs = _pairs(shared_prompts=True)
    manifest = split_pairs(pairs, seed=0)
    splits_of = defaultdict(set)
    for p in pairs:
        splits_of[render_conversation(p.turns)].add(manifest.assignment[p.id])
    assert all(len(s) == 1 for s in splits_of.values())
    by_id = split_pairs(pairs, seed=0, group_by="id")
    assert by_id.group_by == "id" and manifest.group_by == "conversation"


def test_fractions_and_ids_are_checked():
    pairs = _pairs()
    with pytest.raises(ValueError, match="fractions"):
        split_pairs(pairs, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="fractions"):
        split_pairs(pairs, fractions=(0.7, 0.3))
    with pytest.raises(ValueError, match="train fraction"):
        split_pairs(pairs, fractions=(0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="duplicate"):
        split_pairs([*pairs, pairs[0]])
    with pytest.raises(ValueError, match="group_by"):
        split_pairs(pairs, group_by="prompt")
    manifest = split_pairs(pairs, fractions=(0.8, 0.0, 0.2))
    assert manifest.counts()["validation"] == {}


def test_manifest_round_trip(tmp_path):
    pairs = _pairs()
    manifest = split_pairs(pairs, seed=3, sources={"syn": "ab" * 32})
    path = tmp_path / "split.json"
    manifest.save(path)
    loaded = SplitManifest.load(path)
    assert loaded == manifest
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["seed"] == 3 and data["fractions"] == [0.7, 0.1, 0.2]
    assert list(data) == sorted(data) and list(data["assignment"]) == sorted(data["assignment"])
    assert loaded.counts() == manifest.counts()
    assert loaded.select(pairs, "test") == manifest.select(pairs, "test")
    assert loaded.check_sources({"syn": "ab" * 32}) == []
    assert loaded.check_sources({"syn": "cd" * 32, "new": "00"}) == ["new", "syn"]

    other = PreferencePair("elsewhere:0", "x", "code", (Turn("user", "q"),), "a", "b")
    with pytest.raises(ValueError, match="not in the split manifest"):
        loaded.select([*pairs, other], "train")
    with pytest.raises(ValueError, match="unknown split"):
        loaded.select(pairs, "dev")
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        SplitManifest.load(path)


def test_classifier_split():
    pool = [
        ClassifierExample(f"train:{i}", f"query {i % 150}", task, "s")
        for i, task in enumerate(["code", "exam", "writing"] * 60)
    ]
    test = [ClassifierExample(f"test:{i}", f"held out {i}", "code") for i in range(5)]
    manifest = split_examples(pool, test, seed=0, validation_fraction=0.2)
    assert manifest.kind == "classifier"
    assert {manifest.assignment[e.id] for e in test} == {"test"}
    assert {manifest.assignment[e.id] for e in pool} == {"train", "validation"}
    counts = manifest.counts()
    assert counts["test"] == {"code": (5, 0)}
    assert set(counts["validation"]) == {"code", "exam", "writing"}
    assert 30 <= sum(n for n, _ in counts["validation"].values()) <= 42
    texts = defaultdict(set)
    for e in pool:
        texts[e.text].add(manifest.assignment[e.id])
    assert all(len(s) == 1 for s in texts.values())  # duplicate queries stay together
    shuffled = list(reversed(pool))
    assert split_examples(shuffled, test, seed=0, validation_fraction=0.2).to_bytes() == manifest.to_bytes()
    with pytest.raises(ValueError, match="duplicate"):
        split_examples(pool, [pool[0]])


def test_pair_counts():
    assert pair_counts(_pairs())[("syn", "code")] == (40, 12)


# ---------------------------------------------------------------------------
# The shared sets


def test_load_shared(shared):
    assert len(shared.pairs) == 2312 + 1392 + 999
    assert Counter(p.source for p in shared.pairs) == {"hh-rlhf": 2312, "autoj": 1392, "pandalm": 999}
    assert len({p.id for p in shared.pairs}) == len(shared.pairs)
    assert (len(shared.classifier_train), len(shared.classifier_test)) == (2059, 542)
    assert tuple(shared.capabilities) == TASKS
    assert set(shared.sources) == {
        "hh-rlhf",
        "autoj",
        "pandalm",
        "autoj-classifier-train",
        "autoj-classifier-test",
    }
    assert all(len(digest) == 64 for digest in shared.sources.values())


def test_shared_split(shared, tmp_path):
    manifest = shared.split(seed=0)
    again = split_pairs(list(reversed(shared.pairs)), seed=0, sources=shared.pair_sources())
    assert again.to_bytes() == manifest.to_bytes()
    assert shared.split(seed=1).to_bytes() != manifest.to_bytes()
    assert manifest.check_sources(shared.pair_sources()) == []
    counts = manifest.counts()
    tasks = Counter(p.task for p in shared.pairs)
    for task, n in tasks.items():
        if n >= 10:
            assert all(sum(counts[split].get(task, (0, 0))) > 0 for split in SPLITS), task
    for split, fraction in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
        size = sum(non_tie + tie for non_tie, tie in counts[split].values())
        assert abs(size - fraction * len(shared.pairs)) < 0.01 * len(shared.pairs), (split, size)
    # no conversation in two splits
    splits_of = defaultdict(set)
    for p in shared.pairs:
        splits_of[render_conversation(p.turns)].add(manifest.assignment[p.id])
    assert all(len(s) == 1 for s in splits_of.values())
    manifest.save(tmp_path / "m.json")
    assert SplitManifest.load(tmp_path / "m.json") == manifest


def test_shared_classifier_split(shared):
    manifest = shared.classifier_split(seed=0)
    counts = manifest.counts()
    assert sum(n for n, _ in counts["test"].values()) == 542
    assert (
        sum(n for n, _ in counts["train"].values()) + sum(n for n, _ in counts["validation"].values()) == 2059
    )
    assert set(counts["validation"]) == set(counts["train"]) == set(TASKS)


def test_no_torch_import():
    code = (
        "import sys, moerm.data.loaders, moerm.data.tasks, moerm.data.splits, moerm.data.cli;"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
