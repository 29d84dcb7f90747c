"""Rule judges on hand-written cases: each applies and prefers correctly, and
abstains when it does not apply."""

from __future__ import annotations

from fractions import Fraction

import pytest

from moerm.bundle import Capability
from moerm.judges.base import label_pairs, task_context
from moerm.judges.programmatic import (
    CodeParsesJudge,
    Constraint,
    ConstraintJudge,
    FinalAnswerJudge,
    RefusalJudge,
    RuleRouter,
    UnsafeExpression,
    code_blocks,
    count_units,
    final_answer,
    find_constraints,
    prompt_expressions,
    refuses,
    safe_eval,
)
from moerm.text import Turn
from tests.judges.conftest import make_pair

CAP = Capability("correctness")


def ask(prompt: str) -> tuple[Turn, ...]:
    return (Turn("system", "You are helpful."), Turn("user", prompt))


# --- code_parses ----------------------------------------------------------------------------------

GOOD_PY = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
BAD_PY = "Here you go:\n```python\ndef add(a, b)\n    return a + b\n```"


async def test_code_parses_prefers_parsing_python():
    judge = CodeParsesJudge()
    turns = ask("Write an add function.")
    assert await judge.compare(turns, GOOD_PY, BAD_PY, CAP) == "A"
    assert await judge.compare(turns, BAD_PY, GOOD_PY, CAP) == "B"


async def test_code_parses_untagged_code_counts_when_the_prompt_says_python():
    good = "def f(x):\n    return x * 2"
    bad = "def f(x):\n    return x *"
    judge = CodeParsesJudge()
    assert await judge.compare(ask("In Python, double a number."), bad, good, CAP) == "B"
    assert await judge.compare(ask("Double a number."), bad, good, CAP) is None  # language unknown
    fenced_bad = "```\nfor i in range(3) print(i)\n```"
    fenced_good = "```\nfor i in range(3):\n    print(i)\n```"
    assert await judge.compare(ask("Python loop please"), fenced_good, fenced_bad, CAP) == "A"


async def test_code_parses_abstains():
    judge = CodeParsesJudge()
    turns = ask("Write it in Python.")
    assert await judge.compare(turns, GOOD_PY, GOOD_PY.replace("a + b", "b + a"), CAP) is None  # both parse
    assert await judge.compare(turns, BAD_PY, BAD_PY, CAP) is None  # both fail
    assert (
        await judge.compare(turns, GOOD_PY, "You should use the + operator.", CAP) is None
    )  # one has no code
    js_bad = "```javascript\nfunction f( {\n```"
    assert await judge.compare(turns, js_bad, GOOD_PY, CAP) is None  # other languages are not checked


def test_code_blocks_and_repl_sessions():
    assert code_blocks("text ```py\nx = 1\n``` more ```\ny\n```") == [("py", "x = 1\n"), ("", "y\n")]
    assert code_blocks("Just prose.\nMore prose here.") == []
    assert code_blocks("import os\nprint(os.getcwd())") == [("", "import os\nprint(os.getcwd())")]
    session = "```python\n>>> x = [1, 2]\n>>> sum(x)\n3\n```"
    from moerm.judges.programmatic import python_parses

    assert python_parses(session, False) is True


# --- refusal --------------------------------------------------------------------------------------

REFUSE = "I'm sorry, but I can't help with breaking into a car. A locksmith can help if it's yours."
COMPLY = "Sure! Slide a slim jim between the window and the weather strip, then pull up."


async def test_refusal_prefers_the_refusal_for_harmful_tasks():
    judge = RefusalJudge()
    turns = ask("How do I break into my neighbour's car?")
    with task_context("harmlessness"):
        assert await judge.compare(turns, COMPLY, REFUSE, Capability("harmlessness")) == "B"
        assert await judge.compare(turns, REFUSE, COMPLY, Capability("harmlessness")) == "A"
        assert await judge.compare(turns, REFUSE, REFUSE, Capability("harmlessness")) is None  # both refuse
        assert await judge.compare(turns, COMPLY, COMPLY + "!", Capability("harmlessness")) is None


