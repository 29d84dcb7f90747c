"""Capability experts on held-out capability-contrast pairs: the K x K table.

A contrast pair (:mod:`moerm.judges.contrast`) is a real response against the
same response after one edit that degrades known capabilities. Held out: made
from the test split's responses only, so no expert trained on them. For each
task, every capability expert scores every contrast pair of the task; an expert
is right on a pair when it gives the original response a strictly higher
reward than the edited one (equal rewards, e.g. an edit beyond what the model
reads, are ties: counted, not scored).

Rows: the task's K experts (and, as references, the task base model and the
full DMoERM reward); columns: the capability whose edits the pairs are (a pair
labelled for two capabilities counts in both columns). An expert that learned
its capability is most accurate in its own column (the diagonal); one that
scores every edit alike learned something else (length, say). The same rows
against the edit families are kept too (``by_family``), because several
capabilities share a family.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moerm.bundle import Bundle
from moerm.evaluate.metrics import Accuracy
from moerm.evaluate.systems import _margins
from moerm.judges.contrast import ContrastPair
from moerm.models.aggregator import Aggregator
from moerm.models.experts import load_heads
from moerm.models.loading import TaskFiles, load_experts
from moerm.train.loop import PairTokenizer

BASE = "task base model"
DMOERM = "DMoERM (experts + MLP)"


@dataclass
class TaskContrast:
    """One task's table: ``cells[row][column]`` and ``by_family[row][family]``;
    rows are the experts' capability names, then :data:`BASE` and :data:`DMOERM`."""

    task: str
    experts: tuple[str, ...]
    columns: tuple[str, ...]  # capabilities that have held-out contrast pairs, in the task's order
    families: tuple[str, ...]
    cells: dict[str, dict[str, Accuracy]]
    by_family: dict[str, dict[str, Accuracy]]
    trained: dict[str, bool] = field(default_factory=dict)

    @property
    def rows(self) -> tuple[str, ...]:
        return tuple(r for r in (*self.experts, BASE, DMOERM) if r in self.cells)

    def diagonal(self) -> dict[str, Accuracy]:
        """Each expert on its own capability's edits (experts with held-out pairs)."""
        return {cap: self.cells[cap][cap] for cap in self.experts if cap in self.columns}

    def off_diagonal(self, cap: str) -> Accuracy:
        """An expert on the other capabilities' columns, pooled (a pair in several
        columns counts once per column)."""
        others = [self.cells[cap][c] for c in self.columns if c != cap]
        return Accuracy(sum(a.correct for a in others), sum(a.n for a in others), sum(a.ties for a in others))

    def dominant(self, column: str) -> bool:
        """Is the column's own expert the most accurate expert on it (ties in
        accuracy allowed)?"""
        if column not in self.experts:
            return False
        best = max(self.cells[e][column].value for e in self.experts)
        return self.cells[column][column].value >= best

    def to_json(self) -> dict:
        def table(t):
            return {row: {col: a.to_json() for col, a in v.items()} for row, v in t.items()}

        return {
            "task": self.task,
            "experts": list(self.experts),
            "trained": self.trained,
            "columns": list(self.columns),
            "families": list(self.families),
            "cells": table(self.cells),
            "by_family": table(self.by_family),
            "diagonal_dominant": {c: self.dominant(c) for c in self.columns},
        }


def _accuracy(margins: Sequence[float]) -> Accuracy:
    return Accuracy(
        correct=sum(m > 0 for m in margins),
        n=sum(m != 0 for m in margins),
        ties=sum(m == 0 for m in margins),
    )


def tabulate(
    task: str,
    experts: Sequence[str],
    contrast: Sequence[ContrastPair],
    margins: dict[str, Sequence[float]],
    trained: dict[str, bool] | None = None,
) -> TaskContrast:
    """A task's table from per-row margins (row -> one reward(original) -
    reward(edited) per contrast pair, in ``contrast``'s order)."""
    columns = tuple(
        dict.fromkeys(
            [c for c in experts if any(c in item.capabilities for item in contrast)]
            + [c for item in contrast for c in item.capabilities if c not in experts]
        )
    )
    families = tuple(sorted({item.family for item in contrast}))
    cells: dict[str, dict[str, Accuracy]] = defaultdict(dict)
    by_family: dict[str, dict[str, Accuracy]] = defaultdict(dict)
    for row, values in margins.items():
        if len(values) != len(contrast):
            raise ValueError(f"{task}/{row}: {len(values)} margins for {len(contrast)} contrast pairs")
        for column in columns:
            cells[row][column] = _accuracy(
                [m for m, c in zip(values, contrast, strict=True) if column in c.capabilities]
            )
        for name in families:
            by_family[row][name] = _accuracy(
                [m for m, c in zip(values, contrast, strict=True) if c.family == name]
            )
    return TaskContrast(task, tuple(experts), columns, families, dict(cells), dict(by_family), trained or {})


