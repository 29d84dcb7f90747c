"""Reward-model ensembles against over-optimization: every reward model of the pool
scores the item and the rewards (already normalized to a common scale) are combined:

- ``mean``: (1/K) sum_k s_k
- ``worst``: min_k s_k
- ``uwo`` (uncertainty-weighted optimization): mean - lam * var, with var the
  *population* variance over the K members, (1/K) sum_k (s_k - mean)^2 (ddof = 0),
  lam = 0.5 by default.
"""

from __future__ import annotations

import numpy as np

ENSEMBLES = ("mean", "worst", "uwo")
UWO_LAMBDA = 0.5


def combine(scores: np.ndarray, rule: str, lam: float = UWO_LAMBDA) -> np.ndarray:
    """One reward per item from the members' normalized rewards. Shape: (N, K) -> (N,) float64."""
    if rule not in ENSEMBLES:
        raise ValueError(f"unknown ensemble rule {rule!r}; known: {', '.join(ENSEMBLES)}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must have shape (N, K) with K >= 1, got {scores.shape}")
    if rule == "mean":
        return scores.mean(axis=1)
    if rule == "worst":
        return scores.min(axis=1)
    return scores.mean(axis=1) - lam * scores.var(axis=1, ddof=0)
