"""The offline router (BayesianRouter's prior): pairs, balancing, training, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from moerm.evaluate.routing.prior import balanced_pair_weights, ranked_pairs, train_offline_router
from moerm.routing.prior import OfflineRouter
from tests.routing.toys import two_arm_toy


def test_ranked_pairs_are_every_right_wrong_pair() -> None:
    correct = np.array([[True, False, True], [False, False, False], [False, True, True], [True, True, True]])
    example, winner, loser = ranked_pairs(correct)
    assert sorted(zip(example.tolist(), winner.tolist(), loser.tolist(), strict=True)) == [
        (0, 0, 1),
        (0, 2, 1),
        (2, 1, 0),
        (2, 2, 0),
    ]


def weighted_counts(winner, loser, omega, n_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Each arm's weighted wins and losses. Shape: (P,) x3 -> (K,), (K,)."""
    wins = np.bincount(winner, weights=omega, minlength=n_arms)
    return wins, np.bincount(loser, weights=omega, minlength=n_arms)


def test_pair_weights_balance_wins_and_losses() -> None:
    # Two arms, arm 0 right on 80% of the examples where they disagree: one weight per direction.
    winner = np.array([0] * 80 + [1] * 20)
    loser = 1 - winner
    omega = balanced_pair_weights(winner, loser, 2)
    wins, losses = weighted_counts(winner, loser, omega, 2)
    np.testing.assert_allclose(wins, losses, rtol=1e-12)
    assert omega.mean() == pytest.approx(1.0)
    assert omega[0] < 1 < omega[-1]  # the frequent winner's wins count less

    # Three arms of different strength.
    correct = np.random.default_rng(0).random((600, 3)) < np.array([0.8, 0.5, 0.3])
    _, winner, loser = ranked_pairs(correct)
    wins, losses = weighted_counts(winner, loser, balanced_pair_weights(winner, loser, 3), 3)
    np.testing.assert_allclose(wins, losses, rtol=1e-3)
    raw_wins, raw_losses = weighted_counts(winner, loser, np.ones(len(winner)), 3)
    assert raw_wins[0] > 3 * raw_losses[0]  # unbalanced before


def test_an_arm_that_never_loses_keeps_unit_potential() -> None:
    winner, loser = np.array([0, 0, 0, 1]), np.array([1, 2, 2, 2])
    omega = balanced_pair_weights(winner, loser, 3)
    assert np.isfinite(omega).all() and (omega > 0).all()


def test_trained_router_routes_the_toy_well_above_chance() -> None:
    X, correct = two_arm_toy(400, seed=0)
    router = train_offline_router(X[:200], correct[:200], arms=("a", "b"), seed=0)
    right = correct[np.arange(200, 400), router.choose(X[200:])]
    assert right.mean() > 0.9  # chance: 0.5
    assert router.weights.shape == (2, 4)
    assert router.history["loss"][-1] < 0.5 * router.history["loss"][0]
    again = train_offline_router(X[:200], correct[:200], arms=("a", "b"), seed=0)
    assert np.array_equal(router.weights, again.weights)


def test_prior_mean_scales_the_weights() -> None:
    router = OfflineRouter(weights=np.array([[1.0, -2.0], [0.5, 0.0]]), arms=("a", "b"))
    assert router.prior_mean(0.25).tolist() == [[0.25, -0.5], [0.125, 0.0]]
    assert router.prior_mean().tolist() == [[0.25, -0.5], [0.125, 0.0]]  # default scale 1/4
    assert router.prior_mean().dtype == np.float64


def test_save_and_load_as_safetensors(tmp_path: Path) -> None:
    router = OfflineRouter(weights=np.random.default_rng(1).standard_normal((3, 5)), arms=("a", "b", "c"))
    path = router.save(tmp_path / "prior.safetensors")
    header_size = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 + JSON header
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    assert header["weights"]["dtype"] == "F64"
    loaded = OfflineRouter.load(path)
    assert loaded.arms == ("a", "b", "c")
    assert np.array_equal(loaded.weights, router.weights)

    other = tmp_path / "other.safetensors"
    save_file({"weights": np.zeros((2, 2))}, str(other))
    with pytest.raises(ValueError, match="not an offline router file"):
        OfflineRouter.load(other)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"X \(N, d\) and correct \(N, K\)"):
        train_offline_router(np.zeros((3, 2)), np.zeros((4, 2), dtype=bool))
    with pytest.raises(ValueError, match="3 arm names for 2 columns"):
        train_offline_router(np.zeros((3, 2)), np.zeros((3, 2), dtype=bool), arms=("a", "b", "c"))
