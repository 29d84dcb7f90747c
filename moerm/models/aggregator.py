"""The aggregator MLP of each task, in numpy (no torch in this service).

Features of an item are its K experts' pooled hidden states and scores, expert
by expert: ``concat_k [hidden_k (d), score_k (1)]``, i.e. K x (d + 1) numbers.
The MLP is ``fc2(relu(fc1(x)))``; its output is normalized with the task's
reference mean and standard deviation from the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moerm.bundle import Bundle, TaskSpec, load_numpy
from moerm.errors import BundleError, InvalidArgument, shown


def features(scores: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Shape: scores (B, K), hidden (B, K, d) -> (B, K * (d + 1))."""
    stacked = np.concatenate([hidden, scores[..., None]], axis=-1)
    return stacked.reshape(stacked.shape[0], -1)


@dataclass(frozen=True)
class TaskAggregator:
    spec: TaskSpec
    fc1_weight: np.ndarray  # (H, K * (d + 1))
    fc1_bias: np.ndarray  # (H,)
    fc2_weight: np.ndarray  # (1, H)
    fc2_bias: np.ndarray  # (1,)

    @property
    def hidden_size(self) -> int:
        k = len(self.spec.capabilities)
        return self.fc1_weight.shape[1] // k - 1

    def raw(self, scores: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """Shape: scores (B, K), hidden (B, K, d) -> (B,) float32."""
        x = features(scores, hidden).astype(np.float32, copy=False)
        h = np.maximum(x @ self.fc1_weight.T + self.fc1_bias, 0.0)
        return (h @ self.fc2_weight.T + self.fc2_bias)[:, 0]

    def scaled(self, raw: np.ndarray) -> np.ndarray:
        """The task's reward scale from the manifest (reference mean and std)."""
        return (raw - self.spec.norm_mean) / self.spec.norm_std


def load_task_aggregator(bundle: Bundle, spec: TaskSpec) -> TaskAggregator:
    tensors = load_numpy(bundle, spec.aggregator_file)
    try:
        agg = TaskAggregator(
            spec=spec,
            fc1_weight=tensors["fc1.weight"].astype(np.float32),
            fc1_bias=tensors["fc1.bias"].astype(np.float32),
            fc2_weight=tensors["fc2.weight"].astype(np.float32),
            fc2_bias=tensors["fc2.bias"].astype(np.float32),
        )
    except KeyError as error:
        raise BundleError(f"{bundle.path(spec.aggregator_file)}: missing tensor {error}") from None
    k, d = len(spec.capabilities), bundle.manifest.backbone.hidden_size
    if agg.fc1_weight.shape[1] != k * (d + 1) or agg.fc2_weight.shape != (1, agg.fc1_weight.shape[0]):
        raise BundleError(f"{bundle.path(spec.aggregator_file)}: shapes do not fit K={k}, d={d}")
    return agg


class Aggregator:
    """All tasks' aggregators of one bundle."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.tasks = {
            name: load_task_aggregator(bundle, spec) for name, spec in bundle.manifest.tasks.items()
        }

    def rewards(
        self, task: str, capabilities: Sequence[str], scores: np.ndarray, hidden: np.ndarray, field: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(normalized, raw) rewards of one task's batch; ``field`` names it in errors."""
        agg = self.tasks.get(task)
        if agg is None:
            raise InvalidArgument.field(f"{field}.task", f"unknown task {shown(task)}")
        expected = agg.spec.capability_names
        if tuple(capabilities) != expected:
            raise InvalidArgument.field(
                f"{field}.capabilities", f"expected {list(expected)}, got {list(capabilities)}"
            )
        b, k = scores.shape if scores.ndim == 2 else (-1, -1)
        if k != len(expected) or hidden.shape != (b, k, agg.hidden_size):
            raise InvalidArgument.field(
                field,
                f"scores {scores.shape} / hidden {hidden.shape} do not fit K={len(expected)}, d={agg.hidden_size}",
            )
        raw = agg.raw(scores, hidden)
        return agg.scaled(raw), raw
