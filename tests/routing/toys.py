"""Labelled toy data for the routing tests."""

from __future__ import annotations

import numpy as np


def two_arm_toy(n: int, seed: int, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Contexts (n, dim): dim - 1 standard normal features and a constant 1; arm 0 is right
    when x[0] > 0, arm 1 otherwise. Returns X (n, dim) float64, correct (n, 2) bool."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.standard_normal((n, dim - 1)), np.ones((n, 1))], axis=1)
    correct = np.stack([X[:, 0] > 0, X[:, 0] <= 0], axis=1)
    return X, correct
