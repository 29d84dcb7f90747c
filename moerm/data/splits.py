"""Deterministic train / validation / test splits, and the shared sets in one
object.

A split depends only on the seed, the fractions and the set of record ids
(and their task, tie flag and conversation), never on input order: records
are ordered by sha256 of (seed, key). It is stratified by (task, tie): each
record group goes to the split that most lacks records of its strata, so
every stratum is split in the given fractions (to within a record), and every
task with at least three groups appears in every split with a non-zero
fraction. By default all pairs with the same conversation form one group and
land in the same split, so no prompt of the test split was seen in training
(PandaLM asks each of its 170 instructions up to 10 times).

The manifest records which data files it was made from (sha256), so a
changed file is noticed (:meth:`SplitManifest.check_sources`). No torch here.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from moerm.bundle import Capability
from moerm.data import loaders
from moerm.data.records import ClassifierExample, PreferencePair
from moerm.data.tasks import Criterion, load_criteria, scenario_to_task, task_capabilities
from moerm.text import render_conversation

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
GROUP_BY = ("conversation", "id")

Record = TypeVar("Record", PreferencePair, ClassifierExample)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SplitManifest:
    """Which split each record id belongs to.

    ``strata`` keeps each id's (task, tie) so :meth:`counts` needs no data;
    ``kind`` is "pairs" or "classifier"; ``group_by`` says what was kept
    together ("conversation": pairs with one conversation / examples with one
    text; "id": nothing)."""

    seed: int
    fractions: tuple[float, float, float]
    assignment: dict[str, str]
    strata: dict[str, tuple[str, bool]]
    sources: dict[str, str] = field(default_factory=dict)
    kind: str = "pairs"
    group_by: str = "conversation"
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "group_by": self.group_by,
            "sources": dict(self.sources),
            "assignment": dict(self.assignment),
            "strata": {key: [task, tie] for key, (task, tie) in self.strata.items()},
        }

    def to_bytes(self) -> bytes:
        """Deterministic: sorted keys, fixed separators, a final newline."""
        text = json.dumps(self.to_json(), sort_keys=True, indent=1, ensure_ascii=False)
        return (text + "\n").encode("utf-8")

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def from_json(cls, data: Mapping) -> SplitManifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"split manifest format_version {version!r}, expected {FORMAT_VERSION}")
        assignment = {str(k): str(v) for k, v in data["assignment"].items()}
        bad = sorted({v for v in assignment.values() if v not in SPLITS})
        if bad:
            raise ValueError(f"split manifest: unknown split names {bad}")
        strata = {str(k): (str(task), bool(tie)) for k, (task, tie) in data["strata"].items()}
        if set(strata) != set(assignment):
            raise ValueError("split manifest: 'strata' and 'assignment' list different ids")
        fractions = tuple(float(f) for f in data["fractions"])
        if len(fractions) != len(SPLITS):
            raise ValueError("split manifest: 'fractions' needs one value per split")
        return cls(
            seed=int(data["seed"]),
            fractions=fractions,  # type: ignore[arg-type]
            assignment=assignment,
            strata=strata,
            sources={str(k): str(v) for k, v in data.get("sources", {}).items()},
            kind=str(data.get("kind", "pairs")),
            group_by=str(data.get("group_by", "conversation")),
            format_version=version,
        )

    @classmethod
    def load(cls, path: str | Path) -> SplitManifest:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a split manifest: {error}") from None

    def select(self, records: Iterable[Record], split: str) -> list[Record]:
        """The records (pairs or classifier examples) of ``split``, in input
        order. Raises ValueError for records the manifest does not know (a
        manifest made from other data)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        records = list(records)
        unknown = [r.id for r in records if r.id not in self.assignment]
        if unknown:
            raise ValueError(
                f"{len(unknown)} records are not in the split manifest (e.g. {unknown[0]!r}): "
                "it was made from other data"
            )
        return [r for r in records if self.assignment[r.id] == split]

    def counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """split -> task -> (non-tie, tie) record counts; tasks sorted."""
        counter: Counter[tuple[str, str, bool]] = Counter(
            (split, *self.strata[key]) for key, split in self.assignment.items()
        )
        tasks = sorted({task for task, _ in self.strata.values()})
        return {
            split: {
                task: (counter[split, task, False], counter[split, task, True])
                for task in tasks
                if counter[split, task, False] or counter[split, task, True]
            }
            for split in SPLITS
        }

    def check_sources(self, sources: Mapping[str, str]) -> list[str]:
        """Names of the sources whose current sha256 differs from (or is
        missing in) the manifest's; empty when the data is unchanged."""
        return sorted(name for name, digest in sources.items() if self.sources.get(name) != digest)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != len(SPLITS) or any(f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}"
        )
    if values[0] == 0:
        raise ValueError("the train fraction must be positive")
    return values  # type: ignore[return-value]


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def _assign(
    items: Sequence[tuple[str, tuple[str, bool], str]],
    seed: int,
    fractions: tuple[float, float, float],
) -> dict[str, str]:
    """items: (id, stratum, group key) -> id -> split name."""
    groups: dict[str, list[tuple[str, tuple[str, bool]]]] = defaultdict(list)
    for key, stratum, group in items:
        groups[group].append((key, stratum))
    active = [s for s, f in enumerate(fractions) if f > 0]
    totals = Counter(stratum for _, stratum, _ in items)
    target = {(s, k): fractions[s] * n for k, n in totals.items() for s in active}
    have: Counter[tuple[int, tuple[str, bool]]] = Counter()
    where: dict[str, int] = {}
    order = sorted(groups, key=lambda g: (_order(seed, g), g))
    for group in order:
        need = Counter(stratum for _, stratum in groups[group])
        # The split that most lacks these strata (absolute shortfall); ties: the earlier split.
        best = max(
            active,
            key=lambda s: (sum(n * (target[s, k] - have[s, k]) for k, n in need.items()), -s),
        )
        where[group] = best
        for k, n in need.items():
            have[best, k] += n

    # Every task in every active split where it has enough groups: move the
    # smallest group of the task from the split with the largest surplus.
    rank = {g: i for i, g in enumerate(order)}
    tasks_of = {g: Counter(stratum[0] for _, stratum in groups[g]) for g in groups}
    for task in sorted({stratum[0] for stratum in totals}):
        task_groups = [g for g in order if task in tasks_of[g]]
        if len(task_groups) < len(active):
            continue
        task_total = sum(tasks_of[g][task] for g in task_groups)
        for s in active:
            per_split = {t: [g for g in task_groups if where[g] == t] for t in active}
            if per_split[s]:
                continue
            donors = [t for t in active if len(per_split[t]) >= 2]
            donor = max(
                donors,
                key=lambda t: (sum(tasks_of[g][task] for g in per_split[t]) - fractions[t] * task_total, -t),
            )
            moved = min(per_split[donor], key=lambda g: (tasks_of[g][task], len(groups[g]), rank[g]))
            where[moved] = s
    return {key: SPLITS[where[group]] for group in groups for key, _ in groups[group]}


