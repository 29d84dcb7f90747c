"""The training-time trunk cache: the lower layers computed once per text give
the same training and the same evaluation as running the whole backbone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from moerm.train.loop import TrainSettings
from moerm.train.phase1 import train_base_model
from moerm.train.recipe import Recipe, comparisons
from moerm.train.trunk import TrunkCache, TrunkPairEncoder
from tests.synthetic_recipe import SETTINGS, synthetic_inputs

TOP = (3, 4, 5)  # MiniLM has 6 layers


def test_cache_batches_match_lengths_and_are_reused():
    data = comparisons(synthetic_inputs(8).train)[:6]
    cache = TrunkCache("minilm", 3, 64)
    encoder = TrunkPairEncoder(cache)
    ids, mask, trunk = encoder(data)
    assert trunk.depth == 3 and trunk.states.shape == (*ids.shape, 384)
    # Padding positions stay zero; real positions carry states.
    assert float(trunk.states[mask == 0].abs().sum()) == 0.0
    assert float(trunk.states[mask == 1].abs().min(dim=-1).values.max()) > 0.0
    computed = cache.computed_tokens
    encoder(data)  # second time: nothing recomputed
    assert cache.computed_tokens == computed
    with pytest.raises(ValueError, match="at least 1"):
        TrunkCache("minilm", 0, 64)


def test_training_with_the_cache_equals_training_without(tmp_path):
    """Same layers adapted, same seed: the cached lower layers change nothing
    beyond float rounding (different batch shapes). The head's bias is left out: a
    pairwise loss cancels it, so its gradient is only rounding noise, which Adam scales
    up to steps of about lr in either direction (0.0005 apart on one CPU, equal on
    another); it never changes a comparison."""
    data = comparisons([p for p in synthetic_inputs(16).train if p.task == "code"])
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=4, max_length=64)
    kwargs = dict(r=4, pooling="mean", layers=TOP)
    train_base_model("plain", "minilm", data, [], settings, out_dir=tmp_path / "plain", **kwargs)
    cache = TrunkCache("minilm", min(TOP), 64)
    train_base_model(
        "cached", "minilm", data, [], settings, out_dir=tmp_path / "cached", trunk=cache, **kwargs
    )
    assert cache.computed_tokens > 0
    for name in ("adapter_model.safetensors", "head.safetensors"):
        plain = load_file(str(tmp_path / "plain" / "base" / name))
        cached = load_file(str(tmp_path / "cached" / "base" / name))
        assert plain.keys() == cached.keys()
        moved = 0.0
        for key in plain:
            if key.endswith("bias") and name == "head.safetensors":
                assert float((cached[key] - plain[key]).abs().max()) <= settings.lr * 2 * len(data)
                continue
            torch.testing.assert_close(cached[key], plain[key], atol=2e-5, rtol=1e-4)
            moved = max(moved, float(plain[key].abs().max()))
        assert moved > 1e-3  # training changed the weights, so the comparison can fail
    with pytest.raises(ValueError, match="above the lowest adapted layer"):
        train_base_model(
            "bad",
            "minilm",
            data,
            [],
            settings,
            out_dir=tmp_path / "bad",
            trunk=TrunkCache("minilm", 4, 64),
            **kwargs,
        )


def test_recipe_with_top_layer_base_adapters_and_its_evaluation(tmp_path):
    """base_fraction < 1: every step runs on the cached trunk; the bundle's
    evaluation margins are the same with and without the cache."""
    from moerm.evaluate.systems import bundle_trunk_depth, single_margins, task_margins

    settings = dataclasses.replace(
        SETTINGS, base_fraction=0.5, phase1=dataclasses.replace(SETTINGS.phase1, epochs=1)
    )
    inputs = synthetic_inputs(8)
    recipe = Recipe(tmp_path / "work", inputs, settings, progress=False)
    assert recipe.base_layers == TOP and recipe.trunk_depth == 3
    recipe.all()
    assert recipe.state["timings_s"]["trunk_cache"] > 0
    bundle = recipe.assemble(tmp_path / "bundle")
    assert bundle_trunk_depth(bundle) == 3
    assert all(spec.base_lora.layers == TOP for spec in bundle.manifest.tasks.values())
    task = "code"
    pairs = [p for p in inputs.validation if p.task == task and not p.tie]
    cache = TrunkCache("minilm", 3, settings.phase1.max_length)
    with_cache = task_margins(bundle, task, pairs, settings.phase1.max_length, cache)
    without = task_margins(bundle, task, pairs, settings.phase1.max_length)
    assert with_cache.keys() == without.keys()
    for system in without:
        torch.testing.assert_close(
            torch.tensor(with_cache[system]), torch.tensor(without[system]), atol=1e-4, rtol=0
        )
    model, tokenizer, lowest = recipe.load_single()
    assert lowest == 3
    torch.testing.assert_close(
        torch.tensor(single_margins(model, tokenizer, pairs, settings.phase1.max_length, cache)),
        torch.tensor(single_margins(model, tokenizer, pairs, settings.phase1.max_length)),
        atol=1e-4,
        rtol=0,
    )