async def test_refusal_abstains_outside_harmful_requests():
    judge = RefusalJudge()
    turns = ask("How do I bake bread?")
    assert await judge.compare(turns, COMPLY, REFUSE, Capability("harmlessness")) is None  # no task known
    with task_context("writing"):
        assert await judge.compare(turns, COMPLY, REFUSE, Capability("harmlessness")) is None
    flagged = RefusalJudge(harmful_tasks=(), is_harmful=lambda t: "weapon" in t[-1].content)
    assert await flagged.compare(ask("build a weapon"), COMPLY, REFUSE, CAP) == "B"
    assert await flagged.compare(ask("build a shed"), COMPLY, REFUSE, CAP) is None


def test_refusal_phrases():
    assert refuses("I can\u2019t assist with that.")
    assert refuses("As an AI, I won't do this.")
    assert not refuses("Here is how: first, ...")
    assert not refuses("Step one. " * 50 + "I cannot stress this enough.")  # beyond the window


# --- length / format constraints ------------------------------------------------------------------


def test_find_constraints():
    assert find_constraints("Describe Paris in 10 words.") == [Constraint("words", 10, "about")]
    assert find_constraints("Answer in exactly three sentences") == [Constraint("sentences", 3, "exactly")]
    assert find_constraints("Summarize in no more than 50 words") == [Constraint("words", 50, "at_most")]
    assert find_constraints("Write a 100-word story") == [Constraint("words", 100, "about")]
    assert find_constraints("Write me a 30 word description") == [Constraint("words", 30, "about")]
    assert find_constraints("Give me a list of 5 fruits") == [Constraint("items", 5, "exactly")]
    assert find_constraints("Give 3 bullet points") == [Constraint("items", 3, "exactly")]
    assert find_constraints("Write at least 2 sentences") == [Constraint("sentences", 2, "at_least")]
    assert find_constraints("Write 20 words or less") == [Constraint("words", 20, "at_most")]
    assert find_constraints("Translate the first two sentences of this text.") == []
    assert find_constraints("What is the capital of France?") == []
    assert find_constraints('Search results: "a 400-word landing page converts"') == []


def test_count_units():
    assert count_units("Paris is the capital of France, isn't it?", "words") == 8
    assert count_units("One. Two! Three? e.g. four", "sentences") == 4
    assert count_units("Fruits:\n- apple\n- pear\n* kiwi\n1. plum\n2) fig", "items") == 5


async def test_constraint_prefers_the_response_that_meets_it():
    judge = ConstraintJudge()
    turns = ask("Describe the sea in two sentences.")
    two = "The sea is vast. It is blue."
    three = "The sea is vast. It is blue. It is deep."
    assert await judge.compare(turns, three, two, CAP) == "B"
    assert await judge.compare(turns, two, three, CAP) == "A"
    listing = ask("Give me a list of 3 colours.")
    assert await judge.compare(listing, "- red\n- blue", "- red\n- blue\n- green", CAP) == "B"
    words = ask("Describe a cat in 5 words.")
    assert await judge.compare(words, "Small furry independent purring hunter.", "A cat.", CAP) == "A"


async def test_constraint_abstains():
    judge = ConstraintJudge()
    assert await judge.compare(ask("Describe the sea."), "Vast.", "Vast and blue.", CAP) is None
    turns = ask("Describe the sea in two sentences.")
    assert (
        await judge.compare(turns, "It is vast. It is blue.", "So vast. So blue.", CAP) is None
    )  # both meet it
    assert await judge.compare(turns, "Vast.", "Vast, blue, deep.", CAP) is None  # neither does


# --- final_answer ---------------------------------------------------------------------------------


def test_safe_eval():
    assert safe_eval("17 * 24") == 408
    assert safe_eval("(3 + 4) ** 2 / 2") == Fraction(49, 2)
    assert safe_eval("-2 + 0.1 * 3") == Fraction(-17, 10)
    for unsafe in (
        "__import__('os')",
        "2 ** 1000",
        "10 ** 20",
        "1 / 0",
        "x + 1",
        "[1][0]",
        "2 ** 0.5",
        "9 % 4",
    ):
        with pytest.raises(UnsafeExpression):
            safe_eval(unsafe)


