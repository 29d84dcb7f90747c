"""Run the evaluation and write the report (JSON + Markdown + PNG plots)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from moerm.bundle import Bundle
from moerm.data.records import ClassifierExample, PreferencePair
from moerm.evaluate.metrics import Accuracy
from moerm.evaluate.systems import SYSTEMS, bundle_trunk_depth, route, single_margins, task_margins
from moerm.models.classifier import TaskClassifier
from moerm.train.classifier import confusion_matrix, prompt_text
from moerm.train.trunk import TrunkCache


@dataclass
class EvalResult:
    tasks: tuple[str, ...]
    gold: dict[str, dict[str, Accuracy]]  # system -> task ("all" too) -> accuracy, gold routing
    routed: dict[str, dict[str, Accuracy]]  # system -> slice -> accuracy, router's routing
    router_accuracy: Accuracy | None = None
    confusion: list[list[int]] | None = None
    confusion_labels: tuple[str, ...] = ()
    notes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        def table(t):
            return {s: {k: a.to_json() for k, a in v.items()} for s, v in t.items()}

        return {
            "tasks": list(self.tasks),
            "gold_routing": table(self.gold),
            "router_routing": table(self.routed),
            "router_test_accuracy": self.router_accuracy.to_json() if self.router_accuracy else None,
            "confusion": {"labels": list(self.confusion_labels), "matrix": self.confusion},
            "notes": self.notes,
        }


def _accuracy(margins: list[float], ties: int = 0) -> Accuracy:
    return Accuracy(correct=sum(m > 0 for m in margins), n=len(margins), ties=ties)


def evaluate(
    bundle: Bundle,
    test: list[PreferencePair],
    *,
    single=None,
    classifier_test: list[ClassifierExample] | None = None,
    max_length: int = 256,
) -> EvalResult:
    """``single``: (RewardModel, tokenizer, lowest adapted layer) of the one-model
    baseline, or None. When no model adapts the lowest layers, their states are
    computed once per text for all systems (:class:`moerm.train.trunk.TrunkCache`)."""

    tasks = tuple(bundle.manifest.tasks)
    scored = [p for p in test if not p.tie]
    ties = [p for p in test if p.tie]

    classifier = TaskClassifier(bundle)
    routed_task = dict(zip((p.id for p in scored), route(classifier, scored), strict=True))
    # Margins per (task, pair id), for every pair whose gold or routed task is that task.
    depth = min(bundle_trunk_depth(bundle), single[2] if single is not None else bundle_trunk_depth(bundle))
    trunk = TrunkCache(bundle.manifest.backbone.ref, depth, max_length) if depth > 0 else None
    margins: dict[str, dict[str, dict[str, float]]] = {}
    for task in tasks:
        pairs = [p for p in scored if p.task == task or routed_task[p.id] == task]
        if not pairs:
            continue
        per_system = task_margins(bundle, task, pairs, max_length, trunk)
        margins[task] = {s: dict(zip((p.id for p in pairs), v, strict=True)) for s, v in per_system.items()}
    single_by_id = {}
    if single is not None:
        model, tokenizer, _ = single
        single_by_id = dict(
            zip(
                (p.id for p in scored),
                single_margins(model, tokenizer, scored, max_length, trunk),
                strict=True,
            )
        )

    gold: dict[str, dict[str, Accuracy]] = defaultdict(dict)
    routed: dict[str, dict[str, Accuracy]] = defaultdict(dict)
    with_task = [p for p in scored if p.task in tasks]
    for system in SYSTEMS:
        if system == "single" and not single_by_id:
            continue
        every = []
        for task in tasks:
            pairs = [p for p in with_task if p.task == task]
            if system == "single":
                values = [single_by_id[p.id] for p in pairs]
            else:
                values = [margins[task][system][p.id] for p in pairs]
            every.extend(values)
            gold[system][task] = _accuracy(values, sum(p.task == task for p in ties))
        gold[system]["all"] = _accuracy(every, sum(p.task in tasks for p in ties))
        # Router's routing, by source (PandaLM has no task of its own).
        if system == "single":
            continue
        by_source: dict[str, list[float]] = defaultdict(list)
        for p in scored:
            by_source[p.source].append(margins[routed_task[p.id]][system][p.id])
        for source, values in sorted(by_source.items()):
            routed[system][source] = _accuracy(values, sum(p.source == source for p in ties))
        routed[system]["all"] = _accuracy([v for vs in by_source.values() for v in vs], len(ties))
    if single_by_id:
        by_source = defaultdict(list)
        for p in scored:
            by_source[p.source].append(single_by_id[p.id])
        for source, values in sorted(by_source.items()):
            routed["single"][source] = _accuracy(values, sum(p.source == source for p in ties))
        routed["single"]["all"] = _accuracy([v for vs in by_source.values() for v in vs], len(ties))

    result = EvalResult(tasks=tasks, gold=dict(gold), routed=dict(routed))
    agree = [routed_task[p.id] == p.task for p in with_task]
    result.notes["routing_agreement_on_test_pairs"] = Accuracy(sum(agree), len(agree)).to_json()
    if classifier_test:
        examples = [e for e in classifier_test if e.task in tasks]
        probabilities = classifier.classify([prompt_text(e.text) for e in examples])
        index = {t: i for i, t in enumerate(bundle.manifest.router.tasks)}
        truth = np.array([index[e.task] for e in examples])
        predicted = probabilities.argmax(axis=1)
        result.router_accuracy = Accuracy(int((truth == predicted).sum()), len(examples))
        result.confusion = confusion_matrix(truth, predicted, len(index)).tolist()
        result.confusion_labels = tuple(bundle.manifest.router.tasks)
    return result


LABELS = {
    "single": "one RM for all tasks",
    "base": "task base models",
    "mean": "experts: mean",
    "worst": "experts: worst-case",
    "uwo": "experts: mean - 0.5 var",
    "dmoerm": "DMoERM (experts + MLP)",
}


def _accuracy_table(table: dict[str, dict[str, Accuracy]], columns: list[str]) -> list[str]:
    """Markdown rows: a header, the n (ties) row, then one row per system."""
    first = next(iter(table.values()))
    lines = [
        "| system | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        "| n (ties) | " + " | ".join(f"{first[c].n} ({first[c].ties})" for c in columns) + " |",
    ]
    for system in SYSTEMS:
        if system in table:
            lines.append(
                f"| {LABELS[system]} | " + " | ".join(table[system][c].cell() for c in columns) + " |"
            )
    return lines


def markdown(result: EvalResult, header: str) -> str:
    lines = [
        header,
        "",
        "## Pairwise accuracy on the test split (gold task routing)",
        "",
        "Accuracy [95% Wilson interval]; n = non-tie test pairs, ties are not scored.",
        "",
        *_accuracy_table(result.gold, [*result.tasks, "all"]),
    ]
    if result.routed:
        slices = list(next(iter(result.routed.values())))
        lines += ["", "## With the router's routing, by source", "", *_accuracy_table(result.routed, slices)]
    agreement = result.notes.get("routing_agreement_on_test_pairs")
    if agreement:
        lines += [
            "",
            f"Router's task = the data's task on {agreement['correct']} of {agreement['n']} test pairs.",
        ]
    if result.router_accuracy:
        a = result.router_accuracy
        lines += [
            "",
            "## Router classifier on the held-out classifier test set",
            "",
            f"Accuracy {a.cell()} (n = {a.n}); confusion matrix in `confusion.png` (rows: true task).",
        ]
    return "\n".join(lines) + "\n"


def plots(result: EvalResult, curves: dict, out_dir: Path) -> list[str]:
    matplotlib.use("Agg")

    written = []
    systems = [s for s in SYSTEMS if s in result.gold]
    columns = [*result.tasks, "all"]
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(columns)), 4.5))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        acc = [result.gold[s][c].value for c in columns]
        low = [
            max(0.0, a - result.gold[s][c].interval[0]) if not math.isnan(a) else 0
            for a, c in zip(acc, columns, strict=True)
        ]
        high = [
            max(0.0, result.gold[s][c].interval[1] - a) if not math.isnan(a) else 0
            for a, c in zip(acc, columns, strict=True)
        ]
        ax.bar(np.arange(len(columns)) + i * width, acc, width, yerr=[low, high], capsize=2, label=LABELS[s])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(columns)) + width * (len(systems) - 1) / 2)
    ax.set_xticklabels(columns, rotation=30, ha="right")
    ax.set_ylabel("pairwise accuracy (95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)
    written.append("accuracy.png")
    if result.confusion:
        matrix = np.array(result.confusion)
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.imshow(matrix, cmap="Blues")
        labels = result.confusion_labels
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if v > matrix.max() / 2 else "black",
            )
        ax.set_xlabel("predicted task")
        ax.set_ylabel("true task")
        fig.tight_layout()
        fig.savefig(out_dir / "confusion.png", dpi=120)
        plt.close(fig)
        written.append("confusion.png")
    phase1 = {k: v for k, v in curves.items() if k.startswith("phase1/") and v.get("steps")}
    if phase1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, curve in phase1.items():
            ax.plot(curve["steps"], curve["losses"], label=name.split("/", 1)[1])
        ax.set_xlabel("step")
        ax.set_ylabel("Bradley-Terry loss")
        ax.set_title("phase 1 training loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "curves.png", dpi=120)
        plt.close(fig)
        written.append("curves.png")
    return written


def write_report(result: EvalResult, out_dir: str | Path, *, header: str, run: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = run or {}
    text = markdown(result, header)
    timings = run.get("timings_s") or {}
    if timings:
        text += "\n## Wall time per phase (2 CPU cores)\n\n| phase | seconds |\n|---|---:|\n"
        text += "".join(f"| {k} | {v:.1f} |\n" for k, v in timings.items())
    images = plots(result, run.get("curves") or {}, out_dir)
    text += "\n" + "\n".join(f"![{name}]({name})" for name in images) + "\n"
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.json").write_text(
        json.dumps({**result.to_json(), "run": {k: v for k, v in run.items() if k != "curves"}}, indent=2)
    )
    return out_dir / "report.md"
