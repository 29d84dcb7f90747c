"""An expert reports SERVING only once its model is loaded."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from expert_svc.app import build_expert
from expert_svc.config import ExpertConfig
from moerm.v1 import expert_pb2, expert_pb2_grpc

pytestmark = pytest.mark.integration


async def test_not_serving_until_loaded(minilm_bundle):
    app = build_expert(ExpertConfig(bundle=str(minilm_bundle), task="writing"))
    await app.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
            expert = expert_pb2_grpc.ExpertServiceStub(channel)
            request = expert_pb2.ExpertRequest(task="writing", items=[expert_pb2.ExpertItem(response="hi")])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await expert.ScoreBatch(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            await app.load()
            await app.server.set_serving(True)
            after = await health.Check(
                health_pb2.HealthCheckRequest(service="moerm.v1.ExpertService"), timeout=5
            )
            assert after.status == health_pb2.HealthCheckResponse.SERVING
            reply = await expert.ScoreBatch(request, timeout=30)
            assert list(reply.capabilities) == ["relevance", "fluency"]
            assert list(reply.scores.shape) == [1, 2]

            wrong = expert_pb2.ExpertRequest(task="code", items=[expert_pb2.ExpertItem(response="hi")])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await expert.ScoreBatch(wrong, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await app.stop(grace_s=0)
