"""The whole DMoERM recipe, one step per phase over a work directory:

``router`` (prompt -> task classifier), ``phase1`` (task base models),
``phase2`` (capability experts), ``phase3`` (aggregators), then ``assemble``
writes the bundle. Each step reads what the previous ones wrote::

    WORK/run.json                       settings, wall time and curves of every step
    WORK/router/classifier.safetensors
    WORK/tasks/<task>/base/             phase 1: peft adapter + head.safetensors
    WORK/tasks/<task>/experts/<cap>/    phase 2: peft adapters
    WORK/tasks/<task>/heads.safetensors
    WORK/tasks/<task>/aggregator.safetensors + norm.json   phase 3
    WORK/checkpoints/                   resumable training state

Inputs are already split (:mod:`moerm.data.splits`); the test split is never
seen here.
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

from moerm.bundle import (
    BackboneSpec,
    Bundle,
    Capability,
    LoraSpec,
    Manifest,
    RouterSpec,
    TaskSpec,
    seal,
    staged,
)
from moerm.data.records import CapabilityLabel, ClassifierExample, PreferencePair
from moerm.train.settings import Comparison, TrainSettings

log = logging.getLogger(__name__)

STEPS = ("router", "phase1", "phase2", "phase3", "baseline")


@dataclass
class RecipeInputs:
    train: list[PreferencePair]
    validation: list[PreferencePair]
    classifier_train: list[ClassifierExample]
    classifier_validation: list[ClassifierExample]
    capabilities: dict[str, tuple[Capability, ...]]
    labels: list[CapabilityLabel]
    description: str = ""  # where the data came from, for the report
    # Pairs that only capability labels reference (the contrast pairs of
    # moerm.judges.contrast), each already in the split of the pairs it was made
    # from: phase 2 trains and validates on them with the labels; no other step sees them.
    label_pairs: list[PreferencePair] = field(default_factory=list)
    validation_label_pairs: list[PreferencePair] = field(default_factory=list)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted(self.capabilities))


@dataclass(frozen=True)
class RecipeSettings:
    backbone: str = "minilm"
    router_embedder: str = "minilm"
    base_r: int = 8
    expert_r: int = 8
    expert_fraction: float = 0.25  # top fraction of layers carrying expert adapters
    # Top fraction of layers carrying the task base adapters (and the baseline's).
    # Below 1, the layers under every adapter are computed once per text
    # (moerm.train.trunk) instead of once per model, epoch and phase.
    base_fraction: float = 1.0
    phase1: TrainSettings = TrainSettings(epochs=2, lr=3e-4)
    phase2: TrainSettings = TrainSettings(epochs=2, lr=3e-4)
    aggregator_width: int = 64
    aggregator_epochs: int = 300
    router_epochs: int = 300
    # Also train the router on the training pairs' conversations (rendered as the
    # router renders requests), not only on the single-turn classifier queries:
    # multi-turn data such as hh-rlhf is otherwise out of its distribution.
    router_pair_prompts: bool = True
    min_labels: int = 8
    seed: int = 0

    @classmethod
    def from_json(cls, raw: dict) -> RecipeSettings:
        raw = dict(raw)
        raw["phase1"] = TrainSettings(**raw["phase1"])
        raw["phase2"] = TrainSettings(**raw["phase2"])
        return cls(**raw)


def comparisons(pairs: list[PreferencePair]) -> list[Comparison]:
    """Human preferences of non-tie pairs: chosen is better."""
    return [Comparison(p.turns, p.chosen, p.rejected) for p in pairs if not p.tie]


def capability_comparisons(
    pairs: list[PreferencePair], labels: list[CapabilityLabel], task: str
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


class Recipe:
    """The recipe's steps over one work directory."""

    def __init__(
        self, work: str | Path, inputs: RecipeInputs, settings: RecipeSettings, *, progress: bool = True
    ):
        from moerm.backbones import describe

        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.inputs = inputs
        self.settings = settings
        self.progress = progress
        self.info = describe(settings.backbone)
        self.run_file = self.work / "run.json"
        self.state = json.loads(self.run_file.read_text()) if self.run_file.is_file() else {}
        saved = self.state.get("settings")
        if saved is not None and RecipeSettings.from_json(saved) != settings:
            raise ValueError(f"{self.run_file}: the work directory was started with other settings: {saved}")
        self.state.update(settings=asdict(settings), data=inputs.description)
        self.state.setdefault("timings_s", {})
        self.state.setdefault("curves", {})
        self.state.setdefault("labels", {})
        self._save()
        self._trunk = None

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"

    def task_dir(self, task: str) -> Path:
        return self.work / "tasks" / task

    def _save(self) -> None:
        tmp = self.run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.run_file)

    def _record(self, key: str, seconds: float, curve=None) -> None:
        self.state["timings_s"][key] = seconds
        if curve is not None:
            self.state["curves"][key] = curve
        self._save()

    @property
    def base_layers(self) -> tuple[int, ...]:
        from moerm.bundle_build import top_layers

        return top_layers(self.info["num_layers"], self.settings.base_fraction)

    @property
    def trunk_depth(self) -> int:
        """Layers below every adapter of the run (task base, baseline, experts)."""
        from moerm.bundle_build import top_layers

        expert = top_layers(self.info["num_layers"], self.settings.expert_fraction)
        return min(min(self.base_layers), min(expert))

    def trunk(self):
        """The run's :class:`moerm.train.trunk.TrunkCache` (None when every layer is
        adapted), created on first use and filled with every training and
        validation text in one length-sorted pass."""
        if self.trunk_depth == 0:
            return None
        if self._trunk is None:
            from moerm.train.trunk import TrunkCache

            started = time.perf_counter()
            self._trunk = TrunkCache(
                self.settings.backbone, self.trunk_depth, self.settings.phase1.max_length
            )
            render = self._trunk.encoder.texts
            texts = [
                render(p.turns, r)
                for p in self.inputs.train + self.inputs.validation
                for r in (p.chosen, p.rejected)
            ]
            self._trunk.fill(texts)
            seconds = time.perf_counter() - started
            log.info(
                "trunk cache: %d texts, %d tokens, depth %d, %.0fs",
                len(self._trunk),
                self._trunk.computed_tokens,
                self.trunk_depth,
                seconds,
            )
            # Each process (one per `moerm train STEP`) fills its own cache; the sum is recorded.
            timings = self.state["timings_s"]
            timings["trunk_cache"] = timings.get("trunk_cache", 0.0) + seconds
            self._save()
        return self._trunk

    def _require(self, path: Path, step: str) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `moerm train {step}` first")

    # -- steps ---------------------------------------------------------------

    def router(self) -> None:
        from safetensors.numpy import save_file

        from moerm.embed import PromptEmbedder
        from moerm.text import render_conversation
        from moerm.train.router import prompt_text, train_router

        started = time.perf_counter()
        tasks = self.inputs.tasks
        index = {t: i for i, t in enumerate(tasks)}
        embedder = PromptEmbedder(self.settings.router_embedder)

        def examples(
            queries: list[ClassifierExample], pairs: list[PreferencePair]
        ) -> tuple[list[str], list[str]]:
            texts = {prompt_text(e.text): e.task for e in queries if e.task in index}
            if self.settings.router_pair_prompts:
                for pair in pairs:
                    if pair.task in index:
                        texts.setdefault(render_conversation(pair.turns), pair.task)
            return list(texts), list(texts.values())

        train_texts, train_tasks = examples(self.inputs.classifier_train, self.inputs.train)
        val_texts, val_tasks = examples(self.inputs.classifier_validation, self.inputs.validation)
        result = train_router(
            embedder.embed(train_texts),
            np.array([index[t] for t in train_tasks]),
            embedder.embed(val_texts),
            np.array([index[t] for t in val_tasks]),
            tasks,
            epochs=self.settings.router_epochs,
            seed=self.settings.seed,
        )
        (self.work / "router").mkdir(exist_ok=True)
        save_file(
            {"weight": result.weight.astype(np.float32), "bias": result.bias.astype(np.float32)},
            str(self.work / "router" / "classifier.safetensors"),
        )
        self.state["router"] = {
            "tasks": list(tasks),
            "embed_dim": embedder.dim,
            "val_accuracy": result.val_accuracy,
            "val_n": len(val_texts),
            "train_n": len(train_texts),
        }
        self._record("router", time.perf_counter() - started, result.history)

    def phase1(self, tasks: tuple[str, ...] | None = None) -> None:
        from moerm.train.phase1 import train_base_model

        trunk = self.trunk()  # filled once, timed as "trunk_cache", not as a task's phase 1
        for task in tasks or self.inputs.tasks:
            started = time.perf_counter()
            train = comparisons([p for p in self.inputs.train if p.task == task])
            val = comparisons([p for p in self.inputs.validation if p.task == task])
            result = train_base_model(
                f"phase1-{task}",
                self.settings.backbone,
                train,
                val,
                self.settings.phase1,
                r=self.settings.base_r,
                pooling=self.info["pooling"],
                out_dir=self.task_dir(task),
                layers=self.base_layers,
                trunk=trunk,
                checkpoint_dir=self.checkpoints,
                progress=self.progress,
            )
            self.state.setdefault("base_lora", {})[task] = asdict(result.spec)
            self._record(f"phase1/{task}", time.perf_counter() - started, result.curve.to_json())

    def _task_backbone(self, task: str):
        from peft import PeftModel

        from moerm.backbones import load_backbone
        from moerm.experts import load_heads

        base_dir = self.task_dir(task) / "base"
        self._require(base_dir / "adapter_model.safetensors", "phase1")
        backbone, tokenizer = load_backbone(self.settings.backbone)
        backbone = PeftModel.from_pretrained(backbone, str(base_dir), adapter_name="base").merge_and_unload()
        head = load_heads(base_dir / "head.safetensors", ["base"], self.info["hidden_size"])["base"]
        return backbone, tokenizer, head

    def expert_spec(self, backbone) -> LoraSpec:
        from moerm.bundle_build import top_layers
        from moerm.train.models import lora_spec

        return lora_spec(
            backbone,
            self.settings.expert_r,
            top_layers(self.info["num_layers"], self.settings.expert_fraction),
        )

    def phase2(self, tasks: tuple[str, ...] | None = None) -> None:
        from moerm.train.phase2 import train_experts

        trunk = self.trunk()
        for task in tasks or self.inputs.tasks:
            started = time.perf_counter()
            backbone, tokenizer, base_head = self._task_backbone(task)
            caps = tuple(c.name for c in self.inputs.capabilities[task])
            train = capability_comparisons(
                self.inputs.train + self.inputs.label_pairs, self.inputs.labels, task
            )
            val = capability_comparisons(
                self.inputs.validation + self.inputs.validation_label_pairs, self.inputs.labels, task
            )
            # Texts only phase 2 reads (edited responses) stay in the trunk cache for this task only.
            extra = self._fill_trunk(trunk, [c for cs in (*train.values(), *val.values()) for c in cs])
            result = train_experts(
                task,
                backbone,
                tokenizer,
                base_head,
                caps,
                self.expert_spec(backbone),
                train,
                val,
                self.settings.phase2,
                pooling=self.info["pooling"],
                backbone_ref=self.settings.backbone,
                out_dir=self.task_dir(task),
                min_labels=self.settings.min_labels,
                trunk=trunk,
                checkpoint_dir=self.checkpoints,
                progress=self.progress,
            )
            if trunk is not None:
                trunk.discard(extra)
            self.state["labels"][task] = {"used": result.labels, "trained": result.trained}
            self.state.setdefault("expert_lora", {})[task] = asdict(result.spec)
            self._record(
                f"phase2/{task}",
                time.perf_counter() - started,
                {cap: curve.to_json() for cap, curve in result.curves.items()},
            )

    @staticmethod
    def _fill_trunk(trunk, items: list[Comparison]) -> list[str]:
        """Cache the trunk states of the texts of ``items`` not cached yet (one
        length-sorted pass) and return those texts."""
        if trunk is None:
            return []
        render = trunk.encoder.texts
        texts = [render(c.turns, r) for c in items for r in (c.better, c.worse)]
        new = [t for t in dict.fromkeys(texts) if t not in trunk]
        trunk.fill(new)
        return new

    def load_experts(self, task: str):
        """(CapabilityExperts, tokenizer) of a task from the work directory's files."""
        import torch
        from peft import PeftModel

        from moerm.experts import CapabilityExperts, load_heads

        backbone, tokenizer, _ = self._task_backbone(task)
        caps = tuple(c.name for c in self.inputs.capabilities[task])
        self._require(self.task_dir(task) / "heads.safetensors", "phase2")
        model = None
        for cap in caps:
            folder = str(self.task_dir(task) / "experts" / cap)
            if model is None:
                model = PeftModel.from_pretrained(backbone, folder, adapter_name=cap)
            else:
                model.load_adapter(folder, adapter_name=cap)
        heads = load_heads(self.task_dir(task) / "heads.safetensors", caps, self.info["hidden_size"])
        spec = self.expert_spec(backbone)
        experts = CapabilityExperts(
            model,
            torch.nn.ModuleDict(heads),
            caps,
            spec.layers,
            self.info["num_layers"],
            self.info["pooling"],
        ).eval()
        return experts, tokenizer

    def phase3(self, tasks: tuple[str, ...] | None = None) -> None:
        from safetensors.numpy import save_file

        from moerm.experts import load_heads
        from moerm.train.loop import PairTokenizer
        from moerm.train.phase3 import base_reward_norm, expert_features, train_aggregator
        from moerm.train.trunk import TrunkPairEncoder

        trunk = self.trunk()
        for task in tasks or self.inputs.tasks:
            started = time.perf_counter()
            experts, tokenizer = self.load_experts(task)
            encoder = (
                TrunkPairEncoder(trunk)
                if trunk is not None
                else PairTokenizer(tokenizer, self.settings.phase1.max_length)
            )
            train = comparisons([p for p in self.inputs.train if p.task == task])
            val = comparisons([p for p in self.inputs.validation if p.task == task])
            result = train_aggregator(
                expert_features(experts, encoder, train),
                expert_features(experts, encoder, val),
                width=self.settings.aggregator_width,
                epochs=self.settings.aggregator_epochs,
                seed=self.settings.seed,
            )
            save_file(result.tensors, str(self.task_dir(task) / "aggregator.safetensors"))
            base_head = load_heads(
                self.task_dir(task) / "base" / "head.safetensors", ["base"], self.info["hidden_size"]
            )
            base_mean, base_std = base_reward_norm(experts, base_head["base"], encoder, train)
            (self.task_dir(task) / "norm.json").write_text(
                json.dumps(
                    {
                        "mean": result.norm_mean,
                        "std": result.norm_std,
                        "base_mean": base_mean,
                        "base_std": base_std,
                    }
                )
            )
            self._record(f"phase3/{task}", time.perf_counter() - started, result.curve)

    def baseline(self) -> None:
        """One reward model for all tasks: the same backbone, adapter and data as
        phase 1 summed over the tasks, and the same number of epochs (so the same
        number of training pairs seen as all task base models together)."""
        from moerm.train.phase1 import train_base_model

        trunk = self.trunk()
        started = time.perf_counter()
        tasks = set(self.inputs.tasks)
        result = train_base_model(
            "baseline-single",
            self.settings.backbone,
            comparisons([p for p in self.inputs.train if p.task in tasks]),
            comparisons([p for p in self.inputs.validation if p.task in tasks]),
            self.settings.phase1,
            r=self.settings.base_r,
            pooling=self.info["pooling"],
            out_dir=self.work / "baselines" / "single",
            layers=self.base_layers,
            trunk=trunk,
            checkpoint_dir=self.checkpoints,
            progress=self.progress,
        )
        self._record("baseline/single", time.perf_counter() - started, result.curve.to_json())

    def load_single(self):
        """(RewardModel, tokenizer, lowest adapted layer) of the one-model baseline."""
        folder = self.work / "baselines" / "single" / "base"
        self._require(folder / "adapter_model.safetensors", "baseline")
        return load_reward_model(folder, self.settings.backbone)

    def all(self) -> None:
        self.router()
        self.phase1()
        self.phase2()
        self.phase3()
        self.baseline()

    def assemble(self, out: str | Path) -> Bundle:
        """Copy the trained weights into a sealed bundle at ``out``."""
        router_file = self.work / "router" / "classifier.safetensors"
        self._require(router_file, "router")
        with staged(out) as staging:
            (staging / "router").mkdir()
            shutil.copy2(router_file, staging / "router" / "classifier.safetensors")
            specs = {}
            for task in self.inputs.tasks:
                source, target = self.task_dir(task), staging / "tasks" / task
                for required, step in (
                    ("base/head.safetensors", "phase1"),
                    ("heads.safetensors", "phase2"),
                    ("aggregator.safetensors", "phase3"),
                ):
                    self._require(source / required, step)
                shutil.copytree(source / "base", target / "base")
                shutil.copytree(source / "experts", target / "experts")
                shutil.copy2(source / "heads.safetensors", target / "heads.safetensors")
                shutil.copy2(source / "aggregator.safetensors", target / "aggregator.safetensors")
                norm = json.loads((source / "norm.json").read_text())
                if task not in self.state.get("expert_lora", {}):
                    raise FileNotFoundError(
                        f"no phase 2 record for task {task!r}: run `moerm train phase2` first"
                    )
                specs[task] = TaskSpec(
                    name=task,
                    capabilities=tuple(self.inputs.capabilities[task]),
                    lora=LoraSpec.from_json(self.state["expert_lora"][task]),
                    aggregator_hidden=self.settings.aggregator_width,
                    norm_mean=norm["mean"],
                    norm_std=norm["std"],
                    base_norm_mean=norm.get("base_mean", 0.0),
                    base_norm_std=norm.get("base_std", 1.0),
                    base_lora=LoraSpec.from_json(self.state["base_lora"][task]),
                )
            tasks = self.inputs.tasks
            manifest = Manifest(
                backbone=BackboneSpec(ref=self.settings.backbone, **self.info),
                router=RouterSpec(
                    embedder=self.settings.router_embedder,
                    embed_dim=self.state["router"]["embed_dim"],
                    tasks=tasks,
                    default_task=max(tasks, key=lambda t: sum(p.task == t for p in self.inputs.train)),
                    trained=True,
                ),
                tasks=specs,
                notes=json.dumps(
                    {
                        "created_by": "moerm train",
                        "trained": True,
                        "data": self.inputs.description,
                        "settings": self.state["settings"],
                        "timings_s": self.state["timings_s"],
                        "labels": self.state["labels"],
                    },
                    default=str,
                ),
            )
            seal(staging, manifest)
        return Bundle.load(out)


