"""Templated text back into a conversation and a response.

OpenRLHF sends the decoded prompt + response with the policy's chat template and
special tokens kept. moerm's experts render conversations with their own backbone's
template, so a templated string is split back into turns here and never templated
twice. Recognized: ChatML (``<|im_start|>role\\n...<|im_end|>``, SmolLM2 and Qwen) and
Llama 3 headers (``<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>``);
anything else is one user turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moerm.text import ROLES

# Tokens that end or pad a decoded sequence, trimmed from a response's end.
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<pad>", "<|end|>")
START_TOKENS = ("<|begin_of_text|>", "<s>", "<|endoftext|>", "<pad>")

CHATML = re.compile(r"<\|im_start\|>([a-z_]+)\n(.*?)(?:<\|im_end\|>|\Z)", re.S)
LLAMA3 = re.compile(r"<\|start_header_id\|>([a-z_]+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|\Z)", re.S)


@dataclass(frozen=True)
class Split:
    """One item: the conversation (role, content) pairs and the candidate response."""

    messages: list[dict[str, str]]
    response: str
    template: str  # "chatml", "llama3" or "plain"


def trim_ends(text: str) -> str:
    """Surrounding whitespace, trailing end/pad tokens and leading start/pad tokens off."""
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for token in END_TOKENS:
            if text.endswith(token):
                text, changed = text[: -len(token)].rstrip(), True
        for token in START_TOKENS:
            if text.startswith(token):
                text, changed = text[len(token) :].lstrip(), True
    return text


def turns_of(text: str) -> tuple[list[tuple[str, str]], str]:
    """(role, content) turns of templated text and the template's name; plain text
    is one user turn. A last turn without its end token (an open generation prompt
    or an unfinished response) is kept, stripped."""
    for name, pattern in (("chatml", CHATML), ("llama3", LLAMA3)):
        found = [(role, content.strip()) for role, content in pattern.findall(text)]
        if found:
            return found, name
    return [("user", trim_ends(text))], "plain"


def _role(role: str) -> str:
    return role if role in ROLES else "user"  # e.g. "tool", "ipython": context for the response


def split_query(query: str, prompt: str | None = None) -> Split:
    """``query`` (templated conversation + response) as messages and a response.

    With ``prompt`` (the templated prompt it starts with, as OpenRLHF sends it) the
    response is what follows the prompt and the conversation is the prompt's turns;
    without it, or when the query does not start with it, the last assistant turn of
    the parsed template is the response. Raises ValueError when no response is found.
    """
    if prompt:
        body, head = trim_ends(query), trim_ends(prompt)
        if body.startswith(head):
            turns, template = turns_of(head)
            turns = [(role, content) for role, content in turns if content or role != "assistant"]
            response = trim_ends(body[len(head) :])
            if not response:
                raise ValueError("the query holds nothing after its prompt")
            return Split([{"role": _role(r), "content": c} for r, c in turns if c], response, template)
    turns, template = turns_of(query)
    if template == "plain":
        raise ValueError("plain text without its prompt: send prompts, or a templated query")
    if len(turns) < 2 or turns[-1][0] != "assistant":
        raise ValueError(f"the {template} query ends without an assistant turn to score")
    response = trim_ends(turns[-1][1])
    if not response:
        raise ValueError(f"the {template} query's assistant turn is empty")
    return Split([{"role": _role(r), "content": c} for r, c in turns[:-1] if c], response, template)
