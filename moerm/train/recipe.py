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
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from moerm.bundle import (
    BackboneSpec,
    Bundle,
    LoraSpec,
    Manifest,
    RouterSpec,
    TaskSpec,
    seal,
    staged,
)
from moerm.bundle_build import top_layers
from moerm.data.records import CapabilityLabel, ClassifierExample, PreferencePair
from moerm.models.backbones import describe
from moerm.models.embed import PromptEmbedder
from moerm.models.experts import load_heads
from moerm.models.loading import TaskFiles, load_base_model, load_experts, load_task_backbone
from moerm.models.lora import lora_spec
from moerm.text import render_conversation
from moerm.train.classifier import prompt_text, train_classifier
from moerm.train.loop import PairTokenizer
from moerm.train.phase1 import train_base_model
from moerm.train.phase2 import train_experts
from moerm.train.phase3 import base_reward_norm, expert_features, train_aggregator
from moerm.train.settings import Comparison, RecipeInputs, RecipeSettings
from moerm.train.trunk import TrunkCache, TrunkPairEncoder

log = logging.getLogger(__name__)


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
        return top_layers(self.info["num_layers"], self.settings.base_fraction)

    @property
    def trunk_depth(self) -> int:
        """Layers below every adapter of the run (task base, baseline, experts)."""

        expert = top_layers(self.info["num_layers"], self.settings.expert_fraction)
        return min(min(self.base_layers), min(expert))

    def trunk(self):
        """The run's :class:`moerm.train.trunk.TrunkCache` (None when every layer is
        adapted), created on first use and filled with every training and
        validation text in one length-sorted pass."""
        if self.trunk_depth == 0:
            return None
        if self._trunk is None:
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
        result = train_classifier(
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

    def task_files(self, task: str) -> TaskFiles:
        """Where the work directory keeps this task's models (phase 1 and phase 2 outputs)."""
        base_dir = self.task_dir(task) / "base"
        caps = tuple(c.name for c in self.inputs.capabilities[task])
        layers = top_layers(self.info["num_layers"], self.settings.expert_fraction)
        return TaskFiles(
            backbone=self.settings.backbone,
            hidden_size=self.info["hidden_size"],
            num_layers=self.info["num_layers"],
            pooling=self.info["pooling"],
            lora_layers=layers,
            base_adapter=base_dir,
            base_head=base_dir / "head.safetensors",
            experts={cap: self.task_dir(task) / "experts" / cap for cap in caps},
            heads=self.task_dir(task) / "heads.safetensors",
        )

    def _task_backbone(self, task: str):
        files = self.task_files(task)
        self._require(files.base_adapter / "adapter_model.safetensors", "phase1")
        backbone, tokenizer = load_task_backbone(files)
        head = load_heads(files.base_head, ["base"], files.hidden_size)["base"]
        return backbone, tokenizer, head

    def expert_spec(self, backbone) -> LoraSpec:
        return lora_spec(
            backbone,
            self.settings.expert_r,
            top_layers(self.info["num_layers"], self.settings.expert_fraction),
        )

    def phase2(self, tasks: tuple[str, ...] | None = None) -> None:
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
        files = self.task_files(task)
        self._require(files.base_adapter / "adapter_model.safetensors", "phase1")
        self._require(files.heads, "phase2")
        return load_experts(files)

    def phase3(self, tasks: tuple[str, ...] | None = None) -> None:
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
    """(RewardModel, tokenizer, lowest adapted layer) from a folder holding a peft adapter
    and ``head.safetensors`` (phase 1's layout), the adapter kept apart from the backbone."""
    folder = Path(folder)
    files = TaskFiles.of_backbone(backbone_ref, base_adapter=folder, base_head=folder / "head.safetensors")
    return load_base_model(files, merge=False)


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