def load_reward_model(folder: str | Path, backbone_ref: str):
    """(RewardModel, tokenizer, lowest adapted layer) from a folder holding a
    peft adapter and ``head.safetensors`` (phase 1's layout)."""
    from peft import PeftModel

    from moerm.backbones import describe, load_backbone
    from moerm.experts import RewardModel, load_heads

    folder = Path(folder)
    info = describe(backbone_ref)
    backbone, tokenizer = load_backbone(backbone_ref)
    head = load_heads(folder / "head.safetensors", ["base"], info["hidden_size"])["base"]
    model = RewardModel(
        PeftModel.from_pretrained(backbone, str(folder), adapter_name="base"), head, info["pooling"]
    ).eval()
    adapter = json.loads((folder / "adapter_config.json").read_text())
    layers = adapter.get("layers_to_transform") or [0]
    return model, tokenizer, min(layers)


def train_all(
    inputs: RecipeInputs,
    settings: RecipeSettings,
    out: str | Path,
    *,
    work: str | Path | None = None,
    progress: bool = True,
) -> Bundle:
    """Every step into a bundle at ``out`` (work directory: ``work`` or a temp one)."""
    temporary = work is None
    work = Path(work or tempfile.mkdtemp(prefix="moerm-train-"))
    try:
        recipe = Recipe(work, inputs, settings, progress=progress)
        recipe.all()
        return recipe.assemble(out)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
