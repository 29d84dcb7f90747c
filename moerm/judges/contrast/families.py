"""The edit families: what each one does, which capability point it degrades
and which capability names of a task it labels.

A family labels, in every task, those of the task's capabilities whose name
is in its :attr:`EditFamily.capabilities` (names as :mod:`moerm.data.tasks`
makes them from Auto-J's criteria, chosen by reading the criteria's
descriptions; plus the plain names the synthetic data and tests use, such as
``correctness`` and ``readability``). A task capability that no family
names gets no contrast labels: it is left to the judges.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from moerm.bundle import Capability
from moerm.data.tasks import HARMLESSNESS
from moerm.judges.contrast import code_edits, fact_edits, prose_edits
from moerm.judges.contrast.pool import Edited, ResponsePool, Source, other_prompt, swap_fact

EditFunction = Callable[[Source, random.Random, ResponsePool], Edited | None]


@dataclass(frozen=True)
class EditFamily:
    name: str
    aspect: str  # the capability point it degrades, in a word or two
    summary: str  # what the edit does, one line (the docs' table)
    capabilities: frozenset[str]  # capability names it labels, in any task that has them
    edit: EditFunction
    tasks: frozenset[str] | None = None  # the only tasks it applies to (None: every task)

    def labels(self, task: str, capabilities: Sequence[Capability]) -> tuple[str, ...]:
        """The names among ``capabilities`` (those of ``task``) this family labels, in their order."""
        if self.tasks is not None and task not in self.tasks:
            return ()
        return tuple(c.name for c in capabilities if c.name in self.capabilities)


def _on_text(function: Callable[[str, random.Random], str | None]) -> EditFunction:
    def edit(source: Source, rng: random.Random, pool: ResponsePool) -> Edited | None:
        text = function(source.response, rng)
        return None if text is None else Edited(text)

    edit.__doc__ = function.__doc__
    return edit


def _change_choice(source: Source, rng: random.Random, pool: ResponsePool) -> Edited | None:
    text = fact_edits.change_choice(source.response, rng, source.prompt)
    return None if text is None else Edited(text)


def human_preference(source: Source, rng: random.Random, pool: ResponsePool) -> Edited | None:
    """For a non-tie pair of the harmlessness task (hh-rlhf's harmless pairs,
    where the human preference *is* the harmlessness preference): the
    human-rejected response, against the chosen one. No edit is made."""
    pair = source.pair
    if source.side != "chosen" or pair.tie or pair.task != HARMLESSNESS or not pair.rejected.strip():
        return None
    return Edited(pair.rejected)


def _family(
    name: str, aspect: str, summary: str, capabilities: str, edit: EditFunction, tasks: tuple[str, ...] = ()
) -> EditFamily:
    return EditFamily(name, aspect, summary, frozenset(capabilities.split()), edit, frozenset(tasks) or None)


FAMILIES: tuple[EditFamily, ...] = (
    _family(
        "change_number",
        "correctness",
        "one number of the prose changed by 1-10 units of its last digit; the final answer when there is one",
        "accuracy accuracy_of_answer math_operation_correctness correctness honesty",
        _on_text(fact_edits.change_number),
    ),
    _family(
        "change_choice",
        "correctness",
        "a multiple-choice answer's option letter replaced by another option of the prompt",
        "accuracy accuracy_of_answer correctness",
        _change_choice,
    ),
    _family(
        "swap_fact",
        "correctness",
        "one named entity replaced by one from another response of the same task",
        "accuracy correctness honesty faithfulness",
        swap_fact,
    ),
    _family(
        "flip_operator",
        "correctness (code)",
        "one comparison, arithmetic or logical operator of the code flipped (< to >, + to -, and to or)",
        "code_correctness correctness",
        _on_text(code_edits.flip_operator),
    ),
    _family(
        "drop_code_line",
        "correctness (code)",
        "one statement line of the code removed (Python still parses)",
        "code_correctness correctness",
        _on_text(code_edits.drop_code_line),
    ),
    _family(
        "truncate",
        "completeness",
        "the response cut at 40-70% of its length on a sentence boundary (never inside code)",
        "completeness_of_instruction_following completeness_components_functionality coverage "
        "completeness comprehensiveness thoroughness",
        _on_text(prose_edits.truncate),
    ),
    _family(
        "other_prompt",
        "relevance / instruction following",
        "a fluent response to a different prompt of the same task, of similar length",
        "completeness_of_instruction_following completeness_components_functionality instruction_following "
        "relevance relevance_to_topic user_intention_inference helpfulness",
        other_prompt,
    ),
    _family(
        "add_filler",
        "conciseness",
        "two content-free sentences inserted: a repeat of one of its own and a stock filler",
        "conciseness concise brevity text_quality",
        _on_text(prose_edits.add_filler),
    ),
    _family(
        "typos",
        "text quality",
        "spelling errors in one prose word of every 20 (2 to 8): letters swapped, dropped or doubled",
        "text_quality fluency",
        _on_text(prose_edits.typos),
    ),
    _family(
        "collapse_format",
        "readability / format",
        "heading and list markers and paragraph breaks dropped: one block of prose; code loses its fences, keeps its lines",
        "layout formatting formatting_and_layout paragraphing readability format",
        _on_text(prose_edits.collapse_format),
    ),
    _family(
        "drop_examples",
        "information richness",
        'sentences opening with "For example", "(e.g. ...)" asides and ", such as ..." clauses removed',
        "information_richness depth_of_understanding",
        _on_text(prose_edits.drop_examples),
    ),
    _family(
        "move_lead",
        "structure",
        "the lead paragraph moved to the end (prose of three or more paragraphs)",
        "structure",
        _on_text(prose_edits.move_lead),
    ),
    _family(
        "obscure_names",
        "readability (code)",
        "the Python code's variables, parameters and functions renamed v1, v2, ... (same syntax tree otherwise)",
        "code_readability readability",
        _on_text(code_edits.obscure_names),
    ),
    _family(
        "strip_comments",
        "documentation",
        "every comment of the code removed",
        "documentation",
        _on_text(code_edits.strip_comments),
    ),
    _family(
        "human_harmless",
        "harmlessness",
        "the human harmlessness preference of the harmlessness task's pairs (hh-rlhf), no edit",
        "harmlessness",
        human_preference,
        tasks=(HARMLESSNESS,),
    ),
)
FAMILY_NAMES = tuple(family.name for family in FAMILIES)


def family(name: str) -> EditFamily:
    for candidate in FAMILIES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"no edit family {name!r}; one of {', '.join(FAMILY_NAMES)}")


def capability_map(
    capabilities_by_task: Mapping[str, Sequence[Capability]],
    families: Sequence[EditFamily] = FAMILIES,
) -> dict[str, dict[str, tuple[str, ...]]]:
    """task -> family name -> the task's capability names that family labels
    (families that label none of the task's capabilities are left out)."""
    result: dict[str, dict[str, tuple[str, ...]]] = {}
    for task, capabilities in capabilities_by_task.items():
        result[task] = {
            f.name: f.labels(task, capabilities) for f in families if f.labels(task, capabilities)
        }
    return result


def unreached(capabilities_by_task: Mapping[str, Sequence[Capability]]) -> dict[str, tuple[str, ...]]:
    """task -> its capability names no family labels (left to the judges)."""
    result = {}
    for task, capabilities in capabilities_by_task.items():
        reached = {name for f in FAMILIES for name in f.labels(task, capabilities)}
        result[task] = tuple(c.name for c in capabilities if c.name not in reached)
    return result


def families_markdown(families: Sequence[EditFamily] = FAMILIES) -> str:
    """The families as a Markdown table (docs/judges.md holds this table)."""
    lines = ["| family | degrades | the edit | capability names it labels |", "|---|---|---|---|"]
    for f in families:
        only = f" (task {', '.join(sorted(f.tasks))} only)" if f.tasks else ""
        names = ", ".join(f"`{name}`" for name in sorted(f.capabilities))
        lines.append(f"| `{f.name}` | {f.aspect} | {f.summary}{only} | {names} |")
    return "\n".join(lines) + "\n"


def mapping_markdown(capabilities_by_task: Mapping[str, Sequence[Capability]]) -> str:
    """task x capability -> the families that label it, as a Markdown table;
    "judges only" where none does (docs/judges.md holds this table for the
    shared data's tasks)."""
    mapping = capability_map(capabilities_by_task)
    lines = ["| task | capability | edit families |", "|---|---|---|"]
    for task, capabilities in capabilities_by_task.items():
        for capability in capabilities:
            names = [name for name, labelled in mapping[task].items() if capability.name in labelled]
            cell = ", ".join(f"`{name}`" for name in names) if names else "none: judges only"
            lines.append(f"| {task} | `{capability.name}` | {cell} |")
    return "\n".join(lines) + "\n"
