"""Capability labels from a pairwise judge, kept only when they survive a swap.

For every non-tie preference pair and every capability of the pair's task the
judge is asked twice which response is better in terms of that capability:
first with the human-chosen response as A, then with it as B. A label is kept
only when the two verdicts agree once the swap is undone (first "A" and second
"B": the chosen response is better; first "B" and second "A": the rejected one
is). The same letter twice (position bias) and any abstention drop the item.
:class:`LabelStats` counts what happened per (task, capability).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from moerm.bundle import Capability
from moerm.data.records import CapabilityLabel, PreferencePair
from moerm.text import Turn

Verdict = Literal["A", "B"] | None  # None: the judge abstains or its answer was unparseable

_CURRENT_TASK: contextvars.ContextVar[str | None] = contextvars.ContextVar("moerm_judge_task", default=None)


def current_task() -> str | None:
    """The task of the pair being judged, inside :func:`label_pairs` (or a
    :func:`task_context` block); None elsewhere. Rules that only apply to some
    tasks (the refusal rule) read it, so that :meth:`Judge.compare` keeps its
    plain signature."""
    return _CURRENT_TASK.get()


@contextlib.contextmanager
def task_context(task: str | None) -> Iterator[None]:
    token = _CURRENT_TASK.set(task)
    try:
        yield
    finally:
        _CURRENT_TASK.reset(token)


class Judge(abc.ABC):
    """Compares two responses to one conversation in terms of one capability."""

    name: str = "judge"

    @abc.abstractmethod
    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        """The better response, "A" or "B"; None to abstain."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most judges hold nothing
        """Release what the judge holds (threads, files)."""

    async def __aenter__(self) -> Judge:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass
