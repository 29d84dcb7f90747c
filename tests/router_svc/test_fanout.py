"""plan_calls: the fewest ScoreBatch calls for a set of (reward model, item) jobs,
the cache entries of member scores, and an HTTP member's request and answer. No
servers (the calls themselves are covered by tests/integration/test_routing_*.py and
tests/integration/test_http_member.py)."""

from __future__ import annotations

import json

import pytest

from moerm.errors import Unavailable
from moerm.integrations.templates import split_query
from moerm.routing.pool import BASE, DMOERM, EXTERNAL, RewardModelSpec
from moerm.tensors import from_proto
from moerm.text import Turn
from router_svc.fanout import Call, Job, MemberScore, _request, plan_calls, post_body, read_rewards
from router_svc.validation import Item

SPECS = {
    "dmoerm:code": RewardModelSpec("dmoerm:code", DMOERM, task="code"),
    "base:code": RewardModelSpec("base:code", BASE, task="code"),
    "dmoerm:writing": RewardModelSpec("dmoerm:writing", DMOERM, task="writing"),
    "base:writing": RewardModelSpec("base:writing", BASE, task="writing"),
    "ext": RewardModelSpec("ext", EXTERNAL, task="chat", address="h:1"),
}
ITEMS = [Item(id="", turns=(Turn("user", f"prompt {k}"),), response=f"response {k}") for k in range(3)]


def jobs(*pairs: tuple[str, int]) -> list[Job]:
    return [Job(SPECS[name], ITEMS[k], k) for name, k in pairs]


def test_an_ensemble_asks_each_task_once_with_base_scores() -> None:
    batch = jobs(
        *[(name, k) for k in range(2) for name in ("dmoerm:code", "base:code", "dmoerm:writing", "ext")]
    )
    calls = plan_calls(batch)
    assert calls == [
        Call("experts", "code", rows=(0, 4), base_rows=(1, 5)),
        Call("experts", "writing", rows=(2, 6)),
        Call(EXTERNAL, "ext", rows=(3, 7)),
    ]
    request = _request(calls[0], batch)
    assert (request.task, request.return_hidden, request.return_base, request.base_only) == (
        "code",
        True,
        True,
        False,
    )
    assert [i.response for i in request.items] == ["response 0", "response 1"]
    assert [m.content for m in request.items[1].messages] == ["prompt 1"]


def test_base_only_items_get_a_base_only_call() -> None:
    # Item 0 needs the experts, item 1 only the base model (a bandit's two arms).
    batch = jobs(("dmoerm:code", 0), ("base:code", 1), ("base:writing", 2))
    calls = plan_calls(batch)
    assert calls == [
        Call("experts", "code", rows=(0,)),
        Call(BASE, "code", rows=(1,)),
        Call(BASE, "writing", rows=(2,)),
    ]
    request = _request(calls[1], batch)
    assert (request.base_only, request.return_base, request.return_hidden) == (True, False, False)


def test_partial_overlap_does_not_compute_unwanted_base_scores() -> None:
    # Items 0 and 1 need the experts, only item 1 the base model: the experts call
    # does not ask for base scores (item 0 would pay for one); item 1's is separate.
    batch = jobs(("dmoerm:code", 0), ("dmoerm:code", 1), ("base:code", 1))
    assert plan_calls(batch) == [Call("experts", "code", rows=(0, 1)), Call(BASE, "code", rows=(2,))]


def test_external_request_names_its_served_task() -> None:
    batch = jobs(("ext", 2))
    (call,) = plan_calls(batch)
    request = _request(call, batch)
    assert (request.task, request.return_hidden, request.return_base, request.base_only) == (
        "chat",
        False,
        False,
        False,
    )
    assert call.what == "external reward model 'ext'"


@pytest.mark.parametrize(
    "value",
    [None, {}, {"r": "x", "caps": {}}, {"r": 1.0}, {"r": 1.0, "caps": []}, {"r": float("nan"), "caps": {}}],
)
def test_malformed_cache_entries_are_misses(value) -> None:
    assert MemberScore.from_cache(value) is None


def test_cache_round_trip() -> None:
    score = MemberScore(0.25, {"correctness": 1.5}, truncated=True)
    back = MemberScore.from_cache(score.to_cache())
    assert (back.raw, back.capabilities, back.cached, back.truncated) == (
        0.25,
        {"correctness": 1.5},
        True,
        True,
    )
    # An entry written before the truncation flag existed reads as not truncated.
    assert MemberScore.from_cache({"r": 0.5, "caps": {}}).truncated is False


def test_an_http_member_gets_chatml_that_splits_back_into_the_same_turns() -> None:
    item = Item(
        id="",
        turns=(
            Turn("system", "Be terse."),
            Turn("user", "Hi?"),
            Turn("assistant", "Yes?"),
            Turn("user", "2+2?"),
        ),
        response="4, since 2 + 2 = 4.\nDone.",
    )
    body = post_body([item, ITEMS[0]])
    assert body["prompts"][1] == "<|im_start|>user\nprompt 0<|im_end|>\n<|im_start|>assistant\n"
    assert body["query"][1] == body["prompts"][1] + "response 0<|im_end|>"
    # What moerm's gateway (and any ChatML reader) makes of it: the item again.
    for query, prompt, sent in zip(body["query"], body["prompts"], [item, ITEMS[0]], strict=True):
        split = split_query(query, prompt)
        assert [(m["role"], m["content"]) for m in split.messages] == [
            (t.role, t.content) for t in sent.turns
        ]
        assert split.response == sent.response


def test_an_http_members_answer_is_read_as_a_one_column_external() -> None:
    answer = {"rewards": [0.5, -1.0], "scores": [0.5, -1.0], "extra_logs": {"moerm_truncated": [0.0, 1.0]}}
    reply = read_rewards(json.dumps(answer).encode(), 2, "external reward model 'rm'")
    assert from_proto(reply.scores).tolist() == [[0.5], [-1.0]]
    assert list(reply.truncated) == [False, True]
    plain = read_rewards(b'{"rewards": [2.0]}', 1, "rm")  # OpenRLHF's serve_rm says nothing of truncation
    assert from_proto(plain.scores).tolist() == [[2.0]] and list(plain.truncated) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", "without a list of rewards"),
        (b"[1.0]", "without a list of rewards"),
        (b'{"scores": [1.0, 2.0]}', "without a list of rewards"),
        (b'{"rewards": [1.0]}', "for 2 items"),
        (b'{"rewards": [[1.0], [2.0]]}', "for 2 items"),
        (
            b'{"rewards": [0.0, 1.0], "errors": [{"index": 0, "description": "empty"}]}',
            "could not score 1 items: empty",
        ),
    ],
)
def test_an_http_members_bad_answer_makes_it_unavailable(body: bytes, message: str) -> None:
    with pytest.raises(Unavailable, match=message):
        read_rewards(body, 2, "rm")