def _check_unique(records: Iterable) -> None:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise ValueError(f"duplicate record id {record.id!r}")
        seen.add(record.id)


def _group_key(text: str) -> str:
    return "c:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_pairs(
    pairs: Iterable[PreferencePair],
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    sources: Mapping[str, str] | None = None,
    group_by: str = "conversation",
) -> SplitManifest:
    """Split preference pairs into train / validation / test, stratified by
    (task, tie); see the module docstring. ``sources``: data file name ->
    sha256, recorded in the manifest. ``group_by="id"`` splits pair by pair
    (pairs sharing a conversation may then land in different splits)."""
    fractions = _check_fractions(fractions)
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    pairs = list(pairs)
    _check_unique(pairs)
    items = [
        (
            p.id,
            (p.task, p.tie),
            _group_key(render_conversation(p.turns)) if group_by == "conversation" else p.id,
        )
        for p in pairs
    ]
    return SplitManifest(
        seed=seed,
        fractions=fractions,
        assignment=_assign(items, seed, fractions),
        strata={p.id: (p.task, p.tie) for p in pairs},
        sources=dict(sources or {}),
        kind="pairs",
        group_by=group_by,
    )


def split_examples(
    pool: Iterable[ClassifierExample],
    test: Iterable[ClassifierExample] = (),
    seed: int = 0,
    validation_fraction: float = 0.1,
    *,
    sources: Mapping[str, str] | None = None,
    group_by: str = "conversation",
) -> SplitManifest:
    """The router classifier's split: ``pool`` (Auto-J's classifier train
    file) into train / validation stratified by task, examples with the same
    text kept together; every example of ``test`` (the held-out file) is
    "test"."""
    if not 0 <= validation_fraction < 1:
        raise ValueError("validation_fraction must be in [0, 1)")
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    pool, test = list(pool), list(test)
    _check_unique([*pool, *test])
    fractions = (1.0 - validation_fraction, validation_fraction, 0.0)
    items = [
        (e.id, (e.task, False), _group_key(e.text) if group_by == "conversation" else e.id) for e in pool
    ]
    assignment = _assign(items, seed, fractions)
    assignment.update({e.id: "test" for e in test})
    return SplitManifest(
        seed=seed,
        fractions=fractions,
        assignment=assignment,
        strata={e.id: (e.task, False) for e in [*pool, *test]},
        sources=dict(sources or {}),
        kind="classifier",
        group_by=group_by,
    )