class CapabilityStats:
    """Counts for one (task, capability), or for all of them.

    ``asked``: (pair, capability) items, each asked twice (swapped);
    ``answered``: items where both asks gave a letter;
    ``consistent``: items whose two letters agree after the swap (kept);
    ``same_letter``: items answered with the same letter twice (position bias);
    ``chosen_better``: kept labels preferring the human-chosen response;
    ``a_answers`` / ``letters``: how many of the letters given were "A".
    """

    asked: int = 0
    answered: int = 0
    consistent: int = 0
    same_letter: int = 0
    chosen_better: int = 0
    a_answers: int = 0
    letters: int = 0

    @property
    def kept_fraction(self) -> float:
        return self.consistent / self.asked if self.asked else math.nan

    @property
    def agreement_with_human(self) -> float:
        """Fraction of kept labels that prefer the human-chosen response."""
        return self.chosen_better / self.consistent if self.consistent else math.nan

    @property
    def a_rate(self) -> float:
        """Fraction of the letters given that were "A" (0.5 when unbiased)."""
        return self.a_answers / self.letters if self.letters else math.nan

    def agreement_interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of :attr:`agreement_with_human`."""
        return wilson_interval(self.chosen_better, self.consistent, z)

    def add(self, other: CapabilityStats) -> None:
        for name in (
            "asked",
            "answered",
            "consistent",
            "same_letter",
            "chosen_better",
            "a_answers",
            "letters",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict:
        low, high = self.agreement_interval()
        return {
            **asdict(self),
            "kept_fraction": _finite(self.kept_fraction),
            "agreement_with_human": _finite(self.agreement_with_human),
            "agreement_ci95": [_finite(low), _finite(high)],
            "a_rate": _finite(self.a_rate),
        }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


@dataclass
class LabelStats:
    judge: str
    by_capability: dict[tuple[str, str], CapabilityStats] = field(default_factory=dict)
    ties_skipped: int = 0
    pairs_without_capabilities: int = 0  # pairs whose task is not in capabilities_by_task
    elapsed_s: float = 0.0

    @property
    def total(self) -> CapabilityStats:
        total = CapabilityStats()
        for stats in self.by_capability.values():
            total.add(stats)
        return total

    def to_dict(self) -> dict:
        return {
            "judge": self.judge,
            "ties_skipped": self.ties_skipped,
            "pairs_without_capabilities": self.pairs_without_capabilities,
            "elapsed_s": round(self.elapsed_s, 3),
            "total": self.total.to_dict(),
            "by_capability": [
                {"task": task, "capability": cap, **stats.to_dict()}
                for (task, cap), stats in sorted(self.by_capability.items())
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw: Mapping) -> LabelStats:
        names = CapabilityStats.__dataclass_fields__
        return cls(
            judge=raw["judge"],
            by_capability={
                (row["task"], row["capability"]): CapabilityStats(**{k: row[k] for k in names})
                for row in raw["by_capability"]
            },
            ties_skipped=raw.get("ties_skipped", 0),
            pairs_without_capabilities=raw.get("pairs_without_capabilities", 0),
            elapsed_s=raw.get("elapsed_s", 0.0),
        )

    def to_markdown(self) -> str:
        header = (
            '| task | capability | asked | answered | kept | kept % | same letter | "A" rate '
            "| agrees with human | 95% CI |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
        )
        lines = [header]
        rows = sorted(self.by_capability.items())
        for (task, cap), stats in [*rows, (("**total**", ""), self.total)]:
            low, high = stats.agreement_interval()
            interval = "–" if math.isnan(low) else f"{low:.2f}–{high:.2f}"
            agreement = (
                f"{_fmt(stats.agreement_with_human)} ({stats.chosen_better}/{stats.consistent})"
                if stats.consistent
                else "–"
            )
            lines.append(
                f"| {task} | {cap} | {stats.asked} | {stats.answered} | {stats.consistent} "
                f"| {_fmt(100 * stats.kept_fraction, 1)} | {stats.same_letter} | {_fmt(stats.a_rate)} "
                f"| {agreement} | {interval} |"
            )
        lines.append("")
        lines.append(
            f"judge `{self.judge}`; {self.ties_skipped} tie pairs skipped; "
            f"{self.pairs_without_capabilities} pairs without capabilities for their task; "
            f"{self.elapsed_s:.1f} s"
        )
        return "\n".join(lines) + "\n"


def decide(first: Verdict, second: Verdict) -> bool | None:
    """The swap-consistency rule. ``first``: chosen shown as A; ``second``:
    chosen shown as B. True: chosen better; False: rejected better; None: drop."""
    if first == "A" and second == "B":
        return True
    if first == "B" and second == "A":
        return False
    return None


async def label_pairs(
    pairs: Iterable[PreferencePair],
    capabilities_by_task: Mapping[str, Sequence[Capability]],
    judge: Judge,
    concurrency: int = 8,
    progress: bool = True,
) -> tuple[list[CapabilityLabel], LabelStats]:
    """Ask ``judge`` about every (non-tie pair, capability of its task) twice,
    swapped, and keep the consistent answers. Labels come back in pair order,
    then capability order. An exception from the judge stops the run (with a
    caching judge a rerun resumes where it stopped)."""
    started = time.monotonic()
    stats = LabelStats(judge=judge.name)
    items: list[tuple[PreferencePair, Capability]] = []
    for pair in pairs:
        if pair.tie:
            stats.ties_skipped += 1
            continue
        capabilities = capabilities_by_task.get(pair.task)
        if not capabilities:
            stats.pairs_without_capabilities += 1
            continue
        for capability in capabilities:
            items.append((pair, capability))
            stats.by_capability.setdefault((pair.task, capability.name), CapabilityStats())

    semaphore = asyncio.Semaphore(max(1, concurrency))
    total_asks = 2 * len(items)
    done = 0
    next_report = 0.0

    def report(final: bool = False) -> None:
        nonlocal next_report
        now = time.monotonic()
        if not progress or (not final and now < next_report):
            return
        next_report = now + 5.0
        elapsed = now - started
        end = "\n" if final or not sys.stderr.isatty() else "\r"
        print(f"judge {judge.name}: {done}/{total_asks} asks, {elapsed:.0f} s", end=end, file=sys.stderr)

    async def ask(pair: PreferencePair, capability: Capability, chosen_first: bool) -> Verdict:
        nonlocal done
        a, b = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
        async with semaphore:
            with task_context(pair.task):
                verdict = await judge.compare(pair.turns, a, b, capability)
        if verdict not in ("A", "B", None):
            raise ValueError(f"judge {judge.name} returned {verdict!r}, not 'A', 'B' or None")
        done += 1
        report()
        return verdict

    async def one(pair: PreferencePair, capability: Capability) -> tuple[Verdict, Verdict]:
        first, second = await asyncio.gather(ask(pair, capability, True), ask(pair, capability, False))
        return first, second

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(pair, capability)) for pair, capability in items]
    except BaseExceptionGroup as failures:  # the first failure, as itself; the others were alike or cancels
        if progress:
            print(file=sys.stderr)
        raise failures.exceptions[0] from None

    labels = []
    for (pair, capability), task in zip(items, tasks, strict=True):
        first, second = task.result()
        row = stats.by_capability[(pair.task, capability.name)]
        row.asked += 1
        for verdict in (first, second):
            if verdict is not None:
                row.letters += 1
                row.a_answers += verdict == "A"
        if first is None or second is None:
            continue
        row.answered += 1
        if first == second:
            row.same_letter += 1
        chosen_better = decide(first, second)
        if chosen_better is None:
            continue
        row.consistent += 1
        row.chosen_better += chosen_better
        labels.append(CapabilityLabel(pair.id, pair.task, capability.name, chosen_better, judge.name))
    stats.elapsed_s = time.monotonic() - started
    report(final=True)
    return labels, stats


def save_labels(labels: Iterable[CapabilityLabel], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for label in labels:
            handle.write(json.dumps(asdict(label), ensure_ascii=False) + "\n")


def load_labels(path: str | Path) -> list[CapabilityLabel]:
    labels = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                labels.append(
                    CapabilityLabel(
                        pair_id=str(raw["pair_id"]),
                        task=str(raw["task"]),
                        capability=str(raw["capability"]),
                        chosen_better=bool(raw["chosen_better"]),
                        judge=str(raw["judge"]),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a capability label ({error})") from None
    return labels
