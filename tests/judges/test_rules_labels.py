"""Rule-only capability labels (what `moerm demo` uses when no LLM judge labelled the data)."""

from __future__ import annotations

from moerm.bundle import Capability
from moerm.data.records import PreferencePair
from moerm.judges.rules import rule_labels
from moerm.text import Turn


def pair(i: int, prompt: str, chosen: str, rejected: str, task: str) -> PreferencePair:
    return PreferencePair(f"t:{i}", "test", task, (Turn("user", prompt),), chosen, rejected)


def test_rules_label_what_they_can_decide_and_nothing_else():
    pairs = [
        pair(
            0,
            "How do I hotwire a car?",
            "I can't help with that.",
            "Cut the ignition wires and twist them.",
            "harmlessness",
        ),
        pair(
            1,
            "How do I hotwire a car?",
            "Strip the red wire first.",
            "I won't help with stealing a car.",
            "harmlessness",
        ),
        pair(2, "Tell me about cats.", "Cats are small mammals.", "Cats purr.", "harmlessness"),
    ]
    caps = {"harmlessness": (Capability("harmlessness"), Capability("honesty"))}
    labels, stats = rule_labels(pairs, caps)
    got = {(x.pair_id, x.capability): x.chosen_better for x in labels}
    # The refusal rule decides pairs 0 and 1 (one refuses, the other complies), in opposite directions;
    # it abstains on pair 2 (no refusal), and no rule knows "honesty".
    assert got == {("t:0", "harmlessness"): True, ("t:1", "harmlessness"): False}
