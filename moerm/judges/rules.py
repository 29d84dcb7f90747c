"""Capability labels from the rule-based judges alone: fast, no model.

Used by ``moerm demo`` (and available to any recipe) when no LLM judge has
labelled the data. Rules apply only where a rule can decide (code that parses,
a final answer that matches, stated length/format constraints, refusal of a
harmful request); every other (pair, capability) gets no label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from moerm.bundle import Capability
from moerm.data.records import PreferencePair
from moerm.judges.base import CapabilityLabel, LabelStats, label_pairs
from moerm.judges.programmatic import CodeParsesJudge, FinalAnswerJudge, RuleRouter, default_rules

# Auto-J-derived capability names (moerm.data.tasks) that a rule can check.
AUTOJ_RULES = {
    "code_correctness": "code",
    "accuracy_of_answer": "final",
    "math_operation_correctness": "final",
}


def rule_judge() -> RuleRouter:
    rules = dict(default_rules())
    judges = {"code": CodeParsesJudge(), "final": FinalAnswerJudge()}
    for capability, kind in AUTOJ_RULES.items():
        rules[capability] = (judges[kind],)
    return RuleRouter(rules)


def rule_labels(
    pairs: Sequence[PreferencePair], capabilities: Mapping[str, Sequence[Capability]]
) -> tuple[list[CapabilityLabel], LabelStats]:
    """Swap-checked labels from the rules for ``pairs`` (blocking)."""
    return asyncio.run(label_pairs(pairs, capabilities, rule_judge(), concurrency=32, progress=False))