def pair_counts(pairs: Iterable[PreferencePair]) -> dict[tuple[str, str], tuple[int, int]]:
    """(source, task) -> (non-tie, tie), sorted."""
    counter = Counter((p.source, p.task, p.tie) for p in pairs)
    keys = sorted({(source, task) for source, task, _ in counter})
    return {(s, t): (counter[s, t, False], counter[s, t, True]) for s, t in keys}


# ---------------------------------------------------------------------------
# The shared sets


PAIR_SOURCES = {
    "hh-rlhf": loaders.HH_RLHF_FILE,
    "autoj": loaders.AUTOJ_PAIRWISE_FILE,
    "pandalm": loaders.PANDALM_FILE,
}
CLASSIFIER_SOURCES = {
    "autoj-classifier-train": loaders.AUTOJ_CLASSIFIER_TRAIN_FILE,
    "autoj-classifier-test": loaders.AUTOJ_CLASSIFIER_TEST_FILE,
}


@dataclass
class SharedData:
    """Everything in the shared data folder, loaded (nothing is cached on disk)."""

    data_dir: Path
    pairs: list[PreferencePair]  # hh-rlhf, then Auto-J, then PandaLM
    classifier_train: list[ClassifierExample]  # train + validation pool
    classifier_test: list[ClassifierExample]  # held out
    classifier_dropped: dict[str, dict[str, int]]  # "train"/"test" -> category -> dropped
    skipped: dict[str, dict[str, int]]  # source -> reason -> rows skipped
    scenario_to_task: dict[str, str]
    criteria: dict[str, list[Criterion]]
    capabilities: dict[str, tuple[Capability, ...]]
    sources: dict[str, str]  # source -> sha256 of its file (pairs and classifier files)

    def pair_sources(self) -> dict[str, str]:
        return {name: self.sources[name] for name in PAIR_SOURCES}

    def classifier_sources(self) -> dict[str, str]:
        return {name: self.sources[name] for name in CLASSIFIER_SOURCES}

    def split(self, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> SplitManifest:
        return split_pairs(self.pairs, seed, fractions, sources=self.pair_sources())

    def classifier_split(self, seed: int = 0, validation_fraction: float = 0.1) -> SplitManifest:
        return split_examples(
            self.classifier_train,
            self.classifier_test,
            seed,
            validation_fraction,
            sources=self.classifier_sources(),
        )


def load_shared(data_dir: str | Path | None = None, k: int = 5) -> SharedData:
    """Load the shared sets from ``data_dir`` (default: :func:`loaders.shared_data_dir`).
    Raises FileNotFoundError naming the missing files."""
    path = Path(data_dir) if data_dir is not None else loaders.shared_data_dir()
    missing = loaders.missing_shared_files(path)
    if path is None or missing:
        where = path if path is not None else "$MOERM_DATA_DIR or <repo>/../shared/data"
        raise FileNotFoundError(f"shared data not found in {where}: missing {', '.join(missing)}")
    mapping = scenario_to_task(path / loaders.AUTOJ_GROUPS_FILE)
    hh = loaders.load_hh_rlhf(path / loaders.HH_RLHF_FILE)
    autoj = loaders.load_autoj_pairwise(path / loaders.AUTOJ_PAIRWISE_FILE, mapping)
    pandalm = loaders.load_pandalm(path / loaders.PANDALM_FILE)
    train, dropped_train = loaders.load_autoj_classifier(
        path / loaders.AUTOJ_CLASSIFIER_TRAIN_FILE, mapping, "autoj-classifier-train"
    )
    test, dropped_test = loaders.load_autoj_classifier(
        path / loaders.AUTOJ_CLASSIFIER_TEST_FILE, mapping, "autoj-classifier-test"
    )
    criteria = load_criteria(path / loaders.AUTOJ_CRITERIA_DIR)
    files = {**PAIR_SOURCES, **CLASSIFIER_SOURCES}
    return SharedData(
        data_dir=path,
        pairs=[*hh, *autoj, *pandalm],
        classifier_train=train,
        classifier_test=test,
        classifier_dropped={"train": dropped_train, "test": dropped_test},
        skipped={"hh-rlhf": hh.skipped, "autoj": autoj.skipped, "pandalm": pandalm.skipped},
        scenario_to_task=mapping,
        criteria=criteria,
        capabilities=task_capabilities(criteria, mapping, k=k),
        sources={name: sha256_file(path / rel) for name, rel in files.items()},
    )
