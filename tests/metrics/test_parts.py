"""Metrics of the parts, without a cluster: the expert queue gauges while a batch
runs, the gRPC interceptor's status codes, and the /metrics HTTP server."""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from moerm.batching import DynamicBatcher
from moerm.errors import InvalidArgument
from moerm.metrics import BatcherMetrics, ServiceMetrics, render, sample, serve_metrics
from moerm.server import create_server
from moerm.v1 import expert_pb2, expert_pb2_grpc


async def test_queue_gauges_follow_the_queue() -> None:
    gate, entered = threading.Event(), threading.Event()

    def fn(items):
        entered.set()
        gate.wait(10)
        return (np.asarray(items, dtype=np.float32),)

    registry = CollectorRegistry()
    metrics = BatcherMetrics(registry, "moerm_expert", {"task": "code"})
    batcher = DynamicBatcher(fn, max_batch_size=2, max_delay_s=0.0, max_queue_items=100, metrics=metrics)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit([1, 2]))
        await asyncio.to_thread(entered.wait, 10)
        second = asyncio.create_task(batcher.submit([3, 4, 5]))
        await asyncio.sleep(0.05)

        def gauge(name: str) -> float:
            return sample(registry, f"moerm_expert_{name}", task="code")

        assert gauge("queue_items") == 5  # 2 running + 3 waiting
        assert gauge("queue_requests") == 1  # the second waits for its first batch
        assert 'moerm_expert_queue_items{task="code"} 5.0' in render(registry)
        gate.set()
        await asyncio.gather(first, second)
        assert gauge("queue_items") == 0 and gauge("queue_requests") == 0
        assert gauge("batch_size_count") == 3 and gauge("batch_size_sum") == 5  # [1,2] [3,4] [5]
        assert gauge("queue_seconds_count") == 2
    finally:
        gate.set()
        await batcher.stop()


class Failing(expert_pb2_grpc.ExpertServiceServicer):
    async def ScoreBatch(self, request, context):
        if not request.items:
            raise InvalidArgument.field("items", "at least one item is required")
        if request.task == "crash":
            raise RuntimeError("a bug")
        return expert_pb2.ExpertResponse(task=request.task)


async def test_interceptor_counts_final_status_codes() -> None:
    name = "moerm.v1.ExpertService"
    metrics = ServiceMetrics([name], {"ScoreBatch": lambda r: len(r.items)})
    handle = create_server(
        lambda s: expert_pb2_grpc.add_ExpertServiceServicer_to_server(Failing(), s),
        [name],
        interceptors=[metrics.rpc.interceptor()],
    )
    await handle.start()
    item = expert_pb2.ExpertItem(response="r")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = expert_pb2_grpc.ExpertServiceStub(channel)
            await stub.ScoreBatch(expert_pb2.ExpertRequest(task="t", items=[item, item]), timeout=5)
            for request, code in [
                (expert_pb2.ExpertRequest(task="t"), grpc.StatusCode.INVALID_ARGUMENT),
                (expert_pb2.ExpertRequest(task="crash", items=[item]), grpc.StatusCode.INTERNAL),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ScoreBatch(request, timeout=5)
                assert caught.value.code() == code
    finally:
        await handle.server.stop(0)
    r = metrics.registry

    def calls(code: str) -> float:
        return sample(r, "moerm_grpc_requests_total", method="ScoreBatch", code=code)

    assert (calls("OK"), calls("INVALID_ARGUMENT"), calls("INTERNAL")) == (1, 1, 1)
    assert sample(r, "moerm_grpc_items_total", method="ScoreBatch", code="OK") == 2
    assert sample(r, "moerm_grpc_items_total", method="ScoreBatch", code="INTERNAL") == 1
    assert sample(r, "moerm_grpc_request_seconds_count", method="ScoreBatch") == 3


def test_metrics_server_serves_the_registry() -> None:
    metrics = BatcherMetrics(prefix="moerm_expert", labels={"task": "t"})
    metrics.rejected.inc(3)
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        server.stop()
    assert 'moerm_expert_rejected_total{task="t"} 3.0' in text
