"""What `moerm demo` trains its experts on, and the contrast lines it prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from moerm.cli import DEMO_CONTRAST_PER_FAMILY, DEMO_PAIRS_PER_TASK, contrast_lines, demo_labels


@dataclass
class Scored:  # the fields of a moerm.client reward that contrast_lines reads
    id: str
    task: str
    reward: float
    capabilities: dict[str, float] = field(default_factory=dict)


def test_contrast_lines_subtract_the_worse_items_scores():
    rewards = [
        Scored("math-right", "exam", 0.5, {"accuracy_of_answer": 0.25, "depth": 0.0}),
        Scored("math-wrong", "exam", -0.25, {"accuracy_of_answer": -0.5, "depth": 0.125}),
        Scored("code-good", "code", 1.0, {"correctness": 1.0}),
        Scored("code-bad", "nlp_tasks", 0.0, {"accuracy": 0.0}),
    ]
    lines = contrast_lines(rewards)
    assert lines == [
        "math-right - math-wrong (exam): reward +0.7500  accuracy_of_answer=+0.750  depth=-0.125",
        "code-good vs code-bad: routed to different tasks (code, nlp_tasks)",
    ]  # harm-refuse / harm-comply were not scored: no line


def test_demo_labels_add_contrast_pairs_of_the_train_and_validation_splits_only(shared_dir, tmp_path):
    from moerm.data.splits import SplitManifest
    from moerm.train import inputs

    work = tmp_path / "work"
    prepared = inputs.shared(work, data_dir=str(shared_dir), max_pairs_per_task=DEMO_PAIRS_PER_TASK)
    demo_labels(prepared.inputs, work / "split.json")
    recipe_inputs = prepared.inputs
    assignment = SplitManifest.load(work / "split.json").assignment
    assert recipe_inputs.label_pairs and recipe_inputs.validation_label_pairs
    given = {p.id for p in recipe_inputs.train + recipe_inputs.validation}
    for pairs, split in (
        (recipe_inputs.label_pairs, "train"),
        (recipe_inputs.validation_label_pairs, "validation"),
    ):
        for pair in pairs:
            origin = pair.id.split(":", 3)[3]  # contrast:<family>:<side>:<pair id>
            assert origin in given and assignment[origin] == split
    contrast_ids = {p.id for p in recipe_inputs.label_pairs + recipe_inputs.validation_label_pairs}
    contrast_labels = [x for x in recipe_inputs.labels if x.judge.startswith("contrast:")]
    assert {x.pair_id for x in contrast_labels} <= contrast_ids
    per_family: dict[tuple[str, str], int] = {}
    for pair in recipe_inputs.label_pairs + recipe_inputs.validation_label_pairs:
        key = (pair.task, pair.id.split(":")[1])
        per_family[key] = per_family.get(key, 0) + 1
    assert max(per_family.values()) <= DEMO_CONTRAST_PER_FAMILY
    # The exam task's correctness experts get edited final answers to learn from.
    exam = {x.capability for x in contrast_labels if x.task == "exam"}
    assert {"accuracy_of_answer", "math_operation_correctness"} <= exam
