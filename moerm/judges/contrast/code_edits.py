"""Edits of the code in a response (fenced blocks, or a response that is all
code): break what it does (flip an operator, drop a statement), make it
harder to read (meaningless names), take its comments away. The prose is
left alone; Python that parsed before an edit still parses after it.

Each function returns the edited response, or None when the response has no
code the edit can apply to.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import re
import tokenize
from collections.abc import Iterator

from moerm.judges.contrast.text import Block, blocks, parses_as_python

PYTHON_TAGS = frozenset({"python", "py", "python3", "py3", "ipython"})
# Languages whose comments start with "#" (everything else: "//" and "/* */").
HASH_TAGS = frozenset(
    {"bash", "sh", "shell", "zsh", "ruby", "rb", "r", "perl", "yaml", "yml", "toml", "dockerfile", "makefile"}
)


def language(block: Block, code: str) -> str:
    """ "python" (tagged so, or untagged and parses), "hash" or "c" (comment style)."""
    if block.tag in PYTHON_TAGS or (block.tag == "" and parses_as_python(code)):
        return "python"
    return "hash" if block.tag in HASH_TAGS else "c"


def scan(code: str, style: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(code spans, comment spans) of ``code``: what lies outside string
    literals and comments, and the comments. A lexer's approximation for any
    language: quotes with backslash escapes, Python's triple quotes, "#"
    comments for python/hash styles, "//" and "/* */" for c style."""
    plain: list[tuple[int, int]] = []
    comments: list[tuple[int, int]] = []
    start = i = 0
    size = len(code)

    def skip(to: int) -> None:
        nonlocal start, i
        plain.append((start, i))
        i = start = to

    while i < size:
        char = code[i]
        if style == "python" and code.startswith(('"""', "'''"), i):
            end = code.find(code[i : i + 3], i + 3)
            skip(size if end < 0 else end + 3)
        elif char in "'\"" or (char == "`" and style != "python"):
            j = i + 1
            while j < size and code[j] != char and (code[j] != "\n" or char == "`"):
                j += 2 if code[j] == "\\" else 1
            skip(min(j + 1, size))
        elif (char == "#" and style in ("python", "hash")) or (style == "c" and code.startswith("//", i)):
            end = code.find("\n", i)
            end = size if end < 0 else end
            comments.append((i, end))
            skip(end)
        elif style == "c" and code.startswith("/*", i):
            end = code.find("*/", i + 2)
            end = size if end < 0 else end + 2
            comments.append((i, end))
            skip(end)
        else:
            i += 1
    plain.append((start, size))
    return [(a, b) for a, b in plain if b > a], comments


def _code_blocks(response: str) -> Iterator[tuple[Block, str, str]]:
    for block in blocks(response):
        if block.kind == "code":
            code = block.text(response)
            yield block, code, language(block, code)


def _replace_block(response: str, block: Block, code: str) -> str:
    return response[: block.start] + code + response[block.end :]


def _still_valid(old: str, new: str, style: str) -> bool:
    return style != "python" or not parses_as_python(old) or parses_as_python(new)


# --- correctness: flip an operator ----------------------------------------------------------------

FLIPS = {
    "==": "!=",
    "!=": "==",
    "<=": ">=",
    ">=": "<=",
    "<": ">",
    ">": "<",
    "+=": "-=",
    "-=": "+=",
    "+": "-",
    "-": "+",
    "*": "+",
    "/": "*",
    "and": "or",
    "or": "and",
    "&&": "||",
    "||": "&&",
}
_OPERATOR = re.compile(r"(?<= )(==|!=|<=|>=|\+=|-=|&&|\|\||and|or|<|>|\+|-|\*|/)(?= )")
_LEFT_OPERAND = re.compile(r"[\w)\]'\"]$")
_RIGHT_OPERAND = re.compile(r"^[\w(\['\"-]")


