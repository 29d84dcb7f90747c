"""Loading a task's models from files: one loader for a bundle (serving, evaluation) and
for a training work directory (the recipe), which lay the same files out in different
folders.

A task has a backbone with phase 1's base adapter merged into it (when trained), K
capability adapters with their heads (the experts), and the base model's own head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel

from moerm.errors import BundleError
from moerm.models.backbones import describe, load_backbone
from moerm.models.experts import CapabilityExperts, RewardModel, load_heads


@dataclass(frozen=True)
class TaskFiles:
    """Where one task's models lie. ``base_adapter``: phase 1's adapter folder (None: the
    bare backbone); ``base_head``: its head file (with a ``base`` head); ``experts``:
    capability -> adapter folder, in output order; ``heads``: the capabilities' heads."""

    backbone: str
    hidden_size: int
    num_layers: int
    pooling: str
    lora_layers: tuple[int, ...] = ()
    base_adapter: Path | None = None
    base_head: Path | None = None
    experts: dict[str, Path] | None = None
    heads: Path | None = None

    @classmethod
    def of_bundle(cls, bundle, task: str) -> TaskFiles:
        manifest = bundle.manifest
        spec = manifest.task(task)
        trained = spec.base_lora is not None
        return cls(
            backbone=manifest.backbone.ref,
            hidden_size=manifest.backbone.hidden_size,
            num_layers=manifest.backbone.num_layers,
            pooling=manifest.backbone.pooling,
            lora_layers=tuple(spec.lora.layers),
            base_adapter=bundle.path(spec.base_dir) if trained else None,
            base_head=bundle.path(spec.base_head_file) if trained else None,
            experts={cap: bundle.path(spec.expert_dir(cap)) for cap in spec.capability_names},
            heads=bundle.path(spec.heads_file),
        )

    @classmethod
    def of_backbone(cls, backbone: str, **fields) -> TaskFiles:
        """Sizes and pooling read from the backbone's config."""
        info = describe(backbone)
        return cls(
            backbone=backbone,
            hidden_size=info["hidden_size"],
            num_layers=info["num_layers"],
            pooling=info["pooling"],
            **fields,
        )


def _adapter(model, folder: Path, name: str, what: str):
    """``model`` with the adapter in ``folder`` (a PeftModel after the first one)."""
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(folder), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    except Exception as error:  # peft raises several types for bad files
        raise BundleError(f"{folder}: cannot load {what} ({type(error).__name__}: {error})") from None


def load_task_backbone(files: TaskFiles, dtype=None):
    """(backbone, tokenizer): the backbone (in ``dtype``, a torch dtype, when given) with
    the base adapter merged into it when there is one."""
    backbone, tokenizer = load_backbone(files.backbone, dtype)
    if files.base_adapter is not None:
        backbone = _adapter(backbone, files.base_adapter, "base", "the task base adapter").merge_and_unload()
    return backbone, tokenizer


def load_experts(files: TaskFiles, dtype=None):
    """(CapabilityExperts, tokenizer): the backbone loaded once (in ``dtype`` when given;
    the heads stay float32) with the K adapters attached."""
    if not files.experts:
        raise BundleError(f"no capability experts for {files.backbone}")
    backbone, tokenizer = load_task_backbone(files, dtype)
    model = backbone
    for cap, folder in files.experts.items():
        model = _adapter(model, folder, cap, "a LoRA adapter")
    caps = tuple(files.experts)
    heads = load_heads(files.heads, caps, files.hidden_size)
    experts = CapabilityExperts(model, heads, caps, files.lora_layers, files.num_layers, files.pooling)
    return experts.eval(), tokenizer


def load_base_model(files: TaskFiles, *, merge: bool = True, dtype=None):
    """(RewardModel, tokenizer, lowest adapted layer): phase 1's task base model alone.
    ``merge`` False keeps the adapter apart, so the layers under it are the bare
    backbone's (what a trunk cache needs)."""
    if files.base_adapter is None or files.base_head is None:
        raise BundleError(f"{files.backbone}: no task base model (untrained)")
    head = load_heads(files.base_head, ["base"], files.hidden_size)["base"]
    if merge:
        backbone, tokenizer = load_task_backbone(files, dtype)
    else:
        bare, tokenizer = load_backbone(files.backbone, dtype)
        backbone = _adapter(bare, files.base_adapter, "base", "the task base adapter")
    config = json.loads((Path(files.base_adapter) / "adapter_config.json").read_text())
    lowest = min(config.get("layers_to_transform") or [0])
    return RewardModel(backbone, head, files.pooling).eval(), tokenizer, lowest


def load_task_experts(bundle, task: str, dtype=None):
    """(CapabilityExperts, tokenizer) of one task of a :class:`moerm.bundle.Bundle`."""
    return load_experts(TaskFiles.of_bundle(bundle, task), dtype)


def load_task_base_model(bundle, task: str):
    """(RewardModel, tokenizer): one task's base reward model, merged."""
    files = TaskFiles.of_bundle(bundle, task)
    if files.base_adapter is None:
        raise BundleError(f"{bundle.root}: task {task!r} has no base model (untrained bundle)")
    model, tokenizer, _ = load_base_model(files)
    return model, tokenizer
