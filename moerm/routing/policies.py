"""The routing policies, in one table that the router's config, the router, the bandit
state and the offline simulator all read.

Every policy has a *kind*:

- ``task``: the outer classifier picks the task's DMoERM expert set;
- ``fixed``: one reward model named in the request;
- ``bandit``: a learner chooses one reward model of the pool per distinct prompt and
  learns from Feedback; it is built from the pool's arms, the context dimension and the
  router's hyperparameters (:class:`Hyperparameters`) and must offer
  ``choose(X, rng) -> arms``, ``update_many(arms, X, rewards)``, and ``state()`` /
  ``load_state(state)`` (a dict of numpy arrays, for snapshots; see
  :mod:`moerm.routing.bandits`);
- ``ensemble``: every reward model of the pool scores the item and ``combine`` turns
  their normalized rewards into one (:mod:`moerm.routing.ensembles`).

``remembers``: Score keeps a decision per item so that Feedback can credit it (bandits)
or answer ``no_arm`` (ensembles).

Adding a policy is one class (for a bandit) and one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moerm.routing.bandits import LinUCB, Thompson
from moerm.routing.ensembles import UWO_LAMBDA, combine

TASK, FIXED, BANDIT, ENSEMBLE = "task", "fixed", "bandit", "ensemble"


@dataclass(frozen=True)
class Hyperparameters:
    """What a policy may be built with (the router's flags)."""

    alpha: float = 0.1  # LinUCB exploration
    lam: float = 1.0  # LinUCB ridge
    lam0: float = 10.0  # Thompson prior precision
    prior_mean: np.ndarray | None = None  # Thompson prior mean (K, d)
    uwo_lambda: float = UWO_LAMBDA  # uwo: mean - lambda * variance


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str
    remembers: bool = False
    # bandits: (arms, dim, hyperparameters) -> a learner
    build: Callable[[Sequence[str], int, Hyperparameters], object] | None = None
    # ensembles: (scores (N, K), hyperparameters) -> (N,) rewards
    combine: Callable[[np.ndarray, Hyperparameters], np.ndarray] | None = None


POLICIES: dict[str, Policy] = {}


def register(policy: Policy) -> Policy:
    """Add ``policy`` to the table (a name may be registered once)."""
    if policy.kind not in (TASK, FIXED, BANDIT, ENSEMBLE):
        raise ValueError(f"policy {policy.name!r}: unknown kind {policy.kind!r}")
    if policy.kind == BANDIT and policy.build is None:
        raise ValueError(f"bandit policy {policy.name!r} needs build")
    if policy.kind == ENSEMBLE and policy.combine is None:
        raise ValueError(f"ensemble policy {policy.name!r} needs combine")
    if policy.name in POLICIES:
        raise ValueError(f"policy {policy.name!r} is already registered")
    POLICIES[policy.name] = policy
    return policy


def unregister(name: str) -> None:
    """Remove a policy (tests that register a toy one)."""
    POLICIES.pop(name, None)


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered policy names (of one kind), in registration order."""
    return tuple(p.name for p in POLICIES.values() if kind is None or p.kind == kind)


def policy(name: str) -> Policy:
    return POLICIES[name]


register(Policy(TASK, TASK))
register(Policy(FIXED, FIXED))
register(
    Policy("linucb", BANDIT, True, build=lambda arms, dim, h: LinUCB(arms, dim, alpha=h.alpha, lam=h.lam))
)
register(
    Policy(
        "thompson",
        BANDIT,
        True,
        build=lambda arms, dim, h: Thompson(arms, dim, lam0=h.lam0, prior_mean=h.prior_mean),
    )
)
register(Policy("mean", ENSEMBLE, True, combine=lambda scores, h: combine(scores, "mean")))
register(Policy("worst", ENSEMBLE, True, combine=lambda scores, h: combine(scores, "worst")))
register(Policy("uwo", ENSEMBLE, True, combine=lambda scores, h: combine(scores, "uwo", h.uwo_lambda)))
