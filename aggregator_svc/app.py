"""Assemble an aggregator server from its config (shared by __main__ and tests)."""

from __future__ import annotations

from aggregator_svc.config import AggregatorConfig
from aggregator_svc.servicer import AggregatorServicer
from moerm.bundle import Bundle
from moerm.models.aggregator import Aggregator
from moerm.server import Server, create_server
from moerm.v1 import aggregator_pb2, aggregator_pb2_grpc

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].full_name


def build_aggregator(config: AggregatorConfig) -> Server:
    servicer = AggregatorServicer(Aggregator(Bundle.load(config.bundle)))
    return create_server(
        lambda s: aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=config.host,
        port=config.port,
        max_message_bytes=config.max_message_mb * 1024 * 1024,
        max_concurrent_rpcs=config.max_concurrent_rpcs or None,
    )
