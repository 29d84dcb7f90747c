"""Training with and without the trunk cache (moerm.train.trunk), one run.

Trains the same reward model (LoRA on the top layers + head, Bradley-Terry)
on the same real pairs twice: running the whole backbone every step, and
running only the adapted layers on cached lower-layer states (the cache is
filled first, timed separately). Prints and saves a table of seconds and
ratios, and the largest weight difference between the two results.

    python bench/bench_trunk_cache.py --backbone smollm2 --pairs 24 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from moerm.bundle_build import top_layers
from moerm.models.backbones import describe
from moerm.train.loop import TrainSettings
from moerm.train.phase1 import train_base_model
from moerm.train.recipe import comparisons
from moerm.train.trunk import TrunkCache

RESULTS = Path(__file__).parent / "results"


def real_pairs(count: int):
    from moerm.data.splits import load_shared

    data = load_shared(None)
    pairs = [p for p in data.pairs if p.task and not p.tie]
    pairs.sort(key=lambda p: p.id)
    return comparisons(pairs[:: max(1, len(pairs) // count)][:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.25, help="top fraction of layers adapted")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    info = describe(args.backbone)
    layers = top_layers(info["num_layers"], args.fraction)
    data = real_pairs(args.pairs)
    settings = TrainSettings(epochs=args.epochs, lr=1e-3, batch_size=4, max_length=args.max_length)
    kwargs = dict(r=8, pooling=info["pooling"], layers=layers, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train_base_model("plain", args.backbone, data, [], settings, out_dir=Path(tmp) / "plain", **kwargs)
        plain = time.perf_counter() - started
        started = time.perf_counter()
        cache = TrunkCache(args.backbone, min(layers), args.max_length)
        cache.fill([cache.encoder.texts(c.turns, r) for c in data for r in (c.better, c.worse)])
        fill = time.perf_counter() - started
        started = time.perf_counter()
        train_base_model(
            "cached", args.backbone, data, [], settings, out_dir=Path(tmp) / "cached", trunk=cache, **kwargs
        )
        cached = time.perf_counter() - started
        from safetensors.torch import load_file

        a = load_file(str(Path(tmp) / "plain" / "base" / "adapter_model.safetensors"))
        b = load_file(str(Path(tmp) / "cached" / "base" / "adapter_model.safetensors"))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    rows = [
        ("whole backbone every step", plain, 1.0),
        ("trunk cache: fill (once per text)", fill, fill / plain),
        ("trunk cache: training", cached, cached / plain),
        ("trunk cache: fill + training", fill + cached, (fill + cached) / plain),
    ]
    head = (
        f"## trunk cache benchmark: {args.backbone} ({info['num_layers']} layers), LoRA r=8 on layers "
        f"{layers[0]}-{layers[-1]}, {len(data)} real pairs, {args.epochs} epochs, batch 4 pairs, "
        f"max {args.max_length} tokens\n\n"
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one run each\n\n"
        f"trunk cache: {cache.computed_tokens} tokens, depth {cache.depth}\n"
    )
    table = ["| method | seconds | x whole backbone |", "|---|---:|---:|"]
    table += [f"| {name} | {sec:.1f} | {ratio:.2f} |" for name, sec, ratio in rows]
    text = (
        head
        + "\n"
        + "\n".join(table)
        + f"\n\nlargest adapter weight difference between the two: {diff:.2e}\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"trunk-cache-{args.backbone}-cpu"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "backbone": args.backbone,
                "layers": list(layers),
                "pairs": len(data),
                "epochs": args.epochs,
                "max_length": args.max_length,
                "rows": [{"method": n, "seconds": s, "ratio": r} for n, s, r in rows],
                "max_abs_weight_diff": diff,
                "trunk_tokens": cache.computed_tokens,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