def test_prompt_expressions():
    assert prompt_expressions("What is 17 * 24? Show your work.") == [408]
    assert prompt_expressions("Compute (3+4)×2 please") == [14]
    assert prompt_expressions("What is 1,200 + 34?") == [1234]
    assert prompt_expressions("Solve 2x + 3 = 7") == []
    assert prompt_expressions("On 2023-05-01 we met at 10.") == []
    assert prompt_expressions("Call 555-1234.") == []


def test_final_answer_extraction():
    assert final_answer("17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.").value == 408
    assert final_answer("The answer is 1,234 apples. Hope that helps!").value == 1234
    assert final_answer("Work...\n\\boxed{42}\nDone").value == 42
    assert final_answer("So x = -3.5").value == Fraction(-7, 2)
    assert final_answer("I don't know.") is None


async def test_final_answer_prefers_the_matching_number():
    judge = FinalAnswerJudge()
    turns = ask("What is 17 * 24?")
    assert await judge.compare(turns, "17 * 24 = 398.", "17 * 24 = 408.", CAP) == "B"
    assert await judge.compare(turns, "It is 408", "It is 398", CAP) == "A"
    division = ask("What is 10 / 3, to two decimals?")
    assert await judge.compare(division, "About 3.33", "About 3.3", CAP) is None  # both round to it
    assert await judge.compare(division, "About 3.34", "About 3.33", CAP) == "B"


async def test_final_answer_abstains():
    judge = FinalAnswerJudge()
    turns = ask("What is 17 * 24?")
    assert await judge.compare(turns, "It is 408.", "408, clearly.", CAP) is None  # same answer
    assert await judge.compare(turns, "It is 400.", "It is 398.", CAP) is None  # neither matches
    assert await judge.compare(turns, "It is 408.", "I am not sure.", CAP) is None  # one has no number
    assert await judge.compare(ask("Who wrote Hamlet?"), "1600", "1601", CAP) is None  # no expression
    assert await judge.compare(ask("Is 2 + 2 = 5? And 3 * 3?"), "4", "9", CAP) is None  # two values


# --- routing --------------------------------------------------------------------------------------


async def test_rule_router_routes_by_capability_and_task():
    router = RuleRouter()
    turns = ask("What is 17 * 24?")
    assert await router.compare(turns, "398", "408", Capability("correctness")) == "B"
    assert await router.compare(turns, "398", "408", Capability("creativity")) is None
    code_turns = ask("Write a Python add function.")
    assert await router.compare(code_turns, BAD_PY, GOOD_PY, Capability("correctness")) == "B"

    custom = RuleRouter({"exam/accuracy": FinalAnswerJudge(), "style": ()})
    with task_context("exam"):
        assert await custom.compare(turns, "398", "408", Capability("accuracy")) == "B"
    with task_context("code"):
        assert await custom.compare(turns, "398", "408", Capability("accuracy")) is None
    assert await custom.compare(turns, "398", "408", Capability("style")) is None


async def test_rules_through_label_pairs():
    pairs = [
        make_pair(0, task="exam", prompt="What is 6 * 7?"),
        make_pair(1, task="harmlessness", prompt="How do I pick a lock?"),
        make_pair(2, task="exam", prompt="Name a prime."),
    ]
    pairs[0] = pairs[0].__class__(**{**pairs[0].__dict__, "chosen": "6 * 7 = 42", "rejected": "It is 48"})
    pairs[1] = pairs[1].__class__(**{**pairs[1].__dict__, "chosen": COMPLY, "rejected": REFUSE})
    caps = {
        "exam": (Capability("correctness"), Capability("clarity")),
        "harmlessness": (Capability("harmlessness"),),
    }
    labels, stats = await label_pairs(pairs, caps, RuleRouter(), progress=False)
    assert [(label.pair_id, label.capability, label.chosen_better) for label in labels] == [
        ("test:0", "correctness", True),
        ("test:1", "harmlessness", False),  # the human preferred the compliant answer; the rule disagrees
    ]
    assert stats.total.asked == 5 and stats.total.answered == 2 and stats.total.same_letter == 0
