"""The backbone family table: one place for what moerm knows about a family."""

from __future__ import annotations

import pytest

from moerm.errors import BundleError
from moerm.models.backbones import FAMILIES, describe, family, load_backbone


@pytest.mark.parametrize(
    ("ref", "kind", "pooling", "context"),
    [("minilm", "encoder", "mean", 512), ("smollm2", "decoder", "last", 8192)],
)
def test_packaged_backbones_are_described_from_their_family(ref, kind, pooling, context) -> None:
    info = describe(ref)
    assert (info["kind"], info["pooling"], info["max_length"]) == (kind, pooling, context)


@pytest.mark.parametrize("ref", ["minilm", "smollm2"])
def test_lora_targets_exist_in_every_layer_of_the_packaged_backbones(ref) -> None:
    model, _ = load_backbone(ref)
    targets = family(model.config.model_type).lora_targets
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(targets) <= names
    per_target = {t: sum(name.endswith("." + t) for name, _ in model.named_modules()) for t in targets}
    assert set(per_target.values()) == {model.config.num_hidden_layers}


def test_every_decoder_family_names_its_model_types_once() -> None:
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types))
    assert family("qwen2").lora_targets == family("llama").lora_targets == ("q_proj", "v_proj")
    assert family("llama").shares_prefixes and not family("bert").shares_prefixes
    with pytest.raises(BundleError, match="not supported"):
        family("t5")
