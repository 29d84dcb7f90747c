"""A judge behind any OpenAI-compatible chat-completions endpoint.

Stdlib only: ``urllib.request`` on a private thread pool, awaited from
asyncio. Each request is retried with exponential backoff on 429, 5xx and
connection errors (``Retry-After`` is honoured), paced by a token bucket, and
its answer is kept in an append-only JSONL cache keyed by the sha256 of the
request body, so a rerun sends nothing for what was already answered.

The verdict comes from the log-probabilities when the server returns them
and the answer starts with its letter (logprob of "A" against logprob of "B"
at that token), else from the answer text (:func:`parse_verdict`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from moerm.bundle import Capability
from moerm.judges.base import Judge, Verdict
from moerm.judges.prompts import build_messages
from moerm.text import Turn

log = logging.getLogger(__name__)

API_KEY_ENV = ("MOERM_JUDGE_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx


class JudgeError(RuntimeError):
    """A request the judge could not complete (``status``: the last HTTP
    status, None for connection errors)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# --- parsing ---------------------------------------------------------------------------------------

_NONE = re.compile(r"^\W*(?i:neither|both|tie|equal|none|cannot|can't)\b")
_EXACT = re.compile(r"^[\W_]*(?:(?i:response|answer|option|output)\s*)?\(?([ABab])\)?[\W_]*$")
_NAMED = re.compile(
    r"(?i:\b(?:response|answer|assistant|option|output|choice|verdict)\b)\s*(?:is\s*)?[:\-]?\s*"
    r"[\"'*(\[]*([AB])(?![A-Za-z0-9])"
)
_ORDINAL = re.compile(
    r"(?i:\b(?:(first|second)\s+(?:response|answer|one|assistant)\b|(?:response|answer|assistant)\s*#?\s*([12])\b))"
)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([AB])(?![A-Za-z0-9'])")
# After a standalone "A", these words mean the letter, not the article ("A is better").
_LETTER_VERBS = frozenset(
    "is was wins seems has does gives provides answers addresses follows offers better because".split()
)
_NEXT_WORD = re.compile(r"\s+([a-z]+)")


def parse_verdict(text: str | None) -> Verdict:
    """The verdict in a judge's answer text: "A", "B" or None.

    In order: a bare letter ("B", "(A)", "**A**.", "b"); the earliest named
    letter or ordinal ("Response B", "Answer: A", "the better response is
    B", "the second response", "Response 1"); the first standalone capital A
    or B, where "A" followed by a lower-case word is taken for the article
    unless the word is a verb like "is" ("A is better"). Answers that start
    with neither / both / tie are None.
    """
    if not text:
        return None
    text = text.strip()
    if _NONE.match(text):
        return None
    if match := _EXACT.match(text):
        return match.group(1).upper()  # type: ignore[return-value]
    named, ordinal = _NAMED.search(text), _ORDINAL.search(text)
    if named and (not ordinal or named.start() <= ordinal.start()):
        return named.group(1)  # type: ignore[return-value]
    if ordinal:
        word = (ordinal.group(1) or ordinal.group(2)).lower()
        return "A" if word in ("first", "1") else "B"
    for match in _STANDALONE.finditer(text):
        letter = match.group(1)
        if letter == "A":
            following = _NEXT_WORD.match(text, match.end())
            if following and following.group(1) not in _LETTER_VERBS:
                continue
        return letter  # type: ignore[return-value]
    return None


def _letter(token: str) -> str | None:
    stripped = token.strip(" \t\n*\"'`()[]:.,")
    return stripped if stripped in ("A", "B") else None


def _compare_letters(position: dict) -> Verdict:
    """A vs B by log-probability among a position's candidates (the token
    generated and its top_logprobs). A letter missing from the top list is
    less likely than every listed one."""
    best: dict[str, float] = {}
    candidates = list(position.get("top_logprobs") or [])
    if "token" in position and "logprob" in position:
        candidates.append({"token": position["token"], "logprob": position["logprob"]})
    for candidate in candidates:
        letter = _letter(str(candidate.get("token", "")))
        logprob = candidate.get("logprob")
        if letter is None or not isinstance(logprob, int | float):
            continue
        best[letter] = max(best.get(letter, -float("inf")), float(logprob))
    if not best:
        return None
    a, b = best.get("A", -float("inf")), best.get("B", -float("inf"))
    if a == b:
        return None
    return "A" if a > b else "B"


# Tokens that may come before the letter of an answer that starts with it ("**A**", "Response B").
_LEAD_WORDS = frozenset({"", "response", "answer", "option", "choice", "verdict", "output"})


def verdict_from_logprobs(logprobs: Any) -> Verdict:
    """The verdict from a choice's ``logprobs`` (``{"content": [{token,
    logprob, top_logprobs}, ...]}``) when the answer starts with its letter:
    A against B at the first generated token that is a letter, provided only
    formatting ("**", "(") or a word like "Response" comes before it. None
    otherwise: an answer that starts with prose ("The second response ...")
    is read from its text, since a first-token "A" there is the article."""
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if not isinstance(content, list):
        return None
    for position in content:
        if not isinstance(position, dict):
            return None
        token = str(position.get("token", ""))
        if _letter(token):
            return _compare_letters(position)
        if token.strip(" \t\n*\"'`()[]:.,#").lower() not in _LEAD_WORDS:
            return None
    return None


def verdict_from_response(response: dict) -> tuple[Verdict, str]:
    """(verdict, how): how is "logprobs", "text" or "unparsed"."""
    choice = response["choices"][0]
    verdict = verdict_from_logprobs(choice.get("logprobs"))
    if verdict is not None:
        return verdict, "logprobs"
    verdict = parse_verdict((choice.get("message") or {}).get("content"))
    return verdict, "text" if verdict is not None else "unparsed"


# --- pacing and caching ----------------------------------------------------------------------------


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float = 1.0):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class ResponseCache:
    """Append-only JSONL: one ``{"key", "response"}`` line per answered
    request. A torn last line (a killed run) is ignored when read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries: dict[str, dict] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                        self._entries[row["key"]] = row["response"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def put(self, key: str, response: dict) -> None:
        self._entries[key] = response
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n")


def request_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the judge -------------------------------------------------------------------------------------


class OpenAIJudge(Judge):
    """Asks a chat model behind ``{base_url}/chat/completions``.

    ``base_url`` includes the version prefix (``https://api.openai.com/v1``,
    ``http://127.0.0.1:8000/v1``). ``api_key`` defaults to
    $MOERM_JUDGE_API_KEY, then $OPENAI_API_KEY; without one no
    Authorization header is sent. ``requests_per_second`` None: no pacing.
    ``stats`` counts requests, retries, cache hits and how verdicts were read.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        requests_per_second: float | None = None,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        cache_path: str | Path | None = None,
        max_tokens: int = 8,
        use_logprobs: bool = True,
        top_logprobs: int = 20,
        max_chars_per_text: int | None = 6000,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        name: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = name or f"openai:{model}"
        if api_key is None:
            api_key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self._api_key = api_key
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.use_logprobs = use_logprobs
        self.top_logprobs = top_logprobs
        self.max_chars_per_text = max_chars_per_text
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.stats: Counter[str] = Counter()
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self._bucket = TokenBucket(requests_per_second) if requests_per_second else None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, max_concurrency), thread_name_prefix="judge-http"
        )
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)
        self._in_flight: dict[str, asyncio.Future] = {}

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def request_body(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(
                turns, response_a, response_b, capability, max_chars_per_text=self.max_chars_per_text
            ),
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        if self.use_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    async def compare(
        self, turns: tuple[Turn, ...], response_a: str, response_b: str, capability: Capability
    ) -> Verdict:
        body = self.request_body(turns, response_a, response_b, capability)
        try:
            response = await self.complete(body)
        except JudgeError as error:
            if error.status != 400 or "logprobs" not in body:
                raise
            # Some endpoints reject logprobs: ask again without, and stop asking for them.
            log.warning("%s rejected a request with logprobs (%s); retrying without", self.url, error)
            self.use_logprobs = False
            body = self.request_body(turns, response_a, response_b, capability)
            response = await self.complete(body)
        verdict, how = verdict_from_response(response)
        self.stats[f"verdict_{how}"] += 1
        return verdict

    async def complete(self, body: dict) -> dict:
        """The response JSON for a chat-completions request body: from the
        cache, from an identical request in flight, or from the server."""
        key = request_key(body)
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            self.stats["cache_hits"] += 1
            return cached
        if key in self._in_flight:
            self.stats["deduplicated"] += 1
            return await asyncio.shield(self._in_flight[key])
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            response = await self._send(body)
            if self.cache is not None:
                self.cache.put(key, response)
            future.set_result(response)
            return response
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._in_flight[key]

    def _post(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers or {}), error.read()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * random.uniform(1.0, 1.25)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    async def _send(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        loop = asyncio.get_running_loop()
        async with self._semaphore:
            for attempt in range(self.max_retries + 1):
                if self._bucket is not None:
                    await self._bucket.acquire()
                self.stats["requests"] += 1
                status: int | None = None
                retry_after: float | None = None
                try:
                    status, headers, raw = await loop.run_in_executor(self._executor, self._post, data)
                except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets
                    failure = f"{type(error).__name__}: {error}"
                else:
                    text = raw.decode("utf-8", "replace")
                    if status == 200:
                        try:
                            response = json.loads(text)
                            response["choices"][0]
                            return response
                        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                            failure = f"malformed response: {text[:300]!r}"
                    elif status in RETRY_STATUS or status >= 500:
                        failure = f"HTTP {status}: {text[:300]}"
                        retry_after = _retry_after(headers)
                    else:
                        raise JudgeError(f"{self.url}: HTTP {status}: {text[:1000]}", status)
                if attempt == self.max_retries:
                    raise JudgeError(f"{self.url}: gave up after {attempt + 1} attempts: {failure}", status)
                self.stats["retries"] += 1
                delay = self._delay(attempt, retry_after)
                log.info("%s: %s; retry %d in %.2f s", self.url, failure, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _retry_after(headers: dict[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