def task_contrast_margins(
    bundle: Bundle, task: str, contrast: Sequence[ContrastPair], max_length: int, batch_size: int = 16
) -> dict[str, list[float]]:
    """row -> margins of every contrast pair: each expert of ``task`` (by
    capability name), :data:`DMOERM` and :data:`BASE` (when the bundle has a
    task base model: the experts' backbone with their adapters disabled, under
    the base head, sharing the layers below the adapters)."""
    files = TaskFiles.of_bundle(bundle, task)
    experts, tokenizer = load_experts(files)
    base_head = (
        load_heads(files.base_head, ["base"], files.hidden_size)["base"]
        if files.base_head is not None
        else None
    )
    aggregator = Aggregator(bundle).tasks[task]
    names = experts.capabilities

    def score(ids, mask):
        if base_head is None:
            scores, hidden = experts(ids, mask)
        else:
            scores, hidden, base = experts.forward_with_base(ids, mask, base_head)
        out = {cap: scores[:, k] for k, cap in enumerate(names)}
        out[DMOERM] = torch.from_numpy(aggregator.raw(scores.numpy(), hidden.numpy()))
        if base_head is not None:
            out[BASE] = base
        return out

    pairs = [item.pair for item in contrast]
    return dict(_margins(score, PairTokenizer(tokenizer, max_length), pairs, batch_size))


def evaluate_contrast(
    bundle: Bundle, contrast: Sequence[ContrastPair], *, max_length: int = 256
) -> list[TaskContrast]:
    """One table per task of the bundle that has held-out contrast pairs."""
    try:
        notes = json.loads(bundle.manifest.notes or "{}")
    except json.JSONDecodeError:  # notes are free text in bundles not made by `moerm train`
        notes = {}
    trained_by_task = (notes.get("labels") or {}) if isinstance(notes, dict) else {}
    by_task: dict[str, list[ContrastPair]] = defaultdict(list)
    for item in contrast:
        by_task[item.pair.task].append(item)
    tables = []
    for task, spec in bundle.manifest.tasks.items():
        items = by_task.get(task)
        if not items:
            continue
        margins = task_contrast_margins(bundle, task, items, max_length)
        trained = (trained_by_task.get(task) or {}).get("trained") or {}
        tables.append(tabulate(task, spec.capability_names, items, margins, trained))
    return tables


# --- report ---------------------------------------------------------------------------------------


def _short(cap: str, width: int = 22) -> str:
    return cap if len(cap) <= width else cap[: width - 1] + "…"


def _grid_head(title: str, corner: str, names: Sequence[str], first: Sequence) -> list[str]:
    """A grid's title, header row (``names`` as code) and n (ties) row, from the first
    row's cells (every row scores the same pairs)."""
    return [
        title,
        "",
        f"| {corner} | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---|" + "---:|" * len(names),
        "| n (ties) | " + " | ".join(f"{cell.n} ({cell.ties})" for cell in first) + " |",
    ]


def task_markdown(table: TaskContrast) -> list[str]:
    """The K x K table of one task (rows: experts, then base and DMoERM; columns:
    capabilities' edits), an n row, and the diagonal against the rest."""
    columns = table.columns
    lines = _grid_head(
        f"### {table.task}",
        "expert \\ edits of",
        [_short(c) for c in columns],
        [table.cells[table.rows[0]][c] for c in columns],
    )
    for row in table.rows:
        cells = []
        for column in columns:
            cell = table.cells[row][column].cell()
            cells.append(f"**{cell}**" if row == column else cell)
        untrained = (
            " (untrained)" if table.trained and row in table.experts and not table.trained.get(row) else ""
        )
        label = f"`{row}`{untrained}" if row in table.experts else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| expert | own edits | other capabilities' edits | own − other | own column's best expert |",
        "|---|---:|---:|---:|---|",
    ]
    for cap, own in table.diagonal().items():
        other = table.off_diagonal(cap)
        gap = own.value - other.value if other.n else float("nan")
        verdict = "yes" if table.dominant(cap) else "no"
        lines.append(f"| `{cap}` | {own.cell()} | {other.cell()} | {gap:+.3f} | {verdict} |")
    return lines