def flip_operator(response: str, rng: random.Random) -> str | None:
    """The response with one binary operator of its code flipped (``<`` to
    ``>``, ``==`` to ``!=``, ``+`` to ``-``, ``and`` to ``or``, ... see
    :data:`FLIPS`), outside strings and comments. Only operators written with
    a space on each side and an operand on each side on the same line count
    (no unary minus, ``#include <x>``, ``*args`` or YAML list dashes). None
    when the code has none."""
    candidates: list[tuple[Block, str, str, int, int]] = []
    for block, code, style in _code_blocks(response):
        spans, _ = scan(code, style)
        for begin, end in spans:
            for match in _OPERATOR.finditer(code, begin, end):
                line_start = code.rfind("\n", 0, match.start()) + 1
                line_end = code.find("\n", match.end())
                left = code[line_start : match.start()].rstrip()
                right = code[match.end() : len(code) if line_end < 0 else line_end].lstrip()
                if not (_LEFT_OPERAND.search(left) and _RIGHT_OPERAND.search(right)):
                    continue
                if match.group(1) == "*" and (
                    re.search(r"(?i)\b(?:import|select)$", left) or re.match(r"(?i)from\b", right)
                ):
                    continue
                candidates.append((block, code, style, match.start(), match.end()))
    rng.shuffle(candidates)
    for block, code, style, start, end in candidates:
        new = code[:start] + FLIPS[code[start:end]] + code[end:]
        if _still_valid(code, new, style):
            return _replace_block(response, block, new)
    return None


# --- correctness: drop a statement ----------------------------------------------------------------

_DROPPABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Import, ast.ImportFrom, ast.Raise)
_OPENS = (":", "\\", ",", "(", "[", "{")


def _python_statement(line: str) -> bool:
    """A whole simple statement that does something (not pass, a docstring or a bare name)."""
    try:
        body = ast.parse(line).body
    except (SyntaxError, ValueError):
        return False
    if len(body) != 1:
        return False
    node = body[0]
    return isinstance(node, _DROPPABLE) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))


def _lines(code: str) -> Iterator[tuple[int, int, str]]:
    """(start, end including the newline, text) of each line."""
    position = 0
    for line in code.splitlines(keepends=True):
        yield position, position + len(line), line.rstrip("\n")
        position += len(line)


def drop_code_line(response: str, rng: random.Random) -> str | None:
    """The response with one statement line of its code removed: in Python
    that parses, a whole simple statement (assignment, return, import, raise
    or a call) whose removal leaves code that still parses; in other
    languages, a line ending in ";" that is not a comment or a closing
    brace. None when the code has no such line."""
    candidates: list[tuple[Block, str, str, int, int]] = []
    for block, code, style in _code_blocks(response):
        python = style == "python" and parses_as_python(code)
        for start, end, line in _lines(code):
            text = line.strip()
            if not text or text.startswith(("#", "//", "/*", "*", "}", ">>>")) or text.endswith(_OPENS):
                continue
            if python and not _python_statement(text):
                continue
            if not python and (not text.endswith(";") or len(text) < 3):
                continue
            candidates.append((block, code, style, start, end))
    rng.shuffle(candidates)
    for block, code, style, start, end in candidates:
        new = code[:start] + code[end:]
        if new.strip() and _still_valid(code, new, style):
            return _replace_block(response, block, new)
    return None


# --- readability: meaningless names ---------------------------------------------------------------

_KEEP = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {"self", "cls"}


