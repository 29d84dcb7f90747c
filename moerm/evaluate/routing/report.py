"""The routing tier's report: offline accuracy, online regret and cost of every policy.

Inputs are two :class:`~moerm.evaluate.routing.pool_scores.PoolScores` of held-out labelled pairs:
the *validation* pairs trained the offline router (the Thompson prior) and the *test* pairs
are measured here. Three parts:

1. offline routing accuracy: on all test pairs, the rows that need no online learning (each
   arm, random, majority, oracle, the ``task`` policy's classifier route, the offline router's
   argmax); on the held-out half of :func:`moerm.evaluate.routing.offline.routing_accuracy`, the same
   rows and the bandits, which learn online from gold 0/1 feedback on the other half;
2. online simulation (:func:`moerm.evaluate.routing.simulate.simulate`) of the test pairs, once per
   seed (the seed shuffles the replay order and draws the feedback noise and the policies'
   random numbers), plus the ``task`` policy's regret on the same order;
3. cost: reward-model calls per item per policy, and the measured scoring seconds.

numpy only, except the plot (matplotlib, imported by :func:`plot_policies`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from moerm.evaluate.metrics import Accuracy
from moerm.evaluate.routing.offline import OfflineRouting, fixed_rows, routing_accuracy
from moerm.evaluate.routing.pool_scores import PoolScores
from moerm.evaluate.routing.simulate import SimulationResult, simulate
from moerm.routing.pool import dmoerm_name
from moerm.routing.prior import OfflineRouter

SEEDS = (0, 1, 2)
ONE_CALL = ("task", "linucb", "thompson", "thompson_prior", "random")
ALL_CALLS = ("mean", "worst", "uwo", "majority")
ROW_ORDER = ("random", "majority", "oracle", "task", "offline_router", "linucb", "thompson", "thompson_prior")


@dataclass
class RoutingEvaluation:
    arms: tuple[str, ...]
    all_test: dict[str, Accuracy]  # rows without online learning, on every test pair
    all_test_ties: int  # majority ties (counted wrong) on every test pair
    half: OfflineRouting  # routing_accuracy on the test pairs' held-out half (bandits included)
    simulations: dict[int, SimulationResult]  # seed -> online replay of the test pairs
    seconds: dict[str, float]  # measured scoring wall time of the test pairs (PoolScores.seconds)
    n_test: int

    def final_regret(self) -> dict[str, list[float]]:
        """policy -> final cumulative regret per seed (in the order of the seeds)."""
        return {
            name: [result.final_regret()[name] for result in self.simulations.values()]
            for name in next(iter(self.simulations.values())).regret
        }

    def mean_simulation(self) -> SimulationResult:
        """Regret curves and accuracies averaged over the seeds (what the plot shows)."""
        results = list(self.simulations.values())
        first = results[0]
        return SimulationResult(
            regret={name: np.mean([r.regret[name] for r in results], axis=0) for name in first.regret},
            accuracy={name: float(np.mean([r.accuracy[name] for r in results])) for name in first.accuracy},
            n=first.n,
            prior_items=first.prior_items,
        )

    def calls_per_item(self) -> dict[str, int]:
        """Reward-model calls per item: routing policies 1, ensembles and the vote K."""
        k = len(self.arms)
        calls = {name: 1 for name in ONE_CALL}
        calls.update({f"fixed:{name}": 1 for name in self.arms})
        calls.update({name: k for name in ALL_CALLS})
        return calls

    def to_json(self) -> dict:
        final = self.final_regret()
        mean = self.mean_simulation()
        return {
            "arms": list(self.arms),
            "offline": {
                "all_test": {name: a.to_json() for name, a in self.all_test.items()},
                "all_test_majority_ties": self.all_test_ties,
                "held_out_half": {name: a.to_json() for name, a in self.half.accuracy.items()},
                "held_out_half_majority_ties": self.half.majority_ties,
            },
            "simulation": {
                "seeds": list(self.simulations),
                "items": mean.n,
                "final_regret": {
                    name: {"mean": float(np.mean(v)), "min": min(v), "max": max(v), "per_seed": v}
                    for name, v in final.items()
                },
                "accuracy_of_chosen_arm": mean.accuracy,
            },
            "cost": {
                "reward_model_calls_per_item": self.calls_per_item(),
                "scoring_seconds": self.seconds,
                "scoring_seconds_per_pair": {k: v / self.n_test for k, v in self.seconds.items()}
                if self.n_test
                else {},
            },
        }


def task_choices(scores: PoolScores) -> np.ndarray:
    """The ``task`` policy's arm per pair: ``dmoerm:<the classifier's task>``. Shape: (N,)."""
    column = {name: k for k, name in enumerate(scores.arms)}
    return np.array([column[dmoerm_name(task)] for task in scores.routed], dtype=np.int64)


def _chosen_accuracy(correct: np.ndarray, chosen: np.ndarray) -> Accuracy:
    return Accuracy(int(correct[np.arange(len(chosen)), chosen].sum()), len(chosen))


def whole_set_rows(scores: PoolScores, router: OfflineRouter) -> tuple[dict[str, Accuracy], int]:
    """Rows that need no online learning on every pair, and the majority ties."""
    correct = scores.correct
    rows, ties = fixed_rows(correct, scores.arms)
    rows["task"] = _chosen_accuracy(correct, task_choices(scores))
    rows["offline_router"] = _chosen_accuracy(correct, _router_choices(router, scores))
    return rows, ties


def _router_choices(router: OfflineRouter, scores: PoolScores) -> np.ndarray:
    """The offline router's argmax per pair; its arms must be the scored arms, in order.
    Shape: (N,) int64."""
    if tuple(router.arms) != scores.arms:
        raise ValueError(
            f"offline router arms {list(router.arms)} differ from the scored arms {list(scores.arms)}"
        )
    return router.choose(scores.X)


def simulate_seed(
    scores: PoolScores, router: OfflineRouter, seed: int, *, batch_size: int = 16, noise: float = 0.5
) -> SimulationResult:
    """Replay the pairs in a seeded random order with every policy, prior from ``router``;
    the ``task`` policy's regret on the same order is added."""
    order = np.random.default_rng([seed, 1]).permutation(len(scores))
    X, correct = scores.X[order], scores.correct[order]
    result = simulate(X, correct, scores.arms, batch_size=batch_size, noise=noise, seed=seed, prior=router)
    right = correct[np.arange(len(order)), task_choices(scores)[order]]
    result.regret["task"] = np.cumsum(correct.any(axis=1).astype(np.float64) - right)
    result.accuracy["task"] = float(right.mean()) if len(right) else float("nan")
    return result


