"""RewardService: translates between proto messages and the router."""

from __future__ import annotations

import uuid

import grpc

from moerm.errors import FieldViolation
from moerm.v1 import reward_pb2, reward_pb2_grpc
from router_svc.router import Router
from router_svc.validation import MAX_ID_CHARS, parse_feedback, parse_request

OUTCOMES = {
    "applied": reward_pb2.FEEDBACK_OUTCOME_APPLIED,
    "duplicate": reward_pb2.FEEDBACK_OUTCOME_DUPLICATE,
    "not_found": reward_pb2.FEEDBACK_OUTCOME_NOT_FOUND,
    "no_arm": reward_pb2.FEEDBACK_OUTCOME_NO_ARM,
}


MAX_ERROR_CHARS = 1024


def item_error(violations: list[FieldViolation]) -> reward_pb2.ItemError:
    """One item's problems: the first field at fault, every problem in the description
    (bounded)."""
    description = "; ".join(f"{v.field}: {v.description}" for v in violations)
    if len(description) > MAX_ERROR_CHARS:
        description = description[: MAX_ERROR_CHARS - 3] + "..."
    return reward_pb2.ItemError(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], field=violations[0].field, description=description
    )


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, router: Router):
        self.router = router

    async def Score(self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext):
        config = self.router.config
        call = parse_request(
            request,
            max_items=config.max_items,
            max_text_chars=config.max_text_chars,
            max_item_chars=config.max_item_chars,
            max_messages=config.max_messages,
            default_policy=config.default_policy,
            policies=self.router.policies,
            reward_models=self.router.reward_models,
            remembered=tuple(p for p in self.router.policies if self.router.remembers(p)),
        )
        version = self.router.bundle.version
        if call.items:
            scored = await self.router.score(call, context.time_remaining())
            request_id, ids, scores = scored.request_id, scored.ids, scored.scores
        else:  # per_item_errors and every item rejected
            request_id, ids, scores = uuid.uuid4().hex, [], []
        response = reward_pb2.ScoreResponse(bundle_version=version, request_id=request_id)
        results = [reward_pb2.ScoreResult() for _ in range(call.size or len(call.items))]
        for position, item_id, score in zip(call.positions, ids, scores, strict=True):
            results[position] = reward_pb2.ScoreResult(
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
                truncated=position in call.truncated or score.truncated,
            )
        for position, violations in call.rejected.items():
            results[position] = reward_pb2.ScoreResult(
                id=request.items[position].id[:MAX_ID_CHARS],
                policy=call.policy,
                bundle_version=version,
                error=item_error(violations),
            )
        response.results.extend(results)
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
