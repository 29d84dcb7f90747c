"""``moerm route-prior`` and ``moerm route-eval``: the routing tier on held-out labelled pairs.

Both score the pairs of a recipe run's split manifest that its reward models never trained on
with every in-bundle member of the pool (:mod:`moerm.evaluate.routing.pool_scores`, cached under
``--work``): the *validation* split trains the offline router that is Thompson's prior
(``WORK/prior.safetensors``, the file ``router_svc --thompson-prior`` reads); ``route-eval``
then measures every routing policy on the *test* split (:mod:`moerm.evaluate.routing.report`).

:func:`add_routing_commands` adds both to the ``moerm`` parser's subparsers; the scoring
and training modules (torch) are imported when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moerm.data.records import PreferencePair

PRIOR_FILE = "prior.safetensors"
NO_TASK = "(none)"


@dataclass
class LabelledSplits:
    """The held-out pairs (ties included, for counting) and where they came from."""

    validation: list[PreferencePair]
    test: list[PreferencePair]
    description: str


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("need at least one seed")
    return seeds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="a trained bundle")
    parser.add_argument(
        "--work",
        required=True,
        type=Path,
        help=f"work folder (created): cached pool scores (*.npz) and the prior ({PRIOR_FILE})",
    )
    parser.add_argument(
        "--data",
        choices=("shared", "synthetic"),
        default="shared",
        help="the shared preference data with the recipe run's split, or the synthetic data "
        "(its validation and test pairs, as `moerm train --data synthetic` makes them)",
    )
    parser.add_argument("--data-dir", help="shared data folder (default: $MOERM_DATA_DIR or ../shared/data)")
    parser.add_argument(
        "--split",
        type=Path,
        help="the recipe run's split manifest (default: WORK/split.json, else SINGLE_WORK/split.json)",
    )
    parser.add_argument(
        "--single-work",
        type=Path,
        help="recipe work directory whose one-model baseline joins the pool as arm `single`",
    )
    parser.add_argument(
        "--max-pairs-per-task",
        type=int,
        default=0,
        help="cap on pairs per task in each split, a seeded sample; pairs without a task count as "
        "one task (0: all)",
    )
    parser.add_argument(
        "--max-test-per-task",
        type=int,
        default=0,
        help="cap on test pairs per task, overriding --max-pairs-per-task for the test split (0: no override)",
    )
    parser.add_argument("--synthetic-per-task", type=int, default=40, help="synthetic pairs per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caps, the prior and the split")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per response with its context")
    parser.add_argument("--prior-epochs", type=int, default=300, help="offline router: full-batch epochs")
    parser.add_argument("--prior-lr", type=float, default=0.05, help="offline router: AdamW learning rate")
    parser.add_argument(
        "--prior-weight-decay", type=float, default=1e-3, help="offline router: AdamW weight decay"
    )


def add_routing_commands(sub) -> None:
    prior = sub.add_parser(
        "route-prior",
        help="train the Thompson prior (offline router) on the validation pairs scored by every "
        "reward model of the pool",
    )
    _common(prior)
    prior.set_defaults(run=cmd_route_prior)

    evaluate = sub.add_parser(
        "route-eval",
        help="routing policies on held-out pairs: offline accuracy, online regret, cost "
        "(also writes the prior)",
    )
    _common(evaluate)
    evaluate.add_argument(
        "--out", required=True, type=Path, help="report folder (routing.md, routing.json, regret.png)"
    )
    evaluate.add_argument(
        "--seeds", type=_seeds, default=(0, 1, 2), help="online simulation seeds, comma-separated"
    )
    evaluate.set_defaults(run=cmd_route_eval)


def split_file(args: argparse.Namespace) -> Path:
    """The split manifest: --split, else WORK/split.json, else SINGLE_WORK/split.json."""
    candidates = [args.split] if args.split else [args.work / "split.json"]
    if not args.split and args.single_work:
        candidates.append(args.single_work / "split.json")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no split manifest at {' or '.join(str(p) for p in candidates)}: pass --split with the "
        "recipe run's WORK/split.json (its train pairs must not be scored)"
    )


def load_splits(args: argparse.Namespace) -> LabelledSplits:
    """Validation and test pairs (capped per task when asked), ties included."""
    from moerm.train import inputs

    if args.data == "synthetic":
        prepared = inputs.synthetic(per_task=args.synthetic_per_task, seed=args.seed)
        validation, test = prepared.inputs.validation, prepared.test
        description = prepared.inputs.description
    else:
        from moerm.data.splits import SplitManifest, load_shared

        path = split_file(args)
        data = load_shared(args.data_dir)
        split = SplitManifest.load(path)
        changed = split.check_sources(data.pair_sources())
        if changed:
            raise ValueError(f"{path}: data files changed since the split was made: {changed}")
        validation, test = split.select(data.pairs, "validation"), split.select(data.pairs, "test")
        description = (
            "the shared preference data (hh-rlhf harmless, Auto-J pairwise, PandaLM): the validation "
            f"and test pairs of the recipe run's split manifest ({path.name}, seed {split.seed}); "
            "its train split is never scored"
        )
    validation_cap, test_cap = args.max_pairs_per_task, args.max_test_per_task or args.max_pairs_per_task
    if validation_cap:
        validation = inputs.cap_per_task(validation, validation_cap, args.seed)
        description += f"; at most {validation_cap} validation pairs per task (seeded sample)"
    if test_cap:
        test = inputs.cap_per_task(test, test_cap, args.seed)
        description += f"; at most {test_cap} test pairs per task (seeded sample)"
    return LabelledSplits(validation, test, description)


def score_split(args: argparse.Namespace, bundle, name: str, pairs: Sequence[PreferencePair], classifier):
    """Pool scores of one split, cached as WORK/<name>-scores.npz."""
    from moerm.evaluate.routing.pool_scores import load_or_score

    print(
        f"scoring {sum(not p.tie for p in pairs)} {name} pairs with every reward model ...", file=sys.stderr
    )
    return load_or_score(
        args.work / f"{name}-scores.npz",
        bundle,
        pairs,
        max_length=args.max_length,
        single_work=args.single_work,
        classifier=classifier,
    )


def train_prior(args: argparse.Namespace, validation):
    """The offline router on the validation scores, saved as WORK/prior.safetensors."""
    from moerm.evaluate.routing.prior import train_offline_router

    if not len(validation):
        raise ValueError("no non-tie validation pairs to train the offline router on")
    router = train_offline_router(
        validation.X,
        validation.correct,
        arms=validation.arms,
        epochs=args.prior_epochs,
        lr=args.prior_lr,
        weight_decay=args.prior_weight_decay,
        seed=args.seed,
    )
    router.save(args.work / PRIOR_FILE)
    return router


def _prepare(args: argparse.Namespace):
    from moerm.bundle import Bundle
    from moerm.models.classifier import TaskClassifier

    logging.getLogger("moerm.routing").setLevel(logging.INFO)  # scoring progress, per task
    bundle = Bundle.load(args.bundle)
    splits = load_splits(args)
    args.work.mkdir(parents=True, exist_ok=True)
    return bundle, splits, TaskClassifier(bundle)


def _prior_summary(router, validation) -> dict:
    loss = router.history.get("loss") or [float("nan")]
    return {
        "validation_pairs": len(validation),
        "arms": list(router.arms),
        "ranked_pairs": router.history.get("pairs", 0),
        "loss_first": loss[0],
        "loss_last": loss[-1],
    }


def cmd_route_prior(args: argparse.Namespace) -> int:
    try:
        bundle, splits, classifier = _prepare(args)
        validation = score_split(args, bundle, "validation", splits.validation, classifier)
        router = train_prior(args, validation)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = _prior_summary(router, validation)
    print(
        f"offline router over {len(router.arms)} arms trained on {summary['validation_pairs']} validation "
        f"pairs ({summary['ranked_pairs']} right/wrong arm pairs; loss {summary['loss_first']:.3f} -> "
        f"{summary['loss_last']:.3f}): {args.work / PRIOR_FILE}\n"
        f"use it with: python -m router_svc --bundle {args.bundle} --thompson-prior {args.work / PRIOR_FILE}"
    )
    return 0


def data_table(splits: LabelledSplits) -> list[str]:
    """Markdown: non-tie pairs (ties, not scored) per source and task, per split."""
    counts = {
        name: Counter((p.source, p.task or NO_TASK, p.tie) for p in pairs)
        for name, pairs in (("validation", splits.validation), ("test", splits.test))
    }
    keys = sorted({(source, task) for c in counts.values() for source, task, _ in c})
    lines = [
        "| source | task | validation: trains the prior | test: measured |",
        "|---|---|---:|---:|",
    ]
    for source, task in keys:
        cells = [f"{c[source, task, False]} ({c[source, task, True]})" for c in counts.values()]
        lines.append(f"| {source} | {task} | {' | '.join(cells)} |")
    totals = [
        f"{sum(not p.tie for p in s)} ({sum(p.tie for p in s)})" for s in (splits.validation, splits.test)
    ]
    lines.append(f"| all | | {' | '.join(totals)} |")
    return lines


def header(args: argparse.Namespace, bundle, splits: LabelledSplits, arms: Sequence[str]) -> str:
    command = "moerm " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))
    return "\n".join(
        [
            f"# Routing tier on held-out pairs: bundle {bundle.version} ({bundle.manifest.backbone.ref} backbone)",
            "",
            "Produced by:",
            "",
            "```",
            command,
            "```",
            "",
            "## Data",
            "",
            f"{splits.description}. Non-tie pairs scored (in parentheses: ties, not scored):",
            "",
            *data_table(splits),
            "",
            f"The pool: {len(arms)} arms, {', '.join(f'`{a}`' for a in arms)}. Every pair is scored by "
            "every arm, whatever its task (a `dmoerm:` arm by its experts and aggregator, a `base:` arm "
            "by its task base model"
            + (", `single` by the recipe's one-model baseline" if "single" in arms else "")
            + "). The offline router (Thompson's prior, `prior.safetensors` in the work folder, "
            "the file `router_svc --thompson-prior` reads) is trained on the validation pairs only.",
        ]
    )


def cmd_route_eval(args: argparse.Namespace) -> int:
    from moerm.evaluate.routing.report import evaluate_routing, write_report

    try:
        bundle, splits, classifier = _prepare(args)
        validation = score_split(args, bundle, "validation", splits.validation, classifier)
        router = train_prior(args, validation)
        test = score_split(args, bundle, "test", splits.test, classifier)
        print("routing policies: offline accuracy and online simulation ...", file=sys.stderr)
        evaluation = evaluate_routing(test, router, seeds=args.seeds, split_seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    extra = {
        "command": "moerm " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
        "bundle_version": bundle.version,
        "data": splits.description,
        "pairs": {"validation": len(validation), "test": len(test)},
        "ties": {
            "validation": sum(p.tie for p in splits.validation),
            "test": sum(p.tie for p in splits.test),
        },
        "prior": {"file": str(args.work / PRIOR_FILE), **_prior_summary(router, validation)},
        "validation_scoring_seconds": validation.seconds,
    }
    path = write_report(evaluation, args.out, header=header(args, bundle, splits, test.arms), extra=extra)
    print(path.read_text())
    return 0