def evaluate_routing(
    test: PoolScores,
    router: OfflineRouter,
    *,
    seeds: Sequence[int] = SEEDS,
    batch_size: int = 16,
    noise: float = 0.5,
    split_seed: int = 0,
) -> RoutingEvaluation:
    """Every part of the report on the test pairs; ``router`` was trained on other pairs."""
    if not len(test):
        raise ValueError("no test pairs to evaluate the routing tier on")
    all_test, ties = whole_set_rows(test, router)
    half = routing_accuracy(
        test.X, test.correct, test.arms, router=router, seed=split_seed, batch_size=batch_size
    )
    rows = half.accuracy
    rows["task"] = _chosen_accuracy(test.correct[half.test_rows], task_choices(test)[half.test_rows])
    half.accuracy = _ordered(rows, test.arms)
    return RoutingEvaluation(
        arms=test.arms,
        all_test=_ordered(all_test, test.arms),
        all_test_ties=ties,
        half=half,
        simulations={s: simulate_seed(test, router, s, batch_size=batch_size, noise=noise) for s in seeds},
        seconds=dict(test.seconds),
        n_test=len(test),
    )


def _ordered(rows: Mapping[str, Accuracy], arms: Sequence[str]) -> dict[str, Accuracy]:
    names = [f"arm:{a}" for a in arms] + list(ROW_ORDER)
    return {name: rows[name] for name in names if name in rows}


# ---------------------------------------------------------------------------
# Markdown


ROW_LABELS = {
    "random": "random (expected)",
    "majority": "majority vote (K calls)",
    "oracle": "oracle (any arm right)",
    "task": "task (DMoERM classifier route)",
    "offline_router": "offline router argmax (the prior)",
    "linucb": "LinUCB (after online half)",
    "thompson": "Thompson, zero prior (after online half)",
    "thompson_prior": "Thompson + offline prior (after online half)",
}


def accuracy_table(evaluation: RoutingEvaluation) -> list[str]:
    lines = [
        "| router | n | all test pairs [95% CI] | n | held-out half [95% CI] |",
        "|---|---:|---|---:|---|",
    ]
    for name, a in evaluation.half.accuracy.items():
        label = ROW_LABELS.get(name, name.replace("arm:", "arm ", 1))
        whole = evaluation.all_test.get(name)
        left = f"{whole.n} | {whole.cell()}" if whole is not None else "– | –"
        lines.append(f"| {label} | {left} | {a.n} | {a.cell()} |")
    return lines


def regret_table(evaluation: RoutingEvaluation) -> list[str]:
    final = evaluation.final_regret()
    mean = evaluation.mean_simulation()
    lines = [
        "| policy | final cumulative regret: mean (min–max) | accuracy of the chosen arm |",
        "|---|---:|---:|",
    ]
    for name in sorted(final, key=lambda n: float(np.mean(final[n]))):
        v = final[name]
        lines.append(f"| {name} | {np.mean(v):.1f} ({min(v):.0f}–{max(v):.0f}) | {mean.accuracy[name]:.3f} |")
    return lines


