"""AggregatorService: translates between proto messages and the aggregator."""

from __future__ import annotations

from moerm.models.aggregator import Aggregator
from moerm.tensors import from_proto
from moerm.v1 import aggregator_pb2, aggregator_pb2_grpc


class AggregatorServicer(aggregator_pb2_grpc.AggregatorServiceServicer):
    def __init__(self, aggregator: Aggregator):
        self.aggregator = aggregator

    async def Aggregate(self, request: aggregator_pb2.AggregateRequest, context):
        response = aggregator_pb2.AggregateResponse(bundle_version=self.aggregator.bundle.version)
        for i, batch in enumerate(request.batches):
            field = f"batches[{i}]"
            rewards, raw = self.aggregator.rewards(
                batch.task,
                batch.capabilities,
                from_proto(batch.scores, f"{field}.scores"),
                from_proto(batch.hidden, f"{field}.hidden"),
                field,
            )
            response.batches.append(
                aggregator_pb2.TaskRewards(
                    task=batch.task, rewards=rewards.tolist(), raw_rewards=raw.tolist()
                )
            )
        return response
