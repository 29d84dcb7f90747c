"""Prose edit families of the contrast source: each edit happens, keeps the
text well formed, is deterministic, and declines when it cannot apply."""

from __future__ import annotations

import random
import re

import pytest

from moerm.judges.contrast import prose_edits
from moerm.judges.contrast.text import blocks, fences_balanced, paragraphs, sentence_ends

ESSAY = (
    "Tea was first drunk in China as a medicine. Over centuries it became an everyday drink. "
    "Traders carried it along the Silk Road to Central Asia. By the 1600s it had reached Europe, "
    "where the Dutch sold it at high prices. In Britain it grew popular after a royal wedding. "
    "Today it is the second most consumed drink in the world, after water."
)
CODE_ANSWER = (
    "Here is a function that adds two numbers. It works for ints and floats.\n\n"
    "```python\ndef add(a, b):\n    # sum of the two. Really.\n    return a + b\n```\n\n"
    "Call it with two numbers. It returns their sum. You can also pass floats. That is all."
)
MARKDOWN = (
    "# Packing list\n\nBring the essentials for a weekend hike.\n\n"
    "- **Water**: two litres\n- Snacks\n- A map\n\n"
    "## Code\n\n```bash\necho ready\nls -l\n```\n\nHave a good trip."
)


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


# --- truncate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_truncate_cuts_a_prefix_at_a_sentence_end_between_40_and_70_percent(seed):
    cut = prose_edits.truncate(ESSAY, rng(seed))
    assert cut is not None and ESSAY.startswith(cut)
    assert 0.4 * len(ESSAY) <= len(cut) <= 0.7 * len(ESSAY)
    assert cut.endswith((".", "!", "?")) and len(cut) in sentence_ends(ESSAY)


@pytest.mark.parametrize("seed", range(8))
def test_truncate_never_cuts_inside_code(seed):
    cut = prose_edits.truncate(CODE_ANSWER, rng(seed))
    assert cut is not None and CODE_ANSWER.startswith(cut)
    assert fences_balanced(cut)
    assert cut.endswith((".", "```"))


def test_truncate_needs_a_boundary_in_range():
    assert (
        prose_edits.truncate("One sentence only, however long it may be, with no other end.", rng()) is None
    )
    assert (
        prose_edits.truncate("Short. And then a much longer second sentence that runs on and on.", rng())
        is None
    )


def test_truncate_is_deterministic_given_the_seed():
    assert prose_edits.truncate(ESSAY, rng(3)) == prose_edits.truncate(ESSAY, rng(3))
    cuts = {prose_edits.truncate(ESSAY, rng(seed)) for seed in range(20)}
    assert len(cuts) > 1  # the seed moves the cut within the range


# --- add_filler -----------------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text)]


def _extra(longer: list[str], shorter: list[str]) -> list[str] | None:
    """What ``longer`` has beyond ``shorter``, when ``shorter`` is a subsequence of it."""
    extra, position = [], 0
    for item in longer:
        if position < len(shorter) and item == shorter[position]:
            position += 1
        else:
            extra.append(item)
    return extra if position == len(shorter) else None


@pytest.mark.parametrize("seed", range(6))
def test_add_filler_inserts_two_sentences_and_keeps_the_rest(seed):
    padded = prose_edits.add_filler(ESSAY, rng(seed))
    assert padded is not None
    extra = _extra(_sentences(padded), _sentences(ESSAY))
    assert extra is not None and len(extra) == 2  # the response, in order, plus two sentences
    assert all(s in prose_edits.FILLER or s in _sentences(ESSAY) for s in extra)
    assert any(s in prose_edits.FILLER for s in extra)
    assert any(s in _sentences(ESSAY) for s in extra)  # one repeats the response


def test_add_filler_leaves_code_alone_and_declines_short_text():
    padded = prose_edits.add_filler(CODE_ANSWER, rng(1))
    assert padded is not None and "def add(a, b):\n    # sum of the two. Really.\n    return a + b" in padded
    assert fences_balanced(padded)
    assert prose_edits.add_filler("Just one sentence.", rng()) is None


# --- typos ----------------------------------------------------------------------------------------


