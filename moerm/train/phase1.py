"""Phase 1: a task base reward model per task (backbone + a task-level LoRA
adapter + a scalar head), Bradley-Terry on the task's human pairs.

The adapter, not a backbone copy, goes into the bundle; it is merged into the
backbone at load (:func:`moerm.models.loading.load_task_backbone`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from peft import get_peft_model
from safetensors.torch import save_file

from moerm.bundle import LoraSpec
from moerm.models.backbones import load_backbone
from moerm.models.experts import RewardModel, head_tensors, new_head
from moerm.models.lora import lora_config, lora_spec
from moerm.train.loop import (
    Comparison,
    Curve,
    PairTokenizer,
    TrainSettings,
    seed_everything,
    train_comparisons,
)
from moerm.train.trunk import TrunkCache, TrunkPairEncoder

log = logging.getLogger(__name__)


@dataclass
class BaseModelResult:
    spec: LoraSpec
    curve: Curve


def train_base_model(
    name: str,
    backbone_ref: str,
    train: list[Comparison],
    validation: list[Comparison],
    settings: TrainSettings,
    *,
    r: int,
    pooling: str,
    out_dir: Path,
    layers: tuple[int, ...] | None = None,
    trunk: TrunkCache | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> BaseModelResult:
    """Train one reward model (LoRA on ``layers``, default every layer, + head)
    and write the peft adapter to ``out_dir/base/`` and its head to
    ``out_dir/base/head.safetensors``.

    With a ``trunk`` cache (depth at most the lowest adapted layer) only the
    layers above the trunk run. Used for each task's base model and for the
    one-model-for-all baseline.
    """

    seed_everything(settings.seed)
    backbone, tokenizer = load_backbone(backbone_ref)
    spec = lora_spec(backbone, r, layers or tuple(range(backbone.config.num_hidden_layers)))
    if trunk is not None and trunk.depth > min(spec.layers):
        raise ValueError(
            f"{name}: trunk depth {trunk.depth} is above the lowest adapted layer {min(spec.layers)}"
        )
    peft_model = get_peft_model(backbone, lora_config(backbone, spec), adapter_name="base")
    model = RewardModel(peft_model, new_head(backbone.config.hidden_size, settings.seed), pooling)
    encoder = TrunkPairEncoder(trunk) if trunk is not None else PairTokenizer(tokenizer, settings.max_length)
    curve = train_comparisons(
        name,
        model,
        model,
        encoder,
        train,
        validation,
        settings,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    peft_model.peft_config["base"].base_model_name_or_path = backbone_ref
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), selected_adapters=["base"])
    (out_dir / "README.md").unlink(missing_ok=True)
    save_file(head_tensors({"base": model.head}), str(out_dir / "base" / "head.safetensors"))
    return BaseModelResult(spec=spec, curve=curve)


def remove_base(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "base", ignore_errors=True)
