"""LoRA adapters of a backbone: which modules and layers carry them (the family table of
:mod:`moerm.models.backbones`), as a bundle's :class:`~moerm.bundle.LoraSpec` and as
peft's ``LoraConfig``."""

from __future__ import annotations

from peft import LoraConfig
from torch import nn

from moerm.bundle import LoraSpec
from moerm.models.backbones import family
from moerm.models.experts import find_layer_list


def lora_spec(model: nn.Module, r: int, layers: tuple[int, ...], alpha: int | None = None) -> LoraSpec:
    """Rank ``r`` adapters on the family's query and value projections of ``layers``."""
    targets = family(model.config.model_type).lora_targets
    return LoraSpec(r=r, alpha=alpha or 2 * r, target_modules=targets, layers=layers)


def lora_config(model: nn.Module, spec: LoraSpec, *, random_b: bool = False) -> LoraConfig:
    """A peft LoraConfig for ``spec``. ``random_b`` makes the adapter non-zero
    at initialization (for untrained bundles); training starts from B = 0."""
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
