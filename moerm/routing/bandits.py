"""Contextual bandits that choose a reward model (an *arm*) per item.

Both policies keep one linear model per arm over the prompt embedding x (d,):

- :class:`LinUCB` (LASeR): ridge regression per arm, A_k = lam I + sum x x^T,
  b_k = sum r x, theta_k = A_k^-1 b_k; it picks argmax_k x.theta_k + alpha sqrt(x^T A_k^-1 x).
  A_k^-1 is kept by Sherman-Morrison rank-one updates and never inverted.
- :class:`Thompson` (BayesianRouter): Bayesian linear regression per arm with prior
  w_k ~ N(mu0_k, noise^2/lam0 I): precision Lambda_k = lam0 I + sum x x^T,
  b_k = lam0 mu0_k + sum r x, posterior N(Lambda_k^-1 b_k, noise^2 Lambda_k^-1); it picks
  argmax_k x.w~_k with w~_k one posterior sample.

``update_many`` applies events one by one in the given order, exactly as repeated
``update`` calls: two replicas that apply the same event log reach bitwise-equal
state however the log was batched. Everything is float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_matrix(X: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) float64 view of ``X``; raises ValueError naming the bad shape."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != dim:
        raise ValueError(f"contexts must have shape (N, {dim}), got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("contexts contain NaN or infinity")
    return X


def _as_events(
    arms: np.ndarray, X: np.ndarray, rewards: np.ndarray, n_arms: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (N,) int arms, (N, d) contexts, (N,) float rewards."""
    X = _as_matrix(X, dim)
    arms = np.asarray(arms)
    rewards = np.asarray(rewards, dtype=np.float64)
    if arms.shape != (len(X),) or rewards.shape != (len(X),):
        raise ValueError(f"arms {arms.shape} and rewards {rewards.shape} must both have shape ({len(X)},)")
    if len(arms) and (not np.issubdtype(arms.dtype, np.integer) or arms.min() < 0 or arms.max() >= n_arms):
        raise ValueError(f"arm indices must be integers in [0, {n_arms})")
    if not np.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or infinity")
    return arms.astype(np.int64), X, rewards


def _masked(scores: np.ndarray, live: np.ndarray | None) -> np.ndarray:
    """``scores`` (N, K) with the arms that are not ``live`` ((K,) bool) at -inf."""
    if live is None:
        return scores
    live = np.asarray(live, dtype=bool)
    if live.shape != (scores.shape[1],) or not live.any():
        raise ValueError(f"live must be a (K,) bool array with a live arm, got {live}")
    return np.where(live[None, :], scores, -np.inf)


