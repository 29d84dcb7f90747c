"""How far the expert service's scores move from float32 in another number format.

Scores preference pairs (chosen and rejected) with one task's experts in two dtypes and
compares, per output (each capability expert, the task base model when the bundle has
one, DMoERM's reward from the aggregator): the largest and median |other - float32|
relative to the float32 scores' standard deviation, and the share of pairs whose order
(chosen above rejected or not) is the same. ``tests/expert_svc/test_precision.py`` holds
the service to its tolerance; ``bench/bench_precision.py`` reports it for a bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expert_svc.scorer import ExpertInput, ExpertScorer
from moerm.bundle import Bundle
from moerm.data.records import PreferencePair
from moerm.evaluate.metrics import wilson_interval
from moerm.models.aggregator import Aggregator


@dataclass(frozen=True)
class Agreement:
    """One output's scores in another dtype against float32, over ``pairs`` pairs."""

    output: str
    pairs: int
    same_order: int
    max_diff: float  # largest |other - float32| / std of the float32 scores
    median_diff: float

    @property
    def agreement(self) -> float:
        return self.same_order / self.pairs

    def row(self) -> dict:
        low, high = wilson_interval(self.same_order, self.pairs)
        return {
            "output": self.output,
            "pairs": self.pairs,
            "same_order": self.same_order,
            "agreement": self.agreement,
            "ci95": [low, high],
            "max_abs_diff_over_std": self.max_diff,
            "median_abs_diff_over_std": self.median_diff,
        }


def score_pairs(
    bundle: Bundle,
    task: str,
    pairs: Sequence[PreferencePair],
    *,
    dtype: str,
    max_length: int = 0,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Output name -> (len(pairs), 2) scores of (chosen, rejected) by ``task``'s models."""
    scorer = ExpertScorer(bundle, task, dtype=dtype, max_length=max_length, device=device)
    scorer.load()
    with_base = scorer.has_base
    items = [ExpertInput(p.turns, r, True, with_base) for p in pairs for r in (p.chosen, p.rejected)]
    scores, hidden, base = scorer.score(scorer.prepare(items))
    outputs = {f"{task}/{cap}": scores[:, i] for i, cap in enumerate(scorer.capabilities)}
    if with_base:
        outputs[f"{task}/base model"] = base
    outputs[f"{task}/DMoERM reward"] = Aggregator(bundle).tasks[task].raw(scores, hidden)
    return {name: np.asarray(values, dtype=np.float64).reshape(-1, 2) for name, values in outputs.items()}


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> list[Agreement]:
    """Each output of ``other`` against the same output of ``reference`` (float32)."""
    rows = []
    for name, ref in reference.items():
        got = other[name]
        spread = float(ref.std()) or 1.0
        delta = np.abs(got - ref)
        same = int(((ref[:, 0] > ref[:, 1]) == (got[:, 0] > got[:, 1])).sum())
        rows.append(
            Agreement(name, len(ref), same, float(delta.max()) / spread, float(np.median(delta)) / spread)
        )
    return rows
