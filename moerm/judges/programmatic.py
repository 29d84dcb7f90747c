"""Rule judges: capabilities a program can check. Each rule is a
:class:`~moerm.judges.base.Judge` that abstains (None) whenever it does not
apply, so it only labels the pairs it is sure about; :class:`RuleRouter`
maps capability names to rules.

- :class:`CodeParsesJudge`: Python code that parses beats code that does not;
- :class:`RefusalJudge`: for a harmful request, the response that refuses;
- :class:`ConstraintJudge`: the response meeting "in N words" / "N sentences"
  / "a list of N";
- :class:`FinalAnswerJudge`: the final number matching the prompt's
  arithmetic expression (evaluated safely from the AST).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from moerm.bundle import Capability
from moerm.judges.base import Judge, Verdict, current_task
from moerm.text import Turn


def user_text(turns: Sequence[Turn]) -> str:
    """The last user turn (what the constraints and expressions are read from)."""
    for turn in reversed(turns):
        if turn.role == "user":
            return turn.content
    return ""


def prefer(a_ok: bool | None, b_ok: bool | None) -> Verdict:
    """The response for which the check holds, when exactly one holds and the
    check applies to both (None: does not apply)."""
    if a_ok is None or b_ok is None or a_ok == b_ok:
        return None
    return "A" if a_ok else "B"


# --- code_parses ----------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = frozenset({"python", "py", "python3", "py3", "pycon", "ipython"})
_PYTHON_MENTION = re.compile(r"\bpython\b|\bpy\b|\.py\b", re.I)
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |return\b|if .*:$|elif .*:$|else:$|for .*:$|while .*:$|"
    r"try:$|except\b.*:$|with .*:$|print\(|@\w+|#|\w[\w.\[\]]* *[-+*/]?= *\S|\w[\w.]*\(.*\)$|[)\]}]$)"
)


def code_blocks(response: str) -> list[tuple[str, str]]:
    """(language tag, code) of each fenced block; without fences, the whole
    response when most of its lines look like code (tag "")."""
    blocks = [(tag.lower(), code) for tag, code in _FENCE.findall(response)]
    if blocks or "```" in response:
        return blocks
    lines = [line for line in response.splitlines() if line.strip()]
    if len(lines) >= 2 and sum(bool(_CODE_LINE.match(line)) for line in lines) / len(lines) >= 0.8:
        return [("", response)]
    return []


def _strip_repl(code: str) -> str:
    """A ``>>>`` session as the code typed in it (outputs dropped)."""
    if not any(line.lstrip().startswith(">>>") for line in code.splitlines()):
        return code
    kept = []
    for line in code.splitlines():
        stripped = line.lstrip()
        if stripped.startswith((">>> ", "... ")) or stripped in (">>>", "..."):
            kept.append(stripped[4:])
    return "\n".join(kept)


def python_parses(response: str, prompt_mentions_python: bool) -> bool | None:
    """True when every Python block parses, False when one does not, None
    when the response has no Python code (blocks tagged with another language
    are ignored; untagged ones count only if the prompt mentions Python)."""
    python = [
        code
        for tag, code in code_blocks(response)
        if tag in _PYTHON_TAGS or (tag == "" and prompt_mentions_python)
    ]
    if not python:
        return None
    for code in python:
        try:
            ast.parse(_strip_repl(code))
        except (SyntaxError, ValueError):
            return False
    return True


class CodeParsesJudge(Judge):
    """Prefers the response whose Python code parses (``ast.parse``) when
    both contain Python code and exactly one parses. Code counts as Python
    when its block is tagged python, or when it is untagged (or the whole
    response looks like code) and the prompt mentions Python."""

    name = "rule:code_parses"

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        mentions = bool(_PYTHON_MENTION.search(user_text(turns)))
        return prefer(python_parses(response_a, mentions), python_parses(response_b, mentions))


# --- refusal --------------------------------------------------------------------------------------

REFUSAL_PHRASES = (
    "i can't help",
    "i cannot help",
    "i can not help",
    "i can't assist",
    "i cannot assist",
    "i can't provide",
    "i cannot provide",
    "i can't do that",
    "i cannot do that",
    "i can't comply",
    "i cannot comply",
    "i won't help",
    "i won't provide",
    "i won't be able to",
    "i will not help",
    "i will not provide",
    "i'm not able to",
    "i am not able to",
    "i'm unable to",
    "i am unable to",
    "i must decline",
    "i have to decline",
    "i'm sorry, but",
    "i am sorry, but",
    "i apologize, but",
    "sorry, but i",
    "as an ai",
    "i'm not comfortable",
    "i am not comfortable",
    "i don't feel comfortable",
    "i do not feel comfortable",
    "i'd rather not",
    "i would rather not",
    "i can't support",
    "i cannot support",
    "i can't encourage",
    "i cannot encourage",
    "i strongly advise against",
    "i'm not going to",
    "i am not going to",
    "i won't",
    "i will not",
    "i can't",
    "i cannot",
    "it is not appropriate",
    "it's not appropriate",
    "that would be illegal",
    "that is illegal",
    "it is illegal",
    "it's illegal",
    "against my guidelines",
    "against my programming",
    "against my principles",
)
REFUSAL_WINDOW = 300  # characters from the start of the response that are searched


def refuses(response: str, phrases: Iterable[str] = REFUSAL_PHRASES, window: int = REFUSAL_WINDOW) -> bool:
    """Whether a refusal phrase occurs near the start of the response
    (case-insensitive; typographic apostrophes count as ')."""
    head = response[:window].lower().replace("\u2019", "'").replace("\u2018", "'")
    return any(phrase in head for phrase in phrases)


class RefusalJudge(Judge):
    """For a harmful request, prefers the response that refuses when exactly
    one does (phrases: :data:`REFUSAL_PHRASES`, searched in the first
    :data:`REFUSAL_WINDOW` characters).

    A request counts as harmful when the pair's task (:func:`current_task`,
    set by :func:`~moerm.judges.base.label_pairs`) is in ``harmful_tasks``,
    or when ``is_harmful(turns)`` says so. Otherwise it abstains."""

    name = "rule:refusal"

    def __init__(
        self,
        harmful_tasks: Iterable[str] = ("harmlessness",),
        is_harmful: Callable[[Sequence[Turn]], bool] | None = None,
        phrases: Iterable[str] = REFUSAL_PHRASES,
    ):
        self.harmful_tasks = frozenset(harmful_tasks)
        self.is_harmful = is_harmful
        self.phrases = tuple(p.lower() for p in phrases)

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        harmful = current_task() in self.harmful_tasks or (
            self.is_harmful is not None and self.is_harmful(turns)
        )
        if not harmful:
            return None
        return prefer(refuses(response_a, self.phrases), refuses(response_b, self.phrases))


# --- length / format constraints ------------------------------------------------------------------

_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUM = r"(\d{1,4}|" + "|".join(_NUMBER_WORDS) + r")"
_AT_MOST = (
    r"at most|no more than|not more than|up to|under|less than|fewer than|within|maximum of|max(?:imum)?"
)
_AT_LEAST = r"at least|no less than|no fewer than|more than|over|minimum of|min(?:imum)?"
_MODIFIER = rf"(?:(exactly|{_AT_MOST}|{_AT_LEAST})\s+)?"
_UNIT = {"word": "words", "sentence": "sentences"}
_LEAD = (
    r"in|with|using|answer|respond|reply|summari[sz]e(?: it)?|describe it|"
    r"(?:write|compose|draft|create|generate|give)(?: me)?(?: an?)?"
)
_TAIL = r"or (?:less|fewer|under)|or more|max(?:imum)?|min(?:imum)?|or so"
# Plain "N words" counts only after a lead word ("in two sentences", "write 3 sentences", "write a
# 100-word"), or with a modifier or tail: "the first two sentences of the text" or a quoted "a 400-word
# page" state no constraint.
_COUNT_CONSTRAINT = re.compile(
    rf"(?:\b({_LEAD})\s+)?\b{_MODIFIER}{_NUM}[\s-]+(words?|sentences?)\b(?:\s+({_TAIL})\b)?",
    re.I,
)
_LIST_CONSTRAINT = re.compile(
    rf"\b(?:a\s+)?(?:(?:bullet(?:ed)?|numbered)\s+)?list\s+(?:of\s+)?{_MODIFIER}{_NUM}\b|"
    rf"\b{_MODIFIER}{_NUM}\s+(?:bullet points|bullets|list items)\b",
    re.I,
)
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,3}[.)]|[a-z][.)])\s+\S", re.M)
_WORD = re.compile(r"[A-Za-z0-9\u00C0-\uFFFF]+(?:['\u2019-][A-Za-z0-9\u00C0-\uFFFF]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


@dataclass(frozen=True)
class Constraint:
    unit: str  # "words", "sentences" or "items"
    target: int
    relation: str  # "exactly", "about", "at_most" or "at_least"

    def holds(self, count: int) -> bool:
        if self.relation == "at_most":
            return count <= self.target
        if self.relation == "at_least":
            return count >= self.target
        if self.relation == "about":  # plain "in N words": within 20% (exact for N < 5)
            return abs(count - self.target) <= int(0.2 * self.target)
        return count == self.target


def _number(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBER_WORDS[text.lower()]


def _relation(modifier: str | None, unit: str) -> str:
    if not modifier:
        return "about" if unit == "words" else "exactly"
    modifier = modifier.lower()
    if modifier == "exactly":
        return "exactly"
    return "at_most" if re.fullmatch(_AT_MOST, modifier) else "at_least"


def find_constraints(prompt: str) -> list[Constraint]:
    """The countable constraints a prompt states."""
    found = []
    for lead, modifier, number, unit, tail in _COUNT_CONSTRAINT.findall(prompt):
        if not (lead or modifier or tail):
            continue
        unit = _UNIT[unit.lower().rstrip("s")]
        target = _number(number)
        if target <= 0:
            continue
        relation = _relation(modifier, unit)
        if not modifier and tail:
            tail = tail.lower()
            relation = "at_least" if tail.startswith(("or more", "min")) else "at_most"
            relation = "about" if tail == "or so" else relation
        found.append(Constraint(unit, target, relation))
    for match in _LIST_CONSTRAINT.finditer(prompt):
        modifier = match.group(1) or match.group(3)
        number = match.group(2) or match.group(4)
        target = _number(number)
        if target > 0:
            found.append(Constraint("items", target, _relation(modifier, "items")))
    return list(dict.fromkeys(found))


def count_units(response: str, unit: str) -> int:
    if unit == "words":
        return len(_WORD.findall(response))
    if unit == "sentences":
        text = re.sub(r"\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Ms|Dr|St)\.", "", response.strip())
        return len([part for part in _SENTENCE_END.split(text) if _WORD.search(part)])
    return len(_LIST_ITEM.findall(response))


def satisfies(response: str, constraints: Iterable[Constraint]) -> bool:
    return all(c.holds(count_units(response, c.unit)) for c in constraints)


class ConstraintJudge(Judge):
    """When the prompt states "in N words" / "N sentences" / "a list of N"
    (optionally "exactly" / "at most" / "at least" N), prefers the response
    that meets every stated constraint when exactly one does. Plain "in N
    words" allows 20% either way; sentences and list items are exact."""

    name = "rule:constraints"

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        constraints = find_constraints(user_text(turns))
        if not constraints:
            return None
        return prefer(satisfies(response_a, constraints), satisfies(response_b, constraints))


# --- final_answer ---------------------------------------------------------------------------------

_OPERATORS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_MAX_MAGNITUDE = 1e15
_EXPRESSION = re.compile(r"[\d(][\d\s.,()+\-*/×÷^·]*[\d)]")
_DATE_LIKE = re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b\d{3}-\d{3,4}\b")


class UnsafeExpression(ValueError):
    pass


def safe_eval(expression: str) -> Fraction:
    """An arithmetic expression of numbers, parentheses and + - * / ** only,
    evaluated exactly (fractions) from its AST; anything else raises
    :class:`UnsafeExpression`. Exponents are limited to small integers."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        raise UnsafeExpression(f"not an expression: {expression!r}") from None

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(repr(node.value))  # 0.1 as written, not its binary neighbour
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            value = walk(node.operand)
            return value if isinstance(node.op, ast.UAdd) else -value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow):
                if right.denominator != 1 or abs(right) > 64 or (left == 0 and right < 0):
                    raise UnsafeExpression("exponent must be a small integer")
            if isinstance(node.op, ast.Div) and right == 0:
                raise UnsafeExpression("division by zero")
            value = _OPERATORS[type(node.op)](left, right)
            if abs(value) > _MAX_MAGNITUDE:
                raise UnsafeExpression("value too large")
            return Fraction(value)
        raise UnsafeExpression(f"{type(node).__name__} is not allowed")

    return walk(tree.body)


def prompt_expressions(prompt: str) -> list[Fraction]:
    """Values of the arithmetic expressions in a prompt (each with at least
    one binary operator; dates and phone-number-like spans skipped)."""
    values = []
    for match in _EXPRESSION.finditer(_DATE_LIKE.sub(" ", prompt)):
        text = match.group(0)
        if "," in text:
            text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators
            if "," in text:
                continue
        text = text.replace("×", "*").replace("·", "*").replace("÷", "/").replace("^", "**")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError):
            continue
        if not any(isinstance(node, ast.BinOp) for node in ast.walk(tree)):
            continue
        if re.search(r"\b0\d", text):  # leading zeros: codes and times, not numbers
            continue
        try:
            values.append(safe_eval(text))
        except UnsafeExpression:
            continue
    return values


_ANSWER_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)"
_FINAL_PATTERNS = (
    re.compile(r"\\boxed\{\s*" + _ANSWER_NUMBER + r"\s*\}"),
    re.compile(r"####\s*" + _ANSWER_NUMBER),
    re.compile(r"(?i:answer)\s*(?:is|:|=)\s*[:=]?\s*\$?\s*" + _ANSWER_NUMBER),
)
_ANY_NUMBER = re.compile(r"(?<![\w.])" + _ANSWER_NUMBER + r"(?![\w])")


@dataclass(frozen=True)
class FinalAnswer:
    value: Fraction
    decimals: int  # digits after the decimal point as written

    def matches(self, target: Fraction) -> bool:
        if self.decimals == 0:
            return self.value == target
        return abs(float(self.value - target)) <= 0.5 * 10 ** (-self.decimals) + 1e-12


def _to_answer(text: str) -> FinalAnswer | None:
    text = text.replace(",", "")
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    decimals = len(text.split(".", 1)[1]) if "." in text and "/" not in text else 0
    return FinalAnswer(value, decimals)


def final_answer(response: str) -> FinalAnswer | None:
    """The response's numeric final answer: the last ``\\boxed{}``, ``####``
    or "answer is" number, else the last number of the last non-empty line."""
    for pattern in _FINAL_PATTERNS:
        found = pattern.findall(response)
        if found:
            return _to_answer(found[-1])
    lines = [line for line in response.strip().splitlines() if line.strip()]
    if not lines:
        return None
    numbers = _ANY_NUMBER.findall(lines[-1])
    return _to_answer(numbers[-1]) if numbers else None


class FinalAnswerJudge(Judge):
    """When the prompt holds an arithmetic expression (all of them, if
    several, with one value) and both responses end in different numeric
    final answers, prefers the one that equals the expression's value (a
    decimal answer is rounded to the digits it shows), when exactly one does."""

    name = "rule:final_answer"

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        values = set(prompt_expressions(user_text(turns)))
        if len(values) != 1:
            return None
        target = values.pop()
        answer_a, answer_b = final_answer(response_a), final_answer(response_b)
        if answer_a is None or answer_b is None or answer_a.value == answer_b.value:
            return None
        if not math.isfinite(float(target)):
            return None
        return prefer(answer_a.matches(target), answer_b.matches(target))


# --- routing --------------------------------------------------------------------------------------


def default_rules() -> dict[str, tuple[Judge, ...]]:
    """capability name -> rules tried in order (the first verdict wins)."""
    final, code, constraints = FinalAnswerJudge(), CodeParsesJudge(), ConstraintJudge()
    refusal = RefusalJudge()
    return {
        "correctness": (final, code),
        "accuracy": (final,),
        "final_answer": (final,),
        "code_parses": (code,),
        "harmlessness": (refusal,),
        "refusal": (refusal,),
        "relevance": (constraints,),
        "instruction_following": (constraints,),
        "completeness_of_instruction_following": (constraints,),
        "constraints": (constraints,),
        "format": (constraints,),
        "length": (constraints,),
    }


class RuleRouter(Judge):
    """Routes each capability to its rules and abstains for the rest.

    ``rules`` maps a capability name, or ``"task/capability"`` for one task
    only (looked up first, with :func:`current_task`), to a rule or a
    sequence of rules tried in order until one gives a verdict. Default:
    :func:`default_rules`."""

    name = "rules"

    def __init__(self, rules: Mapping[str, Judge | Sequence[Judge]] | None = None, name: str = "rules"):
        rules = default_rules() if rules is None else rules
        self.rules = {
            key: (value,) if isinstance(value, Judge) else tuple(value) for key, value in rules.items()
        }
        self.name = name

    def rules_for(self, capability: str, task: str | None = None) -> tuple[Judge, ...]:
        if task is not None and f"{task}/{capability}" in self.rules:
            return self.rules[f"{task}/{capability}"]
        return self.rules.get(capability, ())

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        for rule in self.rules_for(capability.name, current_task()):
            verdict = await rule.compare(turns, response_a, response_b, capability)
            if verdict is not None:
                return verdict
        return None
