"""``moerm evaluate`` (a trained bundle against its baselines) and ``moerm overopt``
(best-of-n over-optimization); they read the training inputs the way ``moerm train``
does. The model stack (torch, transformers) is imported inside the commands, so that
building the ``moerm`` command line stays fast."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

from moerm.bundle import Bundle
from moerm.config import add_options
from moerm.evaluate.overopt import OveroptSettings
from moerm.train.cli import add_recipe_options, prepare, recipe_settings


def cmd_evaluate(args: argparse.Namespace) -> int:
    from moerm.evaluate.report import evaluate, write_report
    from moerm.train.recipe import Recipe

    prepared = prepare(args)
    bundle = Bundle.load(args.bundle)
    recipe = Recipe(args.work, prepared.inputs, recipe_settings(args), progress=False)
    single = recipe.load_single() if (args.work / "baselines" / "single").exists() else None
    result = evaluate(
        bundle,
        prepared.test,
        single=single,
        classifier_test=prepared.classifier_test,
        max_length=args.max_length,
    )
    run = json.loads((args.work / "run.json").read_text())
    command = args.command_line or "moerm " + " ".join(shlex.quote(a) for a in args.argv)
    header = (
        f"# DMoERM evaluation: {bundle.manifest.backbone.ref} backbone, bundle {bundle.version}\n\n"
        f"Data: {prepared.inputs.description}.\n\nProduced by:\n\n```\n{command}\n```"
    )
    path = write_report(result, args.out, header=header, run=run)
    print(path.read_text())
    return 0


def cmd_evaluate_contrast(args: argparse.Namespace) -> int:
    from moerm.data.splits import SplitManifest, load_shared, sha256_file
    from moerm.evaluate.contrast import evaluate_contrast, write_contrast_report
    from moerm.judges.contrast import split_contrast_pairs

    bundle = Bundle.load(args.bundle)
    data = load_shared(args.data_dir)
    manifest = SplitManifest.load(args.split_file)
    # The bundle's capabilities (its experts), not the data's: the columns must be the rows' names.
    capabilities = {task: spec.capabilities for task, spec in bundle.manifest.tasks.items()}
    contrast, stats = split_contrast_pairs(
        data.pairs,
        manifest.assignment,
        "test",
        capabilities,
        seed=args.seed,
        max_per_family=args.max_per_family,
    )
    tables = evaluate_contrast(bundle, contrast, max_length=args.max_length)
    command = args.command_line or "moerm " + " ".join(shlex.quote(a) for a in args.argv)
    cap = f", at most {args.max_per_family} per task and family" if args.max_per_family else ""
    header = (
        f"# Capability experts on held-out contrast pairs: {bundle.manifest.backbone.ref} backbone, "
        f"bundle {bundle.version}\n\n"
        f"Held-out contrast pairs: every edit family on the test split of the split file "
        f"`{Path(args.split_file).name}` (sha256 {sha256_file(args.split_file)[:16]}) "
        f"(edit seed {args.seed}{cap}): {len(contrast)} pairs; {args.max_length} tokens per text."
        f"\n\nProduced by:\n\n```\n{command}\n```"
    )
    path = write_contrast_report(tables, args.out, header=header, extra={"heldout": stats.to_dict()})
    print(path.read_text())
    return 0


def cmd_overopt(args: argparse.Namespace) -> int:
    from moerm.evaluate.overopt import run

    settings = OveroptSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(OveroptSettings)})
    settings.validate()
    command = "moerm " + " ".join(shlex.quote(a) for a in args.argv)
    path = run(settings, args.work, args.out, command)
    print(path.read_text())
    return 0


def add_evaluate_commands(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="pairwise accuracy of a trained bundle and its baselines")
    add_recipe_options(evaluate)
    evaluate.add_argument("--bundle", required=True, help="the trained bundle")
    evaluate.add_argument("--out", required=True, type=Path, help="report folder (report.md/.json, PNGs)")
    evaluate.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    evaluate.set_defaults(run=cmd_evaluate)

    contrast = sub.add_parser(
        "evaluate-contrast",
        help="each capability expert on held-out contrast pairs (edits of test responses): K x K tables",
    )
    contrast.add_argument("--bundle", required=True, help="the trained bundle")
    contrast.add_argument(
        "--split-file", required=True, type=Path, help="the recipe's split manifest (WORK/split.json)"
    )
    contrast.add_argument(
        "--data-dir", help="shared data folder (default: $MOERM_DATA_DIR or ../shared/data)"
    )
    contrast.add_argument("--out", required=True, type=Path, help="report folder (contrast.md/.json)")
    contrast.add_argument("--seed", type=int, default=0, help="seed of the edits")
    contrast.add_argument(
        "--max-per-family", type=int, default=0, help="at most N contrast pairs per task and family (0: all)"
    )
    contrast.add_argument("--max-length", type=int, default=256, help="tokens per response with its context")
    contrast.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    contrast.set_defaults(run=cmd_evaluate_contrast)

    overopt = sub.add_parser(
        "overopt",
        help="best-of-n over-optimization: gold RM of a recipe run, proxies trained on its labels, "
        "candidates from the instruct model",
    )
    overopt.add_argument("--work", required=True, type=Path, help="work directory (resumable)")
    overopt.add_argument("--out", required=True, type=Path, help="report folder (overopt.md/.json/.png)")
    add_options(overopt, OveroptSettings, env=False)  # one flag per setting, defaults from the dataclass
    overopt.set_defaults(run=cmd_overopt)
