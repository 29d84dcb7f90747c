"""The training recipe: loss direction, heads trained and saved, reload to
identical scores, resumable checkpoints, the router classifier, the aggregator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moerm.bundle import Bundle
from moerm.errors import BundleError
from moerm.models.experts import RewardModel
from moerm.models.loading import load_task_base_model, load_task_experts
from moerm.train.loop import PairTokenizer, TrainSettings, bradley_terry_loss, pairwise_accuracy
from moerm.train.recipe import comparisons
from tests.synthetic_recipe import synthetic_inputs


def test_bradley_terry_loss_value_and_direction():
    chosen = torch.tensor([1.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    expected = (np.log1p(np.exp(-1.0)) + np.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Minimizing the loss raises the chosen score and lowers the rejected one.
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def _margins(model: RewardModel, encoder: PairTokenizer, items) -> float:
    with torch.inference_mode():
        ids, mask = encoder(items)
        r = model(ids, mask)
    n = len(items)
    return float((r[:n] - r[n:]).mean())


@pytest.mark.parametrize("flip", [False, True])
def test_rank_direction_follows_the_data(tmp_path, flip):
    """Training on pairs marked chosen-better raises chosen over rejected; with
    the labels flipped, the same data trains the other way."""
    from peft import PeftModel

    from moerm.models.backbones import load_backbone
    from moerm.models.experts import load_heads, new_head
    from moerm.train.loop import Comparison
    from moerm.train.phase1 import train_base_model

    pairs = [p for p in synthetic_inputs(24).train if p.task == "exam"]
    data = comparisons(pairs)
    if flip:
        data = [Comparison(c.turns, c.worse, c.better) for c in data]
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=8, max_length=64)
    backbone, tokenizer = load_backbone("minilm")
    encoder = PairTokenizer(tokenizer, 64)
    # Before training: the bare backbone (LoRA starts at B = 0) and the same seeded head.
    before = _margins(RewardModel(backbone, new_head(384, settings.seed), "mean").eval(), encoder, data)
    train_base_model("dir", "minilm", data, [], settings, r=4, pooling="mean", out_dir=tmp_path)
    backbone, _ = load_backbone("minilm")
    head = load_heads(tmp_path / "base" / "head.safetensors", ["base"], 384)["base"]
    trained = RewardModel(PeftModel.from_pretrained(backbone, str(tmp_path / "base")), head, "mean").eval()
    after = _margins(trained, encoder, data)
    assert after - before > 0.2  # the side the data prefers moved up
    assert pairwise_accuracy(trained, encoder, data) >= 0.9


def test_resumed_training_equals_uninterrupted(tmp_path):
    from moerm.train.phase1 import train_base_model

    data = comparisons([p for p in synthetic_inputs(12).train if p.task == "code"])
    two = TrainSettings(epochs=2, lr=1e-3, batch_size=4, max_length=64)
    one = TrainSettings(epochs=1, lr=1e-3, batch_size=4, max_length=64)
    train_base_model("straight", "minilm", data, [], two, r=4, pooling="mean", out_dir=tmp_path / "a")
    ckpt = tmp_path / "ckpt"
    train_base_model(
        "resumed", "minilm", data, [], one, r=4, pooling="mean", out_dir=tmp_path / "b", checkpoint_dir=ckpt
    )
    state = json.loads((ckpt / "resumed" / "state.json").read_text())
    assert state["epoch"] == 0
    curve = train_base_model(
        "resumed", "minilm", data, [], two, r=4, pooling="mean", out_dir=tmp_path / "b", checkpoint_dir=ckpt
    )
    assert [e["epoch"] for e in curve.curve.epochs] == [1, 2]
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "base" / name)), load_file(str(tmp_path / "b" / "base" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_expert_heads_are_trained_and_saved(trained):
    recipe, bundle = trained
    base = load_file(str(bundle.path("tasks/harmlessness/base/head.safetensors")))
    heads = load_file(str(bundle.path("tasks/harmlessness/heads.safetensors")))
    # "harmlessness" had labels: its head moved away from the base head it started from.
    assert not torch.equal(heads["harmlessness.weight"], base["base.weight"])
    # "tone" had none: it stays the base head (and an identity adapter), reported as untrained.
    assert torch.equal(heads["tone.weight"], base["base.weight"])
    notes = json.loads(bundle.manifest.notes)
    assert notes["labels"]["harmlessness"]["trained"] == {"harmlessness": True, "tone": False}
    experts, _ = load_task_experts(bundle, "harmlessness")
    names = {n for n, _ in experts.named_parameters()}
    assert {"heads.harmlessness.weight", "heads.tone.weight"} <= names


def test_saved_bundle_reloads_to_identical_scores(trained):
    recipe, bundle = trained
    pairs = [p for p in recipe.inputs.validation if p.task == "code"]
    in_work, tokenizer = recipe.load_experts("code")
    from_bundle, _ = load_task_experts(bundle, "code")
    again, _ = load_task_experts(Bundle.load(bundle.root), "code")
    encoder = PairTokenizer(tokenizer, 96)
    ids, mask = encoder(comparisons(pairs))
    with torch.inference_mode():
        a, b, c = in_work(ids, mask), from_bundle(ids, mask), again(ids, mask)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    assert torch.equal(b[0], c[0]) and torch.equal(b[1], c[1])


def test_trained_bundle_ranks_validation_pairs(trained):
    recipe, bundle = trained
    model, tokenizer = load_task_base_model(bundle, "exam")
    val = comparisons([p for p in recipe.inputs.validation if p.task == "exam"])
    assert pairwise_accuracy(model, PairTokenizer(tokenizer, 96), val) >= 0.75


def test_bundle_records_the_base_models_normalization(trained):
    """base_norm_mean/std put the base model's training rewards at mean 0, std 1."""
    recipe, bundle = trained
    spec = bundle.manifest.task("code")
    model, tokenizer = load_task_base_model(bundle, "code")
    train = comparisons([p for p in recipe.inputs.train if p.task == "code"])
    with torch.inference_mode():
        rewards = torch.cat(
            [model(*PairTokenizer(tokenizer, 96)(train[i : i + 16])) for i in range(0, len(train), 16)]
        )
    normalized = (rewards - spec.base_norm_mean) / spec.base_norm_std
    assert spec.base_norm_std != 1.0
    assert float(normalized.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalized.std(correction=0)) == pytest.approx(1.0, abs=1e-4)


