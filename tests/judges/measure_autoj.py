"""Measure the local SmolLM2 judge on a small real Auto-J sample (the table in
docs/judges.md), through the ``label`` command end to end.

    .venv/bin/python -m tests.judges.measure_autoj --pairs 40 --out /tmp/autoj-judge

Auto-J pairs: label 0 = "response 1" better, 1 = "response 2" better, 2 = tie;
the scenario's group (scenario_groups.json) is the task. The sample is
``--pairs`` non-tie pairs drawn with a fixed seed; each task gets the first
``--caps`` capabilities of :data:`AUTOJ_CAPABILITIES`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from moerm.bundle import Capability
from moerm.data.io import capabilities_to_json, write_pairs
from moerm.data.records import PreferencePair
from moerm.text import Turn, normalize

# Capabilities per Auto-J task group, most important first (after Auto-J's
# basic criteria and the demo bundle's tasks).
AUTOJ_CAPABILITIES: dict[str, tuple[Capability, ...]] = {
    "summarization": (
        Capability("faithfulness", "states only what the source text says, without errors"),
        Capability("coverage", "keeps the main points of the source"),
        Capability("conciseness", "short and free of repetition"),
    ),
    "exam": (
        Capability("correctness", "the final answer is right"),
        Capability("reasoning", "the steps are valid and complete"),
        Capability("clarity", "the solution is easy to follow"),
    ),
    "code": (
        Capability("correctness", "the code does what was asked and runs"),
        Capability("readability", "clear names, structure and comments"),
        Capability("explanation", "explains what the code does and why"),
    ),
    "rewriting": (
        Capability("instruction_following", "does exactly the requested rewrite"),
        Capability("meaning_preservation", "keeps the meaning of the original text"),
        Capability("fluency", "grammatical and natural"),
    ),
    "creative_writing": (
        Capability("relevance", "follows the instruction and its constraints"),
        Capability("creativity", "original and engaging"),
        Capability("fluency", "grammatical and natural"),
    ),
    "functional_writing": (
        Capability("relevance", "follows the instruction and its constraints"),
        Capability("completeness", "covers everything the document needs"),
        Capability("format", "the structure and tone the document type calls for"),
    ),
    "communication": (
        Capability("helpfulness", "addresses the user's actual need"),
        Capability("accuracy", "the information is correct"),
        Capability("clarity", "easy to understand and well organized"),
    ),
    "nlp_tasks": (
        Capability("accuracy", "the output is correct for the task"),
        Capability("instruction_following", "follows the task's format and constraints"),
        Capability("clarity", "easy to understand"),
    ),
}


def shared_data_dir() -> Path | None:
    """$MOERM_DATA_DIR, else <repo>/../shared/data; None when absent."""
    env = os.environ.get("MOERM_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return path if path.is_dir() else None


def autoj_file(data_dir: Path | None = None) -> Path | None:
    data_dir = data_dir or shared_data_dir()
    if data_dir is None:
        return None
    path = data_dir / "auto-j" / "testdata_pairwise.jsonl"
    return path if path.is_file() else None


def load_autoj_pairs(path: Path) -> list[PreferencePair]:
    groups = json.loads((path.parent / "scenario_groups.json").read_text())
    task_of = {scenario: group for group, scenarios in groups.items() for scenario in scenarios}
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            row = json.loads(line)
            first, second = row["response 1"], row["response 2"]
            chosen, rejected = (second, first) if row["label"] == 1 else (first, second)
            pairs.append(
                PreferencePair(
                    id=f"autoj:{index}",
                    source="autoj",
                    task=task_of.get(row["scenario"], ""),
                    turns=(Turn("user", normalize(row["prompt"])),),
                    chosen=chosen,
                    rejected=rejected,
                    tie=row["label"] == 2,
                    scenario=row["scenario"],
                )
            )
    return pairs


def sample_pairs(pairs: list[PreferencePair], n: int, seed: int = 0) -> list[PreferencePair]:
    """``n`` non-tie pairs with a task, drawn with a fixed seed, in file order."""
    candidates = [p for p in pairs if not p.tie and p.task in AUTOJ_CAPABILITIES]
    chosen = random.Random(seed).sample(range(len(candidates)), min(n, len(candidates)))
    return [candidates[i] for i in sorted(chosen)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--caps", type=int, default=3, help="first N capabilities of each task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for pairs, capabilities, labels and stats")
    parser.add_argument("--judge", default="local", choices=("local", "rules"))
    parser.add_argument("extra", nargs="*", help="more `label` flags after --, e.g. -- --no-logprobs")
    args = parser.parse_args(argv)
    path = autoj_file()
    if path is None:
        print(
            "Auto-J data not found: set $MOERM_DATA_DIR or put it in <repo>/../shared/data", file=sys.stderr
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sample = sample_pairs(load_autoj_pairs(path), args.pairs, args.seed)
    write_pairs(sample, out / "pairs.jsonl")
    caps = {task: caps[: args.caps] for task, caps in AUTOJ_CAPABILITIES.items()}
    (out / "capabilities.json").write_text(json.dumps(capabilities_to_json(caps), indent=2))
    from moerm.judges.cli import main as judges_main

    started = time.monotonic()
    code = judges_main(
        [
            "label",
            "--pairs",
            str(out / "pairs.jsonl"),
            "--capabilities",
            str(out / "capabilities.json"),
            "--out",
            str(out / "labels.jsonl"),
            "--judge",
            args.judge,
            *args.extra,
        ]
    )
    print(f"{len(sample)} pairs, wall time {time.monotonic() - started:.0f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
