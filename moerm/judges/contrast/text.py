"""Where things are in a response: prose and code blocks, sentence ends,
paragraphs; and the checks that an edited response is still well formed.

Every edit family works on character spans found here, so that prose edits
never touch code and code edits never touch prose.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

from moerm.judges.programmatic import code_blocks

_FENCE_LINE = re.compile(r"^[ \t]{0,3}```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*$", re.M)


@dataclass(frozen=True)
class Block:
    """A span of a response: prose, or the content of a code block (fence
    lines excluded). ``tag``: the fence's language tag, lowercased."""

    kind: Literal["prose", "code"]
    start: int
    end: int
    tag: str = ""

    def text(self, response: str) -> str:
        return response[self.start : self.end]


def blocks(response: str) -> list[Block]:
    """The prose and code spans of ``response``, in order. Fenced blocks are
    code (an unclosed fence runs to the end); without fences, a response most
    of whose lines look like code (:func:`moerm.judges.programmatic.code_blocks`)
    is one code block. Fence lines belong to no block."""
    if "```" not in response:
        if code_blocks(response):
            return [Block("code", 0, len(response))]
        return [Block("prose", 0, len(response))] if response else []
    found: list[Block] = []
    position = 0
    inside: tuple[int, str] | None = None  # (content start, tag) of an open fence
    for match in _FENCE_LINE.finditer(response):
        line_end = min(match.end() + 1, len(response))  # past the newline
        if inside is None:
            if match.start() > position:
                found.append(Block("prose", position, match.start()))
            inside = (line_end, match.group(1).lower())
        else:
            start, tag = inside
            found.append(Block("code", start, max(start, match.start()), tag))
            inside = None
        position = line_end
    if inside is not None:
        found.append(Block("code", inside[0], len(response), inside[1]))
    elif position < len(response):
        found.append(Block("prose", position, len(response)))
    return [b for b in found if b.end > b.start]


def fences_balanced(response: str) -> bool:
    """Whether every code fence is closed."""
    return len(_FENCE_LINE.findall(response)) % 2 == 0


def parses_as_python(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


# --- sentences ------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset("e.g i.e etc vs mr mrs ms dr st jr sr prof inc ltd co no fig approx cf al".split())
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_LIST_NUMBER = re.compile(r"(?:^|\n)[ \t]*\d{1,3}\.$")


def sentence_ends(response: str, block: Block | None = None) -> list[int]:
    """Offsets just after each sentence-final ``.``, ``!`` or ``?`` (with any
    closing quotes or brackets) inside the prose ``block`` (default: all prose),
    followed by whitespace or the end. Abbreviations ("e.g.", "Dr.") and list
    numbers ("1.") are not sentence ends."""
    spans = [block] if block is not None else [b for b in blocks(response) if b.kind == "prose"]
    ends: list[int] = []
    for span in spans:
        for match in _SENTENCE_END.finditer(response, span.start, span.end):
            head = response[span.start : match.start() + 1]
            if match.group(0).startswith(".") and not match.group(0).startswith(".."):
                word = re.search(r"([A-Za-z.]+)\.$", head)
                if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
                    continue
                if _LIST_NUMBER.search(head):
                    continue
            ends.append(match.end())
    return ends


def sentences(response: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in the prose: from the first character
    after the previous sentence end (or line start) to its own end."""
    found: list[tuple[int, int]] = []
    for block in blocks(response):
        if block.kind != "prose":
            continue
        start = block.start
        for end in sentence_ends(response, block):
            text = response[start:end]
            offset = len(text) - len(text.lstrip())
            if text.strip():
                found.append((start + offset, end))
            start = end
    return found


# --- paragraphs -----------------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs (separated by blank lines), stripped."""
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def closing_fence_ends(response: str) -> list[int]:
    """Offsets just after each closing fence line (a cut there leaves every
    fence closed)."""
    matches = list(_FENCE_LINE.finditer(response))
    return [match.end() for match in matches[1::2]]


_PROTECTED = re.compile(r"`[^`\n]*`|https?://\S+|www\.\S+|\S+@\S+\.\w+")


def protected_spans(response: str) -> list[tuple[int, int]]:
    """Inline code, URLs and e-mail addresses: prose edits leave them alone."""
    return [m.span() for m in _PROTECTED.finditer(response)]


def inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)
