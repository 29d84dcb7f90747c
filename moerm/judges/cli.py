"""``moerm label`` and ``moerm judge-serve``: :func:`add_label_commands` adds
them to the ``moerm`` command line's subparsers (each sets ``run``). The judges (an HTTP
client, a torch model server) are imported when a command runs."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

DEFAULT_MAX_CHARS = 6000
LOCAL_MAX_CHARS = 2500  # SmolLM2 on a CPU: shorter prompts, and it reads no further anyway


def side_path(out: Path, suffix: str) -> Path:
    """``labels.jsonl`` -> ``labels<suffix>`` (next to the labels)."""
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + suffix)


def add_label_commands(subparsers: argparse._SubParsersAction) -> None:
    label = subparsers.add_parser(
        "label",
        help="capability labels for preference pairs from a judge, kept when consistent under a swap",
        description=(
            "Ask a judge, for every non-tie pair and every capability of its task, which response is "
            "better in terms of that capability, twice with the responses swapped; keep the consistent "
            "answers. Writes the labels (JSONL) and their statistics (.stats.json, .stats.md). "
            "--judge contrast asks no judge: it makes capability-contrast pairs (each response against "
            "itself after one controlled edit) and writes them next to their labels (.pairs.jsonl)."
        ),
    )
    label.add_argument("--pairs", required=True, help="JSONL of preference pairs (moerm.data.io)")
    label.add_argument("--capabilities", required=True, help="JSON: task -> [{name, description}, ...]")
    label.add_argument("--out", required=True, help="labels JSONL to write")
    label.add_argument("--judge", choices=("openai", "local", "rules", "contrast"), default="openai")
    label.add_argument(
        "--url",
        default=os.environ.get("MOERM_JUDGE_URL", "https://api.openai.com/v1"),
        help="OpenAI-compatible base URL, with its /v1 (default: $MOERM_JUDGE_URL or OpenAI's)",
    )
    label.add_argument("--model", help="judge model (openai: required; local: backbone ref, default smollm2)")
    label.add_argument(
        "--api-key", help="default: $MOERM_JUDGE_API_KEY or $OPENAI_API_KEY (prefer the environment)"
    )
    label.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    label.add_argument(
        "--rps", type=float, default=None, help="requests per second at most (default: no pacing)"
    )
    label.add_argument(
        "--retries", type=int, default=5, help="retries per request on 429/5xx/connection errors"
    )
    label.add_argument(
        "--timeout", type=float, default=None, help="seconds per request (default 60; local 600)"
    )
    label.add_argument(
        "--max-tokens", type=int, default=None, help="answer tokens per request (default 8; local 16)"
    )
    label.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help=f"characters kept per turn / response (default {DEFAULT_MAX_CHARS}; local {LOCAL_MAX_CHARS})",
    )
    label.add_argument("--no-logprobs", action="store_true", help="read verdicts from the text only")
    label.add_argument(
        "--cache", help="response cache JSONL (default: <out>.cache.jsonl); reruns resume from it"
    )
    label.add_argument("--no-cache", action="store_true", help="do not cache responses")
    label.add_argument("--limit", type=int, default=None, help="label the first N non-tie pairs only")
    label.add_argument("--quiet", action="store_true", help="no progress line")
    contrast = label.add_argument_group("--judge contrast")
    contrast.add_argument("--seed", type=int, default=0, help="seed of the edits")
    contrast.add_argument(
        "--split-file",
        help="split manifest (moerm data split): edits borrow text only from pairs of the same split",
    )
    contrast.add_argument(
        "--families", default="", help="comma-separated edit families (default: all; see docs/judges.md)"
    )
    contrast.add_argument(
        "--max-per-family", type=int, default=0, help="at most N contrast pairs per task and family (0: all)"
    )
    label.set_defaults(run=cmd_label)

    serve = subparsers.add_parser(
        "judge-serve", help="run a local OpenAI-compatible chat-completions server (default model: SmolLM2)"
    )
    serve.add_argument("--model", default="smollm2", help="packaged backbone name or a local model directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    serve.set_defaults(run=cmd_judge_serve)


def _select_pairs(pairs: list, limit: int | None) -> list:
    if limit is None:
        return pairs
    kept, non_tie = [], 0
    for pair in pairs:
        if not pair.tie:
            if non_tie == limit:
                break
            non_tie += 1
        kept.append(pair)
    return kept


def cmd_label(args: argparse.Namespace) -> int:
    from moerm.data.io import read_capabilities, read_pairs

    if args.judge == "openai" and not args.model:
        print("error: --judge openai needs --model", file=sys.stderr)
        return 2
    try:
        pairs = _select_pairs(read_pairs(args.pairs), args.limit)
        capabilities = read_capabilities(args.capabilities)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.judge == "contrast":
        return _label_contrast(args, pairs, capabilities, out)
    if args.judge == "local":
        from moerm.judges.local_server import LocalJudgeServer

        print(f"starting the local judge server ({args.model or 'smollm2'}) ...", file=sys.stderr)
        with LocalJudgeServer(args.model or "smollm2") as server:
            return _label(args, pairs, capabilities, out, server.base_url, server.model_name)
    return _label(args, pairs, capabilities, out, args.url, args.model)


def _label(args, pairs, capabilities, out: Path, url: str, model: str | None) -> int:
    from moerm.judges.base import label_pairs, save_labels

    async def run():
        judge = _make_judge(args, url, model, out)
        async with judge:
            labels, stats = await label_pairs(
                pairs, capabilities, judge, concurrency=args.concurrency, progress=not args.quiet
            )
        return judge, labels, stats

    from moerm.judges.openai_judge import JudgeError

    try:
        judge, labels, stats = asyncio.run(run())
    except JudgeError as error:
        print(f"error: {error}", file=sys.stderr)
        print("answered requests are cached; run the same command again to resume", file=sys.stderr)
        return 1
    save_labels(labels, out)
    side_path(out, ".stats.json").write_text(stats.to_json() + "\n")
    side_path(out, ".stats.md").write_text(stats.to_markdown())
    print(stats.to_markdown())
    counters = getattr(judge, "stats", None)
    if counters:
        print("judge: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())), file=sys.stderr)
    print(f"{len(labels)} labels -> {out}", file=sys.stderr)
    return 0


def _label_contrast(args, pairs, capabilities, out: Path) -> int:
    from moerm.data.splits import SplitManifest
    from moerm.judges.base import save_labels
    from moerm.judges.contrast import (
        FAMILIES,
        build_contrast_pairs,
        contrast_labels,
        family,
        pairs_path,
        write_contrast_pairs,
    )

    try:
        names = [name for name in args.families.split(",") if name]
        families = tuple(family(name) for name in names) if names else FAMILIES
        groups = SplitManifest.load(args.split_file).assignment if args.split_file else None
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    contrast, stats = build_contrast_pairs(
        pairs,
        capabilities,
        seed=args.seed,
        families=families,
        groups=groups,
        max_per_family=args.max_per_family,
    )
    labels = contrast_labels(contrast)
    save_labels(labels, out)
    write_contrast_pairs(contrast, pairs_path(out))
    side_path(out, ".stats.json").write_text(stats.to_json() + "\n")
    side_path(out, ".stats.md").write_text(stats.to_markdown())
    print(stats.to_markdown())
    print(
        f"{len(contrast)} contrast pairs -> {pairs_path(out)}; {len(labels)} labels -> {out}", file=sys.stderr
    )
    return 0


def _make_judge(args, url: str, model: str | None, out: Path):
    if args.judge == "rules":
        from moerm.judges.programmatic import RuleRouter

        return RuleRouter()
    from moerm.judges.openai_judge import OpenAIJudge

    local = args.judge == "local"
    cache = None if args.no_cache else (args.cache or side_path(out, ".cache.jsonl"))
    return OpenAIJudge(
        url,
        model,
        api_key="" if local else args.api_key,
        max_concurrency=args.concurrency,
        requests_per_second=args.rps,
        max_retries=args.retries,
        timeout_s=args.timeout or (600.0 if local else 60.0),
        cache_path=cache,
        max_tokens=args.max_tokens or (16 if local else 8),
        use_logprobs=not args.no_logprobs,
        max_chars_per_text=args.max_chars or (LOCAL_MAX_CHARS if local else DEFAULT_MAX_CHARS),
    )


def cmd_judge_serve(args: argparse.Namespace) -> int:
    from moerm.judges.local_server import serve

    serve(args.model, args.host, args.port, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The two commands on their own (``python -m moerm.judges.cli``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="moerm-judges", description=__doc__)
    add_label_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