def test_run_json_records_every_phase(trained):
    recipe, _ = trained
    state = json.loads((recipe.work / "run.json").read_text())
    keys = set(state["timings_s"])
    assert "router" in keys
    for task in recipe.inputs.tasks:
        assert {f"phase1/{task}", f"phase2/{task}", f"phase3/{task}"} <= keys
    assert state["router"]["val_accuracy"] >= 0.9  # synthetic prompts are easy to tell apart


def test_missing_or_corrupt_base_adapter_names_the_file(trained, tmp_path):
    _, bundle = trained
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    target = copy / "tasks" / "exam" / "base" / "adapter_model.safetensors"
    target.write_bytes(b"not a safetensors file")
    with pytest.raises(BundleError, match="tasks/exam/base/adapter_model.safetensors"):
        Bundle.load(copy)
    target.unlink()
    with pytest.raises(BundleError, match="tasks/exam/base/adapter_model.safetensors"):
        Bundle.load(copy)


def test_phase_steps_check_their_inputs(tmp_path):
    from moerm.train.recipe import Recipe
    from tests.synthetic_recipe import SETTINGS

    recipe = Recipe(tmp_path / "w", synthetic_inputs(4), SETTINGS, progress=False)
    with pytest.raises(FileNotFoundError, match="moerm train phase1"):
        recipe.phase2(("code",))
    with pytest.raises(FileNotFoundError, match="moerm train router"):
        recipe.assemble(tmp_path / "out")


def test_aggregator_folds_standardization_exactly():
    """The saved MLP takes raw expert outputs: its validation accuracy equals
    the best one seen during (standardized) training."""
    from moerm.train.phase3 import train_aggregator

    rng = np.random.default_rng(0)
    good = rng.normal(3.0, 5.0, (60, 12)).astype(np.float32)
    bad = good + rng.normal(-1.0, 5.0, (60, 12)).astype(np.float32)  # noisy: accuracy varies by epoch
    result = train_aggregator((good[:40], bad[:40]), (good[40:], bad[40:]), width=8, epochs=30)
    w1, b1 = result.tensors["fc1.weight"], result.tensors["fc1.bias"]
    w2, b2 = result.tensors["fc2.weight"], result.tensors["fc2.bias"]

    def mlp(x):
        return (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2)[:, 0]

    accuracy = float(np.mean(mlp(good[40:]) > mlp(bad[40:])))
    assert accuracy == pytest.approx(max(result.curve["val_accuracy"]), abs=1e-6)
    raw = np.concatenate([mlp(good[:40]), mlp(bad[:40])])
    assert result.norm_mean == pytest.approx(float(raw.mean()), abs=1e-4)
    assert result.norm_std == pytest.approx(float(raw.std()), rel=1e-4)