def cost_tables(evaluation: RoutingEvaluation) -> list[str]:
    k = len(evaluation.arms)
    calls = evaluation.calls_per_item()
    lines = ["| policy | reward-model calls per item |", "|---|---:|"]
    lines += [f"| {name} | {n} |" for name, n in calls.items() if not name.startswith("fixed:")]
    lines.append(f"| fixed:<arm> (each of the {k}) | 1 |")
    if evaluation.seconds and evaluation.n_test:
        n = evaluation.n_test
        lines += [
            "",
            f"Measured scoring wall time for the {n} test pairs (2 responses each) on this machine:",
            "",
            "| pass | seconds | ms per pair |",
            "|---|---:|---:|",
        ]
        for key, seconds in evaluation.seconds.items():
            lines.append(f"| {_pass_label(key)} | {seconds:.1f} | {1000 * seconds / n:.1f} |")
    return lines


def _pass_label(key: str) -> str:
    if key == "embed":
        return "router context: prompt embedding + classifier (every policy but fixed)"
    if key == "trunk":
        return "shared lower backbone layers (trunk cache, once for every arm)"
    if key.startswith("task:"):
        task = key.split(":", 1)[1]
        return f"dmoerm:{task} + base:{task} (scored together: K experts + aggregator, and the base model)"
    return key


def markdown(evaluation: RoutingEvaluation, header: str) -> str:
    k = len(evaluation.arms)
    seeds = ", ".join(str(s) for s in evaluation.simulations)
    mean = evaluation.mean_simulation()
    lines = [
        header,
        "",
        f"## 1. Offline routing accuracy ({k} arms)",
        "",
        "A router is right on a pair when the reward model it picks gives the human-chosen response "
        "the higher reward. Left: every test pair, for the rows that learn nothing online. Right: the "
        "held-out half of the test pairs (seeded split); the bandits first learn online on the other "
        "half from gold 0/1 feedback, then are frozen. random = expected accuracy of a uniform pick; "
        f"a majority tie (exactly K/2 right) counts as wrong ({evaluation.all_test_ties} ties on all "
        f"test pairs, {evaluation.half.majority_ties} on the half). 95% Wilson intervals.",
        "",
        *accuracy_table(evaluation),
        "",
        "## 2. Online simulation",
        "",
        f"The {mean.n} test pairs replayed in rounds of 16 (seeds {seeds}: each seed shuffles the order "
        "and draws the noise and the policies' random numbers). Feedback = 1 if the chosen reward "
        "model ranked the pair right, else 0, plus 0.5 x N(0, 1) noise, through the router's feedback "
        "normalizer. Regret is counted against the best arm per pair (1 when any arm is right). "
        "thompson_prior starts from the offline router trained on the validation pairs.",
        "",
        *regret_table(evaluation),
        "",
        "![cumulative regret, mean over seeds](regret.png)",
        "",
        "## 3. Cost",
        "",
        "One reward-model call = one member of the pool scoring an item (a `dmoerm:` member is one "
        "call to its task's expert service, which runs its K capability experts in one batch). Routing "
        f"policies call one member per item; the ensembles and the vote call all K = {k}.",
        "",
        *cost_tables(evaluation),
    ]
    return "\n".join(lines) + "\n"


def plot_policies(evaluation: RoutingEvaluation, path: str | Path) -> Path:
    """Mean cumulative regret over the seeds against items seen: one coloured line per
    learning policy, ``task`` and ``random``; the fixed arms as thin grey lines, the best
    of them (lowest final regret) in black. (:func:`moerm.evaluate.routing.simulate.plot_regret`
    gives every fixed arm its own colour, which repeats beyond ten lines.)"""

    matplotlib.use("Agg")

    mean = evaluation.mean_simulation()
    seeds = ", ".join(str(s) for s in evaluation.simulations)
    fixed = {name: curve for name, curve in mean.regret.items() if name.startswith("fixed:")}
    best = min(fixed, key=lambda name: fixed[name][-1]) if fixed else None
    x = np.arange(1, mean.n + 1)
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in fixed.items():
        if name != best:
            ax.plot(x, curve, color="0.7", linewidth=0.7, linestyle=":")
    if fixed:
        ax.plot(
            [], [], color="0.7", linewidth=0.7, linestyle=":", label=f"the other {len(fixed) - 1} fixed arms"
        )
        ax.plot(x, fixed[best], color="black", linestyle="--", label=f"best fixed arm ({best[6:]})")
    for name, curve in mean.regret.items():
        if not name.startswith("fixed:"):
            ax.plot(x, curve, linewidth=1.6, label=name)
    ax.set_xlabel("items seen")
    ax.set_ylabel("cumulative regret (vs. best arm per item)")
    ax.set_title(f"routing policies on {mean.n} test pairs (mean over seeds {seeds})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_report(
    evaluation: RoutingEvaluation, out_dir: str | Path, *, header: str, extra: Mapping | None = None
) -> Path:
    """Writes ``routing.md``, ``routing.json`` (with ``extra`` merged in) and ``regret.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_policies(evaluation, out_dir / "regret.png")
    (out_dir / "routing.md").write_text(markdown(evaluation, header))
    (out_dir / "routing.json").write_text(json.dumps({**dict(extra or {}), **evaluation.to_json()}, indent=2))
    return out_dir / "routing.md"
