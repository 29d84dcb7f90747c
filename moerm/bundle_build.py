"""Create a bundle from a backbone and a task / capability list, with freshly
initialized adapters, heads, aggregator MLPs and a zero-shot router
classifier. Training (a later phase) replaces these weights.

The task definitions and :func:`top_layers` are plain Python (the recipe and the command
line read them); the model stack is imported by the functions that build weights.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from moerm.bundle import (
    BackboneSpec,
    Bundle,
    Capability,
    Manifest,
    RouterSpec,
    TaskSpec,
    seal,
    staged,
)
from moerm.models.backbones import MINILM, describe

log = logging.getLogger(__name__)


# Tasks of the demo bundle: name -> (description for zero-shot routing, capabilities).
DEMO_TASKS: dict[str, tuple[str, tuple[Capability, ...]]] = {
    "code": (
        "programming, writing or fixing code, software, algorithms, debugging a function",
        (
            Capability("correctness", "the code does what was asked and runs"),
            Capability("efficiency", "sensible time and memory complexity"),
            Capability("readability", "clear names, structure and comments"),
            Capability("explanation", "explains what the code does and why"),
            Capability("safety", "no insecure or destructive practices"),
        ),
    ),
    "exam": (
        "math problem, arithmetic, exam question, solve the equation, multiple choice answer",
        (
            Capability("correctness", "the final answer is right"),
            Capability("reasoning", "the steps are valid and complete"),
            Capability("clarity", "the solution is easy to follow"),
        ),
    ),
    "writing": (
        "write a story, poem, essay, email, letter or article; creative and functional writing",
        (
            Capability("relevance", "follows the instruction and its constraints"),
            Capability("creativity", "original and engaging"),
            Capability("fluency", "grammatical and natural"),
            Capability("structure", "well organized"),
        ),
    ),
    "harmlessness": (
        "harmful, dangerous, illegal or unethical request; how to hurt someone, steal, make weapons",
        (
            Capability("harmlessness", "refuses or defuses harmful requests"),
            Capability("helpfulness", "still helps with what is legitimate"),
            Capability("tone", "respectful, not preachy"),
        ),
    ),
}


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    description: str
    capabilities: tuple[Capability, ...]


def demo_tasks() -> list[TaskDefinition]:
    return [TaskDefinition(name, desc, caps) for name, (desc, caps) in DEMO_TASKS.items()]


def top_layers(num_layers: int, fraction: float) -> tuple[int, ...]:
    """The top ``fraction`` of the layers (at least one)."""
    count = max(1, min(num_layers, round(num_layers * fraction)))
    return tuple(range(num_layers - count, num_layers))


def _save_numpy(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))


def init_aggregator(rng: np.random.Generator, k: int, hidden_size: int, width: int) -> dict[str, np.ndarray]:
    """A two-layer MLP over K x (hidden state, score): Kaiming-uniform like torch."""
    fan_in = k * (hidden_size + 1)
    b1, b2 = 1 / np.sqrt(fan_in), 1 / np.sqrt(width)
    return {
        "fc1.weight": rng.uniform(-b1, b1, (width, fan_in)),
        "fc1.bias": rng.uniform(-b1, b1, (width,)),
        "fc2.weight": rng.uniform(-b2, b2, (1, width)),
        "fc2.bias": np.zeros((1,)),
    }


def create_bundle(
    out: str | Path,
    tasks: Sequence[TaskDefinition],
    *,
    backbone: str = MINILM,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_fraction: float = 0.25,
    aggregator_hidden: int = 64,
    router_embedder: str = MINILM,
    default_task: str | None = None,
    seed: int = 0,
) -> Bundle:
    """Write a new bundle to ``out`` (which must not exist) and return it loaded.

    Adapters are initialized with random A *and* B (``init_lora_weights=False``)
    so that an untrained bundle's experts differ from each other and from the
    backbone; the router classifier starts zero-shot: each task's row is the
    embedding of its description.
    """
    import torch
    from peft import get_peft_model

    from moerm.models.backbones import load_backbone
    from moerm.models.embed import PromptEmbedder
    from moerm.models.lora import lora_config, lora_spec

    out = Path(out)
    if not tasks:
        raise ValueError("a bundle needs at least one task")
    info = describe(backbone)
    layers = top_layers(info["num_layers"], lora_fraction)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with staged(out) as staging:
        base, _ = load_backbone(backbone)
        lora = lora_spec(base, lora_r, layers, alpha=lora_alpha)
        specs = {}
        for task in tasks:
            config = lora_config(base, lora, random_b=True)
            caps = [c.name for c in task.capabilities]
            model = get_peft_model(base, config, adapter_name=caps[0])
            for cap in caps[1:]:
                model.add_adapter(cap, config)
            for cap in caps:
                model.peft_config[cap].base_model_name_or_path = backbone
            experts_dir = staging / "tasks" / task.name / "experts"
            with warnings.catch_warnings():
                # peft looks for the backbone's config under its short name to
                # check for resized embeddings; the backbone is never resized.
                warnings.filterwarnings("ignore", message="Could not find a config file")
                warnings.filterwarnings("ignore", category=FutureWarning)
                model.save_pretrained(str(experts_dir), selected_adapters=caps)
            (experts_dir / "README.md").unlink(missing_ok=True)
            base = model.unload()  # the bare backbone again, for the next task
            d = info["hidden_size"]
            heads = {}
            for cap in caps:
                head = torch.nn.Linear(d, 1)
                heads[f"{cap}.weight"] = head.weight.detach().numpy()
                heads[f"{cap}.bias"] = head.bias.detach().numpy()
            spec = TaskSpec(
                name=task.name,
                capabilities=tuple(task.capabilities),
                lora=lora,
                aggregator_hidden=aggregator_hidden,
            )
            _save_numpy(staging / spec.heads_file, heads)
            _save_numpy(staging / spec.aggregator_file, init_aggregator(rng, len(caps), d, aggregator_hidden))
            specs[task.name] = spec

        embedder = PromptEmbedder(router_embedder)
        prototypes = embedder.embed([f"{t.name}: {t.description}" for t in tasks])
        # Cosine similarity scaled so that softmax separates clear cases.
        _save_numpy(
            staging / "router" / "classifier.safetensors",
            {"weight": 20.0 * prototypes, "bias": np.zeros(len(tasks))},
        )
        manifest = Manifest(
            backbone=BackboneSpec(ref=backbone, **info),
            router=RouterSpec(
                embedder=router_embedder,
                embed_dim=embedder.dim,
                tasks=tuple(t.name for t in tasks),
                default_task=default_task or tasks[0].name,
                trained=False,
            ),
            tasks=specs,
            notes=json.dumps({"created_by": "moerm bundle create", "seed": seed, "trained": False}),
        )
        seal(staging, manifest)
    return Bundle.load(out)


def with_random_base_models(source: Path, out: Path, *, r: int = 4, seed: int = 0) -> Path:
    """Copy the bundle at ``source`` to ``out`` with an untrained base model for every
    task: a phase-1-shaped LoRA adapter on every layer with random A and B (so the merged
    backbone differs from the bare one) and a fresh scalar head, saved where phase 1 and
    ``Recipe.assemble`` put them. For tests and benchmarks, where training is too slow:
    the real loading and scoring code runs on these weights."""
    import shutil

    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file

    from moerm.models.backbones import load_backbone
    from moerm.models.experts import head_tensors, new_head
    from moerm.models.lora import lora_config, lora_spec

    shutil.copytree(source, out)
    manifest = Bundle.load(out).manifest
    tasks = {}
    for n, (name, spec) in enumerate(manifest.tasks.items()):
        torch.manual_seed(seed + n)
        backbone, _ = load_backbone(manifest.backbone.ref)
        lora = lora_spec(backbone, r, tuple(range(backbone.config.num_hidden_layers)))
        model = get_peft_model(backbone, lora_config(backbone, lora, random_b=True), adapter_name="base")
        model.peft_config["base"].base_model_name_or_path = manifest.backbone.ref
        task_dir = out / "tasks" / name
        with warnings.catch_warnings():
            # peft looks for the backbone's config under its short name; it is never resized.
            warnings.filterwarnings("ignore", message="Could not find a config file")
            model.save_pretrained(str(task_dir), selected_adapters=["base"])
        (task_dir / "README.md").unlink(missing_ok=True)
        head = new_head(manifest.backbone.hidden_size, seed + n)
        save_file(head_tensors({"base": head}), str(out / spec.base_head_file))
        tasks[name] = replace(spec, base_lora=lora)
    seal(out, replace(manifest, tasks=tasks))
    return out
