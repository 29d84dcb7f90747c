"""RewardService: translates between proto messages and the router."""

from __future__ import annotations

import grpc

from moerm.v1 import reward_pb2, reward_pb2_grpc
from router_svc.router import Router
from router_svc.validation import parse_feedback, parse_request

OUTCOMES = {
    "applied": reward_pb2.FEEDBACK_OUTCOME_APPLIED,
    "duplicate": reward_pb2.FEEDBACK_OUTCOME_DUPLICATE,
    "not_found": reward_pb2.FEEDBACK_OUTCOME_NOT_FOUND,
    "no_arm": reward_pb2.FEEDBACK_OUTCOME_NO_ARM,
}


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
            remembered=tuple(p for p in self.router.policies if self.router.remembers(p)),
        )
        scored = await self.router.score(call, context.time_remaining())
        version = self.router.bundle.version
        response = reward_pb2.ScoreResponse(bundle_version=version, request_id=scored.request_id)
        for item_id, score in zip(scored.ids, scored.scores, strict=True):
            response.results.append(
                reward_pb2.ScoreResult(
                    id=item_id,
                    reward=score.reward,
                    task=score.task,
                    route_confidence=score.confidence,
                    capabilities=score.capabilities if call.breakdown else {},
                    reward_models=score.reward_models,
                    bundle_version=version,
                    cached=score.cached,
                    policy=score.policy,
                    member_rewards=score.member_rewards if call.breakdown else {},
                    missing_reward_models=score.missing,
                )
            )
        return response

    async def Feedback(self, request: reward_pb2.FeedbackRequest, context: grpc.aio.ServicerContext):
        config = self.router.config
        call = parse_feedback(request, max_items=config.max_items, max_abs=config.max_feedback_abs)
        outcomes = await self.router.feedback(call)
        response = reward_pb2.FeedbackResponse(
            results=[
                reward_pb2.FeedbackResult(id=item_id, request_id=request_id, outcome=OUTCOMES[outcomes[key]])
                for key in call.keys
                for request_id, item_id in [key]
            ]
        )
        response.applied = sum(r.outcome == reward_pb2.FEEDBACK_OUTCOME_APPLIED for r in response.results)
        return response
