"""OpenAIJudge against FakeChatAPI, a real loopback HTTP server that fakes a
hosted chat-completions API (see conftest)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from moerm.bundle import Capability
from moerm.judges.base import label_pairs
from moerm.judges.openai_judge import (
    JudgeError,
    OpenAIJudge,
    TokenBucket,
    parse_verdict,
    verdict_from_logprobs,
)
from moerm.judges.prompts import SYSTEM_PROMPT, build_messages, shorten
from moerm.text import Turn
from tests.judges.conftest import FakeChatAPI, Reply, completion, make_pair

CAP = Capability("readability", "clear names, structure and comments")
TURNS = (Turn("user", "Write a function."),)


def judge_for(api: FakeChatAPI, **options) -> OpenAIJudge:
    options.setdefault("backoff_base_s", 0.01)
    options.setdefault("timeout_s", 5)
    return OpenAIJudge(api.base_url, "fake-judge", **options)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("A", "A"),
        ("B", "B"),
        (" b ", "B"),
        ("(A)", "A"),
        ("**B**.", "B"),
        ("Response B", "B"),
        ("Response A is better.", "A"),
        ("The better response is B.", "B"),
        ("Answer: A", "A"),
        ("[[B]]", "B"),
        ("I think B, because it is clearer.", "B"),
        ("A is better than B", "A"),
        ("A good answer would be B", "B"),
        ("The second response is better in terms of", "B"),
        ("The first response is clearer than the second one.", "A"),
        ("Response 2 is better", "B"),
        ("Response B is better than the first response", "B"),
        ("Both responses are fine.", None),
        ("Neither", None),
        ("I cannot decide.", None),
        ("", None),
        (None, None),
        ("Absolutely.", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_prompt_holds_the_conversation_both_responses_and_the_capability():
    messages = build_messages(TURNS, "resp one", "resp two", Capability("code_style", "PEP 8"))
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    user = messages[1]["content"]
    for part in (
        "User: Write a function.",
        "[Response A]\nresp one",
        "[Response B]\nresp two",
        "code style: PEP 8",
    ):
        assert part in user
    assert user.endswith("Answer with exactly one letter, A or B.")
    assert user.index("resp one") < user.index("resp two")
    short = shorten("x" * 100 + "y" * 100, 30)
    assert short.startswith("x" * 20) and short.endswith("y" * 10) and "170 characters omitted" in short


async def test_answer_text_and_request_shape(fake_api):
    fake_api.answer = lambda body: Reply(body=completion("Response B"))
    async with judge_for(fake_api, api_key="sk-test", use_logprobs=False) as judge:
        assert await judge.compare(TURNS, "first", "second", CAP) == "B"
    path, headers, body = fake_api.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "fake-judge" and body["temperature"] == 0 and body["max_tokens"] == 8
    assert "logprobs" not in body
    assert body["messages"] == build_messages(TURNS, "first", "second", CAP)
    assert judge.stats["verdict_text"] == 1


async def test_api_key_from_environment(fake_api, monkeypatch):
    monkeypatch.setenv("MOERM_JUDGE_API_KEY", "sk-env")
    async with judge_for(fake_api) as judge:
        await judge.compare(TURNS, "a", "b", CAP)
    assert fake_api.requests[0][1]["Authorization"] == "Bearer sk-env"


async def test_unparseable_answer_abstains(fake_api):
    fake_api.answer = lambda body: Reply(body=completion("Hmm, hard to say."))
    async with judge_for(fake_api) as judge:
        assert await judge.compare(TURNS, "a", "b", CAP) is None
    assert judge.stats["verdict_unparsed"] == 1


async def test_retries_after_500_and_429(fake_api):
    fake_api.queue = [
        Reply(500, {"error": {"message": "overloaded"}}),
        Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
        Reply(503, b"<html>bad gateway</html>"),
        Reply(200, b"not json"),
    ]
    fake_api.answer = lambda body: Reply(body=completion("B"))
    async with judge_for(fake_api) as judge:
        assert await judge.compare(TURNS, "a", "b", CAP) == "B"
    assert fake_api.count == 5
    assert judge.stats["retries"] == 4 and judge.stats["requests"] == 5


async def test_gives_up_after_max_retries(fake_api):
    fake_api.answer = lambda body: Reply(500, {"error": {"message": "down"}})
    async with judge_for(fake_api, max_retries=2) as judge:
        with pytest.raises(JudgeError, match="gave up after 3 attempts: HTTP 500") as error:
            await judge.compare(TURNS, "a", "b", CAP)
    assert error.value.status == 500
    assert fake_api.count == 3


async def test_client_errors_are_not_retried(fake_api):
    fake_api.answer = lambda body: Reply(401, {"error": {"message": "bad key"}})
    async with judge_for(fake_api, use_logprobs=False) as judge:
        with pytest.raises(JudgeError, match="HTTP 401.*bad key"):
            await judge.compare(TURNS, "a", "b", CAP)
    assert fake_api.count == 1


async def test_endpoint_rejecting_logprobs_is_asked_without(fake_api):
    def answer(body):
        if "logprobs" in body:
            return Reply(400, {"error": {"message": "logprobs are not supported for this model"}})
        return Reply(body=completion("A"))

    fake_api.answer = answer
    async with judge_for(fake_api) as judge:
        assert await judge.compare(TURNS, "a", "b", CAP) == "A"
        assert await judge.compare(TURNS, "c", "d", CAP) == "A"
    assert ["logprobs" in body for _, _, body in fake_api.requests] == [True, False, False]


async def test_connection_errors_are_retried_then_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_base_s=0.01, timeout_s=2)
    async with judge:
        with pytest.raises(JudgeError, match="gave up after 3 attempts") as error:
            await judge.compare(TURNS, "a", "b", CAP)
    assert error.value.status is None and judge.stats["requests"] == 3


async def test_disk_cache_second_run_makes_no_requests(fake_api, tmp_path):
    fake_api.answer = lambda body: Reply(
        body=completion("A" if "[Response A]\ngood" in body["messages"][1]["content"] else "B")
    )
    pairs = [make_pair(i) for i in range(3)]
    caps = {"code": (Capability("correctness"), Capability("readability"))}
    cache = tmp_path / "cache.jsonl"

    async with judge_for(fake_api, cache_path=cache) as judge:
        first_labels, first_stats = await label_pairs(pairs, caps, judge, progress=False)
    assert fake_api.count == 12 and len(cache.read_text().splitlines()) == 12
    assert len(first_labels) == 6 and all(label.chosen_better for label in first_labels)

    async with judge_for(fake_api, cache_path=cache) as judge:
        labels, stats = await label_pairs(pairs, caps, judge, progress=False)
    assert fake_api.count == 12  # nothing new
    assert judge.stats["cache_hits"] == 12 and judge.stats["requests"] == 0
    assert labels == first_labels and stats.by_capability == first_stats.by_capability

    # A torn last line (a killed run) is skipped; only that request is sent again.
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    async with judge_for(fake_api, cache_path=cache) as judge:
        await label_pairs(pairs, caps, judge, progress=False)
    assert fake_api.count == 13


async def test_identical_requests_in_flight_are_sent_once(fake_api):
    async with judge_for(fake_api) as judge:
        verdicts = await asyncio.gather(*[judge.compare(TURNS, "a", "b", CAP) for _ in range(4)])
    assert verdicts == ["A"] * 4 and fake_api.count == 1


async def test_rate_limit_spaces_requests(fake_api):
    n, rate = 6, 20.0
    async with judge_for(fake_api, requests_per_second=rate, max_concurrency=n) as judge:
        started = time.monotonic()
        await asyncio.gather(*[judge.compare(TURNS, f"a{i}", "b", CAP) for i in range(n)])
        elapsed = time.monotonic() - started
    assert fake_api.count == n
    assert (n - 1) / rate - 0.02 <= elapsed < 3.0


async def test_token_bucket_burst():
    bucket = TokenBucket(rate=10.0, burst=3)
    started = time.monotonic()
    for _ in range(5):
        await bucket.acquire()
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 1.0  # 3 at once, then 2 at 0.1 s each


def top(*pairs):
    return [{"token": token, "logprob": logprob} for token, logprob in pairs]


async def test_logprobs_are_preferred_over_the_text(fake_api):
    # The text says A, but B is the more likely first token.
    first = {"token": "A", "logprob": -0.9, "top_logprobs": top(("A", -0.9), (" B", -0.5), ("The", -3.0))}
    fake_api.answer = lambda body: Reply(body=completion("A", [first]))
    async with judge_for(fake_api) as judge:
        assert await judge.compare(TURNS, "a", "b", CAP) == "B"
    body = fake_api.requests[0][2]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert judge.stats["verdict_logprobs"] == 1


async def test_no_letter_in_logprobs_falls_back_to_text(fake_api):
    first = {"token": "The", "logprob": -0.1, "top_logprobs": top(("The", -0.1), ("I", -2.0))}
    fake_api.answer = lambda body: Reply(body=completion("The better one is Response B.", [first]))
    async with judge_for(fake_api) as judge:
        assert await judge.compare(TURNS, "a", "b", CAP) == "B"
    assert judge.stats["verdict_text"] == 1


def test_verdict_from_logprobs_positions():
    # "**A**": the letter is decided at the second token.
    content = [
        {"token": "**", "logprob": -0.1, "top_logprobs": top(("**", -0.1), ("A", -2.5))},
        {"token": "A", "logprob": -0.7, "top_logprobs": top(("A", -0.7), ("B", -0.71))},
    ]
    assert verdict_from_logprobs({"content": content}) == "A"
    # "Response B": a lead word, then the letter; a letter missing from the top list is less likely.
    response_b = [
        {"token": "Response", "logprob": -0.2, "top_logprobs": top(("Response", -0.2))},
        {"token": " B", "logprob": -0.1, "top_logprobs": top((" B", -0.1), ("C", -4.0))},
    ]
    assert verdict_from_logprobs({"content": response_b}) == "B"
    # Prose first: a first-token "A" is the article, so the text decides.
    prose = [
        {"token": "The", "logprob": -1.2, "top_logprobs": top(("The", -1.2), ("A", -3.0))},
        {"token": " second", "logprob": -0.5, "top_logprobs": top((" second", -0.5))},
    ]
    assert verdict_from_logprobs({"content": prose}) is None
    assert verdict_from_logprobs({"content": content[:1]}) is None  # no letter generated
    equal = [{"token": "A", "logprob": -0.69, "top_logprobs": top(("A", -0.69), ("B", -0.69))}]
    assert verdict_from_logprobs({"content": equal}) is None
    assert verdict_from_logprobs(None) is None and verdict_from_logprobs({"content": []}) is None


async def test_cache_file_is_json_lines_keyed_by_body_hash(fake_api, tmp_path):
    cache = tmp_path / "c.jsonl"
    async with judge_for(fake_api, cache_path=cache) as judge:
        await judge.compare(TURNS, "a", "b", CAP)
        body = judge.request_body(TURNS, "a", "b", CAP)
    row = json.loads(cache.read_text())
    import hashlib

    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert row["key"] == expected and row["response"]["choices"][0]["message"]["content"] == "A"
