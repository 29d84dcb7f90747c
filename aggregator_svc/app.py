"""Assemble an aggregator server from its config (shared by __main__ and tests)."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator_svc.config import AggregatorConfig
from aggregator_svc.servicer import AggregatorServicer
from moerm.bundle import Bundle
from moerm.metrics import ServiceMetrics
from moerm.models.aggregator import Aggregator
from moerm.security import TlsFiles, serving_credentials
from moerm.server import Server, create_server
from moerm.v1 import aggregator_pb2, aggregator_pb2_grpc

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].full_name


def batch_rows(request: aggregator_pb2.AggregateRequest) -> int:
    """Items of an Aggregate request: the rows of every task's scores."""
    return sum(batch.scores.shape[0] if batch.scores.shape else 0 for batch in request.batches)


@dataclass
class AggregatorApp:
    server: Server
    metrics: ServiceMetrics
    config: AggregatorConfig

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        self.metrics.serve(self.config.host, self.config.metrics_port)
        await self.server.start()

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.server.set_serving(False)
        await self.server.server.stop(grace_s)
        self.metrics.stop()


def build_aggregator(config: AggregatorConfig) -> AggregatorApp:
    servicer = AggregatorServicer(Aggregator(Bundle.load(config.bundle)))
    metrics = ServiceMetrics([SERVICE_NAME], {"Aggregate": batch_rows})
    server = create_server(
        lambda s: aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=config.host,
        port=config.port,
        max_message_bytes=config.max_message_mb * 1024 * 1024,
        max_concurrent_rpcs=config.max_concurrent_rpcs or None,
        interceptors=[metrics.rpc.interceptor()],
        credentials=serving_credentials(
            TlsFiles(config.tls_cert, config.tls_key, config.tls_ca), "aggregator_svc"
        ),
    )
    return AggregatorApp(server=server, metrics=metrics, config=config)
