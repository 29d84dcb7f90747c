"""FeedbackNormalizer: warm-up, batch baseline, quantile mapping, clipping, history."""

from __future__ import annotations

import numpy as np
import pytest

from moerm.routing.feedback import FeedbackNormalizer


def with_history(values, **params) -> FeedbackNormalizer:
    return FeedbackNormalizer.from_state({"history": np.asarray(values, dtype=np.float64)}, **params)


# History -50..50: its 20th percentile is -30 and its 80th is 30 (linear interpolation).
SPREAD = np.arange(-50, 51)


def test_half_until_min_history() -> None:
    normalizer = FeedbackNormalizer(min_history=8)
    assert normalizer.normalize(np.array([0.0, 5.0, -3.0, 9.0, 1.0])).tolist() == [0.5] * 5
    assert normalizer.normalize(np.array([2.0, 7.0, 1.0])).tolist() == [0.5] * 3  # history 5 < 8
    assert len(normalizer.history) == 8
    assert normalizer.normalize(np.array([0.0, 10.0])).tolist() != [0.5, 0.5]


def test_quantiles_of_the_history_map_to_zero_and_one() -> None:
    # raw (100, 115, 130) -> baseline-subtracted (-15, 0, 15) -> (c + 30) / 60.
    normalizer = with_history(SPREAD)
    assert normalizer.normalize(np.array([100.0, 115.0, 130.0])).tolist() == pytest.approx([0.25, 0.5, 0.75])
    # (-30, 30) land exactly on the 20th / 80th percentiles.
    assert with_history(SPREAD).normalize(np.array([0.0, 60.0])).tolist() == pytest.approx([0.0, 1.0])


def test_values_beyond_the_quantiles_are_clipped() -> None:
    rewards = with_history(SPREAD).normalize(np.array([0.0, 200.0, 100.0]))  # centered -100, 100, 0
    assert rewards.tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_batch_baseline_makes_rewards_shift_invariant() -> None:
    raw = np.array([0.3, -1.2, 2.5, 0.0])
    assert np.allclose(with_history(SPREAD).normalize(raw), with_history(SPREAD).normalize(raw + 1000.0))
    # One item: its baseline-subtracted value is always 0.
    assert with_history(SPREAD).normalize(np.array([123.0])).tolist() == [0.5]


def test_history_holds_the_baseline_subtracted_values_of_the_last_window() -> None:
    normalizer = FeedbackNormalizer(min_history=2, window=5)
    normalizer.normalize(np.array([1.0, 3.0]))
    normalizer.normalize(np.array([10.0, 20.0, 30.0, 40.0]))
    assert normalizer.history == [1.0, -15.0, -5.0, 5.0, 15.0]


def test_rescale_uses_the_history_before_the_batch() -> None:
    # History (-1, -1, 1, 1): percentiles -1 and 1, so centered (-0.1, 0.1) -> (0.45, 0.55).
    # Had the batch joined the window first, the 20th percentile would be 0.02.
    normalizer = with_history([-1.0, -1.0, 1.0, 1.0], min_history=4, window=4)
    assert normalizer.normalize(np.array([0.0, 0.2])).tolist() == pytest.approx([0.45, 0.55])
    assert normalizer.history == pytest.approx([1.0, 1.0, -0.1, 0.1])


def test_flat_history_gives_a_step() -> None:
    normalizer = with_history(np.zeros(40))
    assert normalizer.normalize(np.array([-1.0, 1.0, 0.0, 0.0])).tolist() == [0.0, 1.0, 0.5, 0.5]


def test_state_round_trip_and_checks() -> None:
    normalizer = with_history(SPREAD, window=64)
    assert len(normalizer.history) == 64  # the last 64 of 101
    restored = FeedbackNormalizer.from_state(normalizer.state(), window=64)
    assert restored.history == normalizer.history
    with pytest.raises(ValueError, match="NaN"):
        normalizer.normalize(np.array([1.0, float("nan")]))
    with pytest.raises(ValueError, match="low_q < high_q"):
        FeedbackNormalizer(low_q=0.8, high_q=0.2)
