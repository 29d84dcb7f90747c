"""Conversations as the services see them: normalization (for cache keys) and
rendering into the text a backbone reads (or an HTTP reward model of the pool)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


def normalize(text: str) -> str:
    """Unicode NFC, Unix newlines, no surrounding whitespace."""
    text = unicodedata.normalize("NFC", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def render_conversation(turns: Sequence[Turn]) -> str:
    """``role: content`` lines: what the router classifies."""
    return "\n".join(f"{turn.role}: {turn.content}" for turn in turns)


def render_plain(turns: Sequence[Turn], response: str) -> str:
    return render_conversation([*turns, Turn("assistant", response)])


def render_chatml(turns: Sequence[Turn], response: str) -> tuple[str, str]:
    """(prompt, query) in ChatML, as OpenRLHF sends them to a remote reward model: the
    prompt is the conversation and the assistant's header (the generation prompt), the
    query the prompt followed by the response and ``<|im_end|>``
    (:func:`moerm.integrations.templates.split_query` takes them apart again)."""
    prompt = "".join(f"<|im_start|>{turn.role}\n{turn.content}<|im_end|>\n" for turn in turns)
    prompt += "<|im_start|>assistant\n"
    return prompt, f"{prompt}{response}<|im_end|>"


def render(tokenizer, turns: Sequence[Turn], response: str) -> str:
    """The conversation plus the candidate response, in the backbone's chat
    format when its tokenizer has one (decoders), else ``role: content`` lines."""
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": t.role, "content": t.content} for t in turns]
        chat.append({"role": "assistant", "content": response})
        return tokenizer.apply_chat_template(chat, tokenize=False)
    return render_plain(turns, response)
