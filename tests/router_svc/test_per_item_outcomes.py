"""parse_request with per_item_errors: bad items are left out with their own
violations, long texts are cut (their end kept) instead of rejected, request-level
problems still fail the request."""

from __future__ import annotations

import pytest

from moerm.errors import InvalidArgument
from moerm.v1 import reward_pb2, tensor_pb2
from router_svc.validation import parse_request

MAX_CHARS = 50
MAX_ITEM_CHARS = 120
MAX_MESSAGES = 3


def parse(*items: reward_pb2.ScoreItem, **options):
    return parse_request(
        reward_pb2.ScoreRequest(items=list(items), **options),
        max_items=8,
        max_text_chars=MAX_CHARS,
        max_item_chars=MAX_ITEM_CHARS,
        max_messages=MAX_MESSAGES,
        default_policy="task",
        policies=("task", "fixed", "linucb"),
        reward_models=("dmoerm:code",),
        remembered=("linucb",),
    )


def test_bad_items_are_left_out_with_their_fields():
    call = parse(
        reward_pb2.ScoreItem(prompt="hi", response="fine"),
        reward_pb2.ScoreItem(prompt="hi", response="  "),
        reward_pb2.ScoreItem(messages=[tensor_pb2.Message(role="robot", content="x")], response="y"),
        reward_pb2.ScoreItem(response="no prompt"),
        reward_pb2.ScoreItem(prompt="again", response="ok"),
        per_item_errors=True,
    )
    assert call.positions == [0, 4]
    assert [item.response for item in call.items] == ["fine", "ok"]
    assert {i: [v.field for v in vs] for i, vs in call.rejected.items()} == {
        1: ["items[1].response"],
        2: ["items[2].messages[0].role"],
        3: ["items[3].prompt"],
    }
    assert call.size == 5 and not call.truncated


def test_long_texts_are_cut_keeping_their_end():
    response = "a" * 60 + "THE ANSWER IS 42"
    prompt = "b" * 70 + "the question"
    call = parse(
        reward_pb2.ScoreItem(prompt=prompt, response=response),
        reward_pb2.ScoreItem(prompt="short", response="short"),
        per_item_errors=True,
    )
    first = call.items[0]
    assert first.response == response[-MAX_CHARS:] and first.response.endswith("THE ANSWER IS 42")
    assert first.turns[0].content == prompt[-MAX_CHARS:]
    assert call.truncated == frozenset({0})


def test_an_item_beyond_its_bounds_keeps_its_most_recent_turns():
    turns = [("user", "u1" * 20), ("assistant", "a1" * 20), ("user", "u2" * 20), ("assistant", "a2" * 20)]
    many = reward_pb2.ScoreItem(
        messages=[tensor_pb2.Message(role=r, content=c) for r, c in turns], response="r" * 30
    )
    call = parse(many, reward_pb2.ScoreItem(prompt="short", response="short"), per_item_errors=True)
    kept = call.items[0].turns
    # 3 messages at most, 120 characters with the 30 of the response: the last two turns
    # (80) whole, and the last 10 characters of the one before them.
    assert [turn.role for turn in kept] == ["assistant", "user", "assistant"]
    assert [turn.content for turn in kept] == ["a1" * 5, "u2" * 20, "a2" * 20]
    assert call.items[0].response == "r" * 30
    assert call.truncated == frozenset({0})
    with pytest.raises(InvalidArgument) as error:  # without per-item errors: the bounds reject
        parse(many)
    assert [v.field for v in error.value.violations] == ["items[0].messages", "items[0]"]


def test_without_per_item_errors_one_bad_item_fails_the_request():
    with pytest.raises(InvalidArgument) as caught:
        parse(
            reward_pb2.ScoreItem(prompt="hi", response="fine"),
            reward_pb2.ScoreItem(prompt="hi", response="x" * (MAX_CHARS + 1)),
        )
    assert [v.field for v in caught.value.violations] == ["items[1].response"]


def test_request_level_problems_still_fail_with_per_item_errors():
    with pytest.raises(InvalidArgument) as caught:
        parse(reward_pb2.ScoreItem(prompt="hi", response="ok"), policy="oracle", per_item_errors=True)
    assert [v.field for v in caught.value.violations] == ["policy"]
    with pytest.raises(InvalidArgument):
        parse(per_item_errors=True)


def test_repeated_ids_under_a_remembering_policy_reject_the_repeat_only():
    call = parse(
        reward_pb2.ScoreItem(id="a", prompt="p", response="r1"),
        reward_pb2.ScoreItem(id="a", prompt="p", response="r2"),
        policy="linucb",
        per_item_errors=True,
    )
    assert call.positions == [0]
    assert [v.field for v in call.rejected[1]] == ["items[1].id"]
