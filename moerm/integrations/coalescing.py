"""A client for callers that score one sample at a time, concurrently.

verl calls ``compute_score`` once per sample and OpenRLHF's workers post one request
per batch each; a reward-model call per sample is slow. :class:`CoalescingClient`
collects the items of every call that arrives within ``window_ms`` of the first
(or until ``max_items``) and sends them as one ``Score`` request with per-item
outcomes (``ScoreRequest.per_item_errors``), then hands each caller its own results.

The client runs its gRPC channel on an event loop of its own, in a daemon thread,
so it serves asyncio callers on any loop (``await client.score(...)``), threads
(``client.score_sync(...)``) and both at once; calls from all of them coalesce.

A router that asks for a bearer token or speaks TLS is reached as with
:class:`moerm.client.RewardClient`: ``token``, ``credentials``, ``server_name``
(:func:`moerm.client.connection_from_env` reads them from ``MOERM_*`` variables).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import grpc

from moerm.client import (
    NO_CALL,
    ItemLike,
    RetryPolicy,
    ScoredIds,
    auth_metadata,
    call_with_retries,
    channel_options,
    to_item,
)
from moerm.v1 import reward_pb2, reward_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """One item's result: ``reward`` is None when it was not scored, and then ``error``
    says why (``code`` a grpc.StatusCode name, ``field`` the item's field at fault)."""

    reward: float | None
    id: str = ""
    truncated: bool = False
    cached: bool = False
    task: str = ""
    reward_models: tuple[str, ...] = ()
    capabilities: dict[str, float] = field(default_factory=dict)
    code: str = "OK"
    field: str = ""
    error: str = ""
    request_id: str = ""  # of the Score call; Feedback for this item names it

    @property
    def ok(self) -> bool:
        return self.reward is not None

    @classmethod
    def from_proto(cls, result: reward_pb2.ScoreResult, request_id: str = "") -> Outcome:
        if result.HasField("error"):
            return cls(
                reward=None,
                id=result.id,
                request_id=request_id,
                code=grpc.StatusCode(_status(result.error.code)).name,
                field=result.error.field,
                error=result.error.description,
            )
        return cls(
            reward=result.reward,
            id=result.id,
            request_id=request_id,
            truncated=result.truncated,
            cached=result.cached,
            task=result.task,
            reward_models=tuple(result.reward_models),
            capabilities=dict(result.capabilities),
        )

    @classmethod
    def failed(cls, error: grpc.RpcError | Exception) -> Outcome:
        """The outcome of an item whose whole request failed (the cluster unreachable)."""
        if isinstance(error, grpc.RpcError):
            return cls(reward=None, code=error.code().name, error=str(error.details())[:1024])
        return cls(reward=None, code="UNKNOWN", error=f"{type(error).__name__}: {error}"[:1024])


def _status(code: int) -> tuple:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.value
    return grpc.StatusCode.UNKNOWN.value


@dataclass
class _Pending:
    items: list[reward_pb2.ScoreItem]
    future: asyncio.Future
    results: list[Outcome | None] = field(default_factory=list)


@dataclass
class CoalescingStats:
    calls: int = 0  # score() calls
    items: int = 0
    requests: int = 0  # Score requests sent (retries not counted)


class CoalescingClient:
    """``address``: the router (``host:port``). ``policy`` / ``reward_model`` as in
    ``ScoreRequest``; ``window_ms``: how long the first call of a batch waits for
    company; ``max_items``: a batch is sent as soon as it holds this many items (keep
    it at most the router's ``--max-items``). ``raise_errors``: when a whole request
    fails (cluster down past the retries), raise to the callers instead of returning
    failed outcomes. ``token``: sent as ``authorization: Bearer <token>`` (scope
    ``score``, and ``feedback`` for :meth:`feedback`); ``credentials``
    (:func:`moerm.security.channel_credentials`): TLS; ``server_name``: the name the
    router's certificate must carry ('' = the address's host)."""

    def __init__(
        self,
        address: str,
        *,
        policy: str = "",
        reward_model: str = "",
        window_ms: float = 5.0,
        max_items: int = 256,
        timeout_s: float = 180.0,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str = "",
        server_name: str = "",
        raise_errors: bool = False,
    ):
        self.address = address
        self.policy = policy
        self.reward_model = reward_model
        self.window_s = window_ms / 1000
        self.max_items = max_items
        self.scored = ScoredIds(1_000_000)  # id -> request_id of the Score call, for Feedback
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.raise_errors = raise_errors
        self.stats = CoalescingStats()
        self._credentials = credentials
        self._options = channel_options(server_name)
        self._metadata = auth_metadata(token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moerm-coalescing", daemon=True)
        self._thread.start()
        self._queue: list[_Pending] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._channel = None
        self._stub = None
        self._closed = False
        self._run(self._open())

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _open(self) -> None:
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(self.address, self._credentials, options=self._options)
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    # -- scoring ---------------------------------------------------------------------

    async def score(self, items: Sequence[ItemLike]) -> list[Outcome]:
        """One :class:`Outcome` per item, in order; from any event loop."""
        future = asyncio.run_coroutine_threadsafe(self._submit(items), self._loop)
        return await asyncio.wrap_future(future)

    def score_sync(self, items: Sequence[ItemLike]) -> list[Outcome]:
        """As :meth:`score`, blocking; from any thread not running this client's loop."""
        return self._run(self._submit(items))

    async def _submit(self, items: Sequence[ItemLike]) -> list[Outcome]:
        if self._closed:
            raise RuntimeError("the client is closed")
        converted = [to_item(item) for item in items]
        if not converted:
            return []
        self.stats.calls += 1
        self.stats.items += len(converted)
        future = self._loop.create_future()
        self._queue.append(_Pending(converted, future, [None] * len(converted)))
        queued = sum(len(p.items) for p in self._queue)
        if queued >= self.max_items:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        """Send what is queued, in requests of at most ``max_items`` items (a call's
        items may span two requests)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._queue = self._queue, []
        if not pending:
            return
        flat = [(p, k) for p in pending for k in range(len(p.items))]
        for start in range(0, len(flat), self.max_items):
            part = flat[start : start + self.max_items]
            self._loop.create_task(self._send(part))

    async def _send(self, part: list[tuple[_Pending, int]]) -> None:
        request = reward_pb2.ScoreRequest(
            items=[p.items[k] for p, k in part],
            policy=self.policy,
            reward_model=self.reward_model,
            per_item_errors=True,
        )
        self.stats.requests += 1
        try:
            response = await self._call(request)
            self.scored.add(response)
            outcomes = [Outcome.from_proto(r, response.request_id) for r in response.results]
            error = None
        except Exception as caught:  # grpc errors, a closed channel
            if not isinstance(caught, grpc.RpcError):
                log.exception("moerm Score request failed")
            outcomes, error = [Outcome.failed(caught)] * len(part), caught
        for j, ((pending, k), outcome) in enumerate(zip(part, outcomes, strict=True)):
            if not outcome.ok and j != k:  # the caller's index, not the merged request's
                outcome = replace(
                    outcome,
                    field=outcome.field.replace(f"items[{j}]", f"items[{k}]"),
                    error=outcome.error.replace(f"items[{j}]", f"items[{k}]"),
                )
            if pending.future.done():
                continue
            if error is not None and self.raise_errors:
                pending.future.set_exception(error)
                continue
            pending.results[k] = outcome
            if all(r is not None for r in pending.results):
                pending.future.set_result(pending.results)

    async def _call(self, request):
        return await call_with_retries(
            lambda timeout: self._stub.Score(request, timeout=timeout, metadata=self._metadata),
            self.retry,
            time.monotonic() + self.timeout_s,
        )

    # -- feedback --------------------------------------------------------------------

    async def feedback(self, rewards: dict[str, float]) -> dict[str, str]:
        """Report a raw reward per scored item id (bandit policies learn from it); each id
        goes with the request_id of the Score call that scored it through this client.
        Returns id -> outcome name ("applied", "duplicate", "not_found", "no_arm");
        every id "not_found" when the router knows none of them."""
        future = asyncio.run_coroutine_threadsafe(self._feedback(rewards), self._loop)
        return await asyncio.wrap_future(future)

    def feedback_sync(self, rewards: dict[str, float]) -> dict[str, str]:
        return self._run(self._feedback(rewards))

    async def _feedback(self, rewards: dict[str, float]) -> dict[str, str]:
        items = [
            reward_pb2.FeedbackItem(id=i, reward=float(r), request_id=self.scored.get(i) or NO_CALL)
            for i, r in rewards.items()
        ]
        outcomes: dict[str, str] = {}
        for start in range(0, len(items), self.max_items):
            request = reward_pb2.FeedbackRequest(items=items[start : start + self.max_items])
            try:
                response = await self._stub.Feedback(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                outcomes.update((item.id, "not_found") for item in request.items)
                continue
            for result in response.results:
                name = reward_pb2.FeedbackOutcome.Name(result.outcome)
                outcomes[result.id] = name.removeprefix("FEEDBACK_OUTCOME_").lower()
        return outcomes

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def _close():
            self._flush()
            await asyncio.sleep(0)
            await self._channel.close()

        try:
            self._run(_close(), timeout=10)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> CoalescingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