def _one_edit_apart(a: str, b: str) -> bool:
    if len(a) == len(b):  # a swap of two neighbours
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@pytest.mark.parametrize("seed", range(6))
def test_typos_misspell_a_few_words_and_nothing_else(seed):
    text = ESSAY + " See `the_docs` at https://example.com/tea for more."
    typo = prose_edits.typos(text, rng(seed))
    assert typo is not None
    before, after = words(text), words(typo)
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert 2 <= len(changed) <= 8
    assert all(_one_edit_apart(a, b) for a, b in changed)
    assert "`the_docs`" in typo and "https://example.com/tea" in typo
    assert re.sub(r"\w", "", typo) == re.sub(r"\w", "", text)  # punctuation and layout untouched


def test_typos_leave_code_alone():
    for seed in range(6):
        typo = prose_edits.typos(CODE_ANSWER, rng(seed))
        assert typo is not None
        assert "def add(a, b):\n    # sum of the two. Really.\n    return a + b" in typo


def test_typos_need_two_words():
    assert prose_edits.typos("Hi there", rng()) is None  # one word of four or more letters


# --- collapse_format ------------------------------------------------------------------------------


def test_collapse_format_makes_one_block_and_keeps_words_and_code_lines():
    flat = prose_edits.collapse_format(MARKDOWN, rng())
    assert flat is not None
    assert "\n\n" not in flat and "```" not in flat and "#" not in flat and "**" not in flat
    assert not re.search(r"(?m)^\s*- ", flat)
    assert "echo ready\nls -l" in flat  # code keeps its lines
    assert words(flat) == [w for w in words(MARKDOWN) if w != "bash"]
    assert flat.startswith(
        "Packing list Bring the essentials for a weekend hike. Water: two litres Snacks A map Code"
    )


def test_collapse_format_declines_text_without_layout():
    assert prose_edits.collapse_format(ESSAY, rng()) is None
    assert prose_edits.collapse_format("def f(x):\n    return x\n", rng()) is None  # bare code: no fence


# --- drop_examples --------------------------------------------------------------------------------

RICH = (
    "Exercise improves health in many ways, such as lower blood pressure and better sleep. "
    "It also lifts the mood (e.g. after a long walk). For example, a short run can ease stress. "
    "Most adults should move for at least 150 minutes a week. Start slowly and build up."
)


def test_drop_examples_removes_example_sentences_asides_and_clauses():
    lean = prose_edits.drop_examples(RICH, rng())
    assert lean == (
        "Exercise improves health in many ways. It also lifts the mood. "
        "Most adults should move for at least 150 minutes a week. Start slowly and build up."
    )


def test_drop_examples_declines_without_examples_or_when_examples_are_most_of_it():
    assert prose_edits.drop_examples(ESSAY, rng()) is None
    assert (
        prose_edits.drop_examples("Fruit is good. For example, apples and pears and plums are good.", rng())
        is None
    )


def test_drop_examples_removes_a_list_item_left_empty():
    text = "Tips:\n- Drink water.\n- For example, carry a bottle.\n- Rest well."
    assert prose_edits.drop_examples(text, rng()) == "Tips:\n- Drink water.\n- Rest well."


# --- move_lead ------------------------------------------------------------------------------------

ARTICLE = (
    "Flood warning for the valley\n\n"
    "Heavy rain will flood the valley tonight, forecasters said. Residents should move to higher ground.\n\n"
    "The river rose two metres since Monday.\n\n"
    "The valley last flooded in 1998."
)


def test_move_lead_puts_the_lead_paragraph_last_after_the_title():
    moved = prose_edits.move_lead(ARTICLE, rng())
    assert moved is not None
    parts = paragraphs(moved)
    assert parts[0] == "Flood warning for the valley"
    assert parts[-1].startswith("Heavy rain will flood the valley tonight")
    assert sorted(parts) == sorted(paragraphs(ARTICLE))


def test_move_lead_declines_short_or_code_responses():
    assert prose_edits.move_lead("One paragraph.\n\nTwo paragraphs. Only two.", rng()) is None
    assert prose_edits.move_lead(CODE_ANSWER + "\n\nMore. Text.\n\nAnd more.", rng()) is None


def test_blocks_split_prose_and_code():
    kinds = [(b.kind, b.tag) for b in blocks(MARKDOWN)]
    assert kinds == [("prose", ""), ("code", "bash"), ("prose", "")]
    assert blocks(MARKDOWN)[1].text(MARKDOWN) == "echo ready\nls -l\n"
