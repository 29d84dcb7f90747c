"""Feedback normalization: raw trainer feedback (any scale) -> bandit reward in [0, 1].

For a batch of raw values r (N,) (one Feedback call):

1. batch baseline: c = r - mean(r);
2. quantile rescaling against the running history H (the last ``window`` baseline-subtracted
   values of earlier batches): q_lo, q_hi = the ``low_q`` / ``high_q`` quantiles of H (linear
   interpolation), reward = clip((c - q_lo) / (q_hi - q_lo), 0, 1). If q_hi == q_lo the map is
   its limit, a step: 0 below, 0.5 at, 1 above q_lo;
3. while H holds fewer than ``min_history`` values every reward is 0.5;
4. c is appended to H.

A batch of one item always has c = 0: the baseline makes single-item feedback carry no
information beyond where 0 falls in the history.
"""

from __future__ import annotations

import numpy as np


class FeedbackNormalizer:
    def __init__(self, *, min_history: int = 32, window: int = 2048, low_q: float = 0.2, high_q: float = 0.8):
        if not 0.0 <= low_q < high_q <= 1.0:
            raise ValueError(f"need 0 <= low_q < high_q <= 1, got {low_q}, {high_q}")
        if window < 1 or min_history > window:
            raise ValueError(f"need 1 <= window and min_history <= window, got {window}, {min_history}")
        self.min_history = int(min_history)
        self.window = int(window)
        self.low_q = float(low_q)
        self.high_q = float(high_q)
        self.history: list[float] = []

    @staticmethod
    def center(raw: np.ndarray) -> np.ndarray:
        """Batch baseline: raw minus the batch mean. Shape: (N,) -> (N,) float64."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 1:
            raise ValueError(f"raw feedback must have shape (N,), got {raw.shape}")
        if not np.isfinite(raw).all():
            raise ValueError("raw feedback contains NaN or infinity")
        if not len(raw):
            return raw
        scale = float(np.abs(raw).max()) or 1.0  # the mean of huge values would overflow
        return (raw / scale - (raw / scale).mean()) * scale

    def rescale(self, centered: np.ndarray) -> np.ndarray:
        """Map baseline-subtracted values to [0, 1] by the history's quantiles (the history is
        not changed). Shape: (N,) -> (N,) float64."""
        centered = np.asarray(centered, dtype=np.float64)
        if len(self.history) < self.min_history:
            return np.full(centered.shape, 0.5)
        low, high = np.quantile(np.asarray(self.history), [self.low_q, self.high_q])
        if high - low <= 1e-12 * max(1.0, abs(low)):
            return 0.5 + 0.5 * np.sign(centered - low)
        return np.clip((centered - low) / (high - low), 0.0, 1.0)

    def extend(self, centered: np.ndarray) -> None:
        """Append baseline-subtracted values to the history, keeping the last ``window``
        (non-finite values are never kept: they would poison every later quantile)."""
        self.history.extend(
            float(v) for v in np.asarray(centered, dtype=np.float64).ravel() if np.isfinite(v)
        )
        del self.history[: -self.window]

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Rewards in [0, 1] for one batch, then the batch joins the history. Shape: (N,) -> (N,)."""
        centered = self.center(raw)
        rewards = self.rescale(centered)
        self.extend(centered)
        return rewards

    def state(self) -> dict[str, np.ndarray]:
        return {"history": np.asarray(self.history, dtype=np.float64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], **params) -> FeedbackNormalizer:
        """Rebuild from :meth:`state` (or any history array); ``params`` are the constructor's keywords."""
        normalizer = cls(**params)
        normalizer.extend(state["history"])
        return normalizer
