"""LinUCB and Thompson sampling against closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moerm.routing.bandits import LinUCB, Thompson

BANDIT_CLASSES = {"linucb": LinUCB, "thompson": Thompson}

ARMS = ("rm-a", "rm-b")


def random_events(n: int, dim: int, n_arms: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_arms, n), rng.standard_normal((n, dim)), rng.random(n)


# -- LinUCB -------------------------------------------------------------------------------


def test_linucb_two_arm_toy_scores_by_hand() -> None:
    # Arm 0 saw x = (1, 0) with reward 0: A0 = diag(2, 1), b0 = 0, theta0 = 0.
    # Arm 1 saw nothing: A1 = I, theta1 = 0.
    policy = LinUCB(ARMS, 2, alpha=0.1, lam=1.0)
    policy.update(0, np.array([1.0, 0.0]), 0.0)
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    # x = (1, 0): arm 0 = 0 + 0.1 sqrt(1/2), arm 1 = 0 + 0.1 sqrt(1): the less explored arm wins.
    # x = (0, 1): both 0 + 0.1 sqrt(1): a tie, broken by the lowest index.
    np.testing.assert_allclose(policy.scores(X), [[0.1 * math.sqrt(0.5), 0.1], [0.1, 0.1]], rtol=1e-12)
    assert policy.choose(X).tolist() == [1, 0]

    # A second observation of arm 0 with reward 1 at x = (1, 0): A0 = diag(3, 1), b0 = (1, 0),
    # theta0 = (1/3, 0); at x = (1, 0) arm 0 = 1/3 + 0.1 sqrt(1/3) > arm 1 = 0.1.
    policy.update(0, np.array([1.0, 0.0]), 1.0)
    np.testing.assert_allclose(policy.scores(X[:1]), [[1 / 3 + 0.1 * math.sqrt(1 / 3), 0.1]], rtol=1e-12)
    assert policy.choose(X[:1]).tolist() == [0]


def test_linucb_sherman_morrison_equals_explicit_inverse_after_many_updates() -> None:
    dim, lam = 8, 0.5
    arms, X, rewards = random_events(3000, dim, 3, seed=1)
    policy = LinUCB(("a", "b", "c"), dim, lam=lam)
    policy.update_many(arms, X, rewards)
    for k in range(3):
        Xk, rk = X[arms == k], rewards[arms == k]
        A = lam * np.eye(dim) + Xk.T @ Xk
        np.testing.assert_allclose(policy.A_inv[k], np.linalg.inv(A), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(policy.theta[k], np.linalg.solve(A, Xk.T @ rk), rtol=1e-8, atol=1e-12)
        assert policy.counts[k] == len(Xk)


def test_linucb_never_inverts(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("LinUCB called a matrix inverse")

    monkeypatch.setattr(np.linalg, "inv", forbidden)
    monkeypatch.setattr(np.linalg, "solve", forbidden)
    policy = LinUCB(ARMS, 4)
    policy.update_many(*random_events(50, 4, 2, seed=2))
    policy.choose(np.ones((3, 4)))


# -- Thompson -----------------------------------------------------------------------------


def test_thompson_posterior_equals_closed_form() -> None:
    dim, lam0 = 3, 4.0
    rng = np.random.default_rng(3)
    mu0 = rng.standard_normal((2, dim))
    policy = Thompson(ARMS, dim, lam0=lam0, prior_mean=mu0)
    X, r = rng.standard_normal((20, dim)), rng.standard_normal(20)
    policy.update_many(np.zeros(20, dtype=int), X, r)

    precision = lam0 * np.eye(dim) + X.T @ X
    mean, cov = policy.posterior(0)
    np.testing.assert_allclose(mean, np.linalg.solve(precision, lam0 * mu0[0] + X.T @ r), rtol=1e-10)
    np.testing.assert_allclose(cov, np.linalg.inv(precision), rtol=1e-10, atol=1e-14)
    # The untouched arm keeps its prior N(mu0, I / lam0).
    mean, cov = policy.posterior(1)
    np.testing.assert_allclose(mean, mu0[1], rtol=1e-12)
    np.testing.assert_allclose(cov, np.eye(dim) / lam0, rtol=1e-12)


def test_thompson_noise_scales_the_covariance_not_the_mean() -> None:
    events = random_events(30, 3, 2, seed=4)
    plain, noisy = Thompson(ARMS, 3, noise=1.0), Thompson(ARMS, 3, noise=0.5)
    plain.update_many(*events)
    noisy.update_many(*events)
    np.testing.assert_allclose(noisy.posterior(0)[0], plain.posterior(0)[0], rtol=1e-12)
    np.testing.assert_allclose(noisy.posterior(0)[1], 0.25 * plain.posterior(0)[1], rtol=1e-12)


def test_thompson_choice_frequency_matches_the_posterior() -> None:
    # x.w~_0 - x.w~_1 ~ N(x.(m0 - m1), x^T (S0 + S1) x): the share of rows choosing arm 0
    # must be Phi(mean / sd) for independent samples per row.
    policy = Thompson(ARMS, 2, lam0=2.0, prior_mean=np.array([[0.3, 0.0], [0.0, 0.1]]))
    policy.update_many(
        np.array([0, 0, 1]), np.array([[1.0, 0.5], [0.2, 1.0], [1.0, 1.0]]), np.array([0.2, 0.4, 0.9])
    )
    x = np.array([0.7, -0.4])
    (m0, s0), (m1, s1) = policy.posterior(0), policy.posterior(1)
    z = x @ (m0 - m1) / math.sqrt(x @ (s0 + s1) @ x)
    expected = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    chosen = policy.choose(np.tile(x, (20000, 1)), np.random.default_rng(5))
    share = float((chosen == 0).mean())
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / 20000)


def test_thompson_refreshes_the_factor_of_changed_arms_only(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = Thompson(("a", "b", "c"), 3)
    rng = np.random.default_rng(6)
    calls = []
    real = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda m: calls.append(1) or real(m))
    policy.choose(np.ones((2, 3)), rng)
    assert len(calls) == 3  # first use: every arm
    policy.choose(np.ones((2, 3)), rng)
    assert len(calls) == 3  # nothing changed
    policy.update(1, np.ones(3), 1.0)
    policy.update(1, np.ones(3), 0.0)
    policy.choose(np.ones((2, 3)), rng)
    assert len(calls) == 4  # only arm 1


def test_thompson_is_reproducible_with_a_seeded_generator() -> None:
    policy = Thompson(("a", "b", "c"), 4)
    policy.update_many(*random_events(40, 4, 3, seed=7))
    X = np.random.default_rng(8).standard_normal((50, 4))
    first = policy.choose(X, np.random.default_rng(9))
    assert np.array_equal(first, policy.choose(X, np.random.default_rng(9)))
    assert len(set(first.tolist())) > 1


# -- both ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BANDIT_CLASSES))
def test_update_many_is_bitwise_repeated_update(name: str) -> None:
    cls = BANDIT_CLASSES[name]
    arms, X, rewards = random_events(200, 5, 3, seed=10)
    batched, single = cls(("a", "b", "c"), 5), cls(("a", "b", "c"), 5)
    for part in np.array_split(np.arange(200), 7):
        batched.update_many(arms[part], X[part], rewards[part])
    for k, x, r in zip(arms, X, rewards, strict=True):
        single.update(int(k), x, float(r))
    for key, value in batched.state().items():
        assert np.array_equal(value, single.state()[key]), key


@pytest.mark.parametrize("name", sorted(BANDIT_CLASSES))
def test_state_round_trip(name: str) -> None:
    cls = BANDIT_CLASSES[name]
    policy = cls(("a", "b", "c"), 4)
    policy.update_many(*random_events(60, 4, 3, seed=11))
    state = policy.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = cls.from_state(("a", "b", "c"), state)
    X = np.random.default_rng(12).standard_normal((30, 4))
    assert np.array_equal(
        policy.choose(X, np.random.default_rng(0)), restored.choose(X, np.random.default_rng(0))
    )
    with pytest.raises(ValueError, match="shape"):
        cls.from_state(("a", "b"), state)


@pytest.mark.parametrize("name", sorted(BANDIT_CLASSES))
def test_bad_input_is_refused(name: str) -> None:
    policy = BANDIT_CLASSES[name](ARMS, 3)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        policy.choose(np.ones((2, 4)), rng)
    with pytest.raises(ValueError, match="NaN"):
        policy.update(0, np.ones(3), float("nan"))
    with pytest.raises(ValueError, match="arm indices"):
        policy.update(2, np.ones(3), 1.0)
    assert policy.counts.sum() == 0


def test_thompson_prior_mean_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"prior_mean must have shape \(2, 3\)"):
        Thompson(ARMS, 3, prior_mean=np.zeros((3, 2)))
