"""The router's core: cache lookup, routing, fan-out to experts, aggregation,
cache write, in-order answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
import numpy as np

from moerm.bundle import Bundle
from moerm.cache import ScoreCache, cache_key
from moerm.errors import DeadlineExceeded, Internal, MoermError, Unavailable, from_rpc_error
from moerm.server import MAX_MESSAGE_BYTES
from moerm.tensors import from_proto
from moerm.text import render_conversation
from moerm.v1 import aggregator_pb2, aggregator_pb2_grpc, expert_pb2, expert_pb2_grpc, tensor_pb2
from router_svc.classifier import Route, TaskClassifier
from router_svc.config import POLICIES, RouterConfig
from router_svc.validation import Item, ScoreCall

log = logging.getLogger(__name__)

RM_PREFIX = "dmoerm:"  # reward-model names of the bundle's task expert sets
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # With a dns:/// target of a headless Service, spread calls over replicas.
    ("grpc.lb_policy_name", "round_robin"),
]


@dataclass(frozen=True)
class ItemScore:
    reward: float
    task: str
    confidence: float
    capabilities: dict[str, float]
    reward_models: tuple[str, ...]
    cached: bool = False

    def to_cache(self) -> dict:
        return {
            "r": self.reward,
            "t": self.task,
            "c": self.confidence,
            "caps": self.capabilities,
            "rms": list(self.reward_models),
        }

    @classmethod
    def from_cache(cls, value: dict) -> ItemScore | None:
        """The cached score, or None (a miss) for an entry of another shape."""
        try:
            return cls(
                reward=float(value["r"]),
                task=str(value["t"]),
                confidence=float(value["c"]),
                capabilities={str(k): float(v) for k, v in value["caps"].items()},
                reward_models=tuple(str(m) for m in value["rms"]),
                cached=True,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass
class RouterStats:
    requests: int = 0
    items: int = 0
    routed_prompts: int = 0
    expert_calls: int = 0
    fallbacks: int = 0
    by_task: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Router:
    def __init__(self, config: RouterConfig, bundle: Bundle, classifier: TaskClassifier, cache: ScoreCache):
        self.config = config
        self.bundle = bundle
        self.classifier = classifier
        self.cache = cache
        self.stats = RouterStats()
        endpoints = config.expert_endpoints
        missing = sorted(set(bundle.manifest.tasks) - set(endpoints))
        if missing:
            raise ValueError(f"router_svc: no expert address for tasks {missing} (--experts TASK=HOST:PORT)")
        self._channels = {
            task: grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            for task, address in endpoints.items()
        }
        self.experts = {task: expert_pb2_grpc.ExpertServiceStub(ch) for task, ch in self._channels.items()}
        self._agg_channel = grpc.aio.insecure_channel(config.aggregator, options=CHANNEL_OPTIONS)
        self.aggregator = aggregator_pb2_grpc.AggregatorServiceStub(self._agg_channel)

    @property
    def policies(self) -> tuple[str, ...]:
        return POLICIES

    @property
    def reward_models(self) -> tuple[str, ...]:
        return tuple(RM_PREFIX + task for task in self.bundle.manifest.tasks)

    def _key(self, call: ScoreCall, item: Item) -> str:
        return cache_key(self.bundle.version, call.policy, call.reward_model, item.turns, item.response)

    async def _routes(self, call: ScoreCall, items: list[Item]) -> list[Route]:
        """A route per item, classifying each distinct conversation once."""
        if call.policy == "fixed":
            task = call.reward_model.removeprefix(RM_PREFIX)
            return [Route(task, 1.0)] * len(items)
        prompts = [render_conversation(item.turns) for item in items]
        distinct = list(dict.fromkeys(prompts))
        routes = dict(zip(distinct, await self.classifier.route_prompts(distinct), strict=True))
        self.stats.routed_prompts += len(distinct)
        self.stats.fallbacks += sum(r.fallback for r in routes.values())
        return [routes[p] for p in prompts]

    async def _call_expert(self, task: str, items: list[Item], timeout: float) -> expert_pb2.ExpertResponse:
        request = expert_pb2.ExpertRequest(task=task, return_hidden=True)
        for item in items:
            request.items.append(
                expert_pb2.ExpertItem(
                    messages=[tensor_pb2.Message(role=t.role, content=t.content) for t in item.turns],
                    response=item.response,
                )
            )
        self.stats.expert_calls += 1
        try:
            return await self.experts[task].ScoreBatch(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, f"expert {task!r}") from None

    async def score(self, call: ScoreCall, time_remaining: float | None) -> list[ItemScore]:
        """Scores in item order. Nothing is cached unless every item scored."""
        deadline = time.monotonic() + (
            time_remaining if time_remaining is not None else self.config.default_timeout_s
        )
        self.stats.requests += 1
        self.stats.items += len(call.items)
        keys = [self._key(call, item) for item in call.items]
        cached = await self.cache.get_many(keys)
        results: list[ItemScore | None] = [ItemScore.from_cache(v) if v else None for v in cached]
        # Identical items within one request are scored once.
        todo: dict[str, list[int]] = defaultdict(list)
        for i, result in enumerate(results):
            if result is None:
                todo[keys[i]].append(i)
        if not todo:
            return results  # type: ignore[return-value]
        first = [positions[0] for positions in todo.values()]
        miss_items = [call.items[i] for i in first]
        routes = await self._routes(call, miss_items)
        groups: dict[str, list[int]] = defaultdict(list)  # task -> indices into `first`
        for j, route in enumerate(routes):
            groups[route.task].append(j)
            self.stats.by_task[route.task] += 1

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before the experts were called")
        tasks = list(groups)
        replies = await asyncio.gather(
            *(self._call_expert(t, [miss_items[j] for j in groups[t]], remaining) for t in tasks),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, MoermError):
                raise reply
            if isinstance(reply, BaseException):
                raise Internal(f"expert call failed: {type(reply).__name__}") from reply

        agg_request = aggregator_pb2.AggregateRequest()
        for task, reply in zip(tasks, replies, strict=True):
            agg_request.batches.append(
                aggregator_pb2.TaskOutputs(
                    task=task, capabilities=reply.capabilities, scores=reply.scores, hidden=reply.hidden
                )
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before aggregation")
        try:
            aggregated = await self.aggregator.Aggregate(agg_request, timeout=remaining)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "aggregator") from None

        fresh: dict[str, dict] = {}
        for task, reply, rewards in zip(tasks, replies, aggregated.batches, strict=True):
            scores = from_proto(reply.scores, f"expert {task!r} scores")
            caps = list(reply.capabilities)
            for row, (j, reward) in enumerate(zip(groups[task], rewards.rewards, strict=True)):
                if not np.isfinite(reward) or not np.all(np.isfinite(scores[row])):
                    raise Unavailable(f"expert {task!r} returned a non-finite score")
                score = ItemScore(
                    reward=float(reward),
                    task=task,
                    confidence=routes[j].confidence,
                    capabilities={c: float(s) for c, s in zip(caps, scores[row], strict=True)},
                    reward_models=(RM_PREFIX + task,),
                )
                key = keys[first[j]]
                for i in todo[key]:
                    results[i] = score
                fresh[key] = score.to_cache()
        await self.cache.set_many(fresh)
        return results  # type: ignore[return-value]

    async def close(self) -> None:
        for channel in (*self._channels.values(), self._agg_channel):
            await channel.close()
        await self.cache.close()
        self.classifier.close()
