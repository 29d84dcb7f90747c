"""Edits that make a statement of the response false and leave the rest as
it was: a changed number (the final answer first), another option letter for
a multiple-choice answer, a named entity swapped for one from another
response.

Only the prose is edited (code has its own edits). Each function returns the
edited response, or None when there is nothing to change.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import NamedTuple

from moerm.judges.contrast.text import blocks, inside, protected_spans

# --- numbers --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.,/:\-^])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w/:]|[.,]\d)")
_FINAL = (
    re.compile(r"\\boxed\{\s*\$?(?=\d)"),
    re.compile(r"####\s*\$?(?=\d)"),
    re.compile(r"(?i:answer)\s*(?:is|:|=)\s*[:=]?\s*\$?\s*(?=\d)"),
)
# Numbers that count things in the text, not facts: "Step 2", "1. item", "Chapter 3".
_NOT_A_FACT = re.compile(
    r"(?<![A-Za-z])(?i:step|chapter|section|part|option|figure|fig\.|table|item|version|v|no\.|#|question|problem|tip)\s*$"
)
_DELTAS = (1, 2, 3, 4, 5, 10)


def _number_candidates(response: str) -> list[re.Match[str]]:
    protected = protected_spans(response)
    found = []
    for block in blocks(response):
        if block.kind != "prose":
            continue
        for match in _NUMBER.finditer(response, block.start, block.end):
            line_start = response.rfind("\n", 0, match.start()) + 1
            before = response[line_start : match.start()]
            after = response[match.end() : match.end() + 2]
            if inside(match.start(), protected) or _NOT_A_FACT.search(before):
                continue
            if not before.strip() and after[:1] in (".", ")") and after[1:2] in (" ", ""):
                continue  # a list number: "1. " / "2) "
            found.append(match)
    return found


def _final_answer(response: str, candidates: list[re.Match[str]]) -> re.Match[str] | None:
    """The candidate that states the final answer: the last one right after
    ``\\boxed{`` / ``####`` / "answer is", else the last one of the last line
    that has text."""
    for pattern in _FINAL:
        lead_ins = [m.end() for m in pattern.finditer(response)]
        marked = [c for c in candidates if c.start() in lead_ins]
        if marked:
            return marked[-1]
    lines = response.rstrip().rsplit("\n", 1)
    last_line_start = len(response.rstrip()) - len(lines[-1])
    on_last = [c for c in candidates if c.start() >= last_line_start]
    return on_last[-1] if on_last else None


def _other_number(match: re.Match[str], rng: random.Random) -> str:
    whole, fraction = match.group(1), match.group(2) or ""
    grouped = "," in whole
    value = Decimal(whole.replace(",", "") + fraction)
    step = Decimal(1).scaleb(-(len(fraction) - 1)) if fraction else Decimal(1)
    delta = rng.choice(_DELTAS) * step * rng.choice((-1, 1))
    new = value + delta
    if new < 0 or new == value:
        new = value + abs(delta)
    decimals = len(fraction) - 1 if fraction else 0
    text = f"{new:,.{decimals}f}" if grouped else f"{new:.{decimals}f}"
    if len(whole.replace(",", "")) > 1 and whole.startswith("0"):  # keep leading zeros ("007")
        text = text.zfill(len(whole))
    return text


def change_number(response: str, rng: random.Random) -> str | None:
    """The response with one number changed (by 1, 2, 3, 4, 5 or 10 units of
    its last digit, up or down, never below zero; format kept): the final
    answer when the response states one, else a number drawn from the prose.
    List numbers, "Step 2" and the like, numbers in code, inline code and
    URLs are left alone. None when no number qualifies."""
    candidates = _number_candidates(response)
    if not candidates:
        return None
    target = _final_answer(response, candidates) or rng.choice(candidates)
    return response[: target.start()] + _other_number(target, rng) + response[target.end() :]


# --- multiple choice ------------------------------------------------------------------------------

_OPTION = re.compile(r"(?m)^\s*\(?([A-H])[).:]\s+\S")
_STATED_CHOICE = re.compile(
    r"(?i:answer|(?:correct|right|best) (?:option|choice))(?:\s+(?i:is|would be|should be|:))?\s*:?\s*(?i:option\s+)?\(?([A-H])\)?(?![\w'])"
)


def change_choice(response: str, rng: random.Random, prompt: str) -> str | None:
    """For a multiple-choice question (the prompt lists options "(A) ...",
    "B) ...", "C. ..." on their own lines), the response with the option
    letter of its stated answer ("the answer is D", "Answer: (B)") replaced,
    wherever it states it, by another letter of the prompt's options. None
    when the prompt has no options or the response states no answer among them."""
    options = sorted(set(_OPTION.findall(prompt)))
    if len(options) < 2:
        return None
    stated = [m for m in _STATED_CHOICE.finditer(response) if m.group(1) in options]
    if not stated:
        return None
    letter = stated[0].group(1)
    other = rng.choice([o for o in options if o != letter])
    edited = response
    for match in reversed([m for m in stated if m.group(1) == letter]):
        edited = edited[: match.start(1)] + other + edited[match.end(1) :]
    return edited


# --- named entities -------------------------------------------------------------------------------

_ENTITY = re.compile(r"(?<![\w'\u2019-])[A-Z][a-z]+(?: [A-Z][a-z]+){0,2}(?![\w'\u2019-])")
_SENTENCE_START = re.compile(r"(?:^|[.!?][\"'\u201d\u2019)\]]*|[:;\"\u201c(\[*#>\-\u2022]|\d[.)])\s*$")
# Dates are swapped within their kind: a month for another month, a weekday for another weekday.
CALENDAR = (
    tuple("January February March April May June July August September October November December".split()),
    tuple("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()),
)


class Span(NamedTuple):
    start: int
    end: int
    text: str


def entities(response: str) -> list[Span]:
    """Capitalized words and runs of up to three of them that do not start a
    sentence, a line or a list item (a run that does loses its first word):
    names of people, places, products, works (approximately), in the prose only."""
    protected = protected_spans(response)
    found = []
    for block in blocks(response):
        if block.kind != "prose":
            continue
        for match in _ENTITY.finditer(response, block.start, block.end):
            start, text = match.start(), match.group(0)
            line_start = response.rfind("\n", 0, start) + 1
            if _SENTENCE_START.search(response[line_start:start]):
                if " " not in text:
                    continue
                first = text.index(" ") + 1
                start, text = start + first, text[first:]
            if not inside(start, protected):
                found.append(Span(start, match.end(), text))
    return found


def by_words(names: Iterable[str]) -> dict[int, list[str]]:
    """Entity names grouped by their number of words, each group sorted."""
    groups: dict[int, set[str]] = {}
    for name in names:
        groups.setdefault(len(name.split()), set()).add(name)
    return {words: sorted(group) for words, group in groups.items()}


def swap_entity(
    response: str,
    rng: random.Random,
    donors: Mapping[int, Sequence[str]],
    prompt: str = "",
    allowed: Callable[[str], bool] | None = None,
    tries: int = 64,
) -> tuple[str, str] | None:
    """(edited response, donor entity): one named entity of the response
    (:func:`entities`) replaced by a donor entity of as many words
    (``donors``: :func:`by_words`) that neither the response nor the prompt
    mentions and that ``allowed`` accepts (up to ``tries`` seeded draws). A
    month or weekday is replaced by another month or weekday instead. None
    when the response has no entity or no draw fits."""
    found = entities(response)
    if not found:
        return None
    target = rng.choice(found)
    name = target.text
    calendar = next((kind for kind in CALENDAR if name in kind), None)
    if calendar is not None:
        donor = rng.choice([other for other in calendar if other != name])
        return response[: target.start] + donor + response[target.end :], donor
    group = [d for d in donors.get(len(name.split()), ()) if not any(d in kind for kind in CALENDAR)]
    if not group:
        return None
    known = response + "\n" + prompt
    for _ in range(tries):
        donor = rng.choice(group)
        if re.search(rf"\b{re.escape(donor)}\b", known) or (allowed is not None and not allowed(donor)):
            continue
        return response[: target.start] + donor + response[target.end :], donor
    return None
