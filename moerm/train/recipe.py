"""The whole DMoERM recipe into a bundle: router classifier, then per task
phase 1 (base model), phase 2 (capability experts), phase 3 (aggregator).

Inputs are already split (see :mod:`moerm.data.splits`); the test split is
never seen here. Wall time of every phase is recorded in the bundle notes.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moerm.bundle import BackboneSpec, Bundle, Capability, Manifest, RouterSpec, TaskSpec, seal
from moerm.data.records import ClassifierExample, PreferencePair
from moerm.train.loop import Comparison, TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Label:
    """A capability label that survived the judge's swap check."""

    pair_id: str
    task: str
    capability: str
    chosen_better: bool


@dataclass
class RecipeInputs:
    train: list[PreferencePair]
    validation: list[PreferencePair]
    classifier_train: list[ClassifierExample]
    classifier_validation: list[ClassifierExample]
    capabilities: dict[str, tuple[Capability, ...]]
    labels: list[Label]
    task_descriptions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeSettings:
    backbone: str = "minilm"
    router_embedder: str = "minilm"
    base_r: int = 8
    expert_r: int = 8
    expert_fraction: float = 0.25  # top fraction of layers carrying expert adapters
    phase1: TrainSettings = TrainSettings(epochs=2, lr=3e-4)
    phase2: TrainSettings = TrainSettings(epochs=2, lr=3e-4)
    aggregator_width: int = 64
    aggregator_epochs: int = 300
    router_epochs: int = 300
    min_labels: int = 8
    seed: int = 0


@dataclass
class RecipeReport:
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    curves: dict[str, dict] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> capability -> labels used
    router_val_accuracy: float = float("nan")


def comparisons(pairs: list[PreferencePair]) -> list[Comparison]:
    """Human preferences of non-tie pairs: chosen is better."""
    return [Comparison(p.turns, p.chosen, p.rejected) for p in pairs if not p.tie]


def capability_comparisons(
    pairs: list[PreferencePair], labels: list[Label], task: str
) -> dict[str, list[Comparison]]:
    by_id = {p.id: p for p in pairs}
    out: dict[str, list[Comparison]] = defaultdict(list)
    for label in labels:
        pair = by_id.get(label.pair_id)
        if pair is None or label.task != task or pair.tie:
            continue
        better, worse = (pair.chosen, pair.rejected) if label.chosen_better else (pair.rejected, pair.chosen)
        out[label.capability].append(Comparison(pair.turns, better, worse))
    return out


def _embed(embedder, examples: list[ClassifierExample]) -> np.ndarray:
    from moerm.train.router import prompt_text

    return embedder.embed([prompt_text(e.text) for e in examples])


