"""An in-process cluster: aggregator, one expert per task and the router, all
real grpc.aio servers on loopback, on one event loop in a background thread.

For tests and notebooks; ``moerm up`` runs the same services as separate
processes (:mod:`moerm.launcher`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aggregator_svc.app import build_aggregator
from aggregator_svc.config import AggregatorConfig
from expert_svc.app import build_expert
from expert_svc.config import ExpertConfig
from moerm.bundle import Bundle
from router_svc.app import build_router
from router_svc.config import RouterConfig

if TYPE_CHECKING:
    from expert_svc.config import ExpertConfig
    from router_svc.app import RouterApp


class LocalCluster:
    """``external_experts``: name -> the config of an extra expert service (e.g. a task
    of another bundle) started in-process and registered with the router as an
    external reward model of that name."""

    def __init__(
        self,
        bundle_dir: str,
        *,
        redis_url: str = "",
        router_overrides: dict | None = None,
        expert_overrides: dict | None = None,
        external_experts: Mapping[str, ExpertConfig] | None = None,
        aggregator_overrides: dict | None = None,
    ):
        self.bundle_dir = str(bundle_dir)
        self.redis_url = redis_url
        self.router_overrides = router_overrides or {}
        self.expert_overrides = expert_overrides or {}
        self.aggregator_overrides = aggregator_overrides or {}
        self.external_configs = dict(external_experts or {})
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="local-cluster", daemon=True)
        self.experts: dict[str, Any] = {}
        self.externals: dict[str, Any] = {}
        self.aggregator = None
        self.router = None
        self.replicas: list[Any] = []  # extra routers from start_replica
        self.router_config = None

    def run(self, coro: Coroutine, timeout: float | None = 300) -> Any:
        """Run a coroutine on the cluster's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.router.server.port}"

    def expert_address(self, task: str) -> str:
        return f"127.0.0.1:{self.experts[task].server.port}"

    def external_address(self, name: str) -> str:
        return f"127.0.0.1:{self.externals[name].server.port}"

    def start(self) -> LocalCluster:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        bundle = Bundle.load(self.bundle_dir)
        self.aggregator = build_aggregator(
            replace(AggregatorConfig(bundle=self.bundle_dir), **self.aggregator_overrides)
        )
        await self.aggregator.start()
        for task in bundle.manifest.tasks:
            config = replace(ExpertConfig(bundle=self.bundle_dir, task=task), **self.expert_overrides)
            app = build_expert(config)
            await app.start()
            self.experts[task] = app
        for name, config in self.external_configs.items():
            app = build_expert(config)
            await app.start()
            self.externals[name] = app
        router_config = RouterConfig(
            bundle=self.bundle_dir,
            experts=tuple(f"{t}={self.expert_address(t)}" for t in self.experts),
            aggregator=f"127.0.0.1:{self.aggregator.port}",
            external=tuple(f"{n}={self.external_address(n)}" for n in self.externals),
            redis_url=self.redis_url,
        )
        self.router_config = replace(router_config, **self.router_overrides)
        self.router = await self._start_router()

    async def _start_router(self) -> RouterApp:
        app = build_router(self.router_config)
        await app.start()
        return app

    def restart_router(self) -> None:
        """Stop the router and start a new one with the same config (and port 0: a new
        port; ``address`` follows). With a shared Redis it resumes the bandit state."""
        self.run(self.router.stop(grace_s=0))
        self.router = self.run(self._start_router())

    def start_replica(self) -> RouterApp:
        """Another router with the same config (same experts, Redis and namespace);
        its address is ``app.address``. Stopped with the cluster."""
        app = self.run(self._start_router())
        self.replicas.append(app)
        return app

    def stop_expert(self, task: str) -> None:
        self.run(self.experts[task].stop(grace_s=0))

    def stop(self) -> None:
        async def _stop():
            for app in (self.router, *self.replicas):
                if app is not None:
                    await app.stop(grace_s=0)
            for app in (*self.experts.values(), *self.externals.values()):
                await app.stop(grace_s=0)
            if self.aggregator is not None:
                await self.aggregator.stop(grace_s=0)

        try:
            self.run(_stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
