"""parse_request: every bad input is an InvalidArgument naming its field."""

from __future__ import annotations

import numpy as np
import pytest

from moerm.errors import InvalidArgument
from moerm.text import Turn
from moerm.v1 import reward_pb2, tensor_pb2
from router_svc.validation import MAX_ID_CHARS, parse_feedback, parse_request

MAX_ITEMS = 4
MAX_CHARS = 50
MAX_ITEM_CHARS = 120
MAX_MESSAGES = 3
POLICIES = ("task", "fixed", "linucb", "mean")
REMEMBERED = ("linucb", "mean")
REWARD_MODELS = ("dmoerm:code", "dmoerm:writing")


def parse(request: reward_pb2.ScoreRequest):
    return parse_request(
        request,
        max_items=MAX_ITEMS,
        max_text_chars=MAX_CHARS,
        max_item_chars=MAX_ITEM_CHARS,
        max_messages=MAX_MESSAGES,
        default_policy="task",
        policies=POLICIES,
        reward_models=REWARD_MODELS,
        remembered=REMEMBERED,
    )


def item(**fields) -> reward_pb2.ScoreItem:
    fields.setdefault("response", "ok")
    if "messages" in fields:
        fields["messages"] = [tensor_pb2.Message(role=r, content=c) for r, c in fields["messages"]]
    return reward_pb2.ScoreItem(**fields)


def request(*items: reward_pb2.ScoreItem, **options) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(items=list(items), **options)


def fields_of(req: reward_pb2.ScoreRequest) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        parse(req)
    error = caught.value
    assert error.code.name == "INVALID_ARGUMENT"
    assert error.violations and all(v.description for v in error.violations)
    return [v.field for v in error.violations]


GOOD = item(prompt="hi")
LONG = "x" * (MAX_CHARS + 1)


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (request(), ["items"]),
        (request(*[GOOD] * (MAX_ITEMS + 1)), ["items"]),
        (request(GOOD, item(response="only a response")), ["items[1].prompt"]),
        (request(item(prompt="p", messages=[("user", "m")])), ["items[0].prompt"]),
        (request(item(prompt="   \n ")), ["items[0].prompt"]),
        (request(GOOD, GOOD, item(prompt="p", response="")), ["items[2].response"]),
        (request(item(prompt="p", response=" \r\n\t ")), ["items[0].response"]),
        (request(item(prompt=LONG)), ["items[0].prompt"]),
        (request(GOOD, item(messages=[("user", LONG)])), ["items[1].messages[0].content"]),
        (
            request(item(messages=[("system", "s"), ("user", "u"), ("assistant", LONG)])),
            ["items[0].messages[2].content"],
        ),
        (request(item(prompt="p", response=LONG)), ["items[0].response"]),
        (request(item(messages=[("user", "u"), ("robot", "beep")])), ["items[0].messages[1].role"]),
        (request(item(messages=[("", "u")])), ["items[0].messages[0].role"]),
        (request(item(messages=[("system", " "), ("user", "")])), ["items[0].messages"]),
        (request(GOOD, policy="bandit"), ["policy"]),
        (request(GOOD, reward_model="dmoerm:exam"), ["reward_model"]),
        (request(GOOD, policy="fixed"), ["reward_model"]),
        (request(GOOD, policy="task", reward_model="dmoerm:code"), ["reward_model"]),
        (request(GOOD, policy="linucb", reward_model="dmoerm:code"), ["reward_model"]),
        (request(item(id="a", prompt="p"), GOOD, item(id="a", prompt="q"), policy="linucb"), ["items[2].id"]),
        (request(item(id="a", prompt="p"), item(id="a", prompt="q"), policy="mean"), ["items[1].id"]),
        (request(GOOD, item(id="i" * (MAX_ID_CHARS + 1), prompt="p")), ["items[1].id"]),
    ],
    ids=[
        "no-items",
        "too-many-items",
        "no-prompt-or-messages",
        "prompt-and-messages",
        "blank-prompt",
        "empty-response",
        "blank-response",
        "long-prompt",
        "long-message",
        "long-later-message",
        "long-response",
        "unknown-role",
        "empty-role",
        "blank-messages",
        "unknown-policy",
        "unknown-reward-model",
        "fixed-without-model",
        "model-without-fixed",
        "model-with-bandit",
        "repeated-id-bandit",
        "repeated-id-ensemble",
        "long-id",
    ],
)
def test_bad_input_names_its_field(req: reward_pb2.ScoreRequest, expected: list[str]) -> None:
    assert fields_of(req) == expected


def test_text_at_the_limit_is_accepted() -> None:
    call = parse(request(item(prompt="x" * MAX_CHARS, response="y" * MAX_CHARS)))
    assert call.items[0].response == "y" * MAX_CHARS
    assert len(parse(request(*[GOOD] * MAX_ITEMS)).items) == MAX_ITEMS


