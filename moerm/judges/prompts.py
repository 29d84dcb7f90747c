"""The judge prompt: a system message and one user message holding the
conversation, Response A, Response B and the capability to compare on."""

from __future__ import annotations

from collections.abc import Sequence

from moerm.bundle import Capability
from moerm.text import Turn

SYSTEM_PROMPT = (
    "You are an impartial judge. You compare two responses of an AI assistant to the same "
    "conversation and decide which one is better in terms of one given capability, and only that "
    "capability. The order in which the responses are shown, their length and their style must not "
    "influence you unless they matter for that capability. Answer with exactly one letter: A or B."
)

USER_TEMPLATE = """[Conversation]
{conversation}
[End of conversation]

[Response A]
{response_a}
[End of Response A]

[Response B]
{response_b}
[End of Response B]

Capability: {capability}

Which of the two responses is better in terms of {capability_name}? \
Answer with exactly one letter, A or B."""

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def shorten(text: str, max_chars: int | None) -> str:
    """``text`` cut to about ``max_chars`` characters: the head and the tail
    are kept, the middle is replaced by a marker."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[len(text) - tail :]}"


def capability_text(capability: Capability) -> str:
    name = capability.name.replace("_", " ")
    return f"{name}: {capability.description}" if capability.description else name


def build_messages(
    turns: Sequence[Turn],
    response_a: str,
    response_b: str,
    capability: Capability,
    *,
    max_chars_per_text: int | None = 6000,
) -> list[dict[str, str]]:
    """Chat-completions ``messages`` asking which response is better in terms
    of ``capability``. Each turn and response is cut to ``max_chars_per_text``
    characters (head and tail kept) so that long items fit small judges."""
    conversation = "\n\n".join(
        f"{ROLE_NAMES.get(turn.role, turn.role)}: {shorten(turn.content, max_chars_per_text)}"
        for turn in turns
    )
    user = USER_TEMPLATE.format(
        conversation=conversation,
        response_a=shorten(response_a, max_chars_per_text),
        response_b=shorten(response_b, max_chars_per_text),
        capability=capability_text(capability),
        capability_name=capability.name.replace("_", " "),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
