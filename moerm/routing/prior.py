"""BayesianRouter's offline router: the Thompson prior mean learnt from labelled data.

This module holds the router and its file (safetensors, numpy only), which the live
router reads for Thompson's prior; training it is offline work
(:mod:`moerm.evaluate.routing.prior`).

One vector e_k (d,) per arm over the prompt embedding x; arm k's score is x.e_k. On every
example n and every pair of arms (w right, l wrong) on it, the Bradley-Terry loss
-log sigmoid(x_n.e_w - x_n.e_l) is minimized (full batch, AdamW with weight decay, which
also pins the component common to all e_k that the loss cannot see).

Pair weights balance wins and losses: omega_(w,l) = u_w / u_l with one potential u_k per
arm, found by a damped fixed-point iteration u_k <- u_k (losses_k / wins_k)^(1/4), where
wins_k / losses_k are the weighted counts of pairs arm k wins / loses. It makes each arm's
weighted wins about equal to its weighted losses (exactly, for two arms), so an arm that is
right on most examples does not dominate the prior just by being often right: what is left
to learn is *where* each arm is right. Arms that never win or never lose keep u_k = 1.
Weights are scaled to mean 1.

Training needs torch; the saved router loads with numpy alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

FORMAT = "moerm.offline_router.v1"
# Bradley-Terry scores are logits; bandit rewards are in [0, 1]. sigmoid'(0) = 1/4, so a
# logit difference s is about a probability difference s / 4: mu0 = e / 4 by default.
PRIOR_SCALE = 0.25


@dataclass
class OfflineRouter:
    weights: np.ndarray  # (K, d) float64, one e_k per arm
    arms: tuple[str, ...]
    history: dict = field(default_factory=dict)  # "loss" per epoch, "pair_weights" summary

    def scores(self, X: np.ndarray) -> np.ndarray:
        """x.e_k per row and arm. Shape: (N, d) -> (N, K)."""
        return np.asarray(X, dtype=np.float64) @ self.weights.T

    def choose(self, X: np.ndarray) -> np.ndarray:
        """argmax_k x.e_k (ties: lowest index). Shape: (N, d) -> (N,) int64."""
        return np.argmax(self.scores(X), axis=1)

    def prior_mean(self, scale: float = PRIOR_SCALE) -> np.ndarray:
        """Thompson prior mean mu0 = scale * e (see PRIOR_SCALE). Shape: (K, d) float64."""
        return scale * np.asarray(self.weights, dtype=np.float64)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        metadata = {"format": FORMAT, "arms": json.dumps(list(self.arms))}
        save_file(
            {"weights": np.ascontiguousarray(self.weights, dtype=np.float64)}, str(path), metadata=metadata
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> OfflineRouter:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not an offline router file (format {metadata.get('format')!r})")
        arms = tuple(json.loads(metadata["arms"]))
        weights = load_file(str(path))["weights"]
        if weights.shape[0] != len(arms):
            raise ValueError(f"{path}: {weights.shape[0]} weight rows for {len(arms)} arms")
        return cls(weights=weights, arms=arms)
