"""`moerm route-prior` / `moerm route-eval`: pool scores of labelled pairs, the prior file,
the routing report. A small recipe run on the synthetic data (real MiniLM models) stands in
for a trained bundle; the shared data has a split manifest, the synthetic data does not, so
the commands run with ``--data synthetic`` (its validation and test pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moerm.cli import main
from moerm.evaluate.routing.pool_scores import PoolScores, load_or_score, load_single, pool_arms, score_pool
from moerm.evaluate.routing.prior import train_offline_router
from moerm.evaluate.routing.report import evaluate_routing, simulate_seed, task_choices
from moerm.routing.pool import build_pool
from moerm.routing.prior import OfflineRouter
from tests.routing.toys import two_arm_toy

PER_TASK = 12
MAX_LENGTH = 96
TASKS = ("code", "exam", "harmlessness", "writing")  # the synthetic tasks, sorted (bundle order)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(work, bundle, prepared): every recipe step on the synthetic data, as
    `moerm train all --data synthetic --synthetic-per-task 12 --base-fraction 0.5` would run
    it: the task base adapters on the top half of the layers, so scoring uses a trunk cache."""
    from dataclasses import replace

    from moerm.train import inputs
    from moerm.train.recipe import Recipe
    from tests.synthetic_recipe import SETTINGS

    prepared = inputs.synthetic(per_task=PER_TASK)
    work = tmp_path_factory.mktemp("recipe")
    recipe = Recipe(work, prepared.inputs, replace(SETTINGS, base_fraction=0.5), progress=False)
    recipe.all()
    bundle = recipe.assemble(tmp_path_factory.mktemp("bundle") / "b")
    return work, bundle, prepared


def command(run, work, *extra: str) -> list[str]:
    recipe_work, bundle, _ = run
    return [
        "--bundle",
        str(bundle.root),
        "--work",
        str(work),
        "--data",
        "synthetic",
        "--synthetic-per-task",
        str(PER_TASK),
        "--single-work",
        str(recipe_work),
        "--max-length",
        str(MAX_LENGTH),
        *extra,
    ]


def test_pool_scores_agree_with_each_model_scored_alone(run):
    from dataclasses import replace

    from moerm.evaluate.systems import route, single_margins, task_margins
    from moerm.models.classifier import TaskClassifier
    from moerm.text import render_conversation

    work, bundle, prepared = run
    pairs = [p for p in prepared.test if p.task in ("code", "writing")][::5]
    tie = replace(pairs[0], id="tie-pair", tie=True)
    single = load_single(work, bundle)
    scores = score_pool(bundle, [*pairs, tie], max_length=MAX_LENGTH, single=single)

    arms = (*(f"dmoerm:{t}" for t in TASKS), *(f"base:{t}" for t in TASKS), "single")
    assert scores.arms == arms == pool_arms(bundle, with_single=True)
    assert scores.pair_ids == tuple(p.id for p in pairs)  # the tie is not scored
    assert scores.margins.shape == (len(pairs), len(arms)) and np.isfinite(scores.margins).all()
    assert np.array_equal(scores.correct, scores.margins > 0)
    # Every arm scores every pair, whatever its task; alone (no trunk cache) it gives the same signs.
    for task in TASKS:
        alone = task_margins(bundle, task, pairs, MAX_LENGTH)
        for system in ("dmoerm", "base"):
            column = scores.margins[:, arms.index(f"{system}:{task}")]
            np.testing.assert_allclose(column, alone[system], atol=1e-4)
            assert np.array_equal(column > 0, np.array(alone[system]) > 0)
    model, tokenizer, _ = single
    np.testing.assert_allclose(
        scores.margins[:, arms.index("single")],
        single_margins(model, tokenizer, pairs, MAX_LENGTH),
        atol=1e-4,
    )
    # The contexts are the router's embeddings of the conversations, and its routes.
    classifier = TaskClassifier(bundle)
    expected = classifier.embed([render_conversation(p.turns) for p in pairs])
    np.testing.assert_allclose(scores.X, expected, atol=1e-6)
    assert list(scores.routed) == route(classifier, pairs)
    assert scores.seconds.keys() == {"embed", "trunk", *(f"task:{t}" for t in TASKS), "single"}


