"""Python clients of ``moerm.v1.RewardService``: :class:`RewardClient` (sync)
and :class:`AsyncRewardClient` (asyncio).

Both split large item lists into batches, give each call the remaining part
of one overall deadline, and retry UNAVAILABLE and RESOURCE_EXHAUSTED with
exponential backoff. Bad input is never retried: it raises ``grpc.RpcError``
with INVALID_ARGUMENT; :func:`moerm.errors.field_violations` says which field.

``feedback`` reports a raw reward per scored item id so that the bandit policies
learn; retrying it is safe (the router applies each item once). Feedback names the
Score call that scored each item (its ``request_id``, a secret of that call): the
client remembers the request_id of the last ``remember_ids`` ids it scored and adds
it, or the caller passes ``(id, reward, request_id)`` triples (an id the client did not
score comes back ``not_found``).

Several router replicas: give several addresses (each call goes to the next one,
a retry to another), or one ``dns:///`` name that resolves to every replica (its
addresses are balanced round-robin). ``token`` is sent as ``authorization: Bearer
<token>`` (a ``score`` token for Score, ``feedback`` for Feedback); ``credentials``
(:func:`moerm.security.channel_credentials`) turns TLS on, ``server_name``
overrides the name the router's certificate must carry; :func:`connection_from_env`
reads all three from ``MOERM_*`` variables (the trainer adapters use it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from moerm.security import SecurityConfigError, TlsFiles, channel_credentials
from moerm.v1 import reward_pb2, reward_pb2_grpc, tensor_pb2

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
ItemLike = Mapping[str, Any] | tuple[str, str] | reward_pb2.ScoreItem
FeedbackLike = Mapping[str, float] | Iterable[tuple[str, float] | tuple[str, float, str]]
Request = reward_pb2.ScoreRequest | reward_pb2.FeedbackRequest


@dataclass(frozen=True)
class Reward:
    reward: float
    task: str
    route_confidence: float
    reward_models: tuple[str, ...]
    bundle_version: str
    cached: bool
    id: str = ""
    capabilities: dict[str, float] = field(default_factory=dict)
    policy: str = ""
    member_rewards: dict[str, float] = field(default_factory=dict)
    request_id: str = ""  # of the Score call; Feedback for this item names it

    @classmethod
    def from_proto(cls, result: reward_pb2.ScoreResult, request_id: str = "") -> Reward:
        return cls(
            request_id=request_id,
            reward=result.reward,
            task=result.task,
            route_confidence=result.route_confidence,
            reward_models=tuple(result.reward_models),
            bundle_version=result.bundle_version,
            cached=result.cached,
            id=result.id,
            capabilities=dict(result.capabilities),
            policy=result.policy,
            member_rewards=dict(result.member_rewards),
        )


def _outcome_name(outcome: int) -> str:
    """FEEDBACK_OUTCOME_APPLIED -> "applied"."""
    return reward_pb2.FeedbackOutcome.Name(outcome).removeprefix("FEEDBACK_OUTCOME_").lower()


# The form of a request_id that no Score call has (the router's are random version-4
# UUIDs): ids the client did not score go with it and come back not_found.
NO_CALL = "0" * 32


class ScoredIds:
    """The request_id of the last ``limit`` item ids a client scored (the latest call
    wins for an id scored twice)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._ids: OrderedDict[str, str] = OrderedDict()

    def add(self, response: reward_pb2.ScoreResponse) -> None:
        if self.limit <= 0 or not response.request_id:
            return
        for result in response.results:
            if result.id:
                self._ids[result.id] = response.request_id
                self._ids.move_to_end(result.id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def get(self, item_id: str) -> str:
        return self._ids.get(item_id, "")


def _feedback_requests(
    rewards: FeedbackLike, batch: int, scored: ScoredIds
) -> list[reward_pb2.FeedbackRequest]:
    rows = list(rewards.items() if isinstance(rewards, Mapping) else rewards)
    items = [
        reward_pb2.FeedbackItem(
            id=str(row[0]),
            reward=float(row[1]),
            request_id=str(row[2]) if len(row) > 2 else scored.get(str(row[0])) or NO_CALL,
        )
        for row in rows
    ]
    return [reward_pb2.FeedbackRequest(items=items[i : i + batch]) for i in range(0, len(items), batch)]


def _feedback_outcomes(
    requests: Sequence[reward_pb2.FeedbackRequest],
    replies: Sequence[reward_pb2.FeedbackResponse | grpc.RpcError],
) -> dict[str, str]:
    """id -> outcome over all batches. A batch answered NOT_FOUND counts as not_found
    per id; when every batch was, the first NOT_FOUND error is raised."""
    outcomes: dict[str, str] = {}
    for request, reply in zip(requests, replies, strict=True):
        if isinstance(reply, grpc.RpcError):
            outcomes.update((item.id, "not_found") for item in request.items)
        else:
            outcomes.update((r.id, _outcome_name(r.outcome)) for r in reply.results)
    errors = [reply for reply in replies if isinstance(reply, grpc.RpcError)]
    if errors and len(errors) == len(replies):
        raise errors[0]
    return outcomes


def to_item(item: ItemLike) -> reward_pb2.ScoreItem:
    """A ScoreItem from a ScoreItem, a ``(prompt, response)`` pair, or a dict
    with ``prompt`` or ``messages`` (role/content dicts), ``response``, ``id``."""
    if isinstance(item, reward_pb2.ScoreItem):
        return item
    if isinstance(item, tuple):
        prompt, response = item
        return reward_pb2.ScoreItem(prompt=prompt, response=response)
    messages = [tensor_pb2.Message(role=m["role"], content=m["content"]) for m in item.get("messages", ())]
    return reward_pb2.ScoreItem(
        id=str(item.get("id", "")),
        prompt=item.get("prompt", ""),
        messages=messages,
        response=item.get("response", ""),
    )


def _requests(items: Sequence[ItemLike], batch: int, **options: Any) -> list[reward_pb2.ScoreRequest]:
    converted = [to_item(i) for i in items]
    return [
        reward_pb2.ScoreRequest(items=converted[i : i + batch], **options)
        for i in range(0, len(converted), batch)
    ]


def _options(breakdown: bool, policy: str, reward_model: str) -> dict[str, Any]:
    return {"return_breakdown": breakdown, "policy": policy, "reward_model": reward_model}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def delay(self, attempt: int) -> float:
        """Jittered exponential backoff before retry ``attempt`` (1-based)."""
        return random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))


