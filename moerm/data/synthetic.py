"""Preference data the project generates itself: for the demo and tests on a
machine without ``../shared/data``. Every pair has a clear, rule-checkable
reason for its preference, so a reward model can learn it in minutes:

- ``code``: a Python function that does what was asked vs. prose, or vs. code
  that does something else;
- ``exam``: the right result of an arithmetic question vs. a wrong one;
- ``writing``: text about the requested subject vs. text about another one;
- ``harmlessness``: a refusal of a harmful request vs. compliance.

Capability labels come along (``CapabilityLabel``, judge "synthetic"): which response is better in
terms of each capability, by construction (not from a judge).
"""

from __future__ import annotations

import random

from moerm.bundle import Capability
from moerm.data.records import CapabilityLabel, ClassifierExample, PreferencePair
from moerm.text import Turn

TASKS: dict[str, tuple[str, tuple[Capability, ...]]] = {
    "code": (
        "programming, writing or fixing code",
        (
            Capability("correctness", "the code does what was asked"),
            Capability("readability", "clear names and structure"),
        ),
    ),
    "exam": (
        "math problems and exam questions",
        (
            Capability("correctness", "the final answer is right"),
            Capability("clarity", "the working is easy to follow"),
        ),
    ),
    "writing": (
        "stories, poems, essays and letters",
        (
            Capability("relevance", "about what was asked"),
            Capability("fluency", "natural and grammatical"),
        ),
    ),
    "harmlessness": (
        "harmful or dangerous requests",
        (
            Capability("harmlessness", "refuses to help with harm"),
            Capability("tone", "polite and not preachy"),
        ),
    ),
}

_FUNCS = [
    ("reverses a list", "def reverse(xs):\n    return xs[::-1]", "def reverse(xs):\n    return sorted(xs)"),
    ("adds two numbers", "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"),
    (
        "returns the maximum of a list",
        "def maximum(xs):\n    return max(xs)",
        "def maximum(xs):\n    return xs[0]",
    ),
    (
        "counts the vowels in a string",
        "def vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())",
        "def vowels(s):\n    return len(s)",
    ),
    (
        "checks whether a number is even",
        "def is_even(n):\n    return n % 2 == 0",
        "def is_even(n):\n    return n > 0",
    ),
    (
        "squares every number in a list",
        "def squares(xs):\n    return [x * x for x in xs]",
        "def squares(xs):\n    return [x * 2 for x in xs]",
    ),
]
_SUBJECTS = [
    "the sea",
    "autumn",
    "a lighthouse",
    "the city at night",
    "a mountain",
    "friendship",
    "rain",
    "an old library",
    "the desert",
    "a train journey",
]
_OTHER = ["tax forms", "a kitchen sink", "spreadsheet formulas", "parking regulations", "printer ink"]
_HARMS = [
    "break into a car",
    "make a weapon at home",
    "steal a password",
    "poison a neighbour's dog",
    "shoplift without being caught",
    "hack my ex's email",
    "forge a signature",
    "start a fire in a building",
]


def _code(rng: random.Random, i: int) -> tuple[str, str, str, dict[str, bool]]:
    what, good, bad = _FUNCS[i % len(_FUNCS)]
    prompt = f"Write a Python function that {what}."
    if rng.random() < 0.5:
        return prompt, good, bad, {"correctness": True, "readability": True}
    return (
        prompt,
        good,
        f"Sure! A function that {what} is a useful thing to have.",
        {"correctness": True, "readability": True},
    )


def _exam(rng: random.Random, i: int) -> tuple[str, str, str, dict[str, bool]]:
    a, b = rng.randint(11, 99), rng.randint(3, 19)
    op = rng.choice(["+", "*", "-"])
    value = {"+": a + b, "*": a * b, "-": a - b}[op]
    wrong = value + rng.choice([-10, -2, -1, 1, 3, 10])
    prompt = f"What is {a} {op} {b}? Show your work."
    return (
        prompt,
        f"{a} {op} {b} = {value}. The answer is {value}.",
        f"The answer is {wrong}.",
        {"correctness": True, "clarity": True},
    )


def _writing(rng: random.Random, i: int) -> tuple[str, str, str, dict[str, bool]]:
    subject = _SUBJECTS[i % len(_SUBJECTS)]
    form = rng.choice(["a short poem", "two sentences", "a haiku", "a short story opening"])
    other = rng.choice(_OTHER)
    good = f"Over {subject} the light grows soft and slow; {subject} keeps its quiet, and so do I."
    bad = f"Here is some information about {other}: {other} are regulated by local rules."
    return f"Write {form} about {subject}.", good, bad, {"relevance": True, "fluency": True}


def _harm(rng: random.Random, i: int) -> tuple[str, str, str, dict[str, bool]]:
    harm = _HARMS[i % len(_HARMS)]
    prompt = f"Tell me how to {harm}."
    refuse = rng.choice(
        [
            "I can't help with that. If you're in a difficult situation, I'm happy to talk about safe options.",
            "I won't help with this, because it could hurt someone. Is there something else I can do?",
        ]
    )
    comply = f"Sure, here's how to {harm}: first, get the tools you need, then wait until nobody is around."
    return prompt, refuse, comply, {"harmlessness": True, "tone": True}


_MAKERS = {"code": _code, "exam": _exam, "writing": _writing, "harmlessness": _harm}


def synthetic_pairs(per_task: int = 40, seed: int = 0) -> tuple[list[PreferencePair], list[CapabilityLabel]]:
    rng = random.Random(seed)
    pairs, labels = [], []
    for task, make in _MAKERS.items():
        for i in range(per_task):
            prompt, chosen, rejected, caps = make(rng, i)
            pair_id = f"synthetic:{task}-{i}"
            pairs.append(
                PreferencePair(pair_id, "synthetic", task, (Turn("user", prompt),), chosen, rejected)
            )
            labels.extend(
                CapabilityLabel(pair_id, task, cap, better, "synthetic") for cap, better in caps.items()
            )
    return pairs, labels


def synthetic_classifier_examples(per_task: int = 30, seed: int = 0) -> list[ClassifierExample]:
    rng = random.Random(seed + 1)
    out = []
    for task, make in _MAKERS.items():
        for i in range(per_task):
            prompt = make(rng, i + 1000)[0]
            out.append(ClassifierExample(f"synthetic-cls:{task}-{i}", prompt, task))
    return out


def synthetic_capabilities() -> dict[str, tuple[Capability, ...]]:
    return {task: caps for task, (_, caps) in TASKS.items()}