def test_pool_scores_are_cached_and_rescored_when_the_pairs_change(run, tmp_path, monkeypatch):
    import moerm.evaluate.routing.pool_scores as pool_scores

    _, bundle, prepared = run
    pairs = prepared.test[:6]
    path = tmp_path / "scores.npz"
    first = load_or_score(path, bundle, pairs, max_length=MAX_LENGTH)
    assert path.is_file() and first.arms == pool_arms(bundle)

    def no_scoring(*args, **kwargs):
        raise AssertionError("rescored")

    monkeypatch.setattr(pool_scores, "task_margins", no_scoring)
    again = load_or_score(path, bundle, pairs, max_length=MAX_LENGTH)
    assert again.pair_ids == first.pair_ids and again.routed == first.routed
    assert np.array_equal(again.margins, first.margins) and np.array_equal(again.X, first.X)
    assert again.seconds == first.seconds
    for changed in (dict(pairs=prepared.test[:5]), dict(max_length=MAX_LENGTH + 1)):
        with pytest.raises(AssertionError, match="rescored"):
            load_or_score(path, bundle, **{"pairs": pairs, "max_length": MAX_LENGTH, **changed})


def test_prior_file_round_trips_and_the_router_accepts_it(run, tmp_path, capsys):
    from router_svc.app import thompson_prior

    _, bundle, _ = run
    work = tmp_path / "routing"
    assert main(["route-prior", *command(run, work)]) == 0
    path = work / "prior.safetensors"
    assert str(path) in capsys.readouterr().out
    prior = OfflineRouter.load(path)
    assert prior.arms == pool_arms(bundle, with_single=True)
    # The file holds exactly the router trained on the cached validation scores.
    validation = PoolScores.load(work / "validation-scores.npz")
    assert len(validation) == sum(not p.tie for p in run[2].inputs.validation)
    retrained = train_offline_router(validation.X, validation.correct, arms=validation.arms, seed=0)
    np.testing.assert_array_equal(prior.weights, retrained.weights)
    # router_svc --thompson-prior: one row per pool member (`single` is not in the router's pool).
    pool = build_pool(bundle.manifest)
    mean = thompson_prior(str(path), pool, bundle.manifest.router.embed_dim)
    assert mean.shape == (len(pool), bundle.manifest.router.embed_dim)
    for k, name in enumerate(pool.names):
        np.testing.assert_array_equal(mean[k], prior.prior_mean()[prior.arms.index(name)])
    # An arm the prior does not know starts at zero.
    with_external = build_pool(bundle.manifest, externals={"other": "127.0.0.1:1"})
    mean = thompson_prior(str(path), with_external, bundle.manifest.router.embed_dim)
    assert not mean[-1].any() and mean[:-1].any()


