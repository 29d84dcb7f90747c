"""Benchmark: how to run the K capability experts of one task.

Measures, in one run and on one fixed batch, the wall time of

1. one plain forward pass of the bare backbone (no adapters): the 1.0 reference;
2. K sequential full passes, one ``set_adapter`` each
   (:meth:`moerm.models.experts.CapabilityExperts.forward_sequential`);
3. one peft mixed-adapter batch: the batch replicated K times, run once with
   ``adapter_names=[cap_0]*B + ... + [cap_K-1]*B`` (peft's mixed adapter batch
   inference; LoRA on ``nn.Linear`` in eval mode, so it applies to both
   configurations below);
4. :meth:`moerm.models.experts.CapabilityExperts.forward`: the layers below the lowest
   LoRA layer once (the shared trunk), then only the adapted top layers once
   per expert. With LoRA on every layer it *is* method 2 (same code path), so
   it is not timed again there.

for two LoRA configurations (rank ``--rank`` on the query / value projections,
``moerm.models.backbones.FAMILIES``): (a) LoRA on all layers, (b) LoRA on
the top quarter of the layers (``top_layers(n, 0.25)``, the bundle default).

Each method is timed ``--repeats`` times, round-robin across the methods of a
configuration so that drift hits all of them alike, after ``--warmup`` untimed
rounds; the table gives the median, the interquartile range and the median
divided by the plain forward's median. It also checks that methods 4 and 3
agree with method 2 (max abs difference of the K scores and the K pooled
hidden states) and exits with status 1 if method 4 differs from method 2 by
more than 1e-5.

The experts are built in memory (``get_peft_model`` with
``init_lora_weights=False``, one adapter per capability of the demo task
``code``, random ``nn.Linear`` heads), seeded; the inputs are random token
ids with right padding (row lengths between seq-len/2 and seq-len).

Output: the Markdown table on stdout and in
``bench/results/experts-<backbone>-<device>.md``, all samples in the ``.json``
next to it. Progress goes to stderr.

Run (from the repository root; about 4 minutes for smollm2 on 2 CPU cores)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_experts.py --backbone smollm2 --device cpu
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_experts.py --backbone minilm --device cpu
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def portable(path: Path) -> str:
    """A path for the saved results: relative to the repository when inside it,
    so result files name no folder of the machine that made them."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


METHODS = {
    "plain": "(1) plain forward, bare backbone",
    "sequential": "(2) K sequential full passes (set_adapter)",
    "mixed": "(3) peft mixed-adapter batch (K*B rows)",
    "trunk": "(4) CapabilityExperts.forward (shared trunk + K top passes)",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=("minilm", "smollm2"), default="smollm2")
    parser.add_argument("--k", type=int, default=5, help="experts (capabilities) per task")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank (alpha = 2 * rank)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default: 5 for smollm2 on cpu, else 20)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backbone-dir",
        type=Path,
        help="load the backbone from this model directory instead of resolving --backbone "
        "(which then only names the results)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the backbone from its config.json with random weights (same architecture and "
        "cost; for machines that cannot receive the weights)",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix for the result file names (e.g. t1)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if (args.backbone == "smollm2" and args.device == "cpu") else 20
    if args.k < 1 or args.repeats < 1 or args.warmup < 0 or args.batch < 1 or args.seq_len < 2:
        parser.error("need k >= 1, repeats >= 1, warmup >= 0, batch >= 1, seq-len >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def machine_line(device: torch.device) -> str:
    import peft
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name}, {os.cpu_count()} logical cores"
    return (
        f"machine: {device.type} ({name}); torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; torch threads {torch.get_num_threads()}; python {platform.python_version()}"
    )