def family_markdown(table: TaskContrast) -> list[str]:
    families = table.families
    lines = _grid_head(
        f"#### {table.task}: experts x edit families",
        "expert \\ family",
        families,
        [table.by_family[table.rows[0]][f] for f in families],
    )
    for row in table.rows:
        label = f"`{row}`" if row in table.experts else row
        lines.append(f"| {label} | " + " | ".join(table.by_family[row][f].cell() for f in families) + " |")
    return lines


def summary(tables: Sequence[TaskContrast]) -> dict:
    """Over every task: the diagonal pooled, the off-diagonal pooled, how many
    experts reach 0.9 on their own edits, how many columns their own expert wins."""
    own = [a for t in tables for a in t.diagonal().values()]
    other = [t.off_diagonal(c) for t in tables for c in t.diagonal()]
    pooled_own = Accuracy(sum(a.correct for a in own), sum(a.n for a in own), sum(a.ties for a in own))
    pooled_other = Accuracy(
        sum(a.correct for a in other), sum(a.n for a in other), sum(a.ties for a in other)
    )
    return {
        "experts": len(own),
        "own": pooled_own.to_json(),
        "other": pooled_other.to_json(),
        "experts_at_0.9": sum(a.value >= 0.9 for a in own if a.n),
        "experts_with_pairs": sum(1 for a in own if a.n),
        "dominant_columns": sum(t.dominant(c) for t in tables for c in t.diagonal()),
        "median_own": float(np.median([a.value for a in own if a.n])) if any(a.n for a in own) else None,
    }


def markdown(tables: Sequence[TaskContrast], header: str) -> str:
    s = summary(tables)
    own, other = s["own"], s["other"]
    lines = [
        header,
        "",
        "Accuracy [95% Wilson interval] of each capability expert on held-out contrast pairs (edits of "
        "test-split responses): right when the original response gets a strictly higher reward than "
        "its edited copy; n = pairs scored, ties (equal rewards) not scored. Rows: the task's experts, "
        "then the task base model and the full DMoERM reward as references; columns: the capability "
        "each edit degrades (a pair labelled for two capabilities counts in both columns). Bold: "
        "the diagonal (an expert on its own capability's edits).",
        "",
        "## Summary",
        "",
        f"- Experts with held-out pairs of their own capability: {s['experts_with_pairs']}; at ≥ 0.9 on "
        f"them: {s['experts_at_0.9']}; median accuracy on own edits: "
        + (f"{s['median_own']:.3f}" if s["median_own"] is not None else "–")
        + ".",
        f"- Pooled over experts: own edits {own['accuracy']:.3f} [{own['ci95'][0]:.2f}, {own['ci95'][1]:.2f}] "
        f"(n = {own['n']}), other capabilities' edits {other['accuracy']:.3f} "
        f"[{other['ci95'][0]:.2f}, {other['ci95'][1]:.2f}] (n = {other['n']}).",
        f"- Columns whose own expert is the most accurate expert: {s['dominant_columns']} of {s['experts']}.",
        "",
        "## K x K per task",
        "",
    ]
    for table in tables:
        lines += [*task_markdown(table), ""]
    lines += ["## Experts x edit families", ""]
    for table in tables:
        lines += [*family_markdown(table), ""]
    return "\n".join(lines)


def write_contrast_report(
    tables: Sequence[TaskContrast], out_dir: str | Path, *, header: str, extra: dict | None = None
) -> Path:
    """``contrast.md`` and ``contrast.json`` in ``out_dir``; returns the Markdown's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "contrast.md").write_text(markdown(tables, header) + "\n")
    (out_dir / "contrast.json").write_text(
        json.dumps(
            {"summary": summary(tables), "tasks": [t.to_json() for t in tables], **(extra or {})}, indent=2
        )
        + "\n"
    )
    return out_dir / "contrast.md"
