"""The real LocalJudgeServer with SmolLM2-135M-Instruct (slow: loads the model
and generates on the CPU)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from moerm.judges.base import label_pairs
from moerm.judges.local_server import LocalJudgeServer, parse_request
from moerm.judges.openai_judge import OpenAIJudge
from tests.judges.measure_autoj import AUTOJ_CAPABILITIES, autoj_file, load_autoj_pairs, sample_pairs


def test_parse_request_checks_fields():
    settings = parse_request(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "temperature": 0}
    )
    assert settings["messages"] == [{"role": "user", "content": "hi"}]
    assert settings["max_tokens"] == 256 and settings["temperature"] == 0 and not settings["logprobs"]
    for bad, param in [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 5}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ]:
        with pytest.raises(Exception) as error:
            parse_request(bad)
        assert getattr(error.value, "param", None) == param and error.value.status == 400


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server() -> Iterator[LocalJudgeServer]:
    with LocalJudgeServer("smollm2") as running:
        yield running


@pytest.mark.slow
def test_chat_completion_answers(server):
    status, body = post(
        server.base_url + "/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 5,
        },
    )
    assert status == 200
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= 12 and len(content[0]["top_logprobs"]) == 5
    assert content[0]["top_logprobs"][0]["logprob"] >= content[0]["top_logprobs"][-1]["logprob"]
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )

    # Greedy is deterministic.
    again = post(
        server.base_url + "/chat/completions",
        {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12,
            "temperature": 0,
        },
    )
    assert again[0] == 200 and again[1]["choices"][0]["message"]["content"] == choice["message"]["content"]

    with urllib.request.urlopen(server.base_url + "/models", timeout=10) as reply:
        models = json.loads(reply.read())
    assert models["data"][0]["id"] == server.model_name == "smollm2"

    status, error = post(server.base_url + "/chat/completions", {"messages": "hi"})
    assert status == 400 and error["error"]["param"] == "messages"
    status, error = post(
        server.base_url + "/chat/completions",
        {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 10},
    )
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"


@pytest.mark.slow
async def test_judge_run_on_real_autoj_pairs(server, tmp_path):
    path = autoj_file()
    if path is None:
        pytest.skip("Auto-J data not found: set $MOERM_DATA_DIR or put it in <repo>/../shared/data")
    pairs = sample_pairs(load_autoj_pairs(path), 5, seed=1)
    caps = {task: caps[:1] for task, caps in AUTOJ_CAPABILITIES.items()}
    judge = OpenAIJudge(
        server.base_url,
        server.model_name,
        api_key="",
        max_tokens=16,
        max_chars_per_text=1500,
        timeout_s=300,
        cache_path=tmp_path / "cache.jsonl",
    )
    async with judge:
        labels, stats = await label_pairs(pairs, caps, judge, concurrency=2, progress=False)
    total = stats.total
    assert total.asked == 5 and judge.stats["requests"] == 10
    assert len(labels) == total.consistent <= total.answered <= 5
    print("\n" + stats.to_markdown() + f"\n{dict(judge.stats)}")  # measured, not asserted: the judge is weak
