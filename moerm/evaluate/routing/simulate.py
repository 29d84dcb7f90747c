"""Online simulation of the routing policies on labelled items.

Items (contexts X (N, d), correct (N, K): arm k judges item n right) are replayed in rounds
of ``batch_size``, as the router sees them: each policy chooses an arm for every item of the
round with its current state, then gets the round's feedback and updates. Raw feedback is
``correct[n, arm] + noise * eps[n, arm]`` with eps standard normal, drawn once per (item,
arm) so that every policy faces the same noise; it goes through a
:class:`~moerm.routing.feedback.FeedbackNormalizer` (one per policy) like the service's.

Regret of a choice = oracle - correct[n, arm], oracle = 1 if any arm is right on item n
(the best arm per context), accumulated over the items in replay order.

Policies: every bandit of the policy table (``linucb``, ``thompson`` with a zero prior mean,
and any registered later); ``thompson_prior`` (prior mean from an offline router trained on a
disjoint part of the items); ``random`` (uniform); ``fixed:<arm>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from moerm.evaluate.routing.prior import train_offline_router
from moerm.routing import policies
from moerm.routing.bandits import Thompson
from moerm.routing.feedback import FeedbackNormalizer
from moerm.routing.policies import Hyperparameters
from moerm.routing.prior import PRIOR_SCALE, OfflineRouter


class Policy(Protocol):
    def choose(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def update_many(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray) -> None: ...


class UniformRandom:
    """Chooses an arm uniformly at random; learns nothing."""

    def __init__(self, n_arms: int):
        self.n_arms = n_arms

    def choose(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.n_arms, size=len(X))

    def update_many(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray) -> None:
        pass


class FixedArm:
    """Always the same arm."""

    def __init__(self, arm: int):
        self.arm = arm

    def choose(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.full(len(X), self.arm, dtype=np.int64)

    def update_many(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray) -> None:
        pass


def check_labels(X: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X as (N, d) float64 and correct as (N, K) bool, or ValueError."""
    X = np.asarray(X, dtype=np.float64)
    correct = np.asarray(correct)
    if X.ndim != 2 or correct.ndim != 2 or len(X) != len(correct) or correct.shape[1] == 0:
        raise ValueError(f"need X (N, d) and correct (N, K >= 1), got {X.shape} and {correct.shape}")
    return X, correct.astype(bool)


def replay(
    policy: Policy,
    X: np.ndarray,
    correct: np.ndarray,
    *,
    rng: np.random.Generator,
    noise: np.ndarray,
    batch_size: int = 16,
    normalizer: FeedbackNormalizer | None = None,
) -> np.ndarray:
    """Run ``policy`` online over the items in order; returns the arm chosen per item.

    Shape: X (N, d), correct (N, K) bool, noise (N, K) (added to the 0/1 feedback) -> (N,).
    """
    normalizer = normalizer or FeedbackNormalizer()
    chosen = np.empty(len(X), dtype=np.int64)
    for start in range(0, len(X), batch_size):
        rows = np.arange(start, min(start + batch_size, len(X)))
        arms = np.asarray(policy.choose(X[rows], rng), dtype=np.int64)
        raw = correct[rows, arms] + noise[rows, arms]
        policy.update_many(arms, X[rows], normalizer.normalize(raw))
        chosen[rows] = arms
    return chosen


def make_policies(
    arms: Sequence[str],
    dim: int,
    *,
    alpha: float = 0.1,
    lam: float = 1.0,
    lam0: float = 10.0,
    prior: OfflineRouter | None = None,
    prior_scale: float = PRIOR_SCALE,
) -> dict[str, Policy]:
    """Fresh policies by name: every bandit of the policy table (:mod:`moerm.routing.policies`),
    thompson_prior when ``prior`` is given, random, fixed arms."""
    hyper = Hyperparameters(alpha=alpha, lam=lam, lam0=lam0)
    out: dict[str, Policy] = {
        name: policies.policy(name).build(arms, dim, hyper) for name in policies.names(policies.BANDIT)
    }
    if prior is not None:
        out["thompson_prior"] = Thompson(arms, dim, lam0=lam0, prior_mean=prior.prior_mean(prior_scale))
    out["random"] = UniformRandom(len(arms))
    out.update({f"fixed:{name}": FixedArm(k) for k, name in enumerate(arms)})
    return out


