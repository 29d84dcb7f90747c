"""The DeepSpeed option (ZeRO stage 2, gloo, CPU) trains to the same weights as plain PyTorch."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import load_file

from moerm.train.loop import TrainSettings
from moerm.train.recipe import comparisons
from tests.synthetic_recipe import synthetic_inputs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"),
]


def test_zero2_matches_plain_training(tmp_path):
    from moerm.train.phase1 import train_base_model

    data = comparisons([p for p in synthetic_inputs(8).train if p.task == "exam"])
    plain = TrainSettings(epochs=1, lr=1e-3, batch_size=4, max_length=48)
    zero2 = TrainSettings(epochs=1, lr=1e-3, batch_size=4, max_length=48, deepspeed=True)
    train_base_model("plain", "minilm", data, [], plain, r=4, pooling="mean", out_dir=tmp_path / "plain")
    result = train_base_model(
        "zero2",
        "minilm",
        data,
        [],
        zero2,
        r=4,
        pooling="mean",
        out_dir=tmp_path / "ds",
        checkpoint_dir=tmp_path / "ckpt",
    )
    assert result.curve.epochs[0]["train_loss"] > 0
    assert (tmp_path / "ckpt" / "zero2" / "state.json").is_file()
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a = load_file(str(tmp_path / "plain" / "base" / name))
        b = load_file(str(tmp_path / "ds" / "base" / name))
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), key
    # Training moved the weights (so the comparison is not between two untouched copies).
    from moerm.models.experts import new_head

    head = load_file(str(tmp_path / "ds" / "base" / "head.safetensors"))["base.weight"]
    assert not torch.allclose(head, new_head(384, zero2.seed).weight, atol=1e-4)