def make_batch(
    tokenizer, batch: int, seq_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids, right padded; row 0 is full length so the width is seq_len."""
    vocab = len(tokenizer)
    low = min(1000, vocab // 2)  # keep clear of the special / unused ids at the start of both vocabularies
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,))
    lengths[0] = seq_len
    input_ids = torch.full((batch, seq_len), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, seq_len), dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        input_ids[row, :length] = torch.randint(low, vocab, (length,))
        attention_mask[row, :length] = 1
    return input_ids.to(device), attention_mask.to(device)


def layer_span(layers: tuple[int, ...]) -> str:
    return f"{layers[0]}-{layers[-1]} ({len(layers)})" if len(layers) > 1 else f"{layers[0]} (1)"


class Config:
    """One LoRA configuration: the peft model with K adapters, the heads and the experts."""

    def __init__(self, name, base, family, caps, layers, num_layers, pooling, hidden_size, rank, device):
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        from moerm.models.backbones import family as known_family
        from moerm.models.experts import CapabilityExperts, find_layer_list

        self.name = name
        self.layers = layers
        dtype = next(base.parameters()).dtype
        lora = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.0,
            target_modules=list(known_family(family).lora_targets),
            layers_to_transform=list(layers),
            # Without a pattern peft only finds layer indices behind a dotted prefix ("encoder.layer.3.");
            # a bare LlamaModel's keys start with "layers.3.", so name the layer list explicitly.
            layers_pattern=find_layer_list(base, num_layers)[1],
            init_lora_weights=False,
        )
        self.peft_model = get_peft_model(base, lora, adapter_name=caps[0])
        for cap in caps[1:]:
            self.peft_model.add_adapter(cap, lora)
        # Every adapter must sit on exactly the requested layers' target modules.
        for cap in caps:
            wrapped = [m for m in self.peft_model.modules() if isinstance(m, LoraLayer) and cap in m.lora_A]
            expected = len(layers) * len(known_family(family).lora_targets)
            if len(wrapped) != expected:
                raise RuntimeError(f"adapter {cap!r}: LoRA on {len(wrapped)} modules, expected {expected}")
        self.lora_modules = expected
        heads = nn.ModuleDict({cap: nn.Linear(hidden_size, 1) for cap in caps})
        self.experts = CapabilityExperts(self.peft_model, heads, caps, layers, num_layers, pooling)
        self.experts.to(device=device, dtype=dtype).eval()
        self.caps = tuple(caps)
        self.pooling = pooling

    @property
    def degenerate(self) -> bool:
        """CapabilityExperts.forward is forward_sequential when layer 0 carries LoRA."""
        return self.experts.first_lora_layer == 0

    def mixed(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Method 3: one peft call on the batch replicated K times, one adapter per block."""
        from moerm.models.experts import pool

        k, b = len(self.caps), input_ids.shape[0]
        names = [cap for cap in self.caps for _ in range(b)]
        mask = attention_mask.repeat(k, 1)
        out = self.peft_model(input_ids=input_ids.repeat(k, 1), attention_mask=mask, adapter_names=names)
        pooled = pool(out.last_hidden_state, mask, self.pooling).view(k, b, -1)
        return self.experts._score(list(pooled.unbind(0)))


def max_diff(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    return tuple(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def summarize(samples: list[float]) -> dict:
    q1, q3 = np.percentile(samples, [25, 75])
    return {
        "median_ms": statistics.median(samples),
        "iqr_ms": float(q3 - q1),
        "min_ms": min(samples),
        "samples_ms": samples,
    }


def run_config(config: Config, reference: nn.Module, inputs, args, device) -> dict:
    from moerm.models.experts import pool

    input_ids, attention_mask = inputs
    experts = config.experts
    calls = {
        "plain": lambda: reference(input_ids=input_ids, attention_mask=attention_mask),
        "sequential": lambda: experts.forward_sequential(input_ids, attention_mask),
        "mixed": lambda: config.mixed(input_ids, attention_mask),
        "trunk": lambda: experts(input_ids, attention_mask),
    }
    if config.degenerate:
        del calls["trunk"]

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000.0

    with torch.inference_mode():
        sequential = experts.forward_sequential(input_ids, attention_mask)
        diffs = {
            "trunk": max_diff(experts(input_ids, attention_mask), sequential),
            "mixed": max_diff(config.mixed(input_ids, attention_mask), sequential),
            "sequential": (0.0, 0.0),
        }
        # Guard against a vacuous check: every adapter must change the output, and differently.
        bare = pool(
            reference(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
            attention_mask,
            config.pooling,
        )
        hidden = sequential[1]
        k = hidden.shape[1]
        effect = min(float((hidden[:, i] - bare).abs().max()) for i in range(k))
        spread = min(
            (float((hidden[:, i] - hidden[:, j]).abs().max()) for i in range(k) for j in range(i + 1, k)),
            default=float("inf"),
        )
        for round_ in range(args.warmup):
            log(f"  [{config.name}] warmup {round_ + 1}/{args.warmup}")
            for fn in calls.values():
                fn()
        samples = {method: [] for method in calls}
        for round_ in range(args.repeats):
            started = time.perf_counter()
            for method, fn in calls.items():
                samples[method].append(timed(fn))
            log(f"  [{config.name}] round {round_ + 1}/{args.repeats}: {time.perf_counter() - started:.1f}s")

    plain = statistics.median(samples["plain"])
    plain_min = min(samples["plain"])
    n = len(experts._layers)
    first = experts.first_lora_layer
    # Backbone layer passes relative to one plain pass: what the time ratio would be if only layers counted.
    model_ratio = {
        "plain": 1.0,
        "sequential": float(k),
        "mixed": float(k),
        "trunk": (first + k * (n - first)) / n,
    }
    methods = {}
    for method in METHODS:
        row = {"label": METHODS[method], "layer_model_ratio": model_ratio[method]}
        if method in samples:
            row |= summarize(samples[method])
            row["ratio"] = row["median_ms"] / plain
            row["ratio_min"] = row["min_ms"] / plain_min
        else:
            row["note"] = (
                "same code path as (2): the lowest LoRA layer is 0, so forward() = forward_sequential()"
            )
        if method in diffs:
            row["max_abs_diff_scores"], row["max_abs_diff_hidden"] = diffs[method]
        methods[method] = row
    return {
        "config": config.name,
        "lora_layers": list(config.layers),
        "first_lora_layer": first,
        "lora_modules_per_adapter": config.lora_modules,
        "num_layers": n,
        "adapter_effect": effect,
        "adapter_spread": spread,
        "methods": methods,
    }


def markdown(results: list[dict], header: list[str]) -> str:
    lines = [*header, ""]
    lines.append(
        "| config | LoRA layers | method | median ms | IQR ms | min ms | x plain | x plain (min) "
        "| layer-count model | max abs diff scores vs (2) | max abs diff hidden vs (2) |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        span = layer_span(tuple(result["lora_layers"]))
        for row in result["methods"].values():
            if "median_ms" in row:
                timing = (
                    f"{row['median_ms']:.1f} | {row['iqr_ms']:.1f} | {row['min_ms']:.1f} "
                    f"| {row['ratio']:.2f} | {row['ratio_min']:.2f}"
                )
            else:
                timing = "= (2) | | | = (2) | = (2)"
            if "max_abs_diff_scores" in row:
                diff = f"{row['max_abs_diff_scores']:.2e} | {row['max_abs_diff_hidden']:.2e}"
            else:
                diff = "- | -"
            lines.append(
                f"| {result['config']} | {span} | {row['label']} | {timing} "
                f"| {row['layer_model_ratio']:.2f} | {diff} |"
            )
    lines.append("")
    for result in results:
        lines.append(
            f"adapter effect, {result['config']}: each expert's pooled hidden differs from the bare backbone's "
            f"by >= {result['adapter_effect']:.3g} and from every other expert's by >= "
            f"{result['adapter_spread']:.3g} (max abs), so the equivalence check is not vacuous."
        )
    noisy = [
        f"{result['config']} {row['label'].split(' ')[0]}"
        for result in results
        for row in result["methods"].values()
        if "median_ms" in row and row["iqr_ms"] > 0.2 * row["median_ms"]
    ]
    if noisy:
        lines.append(
            f"NOISY: IQR above 20% of the median for {', '.join(noisy)}; trust the min columns more, or rerun."
        )
    lines += [
        "",
        "x plain: median / median of (1) in the same configuration; x plain (min): the same with the fastest "
        "sample (noise only adds time, so on a shared machine the min is the steadier estimate). "
        "layer-count model: backbone layer passes relative to (1), i.e. the ratio if only the transformer "
        "layers cost time.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    from moerm.bundle_build import DEMO_TASKS, top_layers
    from moerm.models.backbones import FAMILIES, describe, load_backbone
    from moerm.models.backbones import family as known_family

    source = str(args.backbone_dir) if args.backbone_dir else args.backbone
    info = describe(source)
    if args.random_weights:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        base = AutoModel.from_config(AutoConfig.from_pretrained(source)).eval()
    else:
        base, tokenizer = load_backbone(source)
    base.to(dtype=getattr(torch, args.dtype))
    family = base.config.model_type
    if not any(family in f.model_types for f in FAMILIES):
        raise SystemExit(f"no LoRA target modules known for model type {family!r}")
    caps = [c.name for c in DEMO_TASKS["code"][1]][: args.k]
    caps += [f"cap{i}" for i in range(len(caps), args.k)]
    n = info["num_layers"]
    base.to(device)
    reference = copy.deepcopy(base)  # the bare backbone for (1); get_peft_model rewrites `base` in place
    inputs = make_batch(tokenizer, args.batch, args.seq_len, device)

    machine = machine_line(device)
    header = [
        f"## experts benchmark: {args.backbone} ({family}, {n} layers, d={info['hidden_size']}, "
        f"pooling {info['pooling']}), K={args.k}, LoRA r={args.rank} on {'/'.join(known_family(family).lora_targets)}, "
        f"batch {args.batch} x {args.seq_len} tokens, {args.device}, {args.dtype}"
        + (" (random weights from the backbone's config)" if args.random_weights else ""),
        "",
        machine,
        f"run: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"{args.repeats} timed rounds after {args.warmup} warmup, round-robin over methods; "
        f"seed {args.seed}; random token ids, right padding, {int(inputs[1].sum())} real tokens of "
        f"{inputs[1].numel()}; torch.inference_mode, {args.dtype}",
    ]
    log(machine)

    results = []
    failures = []
    for name, layers in (("all layers", tuple(range(n))), ("top quarter", top_layers(n, 0.25))):
        log(f"config {name}: LoRA on layers {layer_span(layers)}")
        torch.manual_seed(args.seed)
        config = Config(
            name, base, family, caps, layers, n, info["pooling"], info["hidden_size"], args.rank, device
        )
        result = run_config(config, reference, inputs, args, device)
        results.append(result)
        trunk = result["methods"]["trunk"]
        worst = max(trunk["max_abs_diff_scores"], trunk["max_abs_diff_hidden"])
        if not worst <= TOLERANCE:
            failures.append(
                f"{name}: CapabilityExperts.forward differs from forward_sequential by {worst:.3e}"
            )
        base = config.peft_model.unload()  # the bare backbone again for the next configuration
        del config

    table = markdown(results, header)
    if failures:
        table += "\n\n" + "\n".join(f"CHECK FAILED (tolerance {TOLERANCE:g}): {f}" for f in failures)
    print(table, flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"experts-{args.backbone}-{args.device}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".md").write_text(table + "\n")
    payload = {
        "args": {k: (portable(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "header": header,
        "capabilities": caps,
        "tolerance": TOLERANCE,
        "equivalence_ok": not failures,
        "results": results,
    }
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
    if failures:
        for failure in failures:
            log(f"CHECK FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