def train_all(
    inputs: RecipeInputs,
    settings: RecipeSettings,
    out: str | Path,
    *,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[Bundle, RecipeReport]:
    import torch
    from peft import PeftModel
    from safetensors.numpy import save_file

    from moerm.backbones import describe, load_backbone
    from moerm.bundle_build import top_layers
    from moerm.embed import PromptEmbedder
    from moerm.experts import CapabilityExperts, load_heads
    from moerm.train.loop import PairTokenizer
    from moerm.train.models import lora_spec
    from moerm.train.phase1 import train_base_model
    from moerm.train.phase2 import train_experts
    from moerm.train.phase3 import expert_features, train_aggregator
    from moerm.train.router import train_router

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    report = RecipeReport()
    info = describe(settings.backbone)
    tasks = tuple(sorted(inputs.capabilities))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        # Router classifier.
        started = time.perf_counter()
        embedder = PromptEmbedder(settings.router_embedder)
        index = {t: i for i, t in enumerate(tasks)}
        train_ex = [e for e in inputs.classifier_train if e.task in index]
        val_ex = [e for e in inputs.classifier_validation if e.task in index]
        router = train_router(
            _embed(embedder, train_ex),
            np.array([index[e.task] for e in train_ex]),
            _embed(embedder, val_ex),
            np.array([index[e.task] for e in val_ex]),
            tasks,
            epochs=settings.router_epochs,
            seed=settings.seed,
        )
        (staging / "router").mkdir(parents=True)
        save_file(
            {"weight": router.weight.astype(np.float32), "bias": router.bias.astype(np.float32)},
            str(staging / "router" / "classifier.safetensors"),
        )
        report.router_val_accuracy = router.val_accuracy
        report.curves["router"] = router.history
        report.timings["router"] = time.perf_counter() - started

        specs: dict[str, TaskSpec] = {}
        expert_layers = top_layers(info["num_layers"], settings.expert_fraction)
        for task in tasks:
            task_dir = staging / "tasks" / task
            train_pairs = [p for p in inputs.train if p.task == task]
            val_pairs = [p for p in inputs.validation if p.task == task]
            # Phase 1.
            started = time.perf_counter()
            base = train_base_model(
                f"phase1-{task}",
                settings.backbone,
                comparisons(train_pairs),
                comparisons(val_pairs),
                settings.phase1,
                r=settings.base_r,
                pooling=info["pooling"],
                out_dir=task_dir,
                checkpoint_dir=checkpoint_dir,
                progress=progress,
            )
            report.timings[f"phase1/{task}"] = time.perf_counter() - started
            report.curves[f"phase1/{task}"] = base.curve.to_json()

            # Phase 2, on the backbone with the task adapter merged.
            started = time.perf_counter()
            backbone, tokenizer = load_backbone(settings.backbone)
            backbone = PeftModel.from_pretrained(backbone, str(task_dir / "base"), adapter_name="base")
            backbone = backbone.merge_and_unload()
            base_head = load_heads(task_dir / "base" / "head.safetensors", ["base"], info["hidden_size"])[
                "base"
            ]
            caps = tuple(c.name for c in inputs.capabilities[task])
            spec = lora_spec(backbone, settings.expert_r, expert_layers)
            experts = train_experts(
                task,
                backbone,
                tokenizer,
                base_head,
                caps,
                spec,
                capability_comparisons(inputs.train, inputs.labels, task),
                capability_comparisons(inputs.validation, inputs.labels, task),
                settings.phase2,
                pooling=info["pooling"],
                backbone_ref=settings.backbone,
                out_dir=task_dir,
                min_labels=settings.min_labels,
                checkpoint_dir=checkpoint_dir,
                progress=progress,
            )
            report.timings[f"phase2/{task}"] = time.perf_counter() - started
            report.labels[task] = dict(experts.labels)
            for cap, curve in experts.curves.items():
                report.curves[f"phase2/{task}/{cap}"] = curve.to_json()

            # Phase 3.
            started = time.perf_counter()
            capability_experts = CapabilityExperts(
                experts.peft_model,
                torch.nn.ModuleDict(experts.heads),
                caps,
                spec.layers,
                info["num_layers"],
                info["pooling"],
            ).eval()
            encoder = PairTokenizer(tokenizer, settings.phase1.max_length)
            aggregator = train_aggregator(
                expert_features(capability_experts, encoder, comparisons(train_pairs)),
                expert_features(capability_experts, encoder, comparisons(val_pairs)),
                width=settings.aggregator_width,
                epochs=settings.aggregator_epochs,
                seed=settings.seed,
            )
            save_file(aggregator.tensors, str(task_dir / "aggregator.safetensors"))
            report.timings[f"phase3/{task}"] = time.perf_counter() - started
            report.curves[f"phase3/{task}"] = aggregator.curve
            specs[task] = TaskSpec(
                name=task,
                capabilities=tuple(inputs.capabilities[task]),
                lora=spec,
                aggregator_hidden=settings.aggregator_width,
                norm_mean=aggregator.norm_mean,
                norm_std=aggregator.norm_std,
                base_lora=base.spec,
            )
            del experts, capability_experts, backbone

        manifest = Manifest(
            backbone=BackboneSpec(ref=settings.backbone, **info),
            router=RouterSpec(
                embedder=settings.router_embedder,
                embed_dim=embedder.dim,
                tasks=tasks,
                default_task=max(tasks, key=lambda t: sum(p.task == t for p in inputs.train)),
                trained=True,
            ),
            tasks=specs,
            notes=json.dumps(
                {
                    "created_by": "moerm train all",
                    "trained": True,
                    "settings": asdict(settings),
                    "timings_s": report.timings,
                    "labels": report.labels,
                    "router_val_accuracy": report.router_val_accuracy,
                },
                default=str,
            ),
        )
        seal(staging, manifest)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.load(out), report
