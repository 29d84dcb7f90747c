"""Offline routing accuracy from labelled arrays.

Given contexts X (N, d) and correct (N, K) (reward model k ranks item n's pair right), the
items are split (seeded) into a train part and a test part; every row of the table is
measured on the test part, with n and a 95% Wilson interval:

- ``arm:<name>``: always that reward model;
- ``random``: a uniformly random arm per item; its accuracy is the expectation, the mean
  over arms of correct (so its "correct" count is fractional);
- ``majority``: the K reward models vote; right when more than half are right. A tie (exactly
  K/2 right, even K) counts as **wrong**;
- ``oracle``: right when any arm is right (the upper bound of any router);
- ``offline_router``: argmax of the offline router trained on the train part;
- ``linucb``, ``thompson``, ``thompson_prior``: the bandits trained online on the train part
  (:func:`moerm.evaluate.routing.simulate.replay`, 0/1 feedback through the normalizer), then frozen;
  their choice on each test item (Thompson's is one posterior sample, seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moerm.evaluate.metrics import Accuracy
from moerm.evaluate.routing.prior import train_offline_router
from moerm.evaluate.routing.simulate import check_labels, make_policies, replay
from moerm.routing import policies
from moerm.routing.feedback import FeedbackNormalizer
from moerm.routing.prior import PRIOR_SCALE, OfflineRouter


@dataclass
class OfflineRouting:
    accuracy: dict[str, Accuracy]  # row -> accuracy on the test part
    choices: dict[str, np.ndarray]  # routing row -> (n_test,) arm index per test item
    test_rows: np.ndarray  # (n_test,) indices of the test items in X
    majority_ties: int  # test items with exactly K/2 arms right (counted wrong)

    def table(self) -> str:
        """Markdown: one row per router, in the order measured."""
        lines = [
            "Accuracy on the test part [95% Wilson interval]; random = expected accuracy;",
            f"majority ties (counted wrong): {self.majority_ties}.",
            "",
            "| router | n | accuracy [95% CI] |",
            "|---|---:|---|",
        ]
        lines += [f"| {name} | {a.n} | {a.cell()} |" for name, a in self.accuracy.items()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {
            "accuracy": {name: a.to_json() for name, a in self.accuracy.items()},
            "majority_ties": self.majority_ties,
        }


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) row indices, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(round(test_fraction * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


def fixed_rows(correct: np.ndarray, arms: Sequence[str]) -> tuple[dict[str, Accuracy], int]:
    """Rows that need no training: each arm, random, majority, oracle; and the majority ties.
    Shape: correct (n, K) bool."""
    n, k = correct.shape
    rows = {f"arm:{name}": Accuracy(int(correct[:, j].sum()), n) for j, name in enumerate(arms)}
    rows["random"] = Accuracy(float(correct.mean(axis=1).sum()), n)  # expected count
    votes = correct.sum(axis=1)
    rows["majority"] = Accuracy(int((2 * votes > k).sum()), n)
    rows["oracle"] = Accuracy(int(correct.any(axis=1).sum()), n)
    return rows, int((2 * votes == k).sum())


def routing_accuracy(
    X: np.ndarray,
    correct: np.ndarray,
    arms: Sequence[str] | None = None,
    *,
    test_fraction: float = 0.5,
    router: OfflineRouter | None = None,
    seed: int = 0,
    batch_size: int = 16,
    alpha: float = 0.1,
    lam: float = 1.0,
    lam0: float = 10.0,
    prior_scale: float = PRIOR_SCALE,
) -> OfflineRouting:
    """Every router's accuracy on the test part. ``router``: an offline router trained
    elsewhere (on data disjoint from the test part); None trains one on the train part
    (torch). Shape: X (N, d), correct (N, K) bool."""
    X, correct = check_labels(X, correct)
    arms = tuple(arms) if arms is not None else tuple(f"arm{k}" for k in range(correct.shape[1]))
    train, test = split_rows(len(X), test_fraction, seed)
    if router is None:
        router = train_offline_router(X[train], correct[train], arms=arms, seed=seed)
    accuracy, ties = fixed_rows(correct[test], arms)
    choices = {"offline_router": router.choose(X[test])}
    bandits = make_policies(
        arms, X.shape[1], alpha=alpha, lam=lam, lam0=lam0, prior=router, prior_scale=prior_scale
    )
    for i, name in enumerate((*policies.names(policies.BANDIT), "thompson_prior")):
        rng = np.random.default_rng([seed, i])
        policy = bandits[name]
        replay(
            policy,
            X[train],
            correct[train],
            rng=rng,
            noise=np.zeros(correct[train].shape),
            batch_size=batch_size,
            normalizer=FeedbackNormalizer(),
        )
        choices[name] = policy.choose(X[test], rng)
    for name, chosen in choices.items():
        accuracy[name] = Accuracy(int(correct[test][np.arange(len(test)), chosen].sum()), len(test))
    return OfflineRouting(accuracy=accuracy, choices=choices, test_rows=test, majority_ties=ties)
