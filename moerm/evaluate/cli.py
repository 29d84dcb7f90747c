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

    overopt = sub.add_parser(
        "overopt",
        help="best-of-n over-optimization: gold RM of a recipe run, proxies trained on its labels, "
        "candidates from the instruct model",
    )
    overopt.add_argument("--work", required=True, type=Path, help="work directory (resumable)")
    overopt.add_argument("--out", required=True, type=Path, help="report folder (overopt.md/.json/.png)")
    add_options(overopt, OveroptSettings, env=False)  # one flag per setting, defaults from the dataclass
    overopt.set_defaults(run=cmd_overopt)
