"""Edits of the prose of a response that keep its facts and leave its code
alone: cut it short, pad it, misspell words, flatten its layout, drop its
examples, move its lead paragraph to the end.

Each function takes the response and a seeded :class:`random.Random` and
returns the edited response, or None when the edit cannot apply (too short,
nothing to flatten, no example to drop, ...).
"""

from __future__ import annotations

import random
import re

from moerm.judges.contrast.text import (
    blocks,
    closing_fence_ends,
    inside,
    paragraphs,
    protected_spans,
    sentence_ends,
    sentences,
)

# --- completeness: cut the response short ---------------------------------------------------------


def truncate(response: str, rng: random.Random, low: float = 0.4, high: float = 0.7) -> str | None:
    """The response cut on a sentence boundary (after a sentence's final
    punctuation, or after a closing code fence) between ``low`` and ``high``
    of its length: the boundary nearest a seeded target in that range. None
    when no boundary falls in the range."""
    size = len(response)
    cuts = sorted(set(sentence_ends(response)) | set(closing_fence_ends(response)))
    candidates = [cut for cut in cuts if low * size <= cut <= high * size]
    if not candidates:
        return None
    target = rng.uniform(low, high) * size
    cut = min(candidates, key=lambda c: (abs(c - target), c))
    return response[:cut].rstrip()


# --- conciseness: pad the response with filler ----------------------------------------------------

FILLER = (
    "This is an important point to keep in mind.",
    "It is worth noting that this is worth noting.",
    "As mentioned, this is something to think about.",
    "In other words, it is what it is.",
    "All things considered, this matters a great deal.",
    "Needless to say, this is the case.",
    "To put it simply, this is simply how it is.",
    "That being said, there is more to say about this.",
    "At the end of the day, this is what it comes down to.",
    "It goes without saying that this is important.",
    "Of course, this is something that should be considered.",
    "Generally speaking, this is generally true.",
)


def add_filler(response: str, rng: random.Random, count: int = 2) -> str | None:
    """``count`` sentences that say nothing inserted after sentence ends of
    the prose: a repeat of one of the response's own sentences (5 words or
    more) when it has one, the rest from :data:`FILLER`. None for a response
    of fewer than two sentences."""
    ends = sentence_ends(response)
    spans = sentences(response)
    if len(ends) < 2:
        return None
    repeatable = [
        response[a:b] for a, b in spans if "\n" not in response[a:b] and len(response[a:b].split()) >= 5
    ]
    fillers = [rng.choice(repeatable)] if repeatable else []
    fillers += rng.sample(FILLER, count - len(fillers))
    rng.shuffle(fillers)
    points = sorted(rng.sample(ends, min(count, len(ends))))
    while len(points) < count:
        points.append(points[-1])
    edited = response
    for point, filler in sorted(zip(points, fillers, strict=True), reverse=True):
        edited = edited[:point] + " " + filler + edited[point:]
    return edited


# --- text quality: misspell words -----------------------------------------------------------------

_WORD = re.compile(r"(?<![\w'\u2019-])[A-Za-z]{4,}(?![\w'\u2019-])")


def _misspell(word: str, rng: random.Random) -> str:
    """The word with one interior letter swapped with its neighbour, dropped or doubled."""
    swaps = [i for i in range(1, len(word) - 2) if word[i] != word[i + 1]]
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap" and swaps:
        i = rng.choice(swaps)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    i = rng.randrange(1, len(word) - 1)
    if kind == "double":
        return word[: i + 1] + word[i:]
    return word[:i] + word[i + 1 :]


def typos(response: str, rng: random.Random, per_words: int = 20, most: int = 8) -> str | None:
    """Spelling errors in one word of every ``per_words`` words of the prose
    (at least 2, at most ``most``), words of four or more letters, never in
    code, inline code, URLs or e-mail addresses. None when fewer than two
    words qualify."""
    protected = protected_spans(response)
    words = [
        match
        for block in blocks(response)
        if block.kind == "prose"
        for match in _WORD.finditer(response, block.start, block.end)
        if not inside(match.start(), protected)
    ]
    if len(words) < 2:
        return None
    count = max(2, min(most, round(len(words) / per_words)))
    chosen = sorted(rng.sample(words, count), key=lambda m: m.start(), reverse=True)
    edited = response
    for match in chosen:
        edited = edited[: match.start()] + _misspell(match.group(0), rng) + edited[match.end() :]
    return edited


# --- layout: flatten lists, headings, paragraphs and code fences ----------------------------------