@dataclass
class SimulationResult:
    regret: dict[str, np.ndarray]  # policy -> (N,) cumulative regret after each replayed item
    accuracy: dict[str, float]  # policy -> fraction of replayed items whose chosen arm was right
    n: int  # items replayed
    prior_items: int  # items used to train the offline prior (not replayed)

    def final_regret(self) -> dict[str, float]:
        return {name: float(curve[-1]) if len(curve) else 0.0 for name, curve in self.regret.items()}

    def table(self) -> str:
        """Markdown: one row per policy, best final regret first."""
        final = self.final_regret()
        lines = [
            f"Online replay of {self.n} items ({self.prior_items} more trained the offline prior).",
            "",
            "| policy | cumulative regret | accuracy of the chosen arm |",
            "|---|---:|---:|",
        ]
        for name in sorted(final, key=final.get):
            lines.append(f"| {name} | {final[name]:.0f} | {self.accuracy[name]:.3f} |")
        return "\n".join(lines) + "\n"


def simulate(
    X: np.ndarray,
    correct: np.ndarray,
    arms: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    noise: float = 0.5,
    seed: int = 0,
    alpha: float = 0.1,
    lam: float = 1.0,
    lam0: float = 10.0,
    prior: OfflineRouter | None = None,
    prior_fraction: float = 0.0,
    prior_scale: float = PRIOR_SCALE,
    min_history: int = 32,
) -> SimulationResult:
    """Replay the items with every policy and measure cumulative regret.

    With ``prior_fraction`` > 0 (and no ``prior`` given), a seeded random part of that size
    trains the offline router (torch) and only the rest is replayed. Shape: X (N, d),
    correct (N, K) bool.
    """
    X, correct = check_labels(X, correct)
    arms = tuple(arms) if arms is not None else tuple(f"arm{k}" for k in range(correct.shape[1]))
    rng = np.random.default_rng(seed)
    online, prior_rows = np.arange(len(X)), np.arange(0)
    if prior is None and prior_fraction > 0:
        order = rng.permutation(len(X))
        cut = int(round(prior_fraction * len(X)))
        prior_rows, online = np.sort(order[:cut]), np.sort(order[cut:])
        prior = train_offline_router(X[prior_rows], correct[prior_rows], arms=arms, seed=seed)
    X, correct = X[online], correct[online]
    feedback_noise = noise * rng.standard_normal(correct.shape)
    oracle = correct.any(axis=1)
    policies = make_policies(
        arms, X.shape[1], alpha=alpha, lam=lam, lam0=lam0, prior=prior, prior_scale=prior_scale
    )
    regret, accuracy = {}, {}
    for i, (name, policy) in enumerate(policies.items()):
        chosen = replay(
            policy,
            X,
            correct,
            rng=np.random.default_rng([seed, i]),
            noise=feedback_noise,
            batch_size=batch_size,
            normalizer=FeedbackNormalizer(min_history=min_history),
        )
        right = correct[np.arange(len(X)), chosen]
        regret[name] = np.cumsum(oracle.astype(np.float64) - right)
        accuracy[name] = float(right.mean()) if len(right) else float("nan")
    return SimulationResult(regret=regret, accuracy=accuracy, n=len(X), prior_items=len(prior_rows))


def plot_regret(result: SimulationResult, path: str | Path, *, title: str = "routing policies") -> Path:
    """Cumulative regret against items seen, one line per policy; writes a PNG."""

    matplotlib.use("Agg")

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in result.regret.items():
        style = ":" if name.startswith("fixed:") else "-"
        ax.plot(np.arange(1, len(curve) + 1), curve, style, label=name)
    ax.set_xlabel("items seen")
    ax.set_ylabel("cumulative regret (vs. best arm per item)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
