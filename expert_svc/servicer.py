"""ExpertService: translates between proto messages and the scorer."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc

from expert_svc.hf_scorer import HFScorer
from expert_svc.scorer import ExpertInput, ExpertScorer, PreparedItem
from moerm.batching import DynamicBatcher
from moerm.errors import FieldViolation, InvalidArgument, Unavailable, shown
from moerm.tensors import to_proto
from moerm.text import ROLES, Turn
from moerm.v1 import expert_pb2, expert_pb2_grpc


def parse_items(request: expert_pb2.ExpertRequest, max_items: int) -> list[ExpertInput]:
    if not request.items:
        raise InvalidArgument.field("items", "at least one item is required")
    if len(request.items) > max_items:
        # More than the queue can ever hold: retrying cannot help, so not RESOURCE_EXHAUSTED.
        raise InvalidArgument.field(
            "items", f"{len(request.items)} items in one request (at most {max_items}); split the request"
        )
    experts = not request.base_only
    base = request.return_base or request.base_only
    items, violations = [], []
    for i, item in enumerate(request.items):
        if not item.response:
            violations.append(FieldViolation(f"items[{i}].response", "must not be empty"))
        for j, message in enumerate(item.messages):
            if message.role not in ROLES:
                violations.append(
                    FieldViolation(f"items[{i}].messages[{j}].role", f"unknown role {shown(message.role)}")
                )
        turns = tuple(Turn(m.role, m.content) for m in item.messages)
        items.append(ExpertInput(turns, item.response, experts=experts, base=base))
    if violations:
        raise InvalidArgument(violations)
    return items


class ExpertServicer(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(
        self,
        scorer: ExpertScorer | HFScorer,
        batcher: DynamicBatcher,
        *,
        norm: tuple[float, float] = (0.0, 0.0),
        max_request_items: int = 4096,
    ):
        self.scorer = scorer
        self.max_request_items = max_request_items
        self.batcher = batcher
        self.norm = norm  # (mean, std) of the first score column; std 0: not declared
        # Tokenizing runs beside the model's thread, so a batch is prepared while another runs.
        self._prepare = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    def close(self) -> None:
        self._prepare.shutdown(wait=False, cancel_futures=True)

    def _prepared(self, items: list[ExpertInput]) -> tuple[list[PreparedItem], list[float]]:
        prepared = self.scorer.prepare(items)
        return prepared, self.scorer.costs(prepared)

    def _check(self, request: expert_pb2.ExpertRequest) -> None:
        task = self.scorer.task.name
        if request.task != task:
            raise InvalidArgument.field("task", f"this expert serves {task!r}, not {shown(request.task)}")
        if (request.return_base or request.base_only) and not self.scorer.has_base:
            field = "base_only" if request.base_only else "return_base"
            raise InvalidArgument.field(field, f"task {task!r} has no base model (an untrained bundle)")

    async def ScoreBatch(self, request: expert_pb2.ExpertRequest, context: grpc.aio.ServicerContext):
        if not self.scorer.loaded:
            raise Unavailable(f"expert {self.scorer.task.name!r} is still loading its model")
        self._check(request)
        items = parse_items(request, min(self.max_request_items, self.batcher.max_queue_items))
        self.batcher.admit(len(items), 0.0, context.time_remaining())  # overloaded: reject before tokenizing
        loop = asyncio.get_running_loop()
        prepared, costs = await loop.run_in_executor(self._prepare, self._prepared, items)
        scores, hidden, base = await self.batcher.submit(
            prepared, costs, time_left_s=context.time_remaining()
        )
        response = expert_pb2.ExpertResponse(
            task=self.scorer.task.name,
            capabilities=self.scorer.capabilities,
            bundle_version=self.scorer.version,
            truncated=[item.truncated for item in prepared],
        )
        if not request.base_only:
            response.scores.CopyFrom(to_proto(scores))
            if request.return_hidden:
                response.hidden.CopyFrom(to_proto(hidden))
        if request.return_base or request.base_only:
            response.base_scores.CopyFrom(to_proto(base))
        return response

    async def Describe(self, request, context):
        mean, std = self.norm
        return expert_pb2.ExpertDescription(
            task=self.scorer.task.name,
            capabilities=self.scorer.capabilities,
            has_base=self.scorer.has_base,
            norm_mean=mean,
            norm_std=std,
            **self.scorer.description(),
        )