def test_all_problems_are_reported_at_once() -> None:
    req = request(
        GOOD,
        item(messages=[("user", "fine"), ("wizard", LONG)], response=""),
        item(response="no prompt"),
        item(prompt="p", response=LONG),
        policy="nope",
    )
    assert sorted(fields_of(req)) == sorted(
        [
            "policy",
            "items[1].messages[1].role",
            "items[1].messages[1].content",
            "items[1].response",
            "items[2].prompt",
            "items[3].response",
        ]
    )
    with pytest.raises(InvalidArgument) as caught:
        parse(req)
    message = str(caught.value)
    assert "items[1].messages[1].role" in message and "'wizard'" in message


def test_good_request_is_normalized() -> None:
    req = request(
        item(id="a", prompt="  Hello\r\nworld  ", response="\tAnswer\r\n"),
        item(id="b", messages=[("system", "Be brief.\r"), ("user", " Q?\r\n")], response="A."),
        return_breakdown=True,
    )
    call = parse(req)
    assert (call.policy, call.reward_model, call.breakdown) == ("task", "", True)
    first, second = call.items
    assert first.id == "a"
    assert first.turns == (Turn("user", "Hello\nworld"),)
    assert first.response == "Answer"
    assert second.id == "b"
    assert second.turns == (Turn("system", "Be brief."), Turn("user", "Q?"))
    assert second.response == "A."


def test_unicode_is_nfc_normalized() -> None:
    call = parse(request(item(prompt="cafe\u0301", response="e\u0301")))
    assert call.items[0].turns[0].content == "caf\u00e9"
    assert call.items[0].response == "\u00e9"


def test_policy_resolution() -> None:
    assert parse(request(GOOD)).policy == "task"
    call = parse(request(GOOD, reward_model="dmoerm:writing"))  # a reward model implies "fixed"
    assert (call.policy, call.reward_model) == ("fixed", "dmoerm:writing")
    call = parse(request(GOOD, policy="fixed", reward_model="dmoerm:code"))
    assert (call.policy, call.reward_model) == ("fixed", "dmoerm:code")


def test_repeated_ids_are_fine_for_policies_without_feedback() -> None:
    call = parse(request(item(id="a", prompt="p"), item(id="a", prompt="q")))
    assert [i.id for i in call.items] == ["a", "a"]
    call = parse(request(item(id="", prompt="p"), item(id="", prompt="q"), policy="linucb"))
    assert call.policy == "linucb"


# -- Feedback -------------------------------------------------------------------------


REQUEST_ID = "0123456789abcdef" * 2
MAX_ABS = 1e6


def feedback(*rows: tuple) -> reward_pb2.FeedbackRequest:
    """(id, reward) or (id, reward, request_id) rows; the default request_id is well formed."""
    return reward_pb2.FeedbackRequest(
        items=[
            reward_pb2.FeedbackItem(
                id=row[0], reward=row[1], request_id=row[2] if len(row) > 2 else REQUEST_ID
            )
            for row in rows
        ]
    )


def feedback_fields(req: reward_pb2.FeedbackRequest) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_feedback(req, max_items=MAX_ITEMS, max_abs=MAX_ABS)
    assert all(v.description for v in caught.value.violations)
    return [v.field for v in caught.value.violations]


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (feedback(), ["items"]),
        (feedback(*[("a", 1.0)] * (MAX_ITEMS + 1)), ["items"]),
        (feedback(("a", 1.0), ("b", float("nan"))), ["items[1].reward"]),
        (feedback(("a", float("inf"))), ["items[0].reward"]),
        (feedback(("a", -float("inf")), ("", 0.0)), ["items[0].reward", "items[1].id"]),
        (feedback(("a", 1.0), ("b", 0.0), ("a", 0.5)), ["items[2].id"]),
        (feedback(("i" * (MAX_ID_CHARS + 1), 1.0)), ["items[0].id"]),
        (feedback(("a", 1.0, ""), ("b", 1.0, "r1")), ["items[0].request_id", "items[1].request_id"]),
        (feedback(("a", 1.7e308), ("b", -1.7e308)), ["items[0].reward", "items[1].reward"]),
        (feedback(("a", MAX_ABS * 1.01)), ["items[0].reward"]),
    ],
    ids=[
        "empty",
        "too-many",
        "nan",
        "inf",
        "minus-inf-and-empty-id",
        "repeated-id",
        "long-id",
        "no-request-id",
        "huge-rewards",
        "above-the-bound",
    ],
)
def test_bad_feedback_names_its_field(req: reward_pb2.FeedbackRequest, expected: list[str]) -> None:
    assert feedback_fields(req) == expected


def test_good_feedback_keeps_order_and_values() -> None:
    call = parse_feedback(
        feedback(("r1/0", 0.25), ("mine", -3.0), ("r1/1", 1e6), ("mine", 1.0, "f" * 32)),
        max_items=MAX_ITEMS,
        max_abs=MAX_ABS,
    )
    assert call.ids == ["r1/0", "mine", "r1/1", "mine"]  # one id from two Score calls
    assert call.keys[-1] == ("f" * 32, "mine") and call.keys[0] == (REQUEST_ID, "r1/0")
    assert call.rewards.dtype == np.float64
    assert call.rewards.tolist() == [0.25, -3.0, 1e6, 1.0]
