"""Fact edit families of the contrast source: a changed number, another option
letter, a swapped named entity."""

from __future__ import annotations

import random
import re

import pytest

from moerm.judges.contrast import fact_edits
from moerm.judges.contrast.fact_edits import by_words, change_choice, change_number, entities, swap_entity
from moerm.judges.programmatic import final_answer

MATH = (
    "The startup invested $8000 in the first year and half of that, $4000, in the second year.\n\n"
    "So the total amount is:\n\n$8000 + $4000 = $12,000"
)


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def numbers(text: str) -> list[str]:
    return re.findall(r"\d[\d,]*(?:\.\d+)?", text)


@pytest.mark.parametrize("seed", range(10))
def test_change_number_changes_the_final_answer_only(seed):
    edited = change_number(MATH, rng(seed))
    assert edited is not None
    before, after = numbers(MATH), numbers(edited)
    assert before[:-1] == after[:-1] and before[-1] != after[-1]
    assert re.fullmatch(r"\d{1,3}(,\d{3})+|\d{1,3}", after[-1])  # still formatted as a number with commas
    assert final_answer(edited).value != final_answer(MATH).value
    assert edited.replace(after[-1], "") == MATH.replace(before[-1], "")  # nothing else moved


def test_change_number_prefers_a_stated_answer_and_keeps_decimals():
    text = "Pi is about 3.14. Answer: 2.50 dollars per cup, for 4 cups."
    for seed in range(10):
        edited = change_number(text, rng(seed))
        assert edited is not None and "3.14" in edited and "4 cups" in edited
        value = re.search(r"Answer: (\S+) dollars", edited).group(1)
        assert re.fullmatch(r"\d+\.\d\d", value) and value != "2.50"


def test_change_number_skips_list_numbers_steps_code_and_urls():
    text = "1. Open https://example.com/v2 and Step 3 of the guide.\n2. Run `x = 5`.\n\n```\ny = 7\n```"
    assert change_number(text, rng()) is None
    assert change_number("No digits here at all.", rng()) is None


def test_change_number_never_goes_negative():
    for seed in range(20):
        edited = change_number("The count is 0", rng(seed))
        assert edited is not None and int(edited.rsplit(" ", 1)[1]) > 0


MCQ = "Which gas do plants take in?\n(A) Oxygen\n(B) Carbon dioxide\n(C) Helium\n(D) Neon"


@pytest.mark.parametrize("seed", range(6))
def test_change_choice_states_another_option(seed):
    response = "Plants take in carbon dioxide. The correct answer is B.\n\nSo the answer is (B)."
    edited = change_choice(response, rng(seed), MCQ)
    assert edited is not None
    new = re.findall(r"answer is \(?([A-D])", edited)
    assert len(new) == 2 and new[0] == new[1] != "B" and new[0] in "ACD"
    assert edited.replace(new[0], "B") == response


def test_change_choice_needs_options_and_a_stated_answer():
    assert change_choice("The answer is B.", rng(), "What is 2 + 2?") is None
    assert change_choice("Carbon dioxide.", rng(), MCQ) is None
    assert change_choice("Option A is wrong, option B is right.", rng(), MCQ) is None


def test_entities_skip_sentence_and_line_starts():
    text = "Tea came from China. Then Dutch traders sold it in Amsterdam.\nLondon loved it (Really)."
    assert [span.text for span in entities(text)] == ["China", "Dutch", "Amsterdam"]


def test_swap_entity_uses_a_donor_of_as_many_words_not_yet_mentioned():
    text = "The treaty was signed in Paris by Angela Merkel."
    donors = by_words(["Berlin", "Paris", "Boris Johnson", "Tony Blair", "Monday"])
    seen = set()
    for seed in range(30):
        edited, donor = swap_entity(text, rng(seed), donors)
        seen.add(donor)
        assert donor in edited
        assert (edited == text.replace("Paris", donor)) or (edited == text.replace("Angela Merkel", donor))
    assert seen == {"Berlin", "Boris Johnson", "Tony Blair"}  # never Paris (mentioned), never a weekday


def test_swap_entity_swaps_a_month_for_a_month():
    edited, donor = swap_entity("The shop opens on 3 March every year.", rng(1), by_words(["Oslo"]))
    assert donor in fact_edits.CALENDAR[0] and donor != "March"
    assert edited == f"The shop opens on 3 {donor} every year."


def test_swap_entity_declines_without_entity_or_fitting_donor():
    assert swap_entity("nothing capitalized here.", rng(), by_words(["Oslo"])) is None
    assert swap_entity("We met in Oslo.", rng(), by_words(["Oslo", "New York"])) is None
    assert swap_entity("We met in Oslo.", rng(), by_words(["Rome"]), prompt="Was it Rome?") is None
