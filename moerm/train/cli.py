"""``moerm train STEP`` (router, phase1, phase2, phase3, baseline, assemble, all).

The recipe (torch) is imported when a command runs, not when the parser is built."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moerm.train.settings import STEPS


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", required=True, type=Path, help="work directory (created; steps share it)")
    parser.add_argument(
        "--data",
        choices=("shared", "synthetic"),
        default="shared",
        help="the shared preference data (../shared/data) or the project's synthetic data",
    )
    parser.add_argument("--data-dir", help="shared data folder (default: $MOERM_DATA_DIR or ../shared/data)")
    parser.add_argument(
        "--labels",
        nargs="+",
        action="extend",
        help="capability labels (JSONL from `moerm label`; several files are merged, and contrast pairs "
        "beside a file, <labels>.pairs.jsonl, are read with it); none: experts = base",
    )
    parser.add_argument("--tasks", default="", help="comma-separated subset of tasks (default: all)")
    parser.add_argument(
        "--max-pairs-per-task", type=int, default=0, help="cap on train pairs per task (0: all)"
    )
    parser.add_argument(
        "--max-test-per-task", type=int, default=0, help="cap on test pairs per task (0: all)"
    )
    parser.add_argument("--synthetic-per-task", type=int, default=40, help="synthetic pairs per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="minilm", help="minilm, smollm2 or a local model directory")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of phases 1 and 2 (and the baseline)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per response with its context")
    parser.add_argument("--base-r", type=int, default=8, help="LoRA rank of the task base adapters")
    parser.add_argument("--expert-r", type=int, default=8, help="LoRA rank of the capability experts")
    parser.add_argument(
        "--expert-fraction", type=float, default=0.25, help="top fraction of layers with experts"
    )
    parser.add_argument(
        "--base-fraction",
        type=float,
        default=1.0,
        help="top fraction of layers with task base adapters; below 1 the layers under every adapter "
        "run once per text (trunk cache)",
    )
    parser.add_argument("--min-labels", type=int, default=8, help="fewest labels to train an expert")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--deepspeed",
        action="store_true",
        help="train phases 1-2 and the baseline through DeepSpeed ZeRO stage 2 (CPU: gloo)",
    )


def recipe_settings(args):
    from moerm.train.loop import TrainSettings
    from moerm.train.settings import RecipeSettings

    phase = TrainSettings(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        deepspeed=args.deepspeed,
    )
    return RecipeSettings(
        backbone=args.backbone,
        base_r=args.base_r,
        expert_r=args.expert_r,
        expert_fraction=args.expert_fraction,
        base_fraction=args.base_fraction,
        phase1=phase,
        phase2=phase,
        min_labels=args.min_labels,
        seed=args.seed,
    )


def prepare(args):
    from moerm.train import inputs

    if args.data == "synthetic":
        return inputs.synthetic(per_task=args.synthetic_per_task, seed=args.seed)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    return inputs.shared(
        args.work,
        data_dir=args.data_dir,
        labels=args.labels,
        seed=args.seed,
        max_pairs_per_task=args.max_pairs_per_task,
        max_test_per_task=args.max_test_per_task,
        tasks=tasks,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from moerm.train.recipe import Recipe

    prepared = prepare(args)
    recipe = Recipe(args.work, prepared.inputs, recipe_settings(args), progress=not args.no_progress)
    steps = STEPS if args.step == "all" else () if args.step == "assemble" else (args.step,)
    for step in steps:
        getattr(recipe, step)()
        print(f"{step}: done ({args.work / 'run.json'})", file=sys.stderr)
    if args.step in ("all", "assemble"):
        if not args.out:
            print("error: --out BUNDLE is required to assemble a bundle", file=sys.stderr)
            return 2
        bundle = recipe.assemble(args.out)
        print(f"bundle {bundle.version} written to {args.out}")
    return 0


def add_train_commands(sub) -> None:
    train = sub.add_parser("train", help="train a bundle with the DMoERM recipe, step by step or all at once")
    train.add_argument(
        "step",
        choices=(*STEPS, "assemble", "all"),
        help="router, phase1, phase2, phase3, baseline (one RM for all tasks), assemble, or all",
    )
    add_recipe_options(train)
    train.add_argument("--out", help="bundle directory to write (all, assemble)")
    train.set_defaults(run=cmd_train)
