"""Offline routing accuracy from arrays."""

from __future__ import annotations

import numpy as np
import pytest

from moerm.evaluate.metrics import wilson_interval
from moerm.evaluate.routing.offline import fixed_rows, routing_accuracy, split_rows
from moerm.routing.prior import OfflineRouter
from tests.routing.toys import two_arm_toy


def test_rows_without_training_by_hand() -> None:
    correct = np.array(
        [
            [True, True, False, False],  # 2 of 4 right: a majority tie, counted wrong
            [True, True, True, False],
            [False, False, False, False],
            [False, True, False, False],
            [True, False, True, True],
        ]
    )
    rows, ties = fixed_rows(correct, ("a", "b", "c", "d"))
    assert [rows[f"arm:{name}"].correct for name in "abcd"] == [3, 3, 2, 1]
    assert rows["random"].value == pytest.approx((0.5 + 0.75 + 0 + 0.25 + 0.75) / 5)
    assert rows["majority"].correct == 2 and ties == 1
    assert rows["oracle"].correct == 4
    assert all(row.n == 5 for row in rows.values())
    assert rows["oracle"].interval == wilson_interval(4, 5)


def test_split_is_seeded_and_disjoint() -> None:
    train, test = split_rows(10, 0.3, seed=4)
    assert len(test) == 3 and len(train) == 7
    assert sorted([*train, *test]) == list(range(10))
    assert np.array_equal(test, split_rows(10, 0.3, seed=4)[1])


def test_every_router_is_measured_on_the_test_part() -> None:
    X, correct = two_arm_toy(400, seed=1)
    # A hand-made offline router that knows the rule: e_a = (1, 0, 0, 0), e_b = -e_a.
    router = OfflineRouter(weights=np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), arms=("a", "b"))
    result = routing_accuracy(X, correct, ("a", "b"), router=router, test_fraction=0.5, seed=0)
    assert list(result.accuracy) == [
        "arm:a",
        "arm:b",
        "random",
        "majority",
        "oracle",
        "offline_router",
        "linucb",
        "thompson",
        "thompson_prior",
    ]
    assert {a.n for a in result.accuracy.values()} == {200}
    assert result.accuracy["offline_router"].value == 1.0
    assert result.accuracy["oracle"].value == 1.0
    assert result.accuracy["majority"].value == 0.0 and result.majority_ties == 200  # one arm always right
    assert result.accuracy["linucb"].value > result.accuracy["random"].value + 0.2
    test_correct = correct[result.test_rows]
    for name, chosen in result.choices.items():
        assert result.accuracy[name].correct == test_correct[np.arange(200), chosen].sum()
    assert "| offline_router | 200 | 1.000" in result.table()
    assert result.to_json()["accuracy"]["linucb"]["n"] == 200
