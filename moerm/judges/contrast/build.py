"""Capability-contrast pairs: new preference pairs whose chosen response is a
real response and whose rejected response is that response after one edit
(:mod:`moerm.judges.contrast.families`), with capability labels that are
right by construction (chosen better, in the capabilities the edit degrades).

A contrast pair records the ids of the pairs whose text it holds
(``origins``: its own pair first, then any donor), so that the recipe can put
it in the split of its origins and never train on test responses.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moerm.bundle import Capability
from moerm.data.io import pair_from_json, pair_to_json
from moerm.data.records import CapabilityLabel, PreferencePair
from moerm.data.splits import SplitManifest, load_shared
from moerm.judges.contrast.families import FAMILIES, EditFamily, capability_map, unreached
from moerm.judges.contrast.pool import SIDES, ResponsePool, Source

JUDGE = "contrast"


@dataclass(frozen=True)
class ContrastPair:
    """``pair.chosen``: the original response; ``pair.rejected``: the edited
    one; same conversation, task and scenario as the pair it came from."""

    pair: PreferencePair
    family: str
    capabilities: tuple[str, ...]  # the task's capabilities the edit degrades
    origins: tuple[str, ...]  # ids of the pairs whose text it holds, its own first

    def labels(self) -> list[CapabilityLabel]:
        return [
            CapabilityLabel(self.pair.id, self.pair.task, capability, True, f"{JUDGE}:{self.family}")
            for capability in self.capabilities
        ]


def contrast_id(family: str, side: str, pair_id: str) -> str:
    return f"{JUDGE}:{family}:{side}:{pair_id}"


@dataclass
class ContrastStats:
    """What the edit families made, per (task, family) and (task, capability)."""

    seed: int = 0
    tried: Counter[tuple[str, str]] = field(default_factory=Counter)  # responses a family was tried on
    made: Counter[tuple[str, str]] = field(default_factory=Counter)  # contrast pairs it made
    kept: Counter[tuple[str, str]] = field(default_factory=Counter)  # after --max-per-family
    by_capability: Counter[tuple[str, str]] = field(default_factory=Counter)  # labels
    unreached: dict[str, tuple[str, ...]] = field(default_factory=dict)  # task -> capabilities
    pairs_without_capabilities: int = 0
    responses: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": JUDGE,
            "seed": self.seed,
            "responses": self.responses,
            "pairs_without_capabilities": self.pairs_without_capabilities,
            "contrast_pairs": sum(self.kept.values()),
            "labels": sum(self.by_capability.values()),
            "by_family": [
                {"task": t, "family": f, "tried": n, "made": self.made[t, f], "kept": self.kept[t, f]}
                for (t, f), n in sorted(self.tried.items())
            ],
            "by_capability": [
                {"task": t, "capability": c, "labels": n} for (t, c), n in sorted(self.by_capability.items())
            ],
            "unreached": {task: list(caps) for task, caps in sorted(self.unreached.items()) if caps},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            "| task | edit family | responses tried | contrast pairs | applied % | kept |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for (task, name), tried in sorted(self.tried.items()):
            made = self.made[task, name]
            share = f"{100 * made / tried:.1f}" if tried else "–"
            lines.append(f"| {task} | {name} | {tried} | {made} | {share} | {self.kept[task, name]} |")
        lines += ["", "| task | capability | contrast labels |", "|---|---|---:|"]
        for (task, capability), n in sorted(self.by_capability.items()):
            lines.append(f"| {task} | {capability} | {n} |")
        for task, caps in sorted(self.unreached.items()):
            if caps:
                lines.append(f"| {task} | {', '.join(caps)} | none: no edit family (judges only) |")
        lines += [
            "",
            f"judge `{JUDGE}`, seed {self.seed}: {self.responses} responses, {sum(self.kept.values())} "
            f"contrast pairs, {sum(self.by_capability.values())} labels; "
            f"{self.pairs_without_capabilities} pairs without capabilities for their task",
        ]
        return "\n".join(lines) + "\n"


def _cap(items: list[ContrastPair], limit: int, seed: int, key: str) -> list[ContrastPair]:
    if not limit or len(items) <= limit:
        return items
    keep = set(random.Random(f"{seed}:{key}").sample(range(len(items)), limit))
    return [item for i, item in enumerate(items) if i in keep]


def build_contrast_pairs(
    pairs: Iterable[PreferencePair],
    capabilities_by_task: Mapping[str, Sequence[Capability]],
    *,
    seed: int = 0,
    families: Sequence[EditFamily] = FAMILIES,
    groups: Mapping[str, str] | None = None,
    max_per_family: int = 0,
) -> tuple[list[ContrastPair], ContrastStats]:
    """Contrast pairs from every response (both sides, ties included) of the
    pairs whose task has capabilities: for each family that labels one of the
    task's capabilities, one edit, seeded by (``seed``, family, pair id,
    side), so the same inputs give the same pairs. A response repeated within
    a conversation is edited once.

    ``groups`` (pair id -> group, e.g. a split manifest's ``assignment``):
    donor text (other prompts, swapped entities) comes only from pairs of the
    same group, so that each contrast pair lies in one split. Without it the
    pairs given are one group. ``max_per_family``: at most that many contrast
    pairs per (task, family), a seeded sample (0: all)."""
    pairs = list(pairs)
    stats = ContrastStats(seed=seed, unreached=unreached(capabilities_by_task))
    usable = []
    for pair in pairs:
        if capabilities_by_task.get(pair.task):
            usable.append(pair)
        else:
            stats.pairs_without_capabilities += 1
    by_group: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in usable:
        by_group[groups.get(pair.id, "") if groups is not None else ""].append(pair)
    pools = {group: ResponsePool(members) for group, members in by_group.items()}
    mapping = capability_map(capabilities_by_task, families)

    made: dict[tuple[str, str], list[ContrastPair]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for pair in usable:
        pool = pools[groups.get(pair.id, "") if groups is not None else ""]
        for side in SIDES:
            source = Source(pair, side)
            if not source.response.strip() or (source.conversation, source.response) in seen:
                continue
            seen.add((source.conversation, source.response))
            stats.responses += 1
            for family in families:
                capabilities = mapping[pair.task].get(family.name)
                if not capabilities:
                    continue
                stats.tried[pair.task, family.name] += 1
                rng = random.Random(f"{seed}:{family.name}:{pair.id}:{side}")
                edited = family.edit(source, rng, pool)
                if (
                    edited is None
                    or not edited.text.strip()
                    or edited.text.strip() == source.response.strip()
                ):
                    continue
                contrast = PreferencePair(
                    id=contrast_id(family.name, side, pair.id),
                    source=JUDGE,
                    task=pair.task,
                    turns=pair.turns,
                    chosen=source.response,
                    rejected=edited.text,
                    scenario=pair.scenario,
                )
                origins = (pair.id, *dict.fromkeys(d for d in edited.donors if d != pair.id))
                made[pair.task, family.name].append(
                    ContrastPair(contrast, family.name, capabilities, origins)
                )
    result: list[ContrastPair] = []
    for key, items in sorted(made.items()):
        stats.made[key] = len(items)
        kept = _cap(items, max_per_family, seed, f"{key[0]}:{key[1]}")
        stats.kept[key] = len(kept)
        result.extend(kept)
        for item in kept:
            for capability in item.capabilities:
                stats.by_capability[item.pair.task, capability] += 1
    return result, stats


def contrast_labels(contrast: Iterable[ContrastPair]) -> list[CapabilityLabel]:
    return [label for item in contrast for label in item.labels()]


def by_capability(contrast: Iterable[ContrastPair]) -> dict[tuple[str, str], list[ContrastPair]]:
    """(task, capability) -> the contrast pairs labelled for it."""
    out: dict[tuple[str, str], list[ContrastPair]] = defaultdict(list)
    for item in contrast:
        for capability in item.capabilities:
            out[item.pair.task, capability].append(item)
    return dict(out)


# --- splits ---------------------------------------------------------------------------------------


def split_of(item: ContrastPair, assignment: Mapping[str, str]) -> str:
    """The split all of a contrast pair's origins belong to; "unknown" when
    one is not in ``assignment``, "mixed" when they are in different splits."""
    splits = {assignment.get(origin) for origin in item.origins}
    if None in splits:
        return "unknown"
    return splits.pop() if len(splits) == 1 else "mixed"  # type: ignore[return-value]


def split_contrast_pairs(
    pairs: Iterable[PreferencePair],
    assignment: Mapping[str, str],
    split: str,
    capabilities_by_task: Mapping[str, Sequence[Capability]],
    *,
    seed: int = 0,
    max_per_family: int = 0,
) -> tuple[list[ContrastPair], ContrastStats]:
    """Contrast pairs made from the responses of one split only (``pairs``:
    all pairs, ``assignment``: a split manifest's id -> split). For the test
    split these are the held-out contrast pairs: no test response is in any
    other split's contrast pairs, and no other split's text is in these."""
    members = [p for p in pairs if assignment.get(p.id) == split]
    return build_contrast_pairs(
        members, capabilities_by_task, seed=seed, max_per_family=max_per_family, groups=None
    )


def heldout_contrast_pairs(
    data_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    *,
    seed: int = 0,
    split_seed: int = 0,
    max_per_family: int = 0,
) -> dict[tuple[str, str], list[ContrastPair]]:
    """(task, capability) -> held-out contrast pairs, made from the test
    split's responses of the shared data (``split_file``: a recipe's
    ``split.json``; default: the split of ``split_seed``)."""

    data = load_shared(data_dir)
    manifest = SplitManifest.load(split_file) if split_file else data.split(split_seed)
    contrast, _ = split_contrast_pairs(
        data.pairs, manifest.assignment, "test", data.capabilities, seed=seed, max_per_family=max_per_family
    )
    return by_capability(contrast)


# --- files ----------------------------------------------------------------------------------------


def contrast_to_json(item: ContrastPair) -> dict[str, Any]:
    return {
        **pair_to_json(item.pair),
        "family": item.family,
        "capabilities": list(item.capabilities),
        "origins": list(item.origins),
    }


def contrast_from_json(raw: Mapping[str, Any]) -> ContrastPair:
    origins = raw.get("origins")
    if not isinstance(origins, list) or not origins or not all(isinstance(o, str) for o in origins):
        raise ValueError("a contrast pair needs origins: the ids of the pairs it was made from")
    capabilities = raw.get("capabilities", [])
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ValueError("capabilities must be a list of names")
    return ContrastPair(pair_from_json(raw), str(raw.get("family", "")), tuple(capabilities), tuple(origins))


def write_contrast_pairs(contrast: Iterable[ContrastPair], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in contrast:
            handle.write(json.dumps(contrast_to_json(item), ensure_ascii=False) + "\n")


def read_contrast_pairs(path: str | Path) -> list[ContrastPair]:
    out = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                out.append(contrast_from_json(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a contrast pair ({error})") from None
    return out


def pairs_path(labels_path: str | Path) -> Path:
    """Where the pairs that a labels file references but no split holds are
    kept: ``labels.jsonl`` -> ``labels.pairs.jsonl``."""
    labels_path = Path(labels_path)
    name = labels_path.name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return labels_path.with_name(stem + ".pairs.jsonl")
