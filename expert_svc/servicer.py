"""ExpertService: translates between proto messages and the scorer."""

from __future__ import annotations

import grpc

from expert_svc.batcher import DynamicBatcher
from expert_svc.scorer import ExpertInput, ExpertScorer
from moerm.errors import FieldViolation, InvalidArgument, Unavailable
from moerm.tensors import to_proto
from moerm.text import ROLES, Turn
from moerm.v1 import expert_pb2, expert_pb2_grpc


def parse_items(request: expert_pb2.ExpertRequest) -> list[ExpertInput]:
    if not request.items:
        raise InvalidArgument.field("items", "at least one item is required")
    items, violations = [], []
    for i, item in enumerate(request.items):
        if not item.response:
            violations.append(FieldViolation(f"items[{i}].response", "must not be empty"))
        for j, message in enumerate(item.messages):
            if message.role not in ROLES:
                violations.append(
                    FieldViolation(f"items[{i}].messages[{j}].role", f"unknown role {message.role!r}")
                )
        items.append(ExpertInput(tuple(Turn(m.role, m.content) for m in item.messages), item.response))
    if violations:
        raise InvalidArgument(violations)
    return items


class ExpertServicer(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(self, scorer: ExpertScorer, batcher: DynamicBatcher):
        self.scorer = scorer
        self.batcher = batcher

    async def ScoreBatch(self, request: expert_pb2.ExpertRequest, context: grpc.aio.ServicerContext):
        if not self.scorer.loaded:
            raise Unavailable(f"expert {self.scorer.task.name!r} is still loading its model")
        if request.task != self.scorer.task.name:
            raise InvalidArgument.field(
                "task", f"this expert serves {self.scorer.task.name!r}, not {request.task!r}"
            )
        scores, hidden = await self.batcher.submit(parse_items(request))
        response = expert_pb2.ExpertResponse(
            task=self.scorer.task.name,
            capabilities=self.scorer.capabilities,
            scores=to_proto(scores),
            bundle_version=self.scorer.bundle.version,
        )
        if request.return_hidden:
            response.hidden.CopyFrom(to_proto(hidden))
        return response

    async def Describe(self, request, context):
        manifest = self.scorer.bundle.manifest
        return expert_pb2.ExpertDescription(
            task=self.scorer.task.name,
            capabilities=self.scorer.capabilities,
            hidden_size=manifest.backbone.hidden_size,
            backbone=manifest.backbone.ref,
            bundle_version=manifest.bundle_version,
            lora_layers=list(self.scorer.task.lora.layers),
        )
