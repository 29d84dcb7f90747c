"""BayesianRouter's offline router: the Thompson prior mean learnt from labelled data.

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

Training needs torch (imported by :func:`train_offline_router` only); the saved router is
safetensors and loads with numpy alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not an offline router file (format {metadata.get('format')!r})")
        arms = tuple(json.loads(metadata["arms"]))
        weights = load_file(str(path))["weights"]
        if weights.shape[0] != len(arms):
            raise ValueError(f"{path}: {weights.shape[0]} weight rows for {len(arms)} arms")
        return cls(weights=weights, arms=arms)


def ranked_pairs(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (example, winner, loser) with the winner right and the loser wrong.
    Shape: correct (N, K) bool -> three (P,) int64 arrays."""
    correct = np.asarray(correct, dtype=bool)
    example, winner, loser = np.nonzero(correct[:, :, None] & ~correct[:, None, :])
    return example, winner, loser


def balanced_pair_weights(
    winner: np.ndarray, loser: np.ndarray, n_arms: int, *, iterations: int = 50
) -> np.ndarray:
    """omega_(w,l) = u_w / u_l balancing each arm's weighted wins and losses (see the
    module docstring), scaled to mean 1. Shape: (P,), (P,) -> (P,) float64."""
    u = np.ones(n_arms)
    for _ in range(iterations):
        omega = u[winner] / u[loser]
        wins = np.bincount(winner, weights=omega, minlength=n_arms)
        losses = np.bincount(loser, weights=omega, minlength=n_arms)
        both = (wins > 0) & (losses > 0)
        u[both] *= (losses[both] / wins[both]) ** 0.25
    omega = u[winner] / u[loser]
    return omega / omega.mean() if len(omega) else omega


def train_offline_router(
    X: np.ndarray,
    correct: np.ndarray,
    *,
    arms: Sequence[str] | None = None,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> OfflineRouter:
    """Fit e (K, d) by weighted Bradley-Terry over right/wrong arm pairs.

    Shape: X (N, d) prompt embeddings, correct (N, K) bool (arm k judged example n right).
    """
    import torch

    X = np.asarray(X, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if X.ndim != 2 or correct.ndim != 2 or len(X) != len(correct):
        raise ValueError(f"need X (N, d) and correct (N, K), got {X.shape} and {correct.shape}")
    n_arms = correct.shape[1]
    arms = tuple(arms) if arms is not None else tuple(f"arm{k}" for k in range(n_arms))
    if len(arms) != n_arms:
        raise ValueError(f"{len(arms)} arm names for {n_arms} columns of correct")
    example, winner, loser = ranked_pairs(correct)
    omega = balanced_pair_weights(winner, loser, n_arms)

    generator = torch.Generator().manual_seed(seed)
    e = (0.01 * torch.randn(n_arms, X.shape[1], generator=generator, dtype=torch.float64)).requires_grad_()
    optimizer = torch.optim.AdamW([e], lr=lr, weight_decay=weight_decay)
    x = torch.from_numpy(X)
    ex, w, lo = (torch.from_numpy(a) for a in (example, winner, loser))
    pair_weight = torch.from_numpy(omega)
    losses = []
    for _ in range(epochs if len(omega) else 0):
        scores = x @ e.T  # (N, K)
        margin = scores[ex, w] - scores[ex, lo]
        loss = -(pair_weight * torch.nn.functional.logsigmoid(margin)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    wins = np.bincount(winner, weights=omega, minlength=n_arms)
    lost = np.bincount(loser, weights=omega, minlength=n_arms)
    history = {
        "loss": losses,
        "pairs": len(omega),
        "weighted_wins": wins.tolist(),
        "weighted_losses": lost.tolist(),
    }
    return OfflineRouter(weights=e.detach().numpy().copy(), arms=arms, history=history)
