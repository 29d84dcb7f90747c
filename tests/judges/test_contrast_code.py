"""Code edit families of the contrast source: flip an operator, drop a
statement, obscure names, strip comments. Python that parsed still parses;
names and comments change nothing the code does."""

from __future__ import annotations

import ast
import random
import re

import pytest

from moerm.judges.contrast.code_edits import (
    FLIPS,
    drop_code_line,
    flip_operator,
    obscure_names,
    scan,
    strip_comments,
)
from moerm.judges.contrast.text import blocks, fences_balanced

PRICE = '''def total_price(items, discount):
    """The price of the items after the discount."""
    subtotal = 0
    for price in items:
        subtotal += price  # add each price
    if subtotal > 100 and discount:
        subtotal = subtotal * 0.9
    label = "total # " + str(len(items))
    return subtotal
'''
ANSWER = f"Here is the function you asked for:\n\n```python\n{PRICE}```\n\nIt sums the prices and applies the discount."
C_ANSWER = (
    "In C:\n\n```c\n#include <stdio.h>\n\nint main(void) {\n    // print a greeting\n    int n = 3;\n"
    '    printf("%d < %d\\n", n, n + 1); /* show it */\n    return 0;\n}\n```'
)


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def code_of(response: str) -> str:
    return next(b.text(response) for b in blocks(response) if b.kind == "code")


def run(code: str, *args):
    namespace: dict = {}
    exec(compile(code, "<answer>", "exec"), namespace)
    function = next(v for k, v in namespace.items() if callable(v) and not k.startswith("__"))
    return function(*args)


def test_scan_separates_code_from_strings_and_comments():
    spans, comments = scan(PRICE, "python")
    plain = "".join(PRICE[a:b] for a, b in spans)
    assert "The price of the items" not in plain and "total # " not in plain and "add each price" not in plain
    assert "subtotal += price" in plain
    assert [PRICE[a:b] for a, b in comments] == ["# add each price"]
    _, c_comments = scan(code_of(C_ANSWER), "c")
    assert [code_of(C_ANSWER)[a:b] for a, b in c_comments] == ["// print a greeting", "/* show it */"]


# --- flip_operator --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_flip_operator_flips_one_operator_of_the_code(seed):
    edited = flip_operator(ANSWER, rng(seed))
    assert edited is not None and fences_balanced(edited)
    old, new = code_of(ANSWER), code_of(edited)
    ast.parse(new)  # still Python
    assert edited.replace(new, "") == ANSWER.replace(old, "")  # the prose is untouched
    old_tokens, new_tokens = old.split(" "), new.split(" ")
    changed = [(a, b) for a, b in zip(old_tokens, new_tokens, strict=True) if a != b]
    assert len(changed) == 1 and FLIPS[changed[0][0]] == changed[0][1]
    assert '"total # "' in new  # strings are not code


def outcome(code: str, *args):
    """What running the code gives: its result, or the type of the error it raises."""
    try:
        return run(code, *args)
    except Exception as error:  # a flipped operator may make the code raise
        return type(error)


def test_flip_operator_changes_what_the_code_computes():
    assert run(PRICE, [60, 70], True) == pytest.approx(117.0)
    flipped = {code_of(flip_operator(ANSWER, rng(seed))) for seed in range(12)}
    assert len(flipped) >= 3
    for code in flipped:
        assert any(outcome(code, *args) != outcome(PRICE, *args) for args in (([60, 70], True), ([1], True)))


def test_flip_operator_skips_strings_comments_unary_and_star_args():
    code = 'def f(*args, **kw):\n    x = -1\n    s = "a < b"  # c > d\n    return f"{x}"\n'
    assert flip_operator(f"```python\n{code}```", rng()) is None
    assert flip_operator("In prose, 3 + 4 is not code.", rng()) is None
    yaml = "```yaml\nitems:\n  - a\n  - b\n```"
    assert flip_operator(yaml, rng()) is None