async def call_with_retries(attempt, retry: RetryPolicy, deadline: float):
    """``await attempt(timeout)`` until it answers, retrying UNAVAILABLE and
    RESOURCE_EXHAUSTED with ``retry``'s backoff while ``deadline`` (monotonic) allows."""
    for number in range(1, retry.attempts + 1):
        try:
            return await attempt(max(deadline - time.monotonic(), 0.001))
        except grpc.aio.AioRpcError as error:
            pause = retry.delay(number)
            if (
                error.code() not in RETRYABLE
                or number == retry.attempts
                or time.monotonic() + pause >= deadline
            ):
                raise
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A dns:/// name of several router replicas: spread calls over all of them.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]


def _addresses(address: str | Sequence[str]) -> list[str]:
    addresses = [address] if isinstance(address, str) else list(address)
    if not addresses or not all(addresses):
        raise ValueError("RewardClient needs at least one router address")
    return addresses


def channel_options(server_name: str) -> list[tuple[str, Any]]:
    """:data:`CHANNEL_OPTIONS`, and the name the router's certificate must carry when given."""
    return CHANNEL_OPTIONS + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])


def auth_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """The call metadata carrying ``token`` (None without one)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def connection_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client keywords ``token``, ``credentials`` and ``server_name`` from the environment
    (default ``os.environ``): the bearer token from ``MOERM_TOKEN``, or the first word of
    the file ``MOERM_TOKEN_FILE`` names; TLS to the router when ``MOERM_ROUTER_TLS`` is 1
    (the system's CAs) or ``MOERM_ROUTER_TLS_CA`` names a PEM CA, with
    ``MOERM_ROUTER_TLS_CERT`` / ``MOERM_ROUTER_TLS_KEY`` for mutual TLS and
    ``MOERM_ROUTER_TLS_SERVER_NAME`` for the name its certificate carries. Raises
    ValueError naming a variable or file that cannot be used (never the token)."""
    env = os.environ if environ is None else environ
    token = env.get("MOERM_TOKEN", "").strip()
    if not token and env.get("MOERM_TOKEN_FILE"):
        path = env["MOERM_TOKEN_FILE"]
        try:
            token = Path(path).read_text(encoding="utf-8").split()[0]
        except (OSError, IndexError) as error:
            raise ValueError(f"MOERM_TOKEN_FILE {path}: no token ({type(error).__name__})") from None
    files = TlsFiles(
        env.get("MOERM_ROUTER_TLS_CERT", ""),
        env.get("MOERM_ROUTER_TLS_KEY", ""),
        env.get("MOERM_ROUTER_TLS_CA", ""),
    )
    credentials = None
    if env.get("MOERM_ROUTER_TLS", "") in ("1", "true") or files.enabled:
        try:
            files.check("MOERM_ROUTER_TLS_*", server=False)
            credentials = channel_credentials(files)
        except SecurityConfigError as error:
            raise ValueError(str(error)) from None
    return {
        "token": token,
        "credentials": credentials,
        "server_name": env.get("MOERM_ROUTER_TLS_SERVER_NAME", ""),
    }


