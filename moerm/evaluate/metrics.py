"""Accuracy with a Wilson 95% interval; ties are counted, never scored."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (NaNs for n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int  # non-tie pairs scored
    ties: int = 0  # tie pairs in the same slice (not scored)

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def to_json(self) -> dict:
        low, high = self.interval
        return {
            "accuracy": self.value,
            "correct": self.correct,
            "n": self.n,
            "ties": self.ties,
            "ci95": [low, high],
        }

    def cell(self) -> str:
        if not self.n:
            return "–"
        low, high = self.interval
        return f"{self.value:.3f} [{low:.2f}, {high:.2f}]"
