"""RewardService: translates between proto messages and the router."""

from __future__ import annotations

import grpc

from moerm.v1 import reward_pb2, reward_pb2_grpc
from router_svc.router import Router
from router_svc.validation import parse_request


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, router: Router):
        self.router = router

    async def Score(self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext):
        config = self.router.config
        call = parse_request(
            request,
            max_items=config.max_items,
            max_text_chars=config.max_text_chars,
            default_policy=config.default_policy,
            policies=self.router.policies,
            reward_models=self.router.reward_models,
        )
        scores = await self.router.score(call, context.time_remaining())
        version = self.router.bundle.version
        response = reward_pb2.ScoreResponse(bundle_version=version)
        for item, score in zip(call.items, scores, strict=True):
            response.results.append(
                reward_pb2.ScoreResult(
                    id=item.id,
                    reward=score.reward,
                    task=score.task,
                    route_confidence=score.confidence,
                    capabilities=score.capabilities if call.breakdown else {},
                    reward_models=score.reward_models,
                    bundle_version=version,
                    cached=score.cached,
                )
            )
        return response
