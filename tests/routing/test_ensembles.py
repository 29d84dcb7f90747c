"""Ensemble rules against their formulas, computed item by item."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from moerm.routing.ensembles import ENSEMBLES, combine

SCORES = np.array([[0.2, 0.9, 0.4], [1.0, 1.0, 1.0], [-1.5, 0.5, 2.0], [0.3, -0.7, 0.0]])


def test_mean_and_worst_equal_their_formulas() -> None:
    assert combine(SCORES, "mean").tolist() == pytest.approx(
        [statistics.fmean(row) for row in SCORES.tolist()]
    )
    assert combine(SCORES, "worst").tolist() == [min(row) for row in SCORES.tolist()]


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_uwo_is_mean_minus_lambda_population_variance(lam: float) -> None:
    expected = [statistics.fmean(row) - lam * statistics.pvariance(row) for row in SCORES.tolist()]
    assert combine(SCORES, "uwo", lam=lam).tolist() == pytest.approx(expected, rel=1e-12)


def test_uwo_default_by_hand() -> None:
    # Scores 0 and 1: mean 0.5, population variance 0.25 (the sample variance would be 0.5),
    # so 0.5 - 0.5 * 0.25 = 0.375.
    assert combine(np.array([[0.0, 1.0]]), "uwo").tolist() == [0.375]


def test_one_member_ensemble_is_that_member() -> None:
    column = SCORES[:, :1]
    for rule in ENSEMBLES:
        assert combine(column, rule).tolist() == column[:, 0].tolist()


def test_bad_rule_or_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ensemble rule 'median'"):
        combine(SCORES, "median")
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        combine(SCORES[0], "mean")
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        combine(np.zeros((3, 0)), "mean")
