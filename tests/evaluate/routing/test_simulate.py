"""Online simulation: regret curves of the policies on the two-arm toy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moerm.evaluate.routing.simulate import plot_regret, simulate
from moerm.routing.feedback import FeedbackNormalizer
from tests.routing.toys import two_arm_toy


def test_linucb_regret_is_below_random_and_fixed_arms() -> None:
    X, correct = two_arm_toy(600, seed=2)
    result = simulate(X, correct, ("a", "b"), seed=0)
    final = result.final_regret()
    assert set(final) == {"linucb", "thompson", "random", "fixed:a", "fixed:b"}
    assert final["linucb"] < 0.5 * final["random"]
    assert final["linucb"] < min(final["fixed:a"], final["fixed:b"])
    again = simulate(X, correct, ("a", "b"), seed=0)  # seeded: the same curves
    assert all(np.array_equal(curve, again.regret[name]) for name, curve in result.regret.items())


def test_regret_curves_follow_their_definition() -> None:
    X, correct = two_arm_toy(200, seed=3)
    correct[:10] = False  # items no arm gets right cost no regret
    result = simulate(X, correct, ("a", "b"), seed=1)
    oracle = correct.any(axis=1)
    assert np.array_equal(result.regret["fixed:b"], np.cumsum(oracle.astype(float) - correct[:, 1]))
    for curve in result.regret.values():
        assert len(curve) == 200
        assert (np.diff(curve) >= 0).all()
    assert result.accuracy["fixed:a"] == pytest.approx(correct[:, 0].mean())


def test_feedback_goes_through_the_normalizer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = FeedbackNormalizer.normalize

    def spy(self, raw):
        seen.append(len(raw))
        return real(self, raw)

    monkeypatch.setattr(FeedbackNormalizer, "normalize", spy)
    X, correct = two_arm_toy(100, seed=4)
    simulate(X, correct, ("a", "b"), batch_size=32, seed=0)
    assert seen == [32, 32, 32, 4] * 5  # every round of each of the 5 policies


def test_thompson_with_an_offline_prior_trained_on_a_disjoint_part(tmp_path: Path) -> None:
    X, correct = two_arm_toy(600, seed=5)
    result = simulate(X, correct, ("a", "b"), prior_fraction=0.3, seed=0)
    assert (result.prior_items, result.n) == (180, 420)
    final = result.final_regret()
    assert final["thompson_prior"] < 0.5 * final["random"]
    assert "| thompson_prior |" in result.table()
    png = plot_regret(result, tmp_path / "regret.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
