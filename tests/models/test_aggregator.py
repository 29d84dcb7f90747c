"""The numpy aggregator MLP: same numbers as torch, feature layout, input checks,
normalization."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moerm.bundle import Bundle, seal
from moerm.errors import BundleError, InvalidArgument
from moerm.models.aggregator import Aggregator, TaskAggregator, features

D = 384  # MiniLM hidden size


@pytest.fixture(scope="module")
def bundle(minilm_bundle: Path) -> Bundle:
    return Bundle.load(minilm_bundle)


@pytest.fixture(scope="module")
def aggregator(bundle: Bundle) -> Aggregator:
    return Aggregator(bundle)


def inputs(b: int, k: int, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, k)).astype(np.float32), rng.normal(size=(b, k, d)).astype(np.float32)


def torch_mlp(agg: TaskAggregator) -> torch.nn.Sequential:
    fc1 = torch.nn.Linear(agg.fc1_weight.shape[1], agg.fc1_weight.shape[0])
    fc2 = torch.nn.Linear(agg.fc2_weight.shape[1], 1)
    with torch.no_grad():
        fc1.weight.copy_(torch.from_numpy(agg.fc1_weight))
        fc1.bias.copy_(torch.from_numpy(agg.fc1_bias))
        fc2.weight.copy_(torch.from_numpy(agg.fc2_weight))
        fc2.bias.copy_(torch.from_numpy(agg.fc2_bias))
    return torch.nn.Sequential(fc1, torch.nn.ReLU(), fc2)


def torch_features(scores: np.ndarray, hidden: np.ndarray) -> torch.Tensor:
    """K x (hidden_k, score_k), built independently of ``features``."""
    parts = []
    for k in range(scores.shape[1]):
        parts += [torch.from_numpy(hidden[:, k]), torch.from_numpy(scores[:, k : k + 1])]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("task", ["code", "writing"])
def test_numpy_mlp_matches_torch(aggregator: Aggregator, task: str) -> None:
    agg = aggregator.tasks[task]
    k = len(agg.spec.capabilities)
    assert agg.hidden_size == D
    assert agg.fc1_weight.shape == (agg.spec.aggregator_hidden, k * (D + 1))
    scores, hidden = inputs(5, k)
    raw = agg.raw(scores, hidden)
    with torch.no_grad():
        expected = torch_mlp(agg)(torch_features(scores, hidden))[:, 0].numpy()
    assert raw.shape == (5,) and raw.dtype == np.float32
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(raw) > 1e-4  # distinct inputs give distinct rewards
    normalized, raw_again = aggregator.rewards(task, agg.spec.capability_names, scores, hidden, "tasks[0]")
    np.testing.assert_array_equal(raw_again, raw)
    np.testing.assert_allclose(normalized, raw)  # an untrained bundle: mean 0, std 1


def test_features_layout() -> None:
    b, k, d = 2, 3, 4
    scores = np.arange(b * k, dtype=np.float32).reshape(b, k) + 1000
    hidden = np.arange(b * k * d, dtype=np.float32).reshape(b, k, d)
    x = features(scores, hidden)
    assert x.shape == (b, k * (d + 1))
    for i in range(b):
        for j in range(k):
            block = x[i, j * (d + 1) : (j + 1) * (d + 1)]
            np.testing.assert_array_equal(block[:d], hidden[i, j])
            assert block[d] == scores[i, j]
    np.testing.assert_array_equal(x[1, :5], [12, 13, 14, 15, 1003])


def test_normalization_uses_norm_mean_and_std(aggregator: Aggregator, bundle: Bundle, tmp_path: Path) -> None:
    # A copy of the bundle whose manifest carries reference statistics for "code".
    root = Path(shutil.copytree(bundle.root, tmp_path / "bundle"))
    manifest = bundle.manifest
    code = dataclasses.replace(manifest.tasks["code"], norm_mean=1.5, norm_std=4.0)
    seal(root, dataclasses.replace(manifest, tasks={**manifest.tasks, "code": code}))
    shifted = Aggregator(Bundle.load(root))
    np.testing.assert_allclose(shifted.tasks["code"].scaled(np.array([1.5, 5.5, -2.5])), [0.0, 1.0, -1.0])

    scores, hidden = inputs(3, 3)
    normalized, raw = shifted.rewards("code", code.capability_names, scores, hidden, "tasks[0]")
    _, raw_before = aggregator.rewards("code", code.capability_names, scores, hidden, "tasks[0]")
    np.testing.assert_array_equal(raw, raw_before)  # same MLP ...
    np.testing.assert_allclose(normalized, (raw - 1.5) / 4.0, rtol=1e-6)  # ... normalized
    assert not np.allclose(normalized, raw)
    # The other task keeps mean 0 and std 1.
    scores, hidden = inputs(3, 2)
    normalized, raw = shifted.rewards("writing", ("relevance", "fluency"), scores, hidden, "tasks[1]")
    np.testing.assert_array_equal(normalized, raw)


def _violation(call) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    (violation,) = caught.value.violations
    return violation.field, violation.description


def test_wrong_capability_order(aggregator: Aggregator) -> None:
    scores, hidden = inputs(2, 3)
    caps = ("efficiency", "correctness", "readability")
    field, description = _violation(lambda: aggregator.rewards("code", caps, scores, hidden, "tasks[1]"))
    assert field == "tasks[1].capabilities"
    assert "correctness" in description
    field, _ = _violation(
        lambda: aggregator.rewards("code", caps[:2], scores[:, :2], hidden[:, :2], "tasks[1]")
    )
    assert field == "tasks[1].capabilities"


def test_unknown_task(aggregator: Aggregator) -> None:
    scores, hidden = inputs(2, 3)
    field, description = _violation(lambda: aggregator.rewards("exam", (), scores, hidden, "tasks[0]"))
    assert field == "tasks[0].task"
    assert "'exam'" in description


@pytest.mark.parametrize(
    ("scores_shape", "hidden_shape"),
    [
        ((2, 2), (2, 2, D)),  # K too small
        ((2, 3), (2, 3, D - 1)),  # wrong d
        ((2, 3), (3, 3, D)),  # batch sizes differ
        ((2, 3), (2, 3)),  # hidden not 3-d
        ((6,), (2, 3, D)),  # scores not 2-d
    ],
)
def test_wrong_shapes(aggregator: Aggregator, scores_shape, hidden_shape) -> None:
    caps = aggregator.tasks["code"].spec.capability_names
    scores, hidden = np.zeros(scores_shape, np.float32), np.zeros(hidden_shape, np.float32)
    field, description = _violation(lambda: aggregator.rewards("code", caps, scores, hidden, "tasks[2]"))
    assert field == "tasks[2]"
    assert "K=3" in description and f"d={D}" in description


@pytest.mark.parametrize("damage", ["misshapen", "missing"])
def test_bad_aggregator_file_is_named(bundle: Bundle, tmp_path: Path, damage: str) -> None:
    from safetensors.numpy import load_file, save_file

    root = Path(shutil.copytree(bundle.root, tmp_path / "bundle"))
    path = root / bundle.manifest.tasks["writing"].aggregator_file
    tensors = load_file(str(path))
    if damage == "misshapen":
        tensors["fc1.weight"] = tensors["fc1.weight"][:, :-1].copy()
    else:
        del tensors["fc2.bias"]
    save_file(tensors, str(path))
    seal(root, bundle.manifest)
    with pytest.raises(BundleError) as caught:
        Aggregator(Bundle.load(root))
    assert str(path) in str(caught.value)
