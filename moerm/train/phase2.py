"""Phase 2: one LoRA expert + scalar head per capability of a task, trained
with Bradley-Terry on the capability labels (judge labels that survived the
swap check), on top of the task's phase-1 backbone.

Adapters sit on the top layers only (``LoraSpec.layers``) so that the serving
scorer runs the lower layers once for all K experts. Each head starts from the
task base head. A capability with fewer than ``min_labels`` labels keeps an
identity adapter (B = 0) and the base head, i.e. it equals the task base model,
and is reported as untrained.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

from peft import get_peft_model
from safetensors.torch import save_file
from torch import nn

from moerm.bundle import LoraSpec
from moerm.models.experts import RewardModel, head_tensors
from moerm.models.lora import lora_config
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
class ExpertsResult:
    spec: LoraSpec
    curves: dict[str, Curve] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # capability -> training labels
    trained: dict[str, bool] = field(default_factory=dict)
    peft_model: object = None  # the task backbone with all K adapters (for phase 3)
    heads: dict[str, nn.Linear] = field(default_factory=dict)


def train_experts(
    task: str,
    backbone,
    tokenizer,
    base_head: nn.Linear,
    capabilities: tuple[str, ...],
    spec: LoraSpec,
    train: dict[str, list[Comparison]],
    validation: dict[str, list[Comparison]],
    settings: TrainSettings,
    *,
    pooling: str,
    backbone_ref: str,
    out_dir: Path,
    min_labels: int = 8,
    trunk: TrunkCache | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> ExpertsResult:
    """Train the K experts of ``task`` (``backbone`` has the task adapter merged;
    a ``trunk`` cache, if given, holds the bare backbone's states below every
    adapted layer).

    Writes ``out_dir/experts/<cap>/`` (peft) and ``out_dir/heads.safetensors``.
    """

    seed_everything(settings.seed)
    config = lora_config(backbone, spec)
    peft_model = get_peft_model(backbone, config, adapter_name=capabilities[0])
    for cap in capabilities[1:]:
        peft_model.add_adapter(cap, config)
    heads = {cap: copy.deepcopy(base_head) for cap in capabilities}
    encoder = TrunkPairEncoder(trunk) if trunk is not None else PairTokenizer(tokenizer, settings.max_length)
    result = ExpertsResult(spec=spec)
    for cap in capabilities:
        examples = train.get(cap, [])
        result.labels[cap] = len(examples)
        if len(examples) < min_labels:
            log.warning(
                "%s/%s: %d labels (< %d); the expert stays equal to the task base model",
                task,
                cap,
                len(examples),
                min_labels,
            )
            result.trained[cap] = False
            continue
        peft_model.set_adapter(cap)  # only this adapter's weights are trainable
        head = heads[cap]
        for p in head.parameters():
            p.requires_grad_(True)
        expert = RewardModel(peft_model, head, pooling)
        result.curves[cap] = train_comparisons(
            f"{task}-{cap}",
            expert,
            expert,
            encoder,
            examples,
            validation.get(cap, []),
            settings,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
        )
        for p in head.parameters():
            p.requires_grad_(False)
        result.trained[cap] = True
    for cap in capabilities:
        peft_model.peft_config[cap].base_model_name_or_path = backbone_ref
    experts_dir = out_dir / "experts"
    peft_model.save_pretrained(str(experts_dir), selected_adapters=list(capabilities))
    (experts_dir / "README.md").unlink(missing_ok=True)
    save_file(head_tensors(heads), str(out_dir / "heads.safetensors"))
    result.peft_model = peft_model
    result.heads = heads
    return result