class _Rename(ast.NodeTransformer):
    def __init__(self, names: dict[str, str]):
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.names.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def _named(self, node):
        node.name = self.names.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _named

    def visit_Global(self, node):
        node.names = [self.names.get(n, n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global


def _defined_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names the code defines: variables, parameters, functions; names it must
    keep: attributes, keyword-argument names, imports, classes)."""
    defined: set[str] = set()
    keep: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute):
            keep.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            keep.add(node.arg)
        elif isinstance(node, ast.alias):
            keep.update(part for name in (node.name, node.asname) if name for part in name.split("."))
        elif isinstance(node, ast.ClassDef):
            keep.add(node.name)
    return defined, keep


def _rename_tokens(code: str, names: dict[str, str]) -> str | None:
    """``code`` with every NAME token in ``names`` renamed (not after a ".")."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    offsets = [0]
    for line in code.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    edits = []
    previous = None
    for token in tokens:
        if token.type == tokenize.NAME and token.string in names and previous != ".":
            (row, col), (_, end_col) = token.start, token.end
            edits.append((offsets[row - 1] + col, offsets[row - 1] + end_col, names[token.string]))
        if token.type not in (
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.COMMENT,
            tokenize.INDENT,
            tokenize.DEDENT,
        ):
            previous = token.string
    for start, end, name in reversed(edits):
        code = code[:start] + name + code[end:]
    return code


def obscure_names(response: str, rng: random.Random) -> str | None:
    """The response with the variables, parameters and functions its Python
    code defines renamed ``v1``, ``v2``, ... consistently across its Python
    blocks: names of three or more characters that the prose does not mention
    (so the explanation still fits) and that are no builtin, keyword,
    attribute, keyword argument, import or class. The edit is checked: each
    block's syntax tree equals the original's with the names replaced, so
    the code does exactly what it did. None without such names."""
    parts = list(_code_blocks(response))
    python = [(block, code) for block, code, style in parts if style == "python" and parses_as_python(code)]
    if not python:
        return None
    other_text = "\n".join(
        [b.text(response) for b in blocks(response) if b.kind == "prose"]
        + [code for _, code, style in parts if style != "python" or not parses_as_python(code)]
    )
    defined: set[str] = set()
    keep: set[str] = set()
    for _, code in python:
        names, kept = _defined_names(ast.parse(code))
        defined |= names
        keep |= kept
    chosen = sorted(
        name
        for name in defined - keep - _KEEP
        if len(name) >= 3
        and not name.startswith("__")
        and not re.search(rf"\b{re.escape(name)}\b", other_text)
    )
    if not chosen:
        return None
    taken = set(re.findall(r"\w+", response))
    fresh = (f"v{i}" for i in range(1, 10_000) if f"v{i}" not in taken)
    names = {name: next(fresh) for name in chosen}
    edited = response
    for block, code in sorted(python, key=lambda item: item[0].start, reverse=True):
        new = _rename_tokens(code, names)
        if new is None:
            return None
        expected = ast.dump(_Rename(names).visit(ast.parse(code)))
        try:
            if ast.dump(ast.parse(new)) != expected:
                return None  # e.g. a name inside an f-string the tokenizer sees as one string
        except SyntaxError:
            return None
        edited = _replace_block(edited, block, new)
    return edited if edited != response else None


# --- documentation: strip the comments ------------------------------------------------------------


def _strip(code: str, comments: list[tuple[int, int]]) -> str:
    masked = [False] * len(code)
    for start, end in comments:
        for i in range(start, end):
            masked[i] = True
    out = []
    for start, end, line in _lines(code):
        flags = masked[start : start + len(line)]
        if not any(flags):
            out.append(code[start:end])
            continue
        kept = "".join(c for c, m in zip(line, flags, strict=True) if not m)
        if not kept.strip():
            continue  # a comment-only line goes entirely
        out.append(kept.rstrip() + code[start + len(line) : end])
    return "".join(out)


def strip_comments(response: str, rng: random.Random) -> str | None:
    """The response with every comment of its code removed ("#" comments in
    Python and shell-like languages, "//" and "/* */" elsewhere; a shebang
    line stays): comment-only lines go, trailing comments are cut. None when
    the code has no comment."""
    edited = response
    changed = False
    for block, code, style in sorted(_code_blocks(response), key=lambda item: item[0].start, reverse=True):
        _, comments = scan(code, style)
        comments = [(a, b) for a, b in comments if not code.startswith("#!", a)]
        if not comments:
            continue
        new = _strip(code, comments)
        if not new.strip() or not _still_valid(code, new, style):
            continue
        edited = _replace_block(edited, block, new)
        changed = True
    return edited if changed else None
