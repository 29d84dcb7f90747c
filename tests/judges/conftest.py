"""Test doubles for the judges.

``ScriptedJudge``: a judge whose verdicts a test scripts (a test double, no model).
``FakeChatAPI``: a fake of a hosted LLM API (OpenAI-style chat completions),
which cannot be reached from here: a real stdlib HTTP server on loopback that
answers from a script and counts the requests it gets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from moerm.bundle import Capability
from moerm.data.records import PreferencePair
from moerm.judges.base import Judge, Verdict
from moerm.text import Turn


class ScriptedJudge(Judge):
    """A test double: ``script(response_a, response_b, capability_name)``
    gives the verdict; every call is recorded in ``calls``."""

    def __init__(self, script: Callable[[str, str, str], Verdict], name: str = "scripted"):
        self.script = script
        self.name = name
        self.calls: list[tuple[str, str, str]] = []

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        self.calls.append((response_a, response_b, capability.name))
        return self.script(response_a, response_b, capability.name)


def make_pair(index: int, task: str = "code", tie: bool = False, prompt: str = "") -> PreferencePair:
    return PreferencePair(
        id=f"test:{index}",
        source="test",
        task=task,
        turns=(Turn("user", prompt or f"question {index}"),),
        chosen=f"good-{index}",
        rejected=f"bad-{index}",
        tie=tie,
    )


@dataclass
class Reply:
    """One scripted answer: an HTTP status and a JSON body (or raw bytes)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: str, logprobs: list[dict] | None = None) -> dict:
    """A chat-completions response body as a hosted API sends it."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": {"content": logprobs} if logprobs is not None else None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


class FakeChatAPI:
    """A fake of a hosted LLM API. ``queue`` holds replies served first (in
    order, one per request); after that ``answer(request_body) -> Reply`` is
    asked (default: "A"). ``requests`` records (path, headers, body)."""

    def __init__(self) -> None:
        self.queue: list[Reply] = []
        self.answer: Callable[[dict], Reply] = lambda body: Reply(body=completion("A"))
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                with fake._lock:
                    fake.requests.append((self.path, dict(self.headers), body))
                    reply = fake.queue.pop(0) if fake.queue else None
                if reply is None:
                    reply = fake.answer(body)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeChatAPI]:
    api = FakeChatAPI()
    yield api
    api.close()
