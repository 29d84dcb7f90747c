"""The best-of-n over-optimization experiment: its estimator against brute
force, and (slow tier) the whole pipeline at toy scale on the shared data."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from moerm.evaluate.overopt import analyse, expected_best_of_n, kl_best_of_n


def brute_force(proxy: np.ndarray, gold: np.ndarray, n: int) -> float:
    picks = [
        gold[max(subset, key=lambda i: (proxy[i], -i))]
        for subset in itertools.combinations(range(len(proxy)), n)
    ]
    return float(np.mean(picks))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_best_of_n_equals_the_average_over_all_subsets(seed):
    rng = np.random.default_rng(seed)
    proxy, gold = rng.normal(size=7), rng.normal(size=7)
    for n in range(1, 8):
        assert expected_best_of_n(proxy, gold, n) == pytest.approx(brute_force(proxy, gold, n), abs=1e-12)
    assert expected_best_of_n(proxy, gold, 1) == pytest.approx(gold.mean())
    assert expected_best_of_n(proxy, gold, 7) == pytest.approx(gold[np.argmax(proxy)])
    with pytest.raises(ValueError):
        expected_best_of_n(proxy, gold, 8)


def test_kl_of_best_of_n():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(16) == pytest.approx(math.log(16) - 15 / 16)
    values = [kl_best_of_n(n) for n in range(1, 17)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_analyse_gold_picking_itself_only_gains_and_an_inverted_proxy_only_loses():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(20, 8))
    scores = {"gold": gold.tolist(), "single": (-gold).tolist()}
    result = analyse(scores, 8)
    assert result.prompts == 20 and result.ns == list(range(1, 9))
    assert result.gain["gold"][0] == pytest.approx(0.0, abs=1e-12)
    assert all(b > a for a, b in zip(result.gain["gold"], result.gain["gold"][1:], strict=False))
    assert all(b < a for a, b in zip(result.gain["single"], result.gain["single"][1:], strict=False))
    assert all(h > 0 for h in result.half_width["gold"][1:])


@pytest.mark.slow
def test_pipeline_at_toy_scale(tmp_path):
    """Gold = a MiniLM RM on a few shared pairs; proxies, candidates from SmolLM2,
    scores and the report, end to end."""
    from moerm.data.loaders import missing_shared_files, shared_data_dir
    from moerm.evaluate.overopt import OveroptSettings, run
    from moerm.train import inputs
    from moerm.train.loop import TrainSettings
    from moerm.train.phase1 import train_base_model
    from moerm.train.recipe import comparisons

    data_dir = shared_data_dir()
    if data_dir is None or missing_shared_files(data_dir):
        pytest.skip("shared data not found")
    gold_work = tmp_path / "gold"
    prepared = inputs.shared(gold_work, max_pairs_per_task=4)
    train_base_model(
        "gold",
        "minilm",
        comparisons(prepared.inputs.train),
        [],
        TrainSettings(epochs=1, lr=1e-3, batch_size=8, max_length=64),
        r=4,
        pooling="mean",
        out_dir=gold_work / "baselines" / "single",
        progress=False,
    )
    settings = OveroptSettings(
        gold_work=str(gold_work),
        gold_backbone="minilm",
        proxy_pairs_per_task=3,
        proxy_epochs=1,
        prompts_per_task=1,
        n_max=3,
        max_new_tokens=8,
        max_length=96,
    )
    report = run(settings, tmp_path / "work", tmp_path / "out", "moerm overopt (test)")
    result = json.loads((tmp_path / "out" / "overopt.json").read_text())
    assert set(result["gain"]) == {"gold", "single", "base", "mean", "worst", "uwo", "dmoerm"}
    for system, gains in result["gain"].items():
        assert gains[0] == pytest.approx(0.0, abs=1e-6), system  # n = 1: a random sample
    assert result["gain"]["gold"][-1] >= 0.0  # the gold RM's own pick is at least average
    rows = [json.loads(line) for line in (tmp_path / "work" / "candidates.jsonl").read_text().splitlines()]
    assert rows and all(len(r["candidates"]) == 3 for r in rows)
    assert (tmp_path / "out" / "overopt.png").stat().st_size > 0
    assert "moerm overopt (test)" in report.read_text()