def _check_state(state: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    for name, shape in shapes.items():
        if name not in state:
            raise ValueError(f"bandit state lacks {name!r}")
        if tuple(state[name].shape) != shape:
            raise ValueError(f"bandit state {name!r} has shape {tuple(state[name].shape)}, expected {shape}")


class LinUCB:
    """LASeR's LinUCB: one ridge model per arm, upper-confidence choice.

    State: ``A_inv`` (K, d, d), ``b`` (K, d), ``counts`` (K,) updates per arm.
    """

    def __init__(self, arms: Sequence[str], dim: int, *, alpha: float = 0.1, lam: float = 1.0):
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.arms = tuple(arms)
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.lam = float(lam)
        k = len(self.arms)
        self.A_inv = np.tile(np.eye(self.dim) / self.lam, (k, 1, 1))
        self.b = np.zeros((k, self.dim))
        self.counts = np.zeros(k, dtype=np.int64)

    @property
    def theta(self) -> np.ndarray:
        """Ridge estimates A_k^-1 b_k. Shape: (K, d)."""
        return np.einsum("kde,ke->kd", self.A_inv, self.b)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Upper confidence bounds x.theta_k + alpha sqrt(x^T A_k^-1 x). Shape: (N, d) -> (N, K)."""
        X = _as_matrix(X, self.dim)
        mean = X @ self.theta.T
        variance = np.einsum("knd,nd->nk", X[None] @ self.A_inv, X)
        return mean + self.alpha * np.sqrt(np.maximum(variance, 0.0))

    def choose(
        self, X: np.ndarray, rng: np.random.Generator | None = None, *, live: np.ndarray | None = None
    ) -> np.ndarray:
        """Arm index per row, argmax of :meth:`scores` (ties: lowest index) over the
        ``live`` arms ((K,) bool; default all). ``rng`` is unused (LinUCB is
        deterministic); it keeps the policies' signatures alike.
        Shape: (N, d) -> (N,) int64."""
        return np.argmax(_masked(self.scores(X), live), axis=1)

    def update(self, arm: int, x: np.ndarray, reward: float) -> None:
        """One observation: Sherman-Morrison on A_arm^-1 and b_arm += reward x. Shape: x (d,)."""
        self.update_many(np.array([arm]), np.asarray(x, dtype=np.float64)[None, :], np.array([reward]))

    def update_many(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray) -> None:
        """Observations in order. Shape: arms (N,) int, X (N, d), rewards (N,)."""
        arms, X, rewards = _as_events(arms, X, rewards, len(self.arms), self.dim)
        outer = np.empty((self.dim, self.dim))
        for k, x, r in zip(arms, X, rewards, strict=True):
            a_inv = self.A_inv[k]
            u = a_inv @ x
            # A^-1 - u u^T / (1 + x.u) as A^-1 - v v^T with v = u / sqrt(1 + x.u) (> 1: A^-1 is
            # positive definite). v_i v_j == v_j v_i exactly, so A^-1 stays exactly symmetric
            # and rounding cannot drift it apart, with one pass over the matrix.
            v = u / np.sqrt(1.0 + x @ u)
            np.multiply.outer(v, v, out=outer)
            a_inv -= outer
            self.b[k] += r * x
            self.counts[k] += 1

    def state(self) -> dict[str, np.ndarray]:
        return {"A_inv": self.A_inv.copy(), "b": self.b.copy(), "counts": self.counts.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take over :meth:`state` of a LinUCB with the same arms and dim (copied)."""
        k, dim = len(self.arms), self.dim
        _check_state(state, {"A_inv": (k, dim, dim), "b": (k, dim), "counts": (k,)})
        self.A_inv = np.array(state["A_inv"], dtype=np.float64)
        self.b = np.array(state["b"], dtype=np.float64)
        self.counts = np.array(state["counts"], dtype=np.int64)

    @classmethod
    def from_state(cls, arms: Sequence[str], state: dict[str, np.ndarray], **params) -> LinUCB:
        """Rebuild from :meth:`state`; ``params`` are the constructor's keywords (alpha, lam)."""
        policy = cls(arms, int(np.asarray(state["b"]).shape[-1]), **params)
        policy.load_state(state)
        return policy


class Thompson:
    """BayesianRouter's linear Thompson sampling with a per-arm prior mean.

    State: ``precision`` Lambda (K, d, d), ``b`` (K, d), ``counts`` (K,). For sampling it
    caches, per arm, the posterior mean and R_k = L_k^-T (L_k the Cholesky factor of
    Lambda_k, so R_k R_k^T = Lambda_k^-1); only arms updated since are refreshed.
    """

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        *,
        lam0: float = 10.0,
        prior_mean: np.ndarray | None = None,
        noise: float = 1.0,
    ):
        if lam0 <= 0:
            raise ValueError(f"lam0 must be > 0, got {lam0}")
        self.arms = tuple(arms)
        self.dim = int(dim)
        self.lam0 = float(lam0)
        self.noise = float(noise)
        k = len(self.arms)
        mu0 = np.zeros((k, self.dim)) if prior_mean is None else np.asarray(prior_mean, dtype=np.float64)
        if mu0.shape != (k, self.dim):
            raise ValueError(f"prior_mean must have shape ({k}, {self.dim}), got {mu0.shape}")
        self.precision = np.tile(np.eye(self.dim) * self.lam0, (k, 1, 1))
        self.b = self.lam0 * mu0
        self.counts = np.zeros(k, dtype=np.int64)
        self._mean = np.zeros((k, self.dim))
        self._root = np.zeros((k, self.dim, self.dim))
        self._stale = np.ones(k, dtype=bool)

    def _refresh(self) -> None:
        """Recompute the cached mean and covariance root of the arms that changed."""
        for k in np.flatnonzero(self._stale):
            lower = np.linalg.cholesky(self.precision[k])
            root = np.linalg.inv(lower).T  # R = L^-T: R R^T = (L L^T)^-1
            self._root[k] = root
            self._mean[k] = root @ (root.T @ self.b[k])
            self._stale[k] = False

    def posterior(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        """Posterior of arm ``arm``: mean Lambda^-1 b (d,), covariance noise^2 Lambda^-1 (d, d)."""
        self._refresh()
        root = self._root[arm]
        return self._mean[arm].copy(), self.noise**2 * (root @ root.T)

    def choose(
        self, X: np.ndarray, rng: np.random.Generator, *, live: np.ndarray | None = None
    ) -> np.ndarray:
        """Per row, one fresh posterior sample w~_k = mean_k + noise R_k z per arm, then
        argmax_k x.w~_k over the ``live`` arms ((K,) bool; default all; ties: lowest
        index). Shape: (N, d) -> (N,) int64."""
        X = _as_matrix(X, self.dim)
        self._refresh()
        z = rng.standard_normal((len(X), len(self.arms), self.dim))
        # x.w~ = x.mean + noise (R^T x).z, without forming the (N, K, d) samples twice.
        projected = X[None] @ self._root  # (K, N, d): row n of slice k is R_k^T x_n
        sampled = X @ self._mean.T + self.noise * np.einsum("kne,nke->nk", projected, z)
        return np.argmax(_masked(sampled, live), axis=1)

    def update(self, arm: int, x: np.ndarray, reward: float) -> None:
        """One observation: Lambda_arm += x x^T, b_arm += reward x. Shape: x (d,)."""
        self.update_many(np.array([arm]), np.asarray(x, dtype=np.float64)[None, :], np.array([reward]))

    def update_many(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray) -> None:
        """Observations in order. Shape: arms (N,) int, X (N, d), rewards (N,)."""
        arms, X, rewards = _as_events(arms, X, rewards, len(self.arms), self.dim)
        outer = np.empty((self.dim, self.dim))
        for k, x, r in zip(arms, X, rewards, strict=True):
            self.precision[k] += np.multiply.outer(x, x, out=outer)
            self.b[k] += r * x
            self.counts[k] += 1
            self._stale[k] = True

    def state(self) -> dict[str, np.ndarray]:
        return {"precision": self.precision.copy(), "b": self.b.copy(), "counts": self.counts.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take over :meth:`state` of a Thompson with the same arms and dim (copied)."""
        k, dim = len(self.arms), self.dim
        _check_state(state, {"precision": (k, dim, dim), "b": (k, dim), "counts": (k,)})
        self.precision = np.array(state["precision"], dtype=np.float64)
        self.b = np.array(state["b"], dtype=np.float64)
        self.counts = np.array(state["counts"], dtype=np.int64)
        self._stale[:] = True

    @classmethod
    def from_state(cls, arms: Sequence[str], state: dict[str, np.ndarray], **params) -> Thompson:
        """Rebuild from :meth:`state`; ``params`` are the constructor's keywords (lam0,
        noise; a prior mean is already inside ``b``)."""
        params.pop("prior_mean", None)
        policy = cls(arms, int(np.asarray(state["b"]).shape[-1]), **params)
        policy.load_state(state)
        return policy
