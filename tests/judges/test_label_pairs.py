"""The swap-consistency filter and its statistics, with a scripted judge."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from moerm.bundle import Capability
from moerm.judges.base import (
    CapabilityLabel,
    LabelStats,
    current_task,
    decide,
    label_pairs,
    load_labels,
    save_labels,
    wilson_interval,
)
from tests.judges.conftest import ScriptedJudge, make_pair

CAPS = {"code": (Capability("correctness"), Capability("efficiency"), Capability("readability"))}
ONE_CAP = {"code": (Capability("correctness"),)}


def prefers_chosen(a: str, b: str, cap: str):
    return "A" if a.startswith("good") else "B"


def prefers_rejected(a: str, b: str, cap: str):
    return "A" if a.startswith("bad") else "B"


def test_decide_truth_table():
    assert decide("A", "B") is True
    assert decide("B", "A") is False
    for first, second in [("A", "A"), ("B", "B"), (None, "B"), ("A", None), (None, None)]:
        assert decide(first, second) is None


async def test_chosen_is_shown_first_as_a_then_as_b():
    judge = ScriptedJudge(prefers_chosen)
    await label_pairs([make_pair(0)], ONE_CAP, judge, progress=False)
    assert sorted(judge.calls) == [("bad-0", "good-0", "correctness"), ("good-0", "bad-0", "correctness")]


async def test_always_a_position_bias_drops_every_label():
    pairs = [make_pair(i) for i in range(5)]
    labels, stats = await label_pairs(pairs, CAPS, ScriptedJudge(lambda a, b, c: "A"), progress=False)
    assert labels == []
    total = stats.total
    assert (total.asked, total.answered, total.consistent, total.same_letter) == (15, 15, 0, 15)
    assert total.kept_fraction == 0.0
    assert math.isnan(total.agreement_with_human)
    assert total.a_rate == 1.0


async def test_consistent_true_keeps_every_label_in_the_chosen_direction():
    pairs = [make_pair(i) for i in range(4)]
    labels, stats = await label_pairs(pairs, CAPS, ScriptedJudge(prefers_chosen, name="s"), progress=False)
    assert len(labels) == 12
    assert all(label.chosen_better for label in labels)
    assert labels[0] == CapabilityLabel("test:0", "code", "correctness", True, "s")
    assert [label.pair_id for label in labels[:3]] == ["test:0"] * 3
    assert [label.capability for label in labels[:3]] == ["correctness", "efficiency", "readability"]
    total = stats.total
    assert (total.asked, total.consistent, total.chosen_better) == (12, 12, 12)
    assert total.kept_fraction == 1.0 and total.agreement_with_human == 1.0 and total.a_rate == 0.5


async def test_consistent_false_keeps_every_label_against_the_human():
    pairs = [make_pair(i) for i in range(4)]
    labels, stats = await label_pairs(pairs, CAPS, ScriptedJudge(prefers_rejected), progress=False)
    assert len(labels) == 12 and not any(label.chosen_better for label in labels)
    assert stats.total.consistent == 12 and stats.total.agreement_with_human == 0.0


async def test_abstaining_judge_keeps_nothing():
    labels, stats = await label_pairs(
        [make_pair(i) for i in range(3)], CAPS, ScriptedJudge(lambda a, b, c: None), progress=False
    )
    assert labels == []
    total = stats.total
    assert (total.asked, total.answered, total.consistent, total.letters) == (9, 0, 0, 0)
    assert math.isnan(total.a_rate)


def mixed(a: str, b: str, cap: str):
    """correctness: prefers chosen; efficiency: always B; readability: prefers
    rejected on even pairs, abstains on the second ask of odd pairs."""
    if cap == "correctness":
        return prefers_chosen(a, b, cap)
    if cap == "efficiency":
        return "B"
    index = int(a.split("-")[1])
    if index % 2 == 0:
        return prefers_rejected(a, b, cap)
    return "A" if a.startswith("good") else None


async def test_mixed_script_exact_counts():
    pairs = [make_pair(i) for i in range(4)] + [make_pair(9, tie=True), make_pair(10, task="poetry")]
    labels, stats = await label_pairs(pairs, CAPS, ScriptedJudge(mixed), progress=False)

    assert [(label.pair_id, label.capability, label.chosen_better) for label in labels] == [
        ("test:0", "correctness", True),
        ("test:0", "readability", False),
        ("test:1", "correctness", True),
        ("test:2", "correctness", True),
        ("test:2", "readability", False),
        ("test:3", "correctness", True),
    ]
    assert stats.ties_skipped == 1 and stats.pairs_without_capabilities == 1
    rows = {cap: stats.by_capability[("code", cap)] for cap in ("correctness", "efficiency", "readability")}
    counts = {
        cap: (r.asked, r.answered, r.consistent, r.same_letter, r.chosen_better, r.letters, r.a_answers)
        for cap, r in rows.items()
    }
    assert counts == {
        "correctness": (4, 4, 4, 0, 4, 8, 4),
        "efficiency": (4, 4, 0, 4, 0, 8, 0),
        "readability": (4, 2, 2, 0, 0, 6, 4),
    }
    assert rows["readability"].kept_fraction == 0.5 and rows["readability"].agreement_with_human == 0.0
    total = stats.total
    assert (total.asked, total.answered, total.consistent, total.same_letter, total.chosen_better) == (
        12,
        10,
        6,
        4,
        4,
    )
    assert total.kept_fraction == 0.5
    assert total.agreement_with_human == pytest.approx(4 / 6)
    assert total.a_rate == pytest.approx(8 / 22)

    as_dict = json.loads(stats.to_json())
    assert as_dict["total"]["consistent"] == 6 and as_dict["total"]["kept_fraction"] == 0.5
    assert as_dict["ties_skipped"] == 1
    assert {row["capability"] for row in as_dict["by_capability"]} == set(rows)
    assert as_dict["by_capability"][1]["agreement_with_human"] is None  # efficiency: nothing kept
    restored = LabelStats.from_dict(as_dict)
    assert restored.by_capability == stats.by_capability

    table = stats.to_markdown()
    assert "| code | correctness | 4 | 4 | 4 | 100.0 | 0 | 0.500 | 1.000 (4/4) |" in table
    assert "| code | efficiency | 4 | 4 | 0 | 0.0 | 4 | 0.000 | – | – |" in table
    assert "| **total** |  | 12 | 10 | 6 | 50.0 | 4 | 0.364 | 0.667 (4/6) |" in table
    assert "1 tie pairs skipped" in table


async def test_labels_roundtrip_jsonl(tmp_path):
    labels, _ = await label_pairs(
        [make_pair(i) for i in range(3)], CAPS, ScriptedJudge(mixed), progress=False
    )
    path = tmp_path / "labels.jsonl"
    save_labels(labels, path)
    assert load_labels(path) == labels
    assert len(path.read_text().splitlines()) == len(labels)
    path.write_text('{"pair_id": "x"}\n')
    with pytest.raises(ValueError, match="labels.jsonl:1"):
        load_labels(path)


async def test_concurrency_is_bounded_and_task_is_visible():
    active = peak = 0
    seen_tasks = set()

    class Slow(ScriptedJudge):
        async def compare(self, turns, response_a, response_b, capability):
            nonlocal active, peak
            seen_tasks.add(current_task())
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return await super().compare(turns, response_a, response_b, capability)

    pairs = [make_pair(i) for i in range(10)]
    labels, _ = await label_pairs(pairs, CAPS, Slow(prefers_chosen), concurrency=3, progress=False)
    assert len(labels) == 30
    assert peak == 3
    assert seen_tasks == {"code"}
    assert current_task() is None


async def test_a_failing_judge_raises_its_own_error():
    def boom(a, b, cap):
        raise RuntimeError("judge down")

    with pytest.raises(RuntimeError, match="judge down"):
        await label_pairs([make_pair(0)], CAPS, ScriptedJudge(boom), progress=False)
    with pytest.raises(ValueError, match="'C'"):
        await label_pairs([make_pair(0)], CAPS, ScriptedJudge(lambda a, b, c: "C"), progress=False)


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
