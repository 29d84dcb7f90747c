"""Recipe inputs from the shared preference data or from the project's
synthetic data, with the splits fixed in manifests inside the work directory
(so every step and the evaluation use the same split)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moerm.data.records import CapabilityLabel, ClassifierExample, PreferencePair
from moerm.data.splits import SplitManifest, load_shared
from moerm.data.synthetic import synthetic_capabilities, synthetic_classifier_examples, synthetic_pairs
from moerm.judges.base import load_labels
from moerm.judges.contrast import pairs_path, read_contrast_pairs, split_of
from moerm.train.settings import RecipeInputs

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    inputs: RecipeInputs
    test: list[PreferencePair]
    classifier_test: list[ClassifierExample]


def cap_per_task(pairs: list[PreferencePair], limit: int, seed: int) -> list[PreferencePair]:
    """At most ``limit`` pairs per task (a seeded sample), order kept."""
    if not limit:
        return pairs
    by_task: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_task.setdefault(pair.task, []).append(i)
    keep = set()
    for task, indices in sorted(by_task.items()):
        keep.update(random.Random(f"{seed}:{task}").sample(indices, min(limit, len(indices))))
    return [p for i, p in enumerate(pairs) if i in keep]


def cap_per_task_examples(
    examples: list[ClassifierExample], limit: int, seed: int = 0
) -> list[ClassifierExample]:
    """At most ``limit`` classifier examples per task (a seeded sample)."""
    by_task: dict[str, list[ClassifierExample]] = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)
    out = []
    for task, items in sorted(by_task.items()):
        out += random.Random(f"{seed}:{task}").sample(items, min(limit, len(items)))
    return out


@dataclass
class LabelFiles:
    """Capability labels from one or more files, and the pairs next to them
    that no split holds (``<labels>.pairs.jsonl``: contrast pairs), put in the
    split of the pairs they were made from."""

    labels: list[CapabilityLabel] = field(default_factory=list)
    train_pairs: list[PreferencePair] = field(default_factory=list)
    validation_pairs: list[PreferencePair] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # split -> contrast pairs ("mixed", "unknown")

    def describe(self) -> str:
        if not self.counts:
            return ""
        left_out = sum(n for split, n in self.counts.items() if split not in ("train", "validation"))
        return (
            f"; {self.counts['train']} train and {self.counts['validation']} validation contrast pairs "
            f"for phase 2" + (f" ({left_out} from other splits left out)" if left_out else "")
        )


def load_label_files(
    paths: Sequence[str | Path], assignment: dict[str, str], tasks: Collection[str]
) -> LabelFiles:
    """Read every labels file and the contrast pairs beside it (of ``tasks``
    only). A contrast pair goes to the split all its origin pairs are in
    (``assignment``: the split manifest's); made from test pairs, or from
    pairs of several splits or unknown ones, it is left out (and counted):
    phase 2 never trains on a test response."""

    result = LabelFiles()
    for path in paths:
        result.labels += load_labels(path)
        beside = pairs_path(path)
        if not beside.is_file():
            continue
        for item in read_contrast_pairs(beside):
            if item.pair.task not in tasks:
                continue
            split = split_of(item, assignment)
            result.counts[split] += 1
            if split == "train":
                result.train_pairs.append(item.pair)
            elif split == "validation":
                result.validation_pairs.append(item.pair)
    left_out = {split: n for split, n in result.counts.items() if split not in ("train", "validation")}
    if left_out:
        log.warning("contrast pairs left out of phase 2 (made from these splits' pairs): %s", left_out)
    return result


def shared(
    work: Path,
    *,
    data_dir: str | None = None,
    labels: str | Path | Sequence[str | Path] | None = None,
    seed: int = 0,
    max_pairs_per_task: int = 0,
    max_test_per_task: int = 0,
    tasks: tuple[str, ...] = (),
) -> Prepared:
    data = load_shared(data_dir)
    split_file, classifier_file = work / "split.json", work / "classifier_split.json"
    if split_file.is_file():
        split = SplitManifest.load(split_file)
        changed = split.check_sources(data.pair_sources())
        if changed:
            raise ValueError(f"{split_file}: data files changed since the split was made: {changed}")
    else:
        split = data.split(seed)
        work.mkdir(parents=True, exist_ok=True)
        split.save(split_file)
    if classifier_file.is_file():
        classifier_split = SplitManifest.load(classifier_file)
    else:
        classifier_split = data.classifier_split(seed)
        classifier_split.save(classifier_file)
    capabilities = {t: c for t, c in data.capabilities.items() if not tasks or t in tasks}
    keep = set(capabilities)
    with_task = [p for p in data.pairs if p.task in keep]
    no_task = [p for p in data.pairs if not p.task]
    train = cap_per_task(split.select(with_task, "train"), max_pairs_per_task, seed)
    validation = cap_per_task(split.select(with_task, "validation"), max_pairs_per_task // 4, seed)
    test = cap_per_task(split.select(with_task, "test"), max_test_per_task, seed)
    test += cap_per_task(split.select(no_task, "test"), max_test_per_task, seed)
    paths = [labels] if isinstance(labels, str | Path) else list(labels or ())
    label_files = load_label_files(paths, split.assignment, keep)
    description = (
        f"the shared preference data (hh-rlhf harmless, Auto-J pairwise, PandaLM for testing only); "
        f"split seed {seed}"
        + (f", at most {max_pairs_per_task} train pairs per task" if max_pairs_per_task else "")
        + label_files.describe()
    )
    return Prepared(
        inputs=RecipeInputs(
            train=train,
            validation=validation,
            classifier_train=[
                e for e in classifier_split.select(data.classifier_train, "train") if e.task in keep
            ],
            classifier_validation=[
                e for e in classifier_split.select(data.classifier_train, "validation") if e.task in keep
            ],
            capabilities=capabilities,
            labels=label_files.labels,
            description=description,
            label_pairs=label_files.train_pairs,
            validation_label_pairs=label_files.validation_pairs,
        ),
        test=test,
        classifier_test=[e for e in data.classifier_test if e.task in keep],
    )


def synthetic(*, per_task: int = 40, seed: int = 0) -> Prepared:
    pairs, labels = synthetic_pairs(per_task, seed)
    test, _ = synthetic_pairs(max(8, per_task // 4), seed + 1000)
    examples = synthetic_classifier_examples(max(10, per_task // 2), seed)
    return Prepared(
        inputs=RecipeInputs(
            train=[p for i, p in enumerate(pairs) if i % 5],
            validation=[p for i, p in enumerate(pairs) if i % 5 == 0],
            classifier_train=examples[::2],
            classifier_validation=examples[1::2],
            capabilities=synthetic_capabilities(),
            labels=labels,
            description=f"synthetic (moerm.data.synthetic, {per_task} pairs per task, seed {seed})",
        ),
        test=[p for p in test],
        classifier_test=synthetic_classifier_examples(10, seed + 1000),
    )
