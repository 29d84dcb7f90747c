"""bf16 against float32: how far the expert service's scores move, and how often the
order of a preference pair flips, on the shared data's held-out test pairs.

Scores every non-tie test pair whose task the bundle has (chosen and rejected) with that
task's expert scorer in float32 and in bf16 (weights bf16, residual stream float32 under
autocast; ``expert_svc/precision.py``): each capability expert, the task base model when
the bundle has one, and DMoERM's reward (the aggregator over the experts). Reports per output the largest and
median |bf16 - float32| relative to the float32 scores' standard deviation, and the
share of pairs whose order (chosen above rejected or not) is the same, with a 95%
Wilson interval.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_precision.py --bundle DIR [--limit N]

Writes ``bench/results/precision-<bundle name>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from expert_svc.precision import compare, score_pairs  # noqa: E402
from moerm.bundle import Bundle  # noqa: E402


def test_pairs(bundle: Bundle, limit: int | None):
    from moerm.data.splits import load_shared

    shared = load_shared()
    pairs = [
        p
        for p in shared.split(seed=0).select(shared.pairs, "test")
        if not p.tie and p.task in bundle.manifest.tasks
    ]
    return pairs[:limit] if limit else pairs


def score(bundle: Bundle, pairs, dtype: str, max_length: int) -> dict[str, np.ndarray]:
    """Output name -> (n_pairs, 2) scores of (chosen, rejected): each task's outputs on
    the test pairs of that task."""
    out: dict[str, np.ndarray] = {}
    for task in sorted({p.task for p in pairs}):
        rows = [p for p in pairs if p.task == task]
        out.update(score_pairs(bundle, task, rows, dtype=dtype, max_length=max_length))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N test pairs only")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    pairs = test_pairs(bundle, args.limit)
    started = time.perf_counter()
    f32 = score(bundle, pairs, "float32", args.max_length)
    bf16 = score(bundle, pairs, "bfloat16", args.max_length)
    rows = [agreement.row() for agreement in compare(f32, bf16)]
    lines = [
        f"## bf16 against float32: {Path(args.bundle).name} ({bundle.manifest.backbone.ref}), "
        f"{len(pairs)} non-tie shared-data test pairs, up to {args.max_length} tokens",
        "",
        "| output | pairs | same order | agreement [95% CI] | max abs diff / std | median abs diff / std |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['output']} | {row['pairs']} | {row['same_order']} | {row['agreement']:.4f} "
            f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] | {row['max_abs_diff_over_std']:.3f} | "
            f"{row['median_abs_diff_over_std']:.4f} |"
        )
    lines += [
        "",
        f"{time.perf_counter() - started:.0f} s on this machine; std: of the float32 scores of the output.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"precision-{Path(args.bundle).name}"
    (out / f"{name}.md").write_text(table)
    (out / f"{name}.json").write_text(json.dumps({"pairs": len(pairs), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
