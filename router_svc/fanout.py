"""Calls to the reward models of the pool: the bundle's expert services (capability
experts and task base models), external ExpertServices and the aggregator.

:meth:`Downstream.score` takes (reward model, item) jobs and makes the fewest calls:
per task one ``ScoreBatch`` for its ``dmoerm:`` items (asking for base scores too when
every one of them also needs ``base:``) and one ``base_only`` call for the remaining
``base:`` items; per external one call; then one ``Aggregate`` for every task's expert
outputs. All calls of a stage run concurrently with the rest of the deadline.

An external at an ``http(s)://`` URL (:attr:`RewardModelSpec.over_http`) gets one
``POST`` per call in OpenRLHF's remote reward-model protocol (:func:`post_body`,
:func:`read_rewards`); its answer is turned into the ``ExpertResponse`` of a
one-column external, so both kinds are read alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

import aiohttp
import grpc
import numpy as np

from moerm.errors import DeadlineExceeded, Internal, MoermError, Unavailable, from_rpc_error
from moerm.routing.pool import BASE, DMOERM, EXTERNAL, RewardModelSpec, is_http
from moerm.server import MAX_MESSAGE_BYTES
from moerm.tensors import from_proto, to_proto
from moerm.text import render_chatml
from moerm.v1 import aggregator_pb2, aggregator_pb2_grpc, expert_pb2, expert_pb2_grpc, tensor_pb2
from router_svc.validation import Item

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # With a dns:/// target of a headless Service, spread calls over replicas.
    ("grpc.lb_policy_name", "round_robin"),
    # A restarted expert (same port) is reached within seconds, not after gRPC's default
    # reconnect backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 1),
    # Retries keep a copy of the request; a batch of hidden states can be large.
    ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
    ("grpc.retry_buffer_size", 4 * MAX_MESSAGE_BYTES),
    # A replica gone makes the dns:/// resolver look again; at most once a second.
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
]


def service_config(wait_for_ready: bool) -> str:
    """The channels' gRPC service config. With a dns:/// target of a headless Service
    (or an ``ipv4:A,B`` list) calls spread round-robin over the replicas; a call that
    fails UNAVAILABLE (a replica dying, draining or still loading) is tried again on
    another, up to 5 attempts within its deadline. ``wait_for_ready``: a call that
    finds no replica ready waits for one (within its deadline) instead of failing
    at once: right on Kubernetes, where a rollout or the autoscaler brings replicas
    back; wrong on one machine, where a dead expert should answer UNAVAILABLE now."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [
                        {"service": "moerm.v1.ExpertService"},
                        {"service": "moerm.v1.AggregatorService"},
                    ],
                    "waitForReady": wait_for_ready,
                    "retryPolicy": {
                        "maxAttempts": 5,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


@dataclass(frozen=True)
class MemberScore:
    """One reward model's output for one item.

    ``raw``: the reward model's own scale (for ``dmoerm:`` the aggregator's output,
    already normalized with the bundle's TaskSpec norm); the pool's normalization is
    applied when answering, so a changed ``--rm-norm`` needs no cache flush.
    ``capabilities``: the expert breakdown (dmoerm), the score columns (external), or
    empty (base). ``truncated``: the reward model cut the item to its context.
    """

    raw: float
    capabilities: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    truncated: bool = False

    def to_cache(self) -> dict:
        return {"r": self.raw, "caps": self.capabilities, "t": self.truncated}

    @classmethod
    def from_cache(cls, value: dict | None) -> MemberScore | None:
        """The cached score, or None (a miss) for a missing entry or one of another shape."""
        if value is None:
            return None
        try:
            raw = float(value["r"])
            caps = {str(k): float(v) for k, v in value["caps"].items()}
            truncated = bool(value.get("t", False))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return cls(raw, caps, cached=True, truncated=truncated) if np.isfinite(raw) else None


@dataclass(frozen=True)
class Job:
    """Score ``item`` with ``spec``. Jobs with the same ``item_key`` score the same item."""

    spec: RewardModelSpec
    item: Item
    item_key: int


@dataclass(frozen=True)
class Call:
    """One ScoreBatch call. ``rows``: the job each request item answers (its dmoerm,
    base or external job, by ``kind``); ``base_rows``: for an "experts" call that also
    returns base scores, the base job of each request item."""

    kind: str  # "experts", "base" or "external"
    target: str  # task, or external name
    rows: tuple[int, ...]
    base_rows: tuple[int, ...] = ()

    @property
    def what(self) -> str:
        return (
            f"external reward model {self.target!r}" if self.kind == EXTERNAL else f"expert {self.target!r}"
        )


def plan_calls(jobs: Sequence[Job]) -> list[Call]:
    """The fewest ScoreBatch calls for ``jobs``: per task one "experts" call for its
    dmoerm jobs (returning base scores too when every one of those items also has a
    base job) and one "base" call for the base jobs left; one call per external."""
    by_task: dict[str, dict[str, list[int]]] = {}
    by_external: dict[str, list[int]] = {}
    for j, job in enumerate(jobs):
        if job.spec.kind == EXTERNAL:
            by_external.setdefault(job.spec.name, []).append(j)
        else:
            by_task.setdefault(job.spec.task, {DMOERM: [], BASE: []})[job.spec.kind].append(j)
    calls = []
    for task, rows in by_task.items():
        base_of = {jobs[j].item_key: j for j in rows[BASE]}
        experts = rows[DMOERM]
        together = bool(experts) and all(jobs[j].item_key in base_of for j in experts)
        covered = {jobs[j].item_key for j in experts} if together else set()
        if experts:
            base_rows = tuple(base_of[jobs[j].item_key] for j in experts) if together else ()
            calls.append(Call("experts", task, tuple(experts), base_rows))
        rest = tuple(j for j in rows[BASE] if jobs[j].item_key not in covered)
        if rest:
            calls.append(Call(BASE, task, rest))
    calls += [Call(EXTERNAL, name, tuple(rows)) for name, rows in by_external.items()]
    return calls


def _request(call: Call, jobs: Sequence[Job]) -> expert_pb2.ExpertRequest:
    items = [jobs[j].item for j in call.rows]
    request = expert_pb2.ExpertRequest(
        task=jobs[call.rows[0]].spec.task,
        items=[
            expert_pb2.ExpertItem(
                messages=[tensor_pb2.Message(role=t.role, content=t.content) for t in item.turns],
                response=item.response,
            )
            for item in items
        ],
    )
    if call.kind == "experts":
        request.return_hidden = True
        request.return_base = bool(call.base_rows)
    elif call.kind == BASE:
        request.base_only = True
    return request


async def _done(value):
    """``value`` as an awaitable (a result, or an exception to raise)."""
    if isinstance(value, BaseException):
        raise value
    return value


async def _gather(calls: Sequence[Awaitable]) -> list:
    """Results of concurrent calls; the first domain error (else any failure) is raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, MoermError):
            raise result
    for result in results:
        if isinstance(result, BaseException):
            raise Internal(f"a downstream call failed: {type(result).__name__}") from result
    return results


def _tensor(tensor: tensor_pb2.Tensor, shape: tuple[int, ...], what: str, name: str) -> np.ndarray:
    """A reply tensor of the expected leading ``shape``, all finite, else UNAVAILABLE."""
    values = from_proto(tensor, f"{what} {name}")
    if values.shape[: len(shape)] != shape:
        raise Unavailable(f"{what} returned {name} of shape {values.shape}, expected {shape}")
    if not np.isfinite(values).all():
        raise Unavailable(f"{what} returned a non-finite score")
    return values


def _truncated(reply: expert_pb2.ExpertResponse, n: int) -> list[bool]:
    """The reply's per-item truncation flags (all False from a service that gives none)."""
    flags = list(reply.truncated)
    return flags if len(flags) == n else [False] * n


def post_body(items: Sequence[Item]) -> dict:
    """OpenRLHF's ``/get_reward`` request for ``items``: each conversation and response
    rendered in ChatML (:func:`moerm.text.render_chatml`), ``prompts`` the rendered
    conversations."""
    rendered = [render_chatml(item.turns, item.response) for item in items]
    return {"query": [query for _, query in rendered], "prompts": [prompt for prompt, _ in rendered]}


def read_rewards(body: bytes, n: int, what: str) -> expert_pb2.ExpertResponse:
    """An HTTP member's answer (``{"rewards": [n numbers], ...}``) as the ExpertResponse
    of a one-column external: scores (n, 1), and ``truncated`` from moerm's gateway's
    ``extra_logs.moerm_truncated`` when present. UNAVAILABLE for anything else, or when
    it lists ``errors`` (moerm's gateway: items it could not score)."""
    try:
        data = json.loads(body)
        rewards = np.asarray(data["rewards"], dtype=np.float32)
    except (ValueError, TypeError, KeyError) as error:
        raise Unavailable(f"{what} answered without a list of rewards ({type(error).__name__})") from None
    if rewards.shape != (n,):
        raise Unavailable(f"{what} answered {rewards.shape} rewards for {n} items")
    errors = data.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        raise Unavailable(
            f"{what} could not score {len(errors)} items: {str(first.get('description'))[:200]}"
        )
    flags = (data.get("extra_logs") or {}).get("moerm_truncated")
    truncated = [bool(flag) for flag in flags] if isinstance(flags, list) and len(flags) == n else []
    return expert_pb2.ExpertResponse(scores=to_proto(rewards[:, None]), truncated=truncated)


RECHECK_S = 1.0  # a target that just failed is left out of choices this long


def target_of(spec: RewardModelSpec) -> str:
    """The downstream a reward model needs: its task's experts, or the external itself."""
    return spec.name if spec.kind == EXTERNAL else spec.task


class Downstream:
    """grpc.aio channels to every task's experts, the externals and the aggregator, and
    an HTTP session for the externals at ``http(s)://`` URLs. Must be created inside
    the event loop. ``credentials``: TLS (mTLS) to the gRPC services; ``server_name``:
    the name their certificates must carry ('' = each address's host);
    ``wait_for_ready``: see :func:`service_config`. An ``https://`` member is checked
    against the system's CAs.

    Liveness (:meth:`live`): a target is down while its channel cannot connect
    (TRANSIENT_FAILURE; gRPC only) or for :data:`RECHECK_S` after a call to it failed as
    unavailable; policies then leave it out (bandits choose the best live arm,
    ensembles score with the live members)."""

    def __init__(
        self,
        expert_endpoints: dict[str, str],
        aggregator: str,
        external_endpoints: dict[str, str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        wait_for_ready: bool = False,
    ):
        self._credentials = credentials
        self._options = [*CHANNEL_OPTIONS, ("grpc.service_config", service_config(wait_for_ready))]
        if server_name:
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self._channels = [self._channel(aggregator)]
        self._channel_of: dict[str, grpc.aio.Channel] = {}
        self.aggregator = aggregator_pb2_grpc.AggregatorServiceStub(self._channels[0])
        self.experts = {task: self._stub(task, address) for task, address in expert_endpoints.items()}
        self.externals = {
            name: self._stub(name, address)
            for name, address in external_endpoints.items()
            if not is_http(address)
        }
        self.urls = {name: url for name, url in external_endpoints.items() if is_http(url)}
        self._http = aiohttp.ClientSession() if self.urls else None
        self.calls = 0  # ScoreBatch calls (and HTTP posts) made, for stats
        self._failed_at: dict[str, float] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=self._options)
        return grpc.aio.secure_channel(address, self._credentials, options=self._options)

    def _stub(self, target: str, address: str) -> expert_pb2_grpc.ExpertServiceStub:
        self._channels.append(self._channel(address))
        self._channel_of[target] = self._channels[-1]
        return expert_pb2_grpc.ExpertServiceStub(self._channels[-1])

    def live(self, target: str) -> bool:
        """Whether ``target`` (a task or an external's name) is expected to answer."""
        failed = self._failed_at.get(target)
        if failed is not None and time.monotonic() - failed < RECHECK_S:
            return False
        if target in self.urls:
            return True
        channel = self._channel_of.get(target)
        if channel is None:
            return False
        return channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.TRANSIENT_FAILURE

    def _outcome(self, target: str, error: MoermError | None) -> None:
        if isinstance(error, (Unavailable, DeadlineExceeded)):
            self._failed_at[target] = time.monotonic()
        elif error is None:
            self._failed_at.pop(target, None)

    async def describe(self, name: str, timeout: float) -> expert_pb2.ExpertDescription:
        """An external reward model's Describe, waiting up to ``timeout`` for it to come up."""
        try:
            return await self.externals[name].Describe(
                expert_pb2.DescribeRequest(), timeout=timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, f"external reward model {name!r}") from None

    async def score(
        self, jobs: Sequence[Job], deadline: float, *, partial: bool = False
    ) -> list[MemberScore | None]:
        """One :class:`MemberScore` per job, in job order. Raises on any failure (a
        request is answered whole or not at all), except with ``partial``: then the jobs
        of a reward model that is unavailable get None (an ensemble scores without it)."""
        calls = plan_calls(jobs)
        requests = [
            self._post(call, [jobs[j].item for j in call.rows], deadline)
            if call.target in self.urls and call.kind == EXTERNAL
            else self._score_batch(call, _request(call, jobs), deadline)
            for call in calls
        ]
        if partial:
            results = await asyncio.gather(*requests, return_exceptions=True)
            kept = [
                (call, reply)
                for call, reply in zip(calls, results, strict=True)
                if not isinstance(reply, (Unavailable, DeadlineExceeded))
            ]
            calls, replies = [c for c, _ in kept], await _gather([_done(r) for _, r in kept])
        else:
            replies = await _gather(requests)
        out: list[MemberScore | None] = [None] * len(jobs)
        experts = []
        for call, reply in zip(calls, replies, strict=True):
            n = len(call.rows)
            if call.kind == EXTERNAL:
                scores = _tensor(reply.scores, (n,), call.what, "scores")
                if scores.ndim != 2 or scores.shape[1] < 1:
                    raise Unavailable(f"{call.what} returned scores of shape {scores.shape}, expected (B, K)")
                names = list(reply.capabilities) if len(reply.capabilities) == scores.shape[1] else []
                for j, row, cut in zip(call.rows, scores, _truncated(reply, n), strict=True):
                    caps = dict(zip(names, map(float, row), strict=True)) if names else {}
                    out[j] = MemberScore(float(row[0]), caps, truncated=cut)
                continue
            if call.kind == BASE or call.base_rows:
                base = _tensor(reply.base_scores, (n,), call.what, "base scores")
                for j, value, cut in zip(
                    call.base_rows or call.rows, base, _truncated(reply, n), strict=True
                ):
                    out[j] = MemberScore(float(value), truncated=cut)
            if call.kind == "experts":
                experts.append((call, reply))
        if experts:
            await self._aggregate(experts, out, deadline)
        return out  # type: ignore[return-value]

    async def _score_batch(
        self, call: Call, request: expert_pb2.ExpertRequest, deadline: float
    ) -> expert_pb2.ExpertResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before {call.what} was called")
        stub = self.externals[call.target] if call.kind == EXTERNAL else self.experts[call.target]
        self.calls += 1
        try:
            reply = await stub.ScoreBatch(request, timeout=remaining)
        except grpc.aio.AioRpcError as error:
            failure = from_rpc_error(error, call.what)
            self._outcome(call.target, failure)
            raise failure from None
        self._outcome(call.target, None)
        return reply

    async def _post(self, call: Call, items: Sequence[Item], deadline: float) -> expert_pb2.ExpertResponse:
        """One POST to an HTTP member: UNAVAILABLE when it cannot be reached, answers
        other than 200 or a reply of another shape; DEADLINE_EXCEEDED past the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before {call.what} was called")
        url = self.urls[call.target]
        self.calls += 1
        try:
            async with self._http.post(
                url, json=post_body(items), timeout=aiohttp.ClientTimeout(total=remaining)
            ) as response:
                body = await response.read()
                if response.status != 200:
                    text = body[:200].decode("utf-8", "replace")
                    raise Unavailable(f"{call.what} at {url} answered HTTP {response.status}: {text}")
            reply = read_rewards(body, len(items), call.what)
        except TimeoutError:
            failure: MoermError = DeadlineExceeded(f"{call.what} at {url} did not answer within the deadline")
        except aiohttp.ClientError as error:
            failure = Unavailable(f"{call.what} at {url}: {type(error).__name__}: {error}")
        except Unavailable as error:
            failure = error
        else:
            self._outcome(call.target, None)
            return reply
        self._outcome(call.target, failure)
        raise failure

    async def _aggregate(self, experts: list, out: list, deadline: float) -> None:
        """One Aggregate call for every task's expert outputs; fills the dmoerm jobs."""
        request = aggregator_pb2.AggregateRequest(
            batches=[
                aggregator_pb2.TaskOutputs(
                    task=call.target,
                    capabilities=reply.capabilities,
                    scores=reply.scores,
                    hidden=reply.hidden,
                )
                for call, reply in experts
            ]
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before aggregation")
        try:
            aggregated = await self.aggregator.Aggregate(request, timeout=remaining)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "aggregator") from None
        for (call, reply), batch in zip(experts, aggregated.batches, strict=True):
            n, caps = len(call.rows), list(reply.capabilities)
            scores = _tensor(reply.scores, (n, len(caps)), call.what, "scores")
            rewards = np.asarray(batch.rewards, dtype=np.float32)
            if rewards.shape != (n,) or not np.isfinite(rewards).all():
                raise Unavailable(f"the aggregator returned bad rewards for task {call.target!r}")
            for j, row, reward, cut in zip(call.rows, scores, rewards, _truncated(reply, n), strict=True):
                out[j] = MemberScore(
                    float(reward), dict(zip(caps, map(float, row), strict=True)), truncated=cut
                )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        if self._http is not None:
            await self._http.close()
