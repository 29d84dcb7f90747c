"""``moerm data ...``: split manifests and statistics for the shared sets.

:func:`add_data_commands` adds the ``data`` command to the ``moerm`` parser's
subparsers; each command sets ``run`` (returns the exit code) like the rest
of :mod:`moerm.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from moerm.data.io import capabilities_to_json, write_pairs
from moerm.data.splits import SPLITS, SplitManifest, load_shared, pair_counts

NO_TASK = "(none)"  # how tables show task "" (PandaLM: the router decides)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """Plain-text table; the first ``left`` columns left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.7,0.1,0.2, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.7,0.1,0.2, got {text!r}")
    return values  # type: ignore[return-value]


def _load(args: argparse.Namespace):
    try:
        return load_shared(args.data_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def split_table(manifest) -> str:
    """Rows: task; columns: per split non-tie / tie counts (just the count
    for classifier manifests), and the totals."""

    counts = manifest.counts()
    pairs = manifest.kind == "pairs"
    tasks = sorted({task for per_task in counts.values() for task in per_task})
    header = ["task", *[f"{split} (non-tie/tie)" if pairs else split for split in SPLITS]]
    rows = []
    totals = {split: [0, 0] for split in SPLITS}
    for task in tasks:
        row: list[object] = [task or NO_TASK]
        for split in SPLITS:
            non_tie, tie = counts[split].get(task, (0, 0))
            totals[split][0] += non_tie
            totals[split][1] += tie
            row.append(f"{non_tie}/{tie}" if pairs else non_tie + tie)
        rows.append(row)
    rows.append(["total", *[f"{totals[s][0]}/{totals[s][1]}" if pairs else sum(totals[s]) for s in SPLITS]])
    return _table(header, rows)


def cmd_data_split(args: argparse.Namespace) -> int:
    shared = _load(args)
    if shared is None:
        return 2
    try:
        manifest = shared.split(args.seed, args.fractions)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    manifest.save(args.out)
    print(
        f"wrote {args.out}: {len(manifest.assignment)} pairs, seed {args.seed}, fractions {manifest.fractions}"
    )
    print(split_table(manifest))
    if args.classifier_out:
        classifier = shared.classifier_split(args.seed, args.validation_fraction)
        classifier.save(args.classifier_out)
        print(f"\nwrote {args.classifier_out}: {len(classifier.assignment)} classifier examples")
        print(split_table(classifier))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    shared = _load(args)
    if shared is None:
        return 2
    print(f"shared data: {shared.data_dir}\n")
    rows = [
        [source, task or NO_TASK, non_tie, tie, non_tie + tie]
        for (source, task), (non_tie, tie) in pair_counts(shared.pairs).items()
    ]
    non_tie = sum(r[2] for r in rows)
    tie = sum(r[3] for r in rows)
    rows.append(["total", "", non_tie, tie, non_tie + tie])
    print(_table(["source", "task", "non-tie", "tie", "pairs"], rows, left=2))
    skipped = {source: reasons for source, reasons in shared.skipped.items() if reasons}
    if skipped:
        print(f"skipped rows: {skipped}")

    train_counts: dict[str, int] = {}
    test_counts: dict[str, int] = {}
    for example in shared.classifier_train:
        train_counts[example.task] = train_counts.get(example.task, 0) + 1
    for example in shared.classifier_test:
        test_counts[example.task] = test_counts.get(example.task, 0) + 1
    tasks = sorted(set(train_counts) | set(test_counts))
    rows = [[task, train_counts.get(task, 0), test_counts.get(task, 0)] for task in tasks]
    rows.append(["total", len(shared.classifier_train), len(shared.classifier_test)])
    print("\nrouter classifier examples (Auto-J scenario classifier files)")
    print(_table(["task", "train pool", "test"], rows))
    for part, dropped in shared.classifier_dropped.items():
        if dropped:
            listed = ", ".join(f"{category} {n}" for category, n in dropped.items())
            print(f"dropped from {part} (no task): {listed}")

    print("\ncapabilities per task (Auto-J criteria)")
    for task, capabilities in shared.capabilities.items():
        print(f"  {task}: {', '.join(c.name for c in capabilities)}")
    return 0


def cmd_data_pairs(args: argparse.Namespace) -> int:
    splits = [name for name in args.splits.split(",") if name]
    unknown = [name for name in splits if name not in SPLITS]
    if unknown or not splits:
        print(f"error: --splits takes names among {', '.join(SPLITS)}, got {args.splits!r}", file=sys.stderr)
        return 2
    shared = _load(args)
    if shared is None:
        return 2
    try:
        manifest = SplitManifest.load(args.split_file) if args.split_file else shared.split(args.seed)
        pairs = [p for name in splits for p in manifest.select(shared.pairs, name)]
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_pairs(pairs, args.out)
    print(f"wrote {args.out}: {len(pairs)} pairs of {', '.join(splits)}")
    if args.capabilities_out:
        args.capabilities_out.write_text(
            json.dumps(capabilities_to_json(shared.capabilities), indent=1) + "\n"
        )
        print(f"wrote {args.capabilities_out}: capabilities of {len(shared.capabilities)} tasks")
    return 0


def add_data_commands(sub) -> None:
    """Add ``data split`` and ``data stats`` to ``sub`` (the ``moerm``
    parser's ``add_subparsers()``)."""
    data = sub.add_parser("data", help="the shared preference sets: split manifests and statistics")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_dir_help = "shared data folder (default: $MOERM_DATA_DIR, else <repo>/../shared/data)"

    split = data_sub.add_parser(
        "split", help="write the train/validation/test manifest of the shared pairs; print counts"
    )
    split.add_argument("--out", required=True, type=Path, help="manifest file to write (JSON)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument(
        "--fractions", type=_fractions, default=(0.7, 0.1, 0.2), help="train,validation,test (0.7,0.1,0.2)"
    )
    split.add_argument(
        "--classifier-out", type=Path, help="also write the router classifier's manifest (Auto-J queries)"
    )
    split.add_argument("--validation-fraction", type=float, default=0.1, help="of the classifier train pool")
    split.add_argument("--data-dir", type=Path, help=data_dir_help)
    split.set_defaults(run=cmd_data_split)

    pairs = data_sub.add_parser(
        "pairs", help="write the pairs of some splits as JSONL (the input of `moerm label`)"
    )
    pairs.add_argument("--out", required=True, type=Path, help="pairs JSONL to write")
    pairs.add_argument("--splits", default="train", help="comma-separated: train, validation, test")
    pairs.add_argument("--split-file", type=Path, help="split manifest (default: the split of --seed)")
    pairs.add_argument("--seed", type=int, default=0)
    pairs.add_argument("--capabilities-out", type=Path, help="also write the tasks' capabilities (JSON)")
    pairs.add_argument("--data-dir", type=Path, help=data_dir_help)
    pairs.set_defaults(run=cmd_data_pairs)

    stats = data_sub.add_parser("stats", help="pairs per source, task and tie; classifier examples per task")
    stats.add_argument("--data-dir", type=Path, help=data_dir_help)
    stats.set_defaults(run=cmd_data_stats)