_HEADING = re.compile(r"^#{1,6}\s+")
_LIST_MARKER = re.compile(r"^(?:[-*+\u2022]|\d{1,3}[.)]|[a-zA-Z][.)])\s+")
_EMPHASIS = re.compile(r"\*\*|__")


def collapse_format(response: str, rng: random.Random) -> str | None:
    """The response as one block: heading and list markers and bold markers
    dropped, every prose line joined into one paragraph; code keeps its lines
    but loses its fences. None when the response has no layout to lose
    (one line, no fence)."""
    parts = blocks(response)
    prose_lines = [line for p in parts if p.kind == "prose" for line in p.text(response).splitlines()]
    has_code = any(p.kind == "code" for p in parts) and "```" in response
    if len([line for line in prose_lines if line.strip()]) < 2 and not has_code:
        return None
    pieces: list[str] = []
    for part in parts:
        if part.kind == "code":
            pieces.append(part.text(response).strip("\n"))
            continue
        words = []
        for line in part.text(response).splitlines():
            line = _LIST_MARKER.sub("", _HEADING.sub("", line.strip()))
            line = _EMPHASIS.sub("", line).strip()
            if line:
                words.append(line)
        if words:
            pieces.append(" ".join(words))
    edited = "\n".join(piece for piece in pieces if piece.strip())
    return edited if edited != response and edited.strip() else None


# --- information richness: drop the examples ------------------------------------------------------

_EXAMPLE_SENTENCE = re.compile(r"^(?:for example|for instance|as an example|to illustrate|e\.g\.)\b", re.I)
_EXAMPLE_ASIDE = re.compile(
    r"\s*\((?:e\.g\.|for example|for instance|such as|like|including)[^()\n]*\)", re.I
)
_EXAMPLE_CLAUSE = re.compile(
    r",\s+(?:such as|including|for example|for instance|e\.g\.,?|like)\s+[^.!?\n]*(?=[.!?])", re.I
)


def _cut(text: str, start: int, end: int) -> str:
    """``text`` without ``text[start:end]`` (a sentence) and the blanks that
    separated it; a line left holding only a list marker goes too."""
    before, after = text[:start].rstrip(" \t"), text[end:]
    if after.startswith((" ", "\t")) and before and not before.endswith("\n"):
        after = " " + after.lstrip(" \t")
    else:
        after = after.lstrip(" \t")
    line_start = before.rfind("\n") + 1
    if _LIST_MARKER.fullmatch(before[line_start:] + " ") and after.startswith("\n"):
        before, after = before[:line_start], after[1:]
    return before + after


def drop_examples(response: str, rng: random.Random, most: float = 0.5) -> str | None:
    """The response without its examples: sentences that begin with "For
    example" / "For instance" / ..., parentheses that hold one ("(e.g. ...)"),
    and trailing ", such as ..." / ", including ..." clauses. None when it has
    none, or when they make up more than ``most`` of the response."""
    removed = 0
    out: list[str] = []
    position = 0
    for part in blocks(response):
        out.append(response[position : part.start])
        position = part.end
        text = part.text(response)
        if part.kind == "code":
            out.append(text)
            continue
        drop = []
        for start, end in sentences(response):
            if part.start <= start < part.end:
                marker = _LIST_MARKER.match(response[start:end])  # "- For example, ..."
                start += marker.end() if marker else 0
                if _EXAMPLE_SENTENCE.match(response[start:end]):
                    drop.append((start - part.start, end - part.start))
        for start, end in reversed(drop):
            removed += end - start
            text = _cut(text, start, end)
        for pattern in (_EXAMPLE_ASIDE, _EXAMPLE_CLAUSE):
            for match in reversed(list(pattern.finditer(text))):
                removed += match.end() - match.start()
                text = text[: match.start()] + text[match.end() :]
        out.append(text)
    out.append(response[position:])
    edited = "".join(out).strip()
    if not removed or edited == response.strip() or removed > most * len(response):
        return None
    return edited


# --- structure: the lead paragraph last -----------------------------------------------------------


def move_lead(response: str, rng: random.Random, min_words: int = 25) -> str | None:
    """The response with its lead (its first paragraph of two or more
    sentences or ``min_words`` words, after any short title or greeting)
    moved to the end. Prose only; None with fewer than three paragraphs or
    when the lead would already be last."""
    if any(part.kind == "code" for part in blocks(response)):
        return None
    parts = paragraphs(response)
    if len(parts) < 3:
        return None
    for index, paragraph in enumerate(parts[:-1]):
        if len(sentence_ends(paragraph)) >= 2 or len(paragraph.split()) >= min_words:
            return "\n\n".join(parts[:index] + parts[index + 1 :] + [paragraph])
    return None