class RewardClient:
    """Blocking client. ``address`` is ``host:port`` (or any gRPC target), or a list
    of them (router replicas, used in turn)."""

    def __init__(
        self,
        address: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        batch_size: int = 256,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        remember_ids: int = 1_000_000,
        token: str = "",
        server_name: str = "",
    ):
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.retry = retry or RetryPolicy()
        self.scored = ScoredIds(remember_ids)
        self._metadata = auth_metadata(token)
        options = channel_options(server_name)
        self._channels = [
            grpc.insecure_channel(a, options=options)
            if credentials is None
            else grpc.secure_channel(a, credentials, options=options)
            for a in _addresses(address)
        ]
        self._stubs = [reward_pb2_grpc.RewardServiceStub(channel) for channel in self._channels]
        self._turn = itertools.cycle(range(len(self._stubs)))

    def _call(self, request: Request, deadline: float, method: str = "Score"):
        for attempt in range(1, self.retry.attempts + 1):
            remaining = deadline - time.monotonic()
            stub = self._stubs[next(self._turn)]
            try:
                return getattr(stub, method)(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as error:
                pause = self.retry.delay(attempt)
                if (
                    error.code() not in RETRYABLE
                    or attempt == self.retry.attempts
                    or time.monotonic() + pause >= deadline
                ):
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def score(
        self,
        items: Iterable[ItemLike],
        *,
        breakdown: bool = False,
        policy: str = "",
        reward_model: str = "",
        timeout_s: float | None = None,
    ) -> list[Reward]:
        """One :class:`Reward` per item, in order."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        out: list[Reward] = []
        for request in _requests(list(items), self.batch_size, **_options(breakdown, policy, reward_model)):
            response = self._call(request, deadline)
            self.scored.add(response)
            out.extend(Reward.from_proto(r, response.request_id) for r in response.results)
        return out

    def feedback(self, rewards: FeedbackLike, *, timeout_s: float | None = None) -> dict[str, str]:
        """Report a raw reward per scored item: ``{id: reward}``, ``(id, reward)`` pairs
        (the request_id of the client's last Score of that id is added) or ``(id,
        reward, request_id)`` triples; ids as Score returned them (:attr:`Reward.id`).

        Returns id -> "applied", "duplicate", "not_found" or "no_arm". Batches of
        ``batch_size`` are separate calls (the router's batch baseline is per call).
        Raises ``grpc.RpcError``: INVALID_ARGUMENT for an empty id or a non-finite
        reward, NOT_FOUND when no id is known.
        """
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        requests = _feedback_requests(rewards, self.batch_size, self.scored)
        replies: list = []
        for request in requests:
            try:
                replies.append(self._call(request, deadline, "Feedback"))
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                replies.append(error)
        return _feedback_outcomes(requests, replies)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient:
    """asyncio client; batches of one call run concurrently (``concurrency``).
    Addresses, token and TLS as :class:`RewardClient`."""

    def __init__(
        self,
        address: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        batch_size: int = 256,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        remember_ids: int = 1_000_000,
        token: str = "",
        server_name: str = "",
    ):
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.retry = retry or RetryPolicy()
        self.scored = ScoredIds(remember_ids)
        self._limit = asyncio.Semaphore(concurrency)
        self._metadata = auth_metadata(token)
        options = channel_options(server_name)
        self._channels = [
            grpc.aio.insecure_channel(a, options=options)
            if credentials is None
            else grpc.aio.secure_channel(a, credentials, options=options)
            for a in _addresses(address)
        ]
        self._stubs = [reward_pb2_grpc.RewardServiceStub(channel) for channel in self._channels]
        self._turn = itertools.cycle(range(len(self._stubs)))

    async def _call(self, request: Request, deadline: float, method: str = "Score"):
        def attempt(timeout: float):  # each attempt goes to the next router
            stub = self._stubs[next(self._turn)]
            return getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)

        async with self._limit:
            return await call_with_retries(attempt, self.retry, deadline)

    async def score(
        self,
        items: Iterable[ItemLike],
        *,
        breakdown: bool = False,
        policy: str = "",
        reward_model: str = "",
        timeout_s: float | None = None,
    ) -> list[Reward]:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        requests = _requests(list(items), self.batch_size, **_options(breakdown, policy, reward_model))
        responses = await asyncio.gather(*(self._call(r, deadline) for r in requests))
        for response in responses:
            self.scored.add(response)
        return [Reward.from_proto(r, response.request_id) for response in responses for r in response.results]

    async def _feedback_call(self, request: reward_pb2.FeedbackRequest, deadline: float):
        try:
            return await self._call(request, deadline, "Feedback")
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return error

    async def feedback(self, rewards: FeedbackLike, *, timeout_s: float | None = None) -> dict[str, str]:
        """As :meth:`RewardClient.feedback`; batches run concurrently."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        requests = _feedback_requests(rewards, self.batch_size, self.scored)
        replies = await asyncio.gather(*(self._feedback_call(r, deadline) for r in requests))
        return _feedback_outcomes(requests, replies)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