def test_route_eval_writes_the_report(run, tmp_path, capsys):
    _, bundle, prepared = run
    work, out = tmp_path / "routing", tmp_path / "report"
    assert main(["route-eval", *command(run, work, "--out", str(out), "--seeds", "0,1")]) == 0
    assert {p.name for p in out.iterdir()} == {"routing.md", "routing.json", "regret.png"}
    assert (out / "regret.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "prior.safetensors").is_file()
    report = json.loads((out / "routing.json").read_text())
    test = PoolScores.load(work / "test-scores.npz")
    arms = pool_arms(bundle, with_single=True)
    n = sum(not p.tie for p in prepared.test)
    assert report["arms"] == list(arms) and report["pairs"]["test"] == n == len(test) == 32

    whole = report["offline"]["all_test"]
    assert list(whole) == [
        *(f"arm:{a}" for a in arms),
        "random",
        "majority",
        "oracle",
        "task",
        "offline_router",
    ]
    for k, arm in enumerate(arms):  # the table is measured from the scores
        assert whole[f"arm:{arm}"]["correct"] == int(test.correct[:, k].sum())
    assert whole["task"]["correct"] == int(test.correct[np.arange(n), task_choices(test)].sum())
    assert whole["oracle"]["accuracy"] >= max(whole[f"arm:{a}"]["accuracy"] for a in arms)
    for row in whole.values():
        assert row["n"] == n and row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
    half = report["offline"]["held_out_half"]
    assert {"linucb", "thompson", "thompson_prior", "task", "offline_router"} <= set(half)
    assert {row["n"] for row in half.values()} == {n // 2}

    final = report["simulation"]["final_regret"]
    assert set(final) == {
        "linucb",
        "thompson",
        "thompson_prior",
        "random",
        "task",
        *(f"fixed:{a}" for a in arms),
    }
    assert report["simulation"]["seeds"] == [0, 1] and all(len(v["per_seed"]) == 2 for v in final.values())
    oracle = int(test.correct.any(axis=1).sum())
    for k, arm in enumerate(arms):  # a fixed arm's regret does not depend on the order
        assert final[f"fixed:{arm}"]["per_seed"] == [oracle - int(test.correct[:, k].sum())] * 2

    calls = report["cost"]["reward_model_calls_per_item"]
    assert calls["linucb"] == calls["thompson"] == calls["task"] == calls[f"fixed:{arms[0]}"] == 1
    assert calls["mean"] == calls["uwo"] == calls["majority"] == len(arms)
    assert set(report["cost"]["scoring_seconds"]) == set(test.seconds)

    text = (out / "routing.md").read_text()
    assert text.splitlines()[5].startswith("moerm route-eval --bundle")
    assert "| all | | 10 (0) | 32 (0) |" in text
    for title in ("1. Offline routing accuracy", "2. Online simulation", "3. Cost", "![cumulative regret"):
        assert title in text


def test_route_eval_needs_the_split_manifest_for_the_shared_data(run, tmp_path, capsys):
    _, bundle, _ = run
    work = tmp_path / "empty"
    argv = ["route-eval", "--bundle", str(bundle.root), "--work", str(work), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert f"no split manifest at {work / 'split.json'}" in capsys.readouterr().err


def toy_scores(n: int = 240, seed: int = 0) -> PoolScores:
    """Two arms on the toy rule, the ``task`` route picking arm 0 on even rows."""
    X, correct = two_arm_toy(n, seed)
    return PoolScores(
        arms=("dmoerm:a", "dmoerm:b"),
        pair_ids=tuple(f"p{i}" for i in range(n)),
        sources=("toy",) * n,
        tasks=("a",) * n,
        routed=tuple("a" if i % 2 == 0 else "b" for i in range(n)),
        X=X.astype(np.float32),
        margins=np.where(correct, 1.0, -1.0),
        bundle_version="toy",
        max_length=8,
    )


def test_report_rows_and_task_regret_on_a_toy():
    scores = toy_scores()
    router = OfflineRouter(weights=np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), arms=scores.arms)
    evaluation = evaluate_routing(scores, router, seeds=(0, 3))
    chosen = np.arange(len(scores)) % 2
    right = scores.correct[np.arange(len(scores)), chosen]
    assert evaluation.all_test["task"].correct == int(right.sum())
    assert evaluation.all_test["offline_router"].value == 1.0  # the router knows the rule
    assert evaluation.half.accuracy["task"].n == len(scores) // 2
    result = simulate_seed(scores, router, 3)
    assert result.regret["task"][-1] == len(scores) - right.sum()  # oracle is 1 on every toy row
    assert np.all(np.diff(result.regret["task"]) >= 0)
    assert evaluation.final_regret()["task"] == [len(scores) - right.sum()] * 2
    mean = evaluation.mean_simulation()
    np.testing.assert_allclose(
        mean.regret["linucb"], (evaluation.simulations[0].regret["linucb"] + result.regret["linucb"]) / 2
    )
    with pytest.raises(ValueError, match="differ from the scored arms"):
        evaluate_routing(scores, OfflineRouter(weights=router.weights, arms=("x", "y")))
