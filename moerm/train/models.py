"""Building trainable models: LoRA configs per backbone family, fresh heads."""

from __future__ import annotations

import torch
from torch import nn

from moerm.bundle import LoraSpec
from moerm.bundle_build import TARGET_MODULES
from moerm.experts import find_layer_list


def lora_spec(model: nn.Module, r: int, layers: tuple[int, ...], alpha: int | None = None) -> LoraSpec:
    family = model.config.model_type
    if family not in TARGET_MODULES:
        raise ValueError(f"no LoRA target modules known for model type {family!r}")
    return LoraSpec(r=r, alpha=alpha or 2 * r, target_modules=TARGET_MODULES[family], layers=layers)


def lora_config(model: nn.Module, spec: LoraSpec, *, random_b: bool = False):
    """A peft LoraConfig for ``spec``. ``random_b`` makes the adapter non-zero
    at initialization (for untrained bundles); training starts from B = 0."""
    from peft import LoraConfig

    layer_list = find_layer_list(model, model.config.num_hidden_layers)[1]
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=list(spec.layers),
        layers_pattern=layer_list,
        init_lora_weights=not random_b,
    )


def new_head(hidden_size: int, seed: int) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.normal_(0.0, hidden_size**-0.5, generator=generator)
        head.bias.zero_()
    return head


def head_tensors(heads: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    out = {}
    for name, head in heads.items():
        out[f"{name}.weight"] = head.weight.detach().contiguous().clone()
        out[f"{name}.bias"] = head.bias.detach().contiguous().clone()
    return out