def test_flip_operator_in_c_code():
    edited = flip_operator(C_ANSWER, rng(0))
    assert edited is not None
    assert "n + 1" not in edited and "n - 1" in edited  # the only operator between operands, outside strings
    assert '"%d < %d\\n"' in edited


# --- drop_code_line -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_drop_code_line_removes_one_statement_and_keeps_python_parsing(seed):
    edited = drop_code_line(ANSWER, rng(seed))
    assert edited is not None and fences_balanced(edited)
    old, new = code_of(ANSWER).splitlines(), code_of(edited).splitlines()
    assert len(new) == len(old) - 1
    missing = [line for line in old if line not in new]
    assert len(missing) == 1
    assert isinstance(ast.parse(missing[0].strip()).body[0], ast.Assign | ast.AugAssign | ast.Return)
    ast.parse(code_of(edited))


def test_drop_code_line_keeps_blocks_that_would_empty():
    only = "```python\ndef f(x):\n    return x\n```"
    assert drop_code_line(only, rng()) is None  # dropping the return would leave an empty body
    assert drop_code_line("```python\n# just a comment\npass\n```", rng()) is None


def test_drop_code_line_in_c_drops_a_semicolon_statement():
    edited = drop_code_line(C_ANSWER, rng(1))
    old, new = code_of(C_ANSWER).splitlines(), code_of(edited).splitlines()
    missing = [line for line in old if line not in new]
    assert len(missing) == 1 and missing[0].strip().endswith(";")
    assert new.count("}") == old.count("}")


# --- obscure_names --------------------------------------------------------------------------------


def test_obscure_names_renames_consistently_and_changes_no_behaviour():
    edited = obscure_names(ANSWER, rng())
    assert edited is not None and fences_balanced(edited)
    new = code_of(edited)
    spans, _ = scan(new, "python")
    plain = "".join(new[a:b] for a, b in spans)  # strings and comments keep their words
    for name in ("total_price", "items", "subtotal", "price", "label"):
        assert not re.search(rf"\b{name}\b", plain)
    assert re.search(r"\bdiscount\b", plain)  # the prose says "the discount": kept
    assert re.search(r"\bv1\b", plain)
    for args in (([60, 70], True), ([10], True), ([60, 70], False)):
        assert run(new, *args) == run(PRICE, *args)
    assert edited.split("```")[2] == ANSWER.split("```")[2]  # the prose is untouched


def test_obscure_names_keeps_names_the_prose_mentions():
    answer = ANSWER.replace("It sums the prices", "`subtotal` sums the prices")
    new = code_of(obscure_names(answer, rng()))
    assert "subtotal" in new and "total_price" not in new


def test_obscure_names_needs_python_with_long_enough_names():
    assert obscure_names(C_ANSWER, rng()) is None
    assert obscure_names("```python\ndef f(x):\n    return x\n```", rng()) is None
    assert obscure_names("```python\nprint(len([1, 2]))\n```", rng()) is None


# --- strip_comments -------------------------------------------------------------------------------


def test_strip_comments_removes_python_comments_only():
    edited = strip_comments(ANSWER, rng())
    assert edited is not None
    new = code_of(edited)
    assert "# add each price" not in new and "subtotal += price\n" in new
    assert '"total # "' in new and '"""The price of the items after the discount."""' in new
    assert run(new, [60, 70], True) == run(PRICE, [60, 70], True)


def test_strip_comments_removes_c_comments_and_comment_lines():
    edited = strip_comments(C_ANSWER, rng())
    new = code_of(edited)
    assert "//" not in new and "/*" not in new and "#include <stdio.h>" in new
    assert len(new.splitlines()) == len(code_of(C_ANSWER).splitlines()) - 1  # the comment-only line went
    assert 'printf("%d < %d\\n", n, n + 1);\n' in new


def test_strip_comments_needs_a_comment():
    assert strip_comments("```python\nx = '# not a comment'\n```", rng()) is None
    assert strip_comments("```bash\n#!/bin/sh\necho hi\n```", rng()) is None  # a shebang stays
    assert strip_comments("No code at all. # not code", rng()) is None
