"""Validate Score and Feedback requests into domain types; every problem names its field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moerm.errors import FieldViolation, InvalidArgument, shown
from moerm.text import ROLES, Turn, normalize
from moerm.v1 import reward_pb2

MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Item:
    id: str
    turns: tuple[Turn, ...]  # normalized
    response: str  # normalized


@dataclass(frozen=True)
class ScoreCall:
    items: list[Item]
    policy: str
    reward_model: str
    breakdown: bool
    # per_item_errors: the request's index of each of ``items`` (the items to score),
    # the problems of each item left out, and whether an item's text was cut.
    positions: list[int] = field(default_factory=list)
    rejected: dict[int, list[FieldViolation]] = field(default_factory=dict)
    truncated: frozenset[int] = frozenset()
    size: int = 0  # items in the request


def cut_text(text: str, limit: int) -> str:
    """The last ``limit`` characters (a response's end: where the answer is)."""
    return text if len(text) <= limit else text[-limit:]


def cut_turns(turns: list[Turn], limit: int) -> list[Turn]:
    """Each message cut to its last ``limit`` characters. (The expert then keeps the
    most recent tokens within its backbone's context: the response's end and the
    latest turns.)"""
    return [Turn(turn.role, cut_text(turn.content, limit)) for turn in turns]


def fit_turns(turns: list[Turn], response: str, max_messages: int, max_item_chars: int) -> list[Turn]:
    """The most recent turns that fit an item's bounds: at most ``max_messages`` turns and
    ``max_item_chars`` characters with the response; the oldest kept turn may lose its
    beginning. At least the end of the latest turn stays (``max_item_chars`` must exceed
    the response's length)."""
    budget = max_item_chars - len(response)
    kept: list[Turn] = []
    for turn in reversed(turns[-max_messages:]):
        if len(turn.content) >= budget:
            kept.append(Turn(turn.role, cut_text(turn.content, budget)))
            break
        kept.append(turn)
        budget -= len(turn.content)
    return kept[::-1]


def parse_request(
    request: reward_pb2.ScoreRequest,
    *,
    max_items: int,
    max_text_chars: int,
    max_item_chars: int,
    max_messages: int,
    default_policy: str,
    policies: tuple[str, ...],
    reward_models: tuple[str, ...],
    remembered: tuple[str, ...] = (),
) -> ScoreCall:
    """Check every item and option; raise one InvalidArgument listing all problems.

    Policies in ``remembered`` keep a decision per item id for Feedback, so their
    caller-given ids must be unique within the request.

    Bounds per item: ``max_text_chars`` per prompt, message or response;
    ``max_messages`` messages; ``max_item_chars`` characters in all (prompt or messages
    plus response). With ``request.per_item_errors`` only request-level problems (items,
    policy, reward_model) raise; an item with problems is left out of ``items`` and its
    violations kept in ``rejected``, and an item beyond a bound is cut instead (each text
    to its last ``max_text_chars`` characters, then the most recent turns that fit, see
    :func:`fit_turns`) and its index kept in ``truncated``.
    """
    if not request.items:
        raise InvalidArgument.field("items", "at least one item is required")
    if len(request.items) > max_items:
        raise InvalidArgument.field(
            "items", f"{len(request.items)} items exceed the limit of {max_items} per request"
        )
    per_item = request.per_item_errors
    violations: list[FieldViolation] = []

    def check_text(field: str, text: str) -> None:
        if len(text) > max_text_chars and not per_item:
            violations.append(
                FieldViolation(field, f"{len(text)} characters exceed the limit of {max_text_chars}")
            )

    policy = request.policy or ("fixed" if request.reward_model else default_policy)
    if policy not in policies:
        violations.append(
            FieldViolation("policy", f"unknown routing policy {policy!r}; known: {', '.join(policies)}")
        )
    if request.reward_model and request.reward_model not in reward_models:
        violations.append(
            FieldViolation(
                "reward_model",
                f"unknown reward model {request.reward_model!r}; known: {', '.join(reward_models)}",
            )
        )
    if policy == "fixed" and not request.reward_model:
        violations.append(FieldViolation("reward_model", "the fixed policy needs a reward model"))
    if policy != "fixed" and request.reward_model and policy in policies:
        violations.append(
            FieldViolation("reward_model", f"only the fixed policy takes a reward model, not {policy!r}")
        )
    if per_item and violations:
        raise InvalidArgument(violations)

    items: list[Item] = []
    positions: list[int] = []
    rejected: dict[int, list[FieldViolation]] = {}
    truncated: set[int] = set()
    first_of_id: dict[str, int] = {}
    for i, raw in enumerate(request.items):
        where = f"items[{i}]"
        before = len(violations)
        if len(raw.id) > MAX_ID_CHARS:
            violations.append(FieldViolation(f"{where}.id", f"longer than {MAX_ID_CHARS} characters"))
        elif raw.id and policy in remembered:
            if raw.id in first_of_id:
                violations.append(
                    FieldViolation(
                        f"{where}.id",
                        f"{raw.id!r} repeats items[{first_of_id[raw.id]}].id; the {policy} policy "
                        "needs unique ids for feedback",
                    )
                )
            first_of_id.setdefault(raw.id, i)
        turns: list[Turn] = []
        if raw.prompt and raw.messages:
            violations.append(FieldViolation(f"{where}.prompt", "set prompt or messages, not both"))
        elif raw.prompt:
            check_text(f"{where}.prompt", raw.prompt)
            if not normalize(raw.prompt):
                violations.append(FieldViolation(f"{where}.prompt", "must not be blank"))
            turns.append(Turn("user", normalize(raw.prompt)))
        elif raw.messages:
            for j, message in enumerate(raw.messages):
                if message.role not in ROLES:
                    violations.append(
                        FieldViolation(
                            f"{where}.messages[{j}].role",
                            f"unknown role {message.role!r}; known: {', '.join(ROLES)}",
                        )
                    )
                check_text(f"{where}.messages[{j}].content", message.content)
                turns.append(Turn(message.role, normalize(message.content)))
            if not any(turn.content for turn in turns):
                violations.append(FieldViolation(f"{where}.messages", "every message is blank"))
        else:
            violations.append(FieldViolation(f"{where}.prompt", "an item needs a prompt or messages"))
        response = normalize(raw.response)
        if not response:
            violations.append(FieldViolation(f"{where}.response", "must not be empty"))
        check_text(f"{where}.response", raw.response)
        if not per_item:
            if len(raw.messages) > max_messages:
                violations.append(
                    FieldViolation(
                        f"{where}.messages",
                        f"{len(raw.messages)} messages exceed the limit of {max_messages}",
                    )
                )
            chars = len(response) + sum(len(turn.content) for turn in turns)
            if chars > max_item_chars:
                violations.append(
                    FieldViolation(
                        where, f"{chars} characters in all exceed the limit of {max_item_chars} per item"
                    )
                )
            items.append(Item(id=raw.id, turns=tuple(turns), response=response))
            continue
        if len(violations) > before:
            rejected[i] = violations[before:]
            del violations[before:]
            continue
        response_cut = cut_text(response, max_text_chars)
        cut = fit_turns(cut_turns(turns, max_text_chars), response_cut, max_messages, max_item_chars)
        if cut != turns or response_cut != response:
            truncated.add(i)
        items.append(Item(id=raw.id, turns=tuple(cut), response=response_cut))
        positions.append(i)
    if violations:
        raise InvalidArgument(violations)
    return ScoreCall(
        items=items,
        policy=policy,
        reward_model=request.reward_model,
        breakdown=request.return_breakdown,
        positions=positions if per_item else list(range(len(items))),
        rejected=rejected,
        truncated=frozenset(truncated),
        size=len(request.items),
    )


@dataclass(frozen=True)
class FeedbackCall:
    ids: list[str]
    request_ids: list[str]  # the Score call that scored each item
    rewards: np.ndarray  # (N,) float64, finite, within the configured bound

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(request_id, id) per item: what a decision is stored under."""
        return list(zip(self.request_ids, self.ids, strict=True))


def is_request_id(text: str) -> bool:
    """The form of the ScoreResponse.request_id the router hands out (32 hex digits)."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def parse_feedback(request: reward_pb2.FeedbackRequest, *, max_items: int, max_abs: float) -> FeedbackCall:
    """Check every feedback item; raise one InvalidArgument listing all problems.
    ``max_abs``: the largest |reward| accepted (larger ones would drown the others'
    normalization, and huge ones overflow it)."""
    if not request.items:
        raise InvalidArgument.field("items", "at least one item is required")
    if len(request.items) > max_items:
        raise InvalidArgument.field(
            "items", f"{len(request.items)} items exceed the limit of {max_items} per request"
        )
    violations: list[FieldViolation] = []
    first_of_key: dict[tuple[str, str], int] = {}
    for i, item in enumerate(request.items):
        key = (item.request_id, item.id)
        if not item.id:
            violations.append(FieldViolation(f"items[{i}].id", "must not be empty (use a ScoreResult.id)"))
        elif len(item.id) > MAX_ID_CHARS:
            violations.append(FieldViolation(f"items[{i}].id", f"longer than {MAX_ID_CHARS} characters"))
        elif key in first_of_key:
            violations.append(
                FieldViolation(
                    f"items[{i}].id", f"{shown(item.id)} repeats items[{first_of_key[key]}] (same request_id)"
                )
            )
        first_of_key.setdefault(key, i)
        if not is_request_id(item.request_id):
            violations.append(
                FieldViolation(
                    f"items[{i}].request_id",
                    f"must be the request_id of the ScoreResponse that scored the item, got {shown(item.request_id)}",
                )
            )
        if not math.isfinite(item.reward):
            violations.append(FieldViolation(f"items[{i}].reward", f"must be finite, got {item.reward}"))
        elif abs(item.reward) > max_abs:
            violations.append(
                FieldViolation(
                    f"items[{i}].reward",
                    f"|{item.reward:g}| exceeds the bound {max_abs:g} (--max-feedback-abs)",
                )
            )
    if violations:
        raise InvalidArgument(violations)
    return FeedbackCall(
        ids=[item.id for item in request.items],
        request_ids=[item.request_id for item in request.items],
        rewards=np.array([item.reward for item in request.items], dtype=np.float64),
    )
