"""Training the offline router of :mod:`moerm.routing.prior` (torch): Bradley-Terry over
(arm right, arm wrong) pairs with balanced pair weights, as that module describes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from moerm.routing.prior import OfflineRouter


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
