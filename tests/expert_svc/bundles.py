"""Test bundles with task base models, built without training.

Training is too slow for the service tests, so :func:`with_base_models` gives each
task of a bundle a phase-1-shaped base model: a LoRA adapter initialized with random
A and B (so the merged backbone differs from the bare one) and a fresh scalar head,
saved exactly where phase 1 and ``Recipe.assemble`` put them. Not a fake of the
scorer: the real loading and scoring code runs on these weights.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

from moerm.bundle import Bundle, seal


def with_base_models(source: Path, out: Path, *, r: int = 4, seed: int = 0) -> Path:
    """Copy the bundle at ``source`` to ``out`` with a base model for every task."""
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file

    from moerm.backbones import load_backbone
    from moerm.train.models import head_tensors, lora_config, lora_spec, new_head

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
