"""Assemble an expert server from its config (shared by __main__ and tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from expert_svc.config import ExpertConfig
from expert_svc.hf_scorer import HFScorer
from expert_svc.scorer import ExpertScorer
from expert_svc.servicer import ExpertServicer
from moerm.batching import DynamicBatcher
from moerm.bundle import Bundle
from moerm.metrics import BatcherMetrics, ServiceMetrics, count_items
from moerm.security import TlsFiles, serving_credentials
from moerm.server import Server, create_server
from moerm.v1 import expert_pb2, expert_pb2_grpc

SERVICE_NAME = expert_pb2.DESCRIPTOR.services_by_name["ExpertService"].full_name


@dataclass
class ExpertApp:
    server: Server
    scorer: ExpertScorer | HFScorer
    batcher: DynamicBatcher
    servicer: ExpertServicer
    metrics: ServiceMetrics
    config: ExpertConfig

    async def load(self) -> None:
        """Load the model off the event loop, then start batching."""
        await asyncio.to_thread(self.scorer.load)
        self.batcher.start()

    async def start(self) -> None:
        """Start serving and load the model; health turns SERVING after."""
        self.metrics.serve(self.config.host, self.config.metrics_port)
        await self.server.start()
        await self.load()
        await self.server.set_serving(True)

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.server.set_serving(False)
        await self.server.server.stop(grace_s)
        await self.batcher.stop()
        self.servicer.close()
        self.metrics.stop()


def build_scorer(config: ExpertConfig) -> ExpertScorer | HFScorer:
    if config.hf_model:
        return HFScorer(
            config.hf_model,
            config.served_name,
            max_length=config.max_length,
            torch_threads=config.torch_threads,
            device=config.device,
            dtype=config.dtype,
        )
    return ExpertScorer(
        Bundle.load(config.bundle),
        config.task,
        max_length=config.max_length,
        torch_threads=config.torch_threads,
        device=config.device,
        dtype=config.dtype,
        max_batch_tokens=config.max_batch_tokens,
        prefix_sharing=config.prefix_sharing,
        min_shared_prefix=config.min_shared_prefix,
    )


def build_expert(config: ExpertConfig) -> ExpertApp:
    metrics = ServiceMetrics([SERVICE_NAME], {"ScoreBatch": count_items})
    scorer = build_scorer(config)
    batcher = DynamicBatcher(
        scorer.score,
        max_batch_size=config.max_batch_size,
        max_batch_tokens=config.max_batch_tokens,
        max_delay_s=config.max_queue_delay_ms / 1000.0,
        refill_wait_s=config.refill_wait_ms / 1000.0,
        max_queue_items=config.max_queue_items,
        max_wait_s=config.max_queue_wait_s,
        deadline_share=config.deadline_share,
        metrics=BatcherMetrics(metrics.registry, "moerm_expert", {"task": config.task or config.served_name}),
    )
    servicer = ExpertServicer(
        scorer, batcher, norm=(config.norm_mean, config.norm_std), max_request_items=config.max_request_items
    )
    server = create_server(
        lambda s: expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=config.host,
        port=config.port,
        serving=False,
        max_message_bytes=config.max_message_mb * 1024 * 1024,
        max_concurrent_rpcs=config.max_concurrent_rpcs or None,
        interceptors=[metrics.rpc.interceptor()],
        credentials=serving_credentials(
            TlsFiles(config.tls_cert, config.tls_key, config.tls_ca), "expert_svc"
        ),
    )
    return ExpertApp(
        server=server, scorer=scorer, batcher=batcher, servicer=servicer, metrics=metrics, config=config
    )
