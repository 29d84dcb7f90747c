"""Assemble a router server from its config (shared by __main__ and tests)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from moerm.bundle import Bundle
from moerm.cache import ScoreCache
from moerm.embedded_redis import EmbeddedRedis
from moerm.server import Server, create_server
from moerm.v1 import reward_pb2, reward_pb2_grpc
from router_svc.classifier import TaskClassifier
from router_svc.config import RouterConfig
from router_svc.router import Router
from router_svc.servicer import RewardServicer

log = logging.getLogger(__name__)

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


@dataclass
class RouterApp:
    server: Server
    router: Router
    embedded_redis: EmbeddedRedis | None = None

    async def load(self) -> None:
        await asyncio.to_thread(self.router.classifier.load)

    async def start(self) -> None:
        await self.server.start()
        await self.load()
        await self.server.set_serving(True)

    async def close(self) -> None:
        await self.router.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.server.set_serving(False)
        await self.server.server.stop(grace_s)
        await self.close()


def build_router(config: RouterConfig, embedder=None) -> RouterApp:
    """Must run inside the event loop (it opens grpc.aio channels)."""
    bundle = Bundle.load(config.bundle)
    embedded = None
    url: str | None = config.redis_url
    if url == "off":
        url = None
    elif not url:
        embedded = EmbeddedRedis().start()
        url = embedded.url
        log.info("score cache: embedded server at %s", url)
    cache = ScoreCache(
        url,
        ttl_s=config.cache_ttl_s,
        timeout_s=config.cache_timeout_ms / 1000.0,
        namespace=config.cache_namespace,
    )
    router = Router(config, bundle, TaskClassifier(bundle, embedder), cache)
    servicer = RewardServicer(router)
    server = create_server(
        lambda s: reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=config.host,
        port=config.port,
        serving=False,
    )
    return RouterApp(server=server, router=router, embedded_redis=embedded)
