"""Assemble a router server from its config (shared by __main__ and tests)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from moerm.bundle import Bundle
from moerm.cache import ScoreCache
from moerm.devices import resolve
from moerm.embedded_redis import EmbeddedRedis
from moerm.metrics import CacheMetrics, RouterMetrics, ServiceMetrics, count_items
from moerm.models.classifier import TaskClassifier
from moerm.routing.policies import Hyperparameters
from moerm.routing.pool import RewardModelPool, build_pool
from moerm.routing.prior import OfflineRouter
from moerm.routing.state import RoutingState
from moerm.routing.store import BanditStore
from moerm.security import (
    FEEDBACK,
    SCORE,
    SecurityConfigError,
    TlsFiles,
    TokenAuthInterceptor,
    TokenFile,
    channel_credentials,
    serving_credentials,
)
from moerm.server import NOT_SERVING, SERVING, Server, create_server
from moerm.v1 import reward_pb2, reward_pb2_grpc
from router_svc.config import RouterConfig
from router_svc.fanout import Downstream
from router_svc.router import Router
from router_svc.servicer import RewardServicer

log = logging.getLogger(__name__)

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


TASK_HEALTH_PERIOD_S = 1.0


def task_service_name(task: str) -> str:
    """The health service name that says whether ``task`` has a live expert."""
    return f"{SERVICE_NAME}/{task}"


@dataclass
class RouterApp:
    server: Server
    router: Router
    metrics: ServiceMetrics
    config: RouterConfig
    embedded_redis: EmbeddedRedis | None = None
    embedded_state: EmbeddedRedis | None = None
    _health_task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def load(self) -> None:
        await self.router.load()
        await self.report_tasks()
        self._health_task = asyncio.get_running_loop().create_task(self._watch_tasks(), name="task-health")

    async def report_tasks(self) -> None:
        """Each task's health name SERVING while its experts are live, else NOT_SERVING
        (the router itself stays SERVING: other tasks and ensembles still answer); the
        same as the gauge ``moerm_router_task_live``."""
        for task in self.router.bundle.manifest.tasks:
            live = self.router.downstream.live(task)
            await self.server.health.set(task_service_name(task), SERVING if live else NOT_SERVING)
            self.router.metrics.task_live.labels(task).set(1 if live else 0)

    async def _watch_tasks(self) -> None:
        while True:
            await asyncio.sleep(TASK_HEALTH_PERIOD_S)
            await self.report_tasks()

    async def start(self) -> None:
        self.metrics.serve(self.config.host, self.config.metrics_port)
        await self.server.start()
        await self.load()
        await self.server.set_serving(True)

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        await self.router.close()
        for server in (self.embedded_redis, self.embedded_state):
            if server is not None:
                server.stop()
        self.metrics.stop()

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.server.set_serving(False)
        await self.server.server.stop(grace_s)
        await self.close()


def thompson_prior(path: str, pool: RewardModelPool, dim: int) -> np.ndarray | None:
    """Thompson's prior mean (K, d) from an offline router file (moerm.routing.prior);
    arms it does not know get a zero prior."""
    if not path:
        return None
    offline = OfflineRouter.load(path)
    if offline.weights.shape[1] != dim:
        raise SystemExit(
            f"router_svc: {path}: prior over {offline.weights.shape[1]} dims, contexts have {dim}"
        )
    unknown = sorted(set(pool.names) - set(offline.arms))
    if unknown:
        log.warning("offline router %s has no prior for %s (zero prior)", path, unknown)
    prior = np.zeros((len(pool), dim))
    for k, name in enumerate(pool.names):
        if name in offline.arms:
            prior[k] = offline.prior_mean()[offline.arms.index(name)]
    return prior


def hyperparameters(config: RouterConfig, pool: RewardModelPool, dim: int) -> Hyperparameters:
    """What the routing policies are built with, from the router's flags."""
    return Hyperparameters(
        alpha=config.linucb_alpha,
        lam=config.linucb_lambda,
        lam0=config.thompson_lambda0,
        prior_mean=thompson_prior(config.thompson_prior, pool, dim),
        uwo_lambda=config.uwo_lambda,
    )


def bandit_state(
    config: RouterConfig, url: str, pool: RewardModelPool, hyper: Hyperparameters, dim: int
) -> RoutingState:
    """The bandits over ``pool``, kept in the Redis at ``url`` under the cache namespace."""

    timeout = config.bandit_timeout_ms / 1000.0
    # A connection the server closed (it restarted) is retried on a new one, up to three
    # times within about a second; a timeout is not (it already took bandit_timeout_ms).
    # Retrying is safe: the append is once per id, and reads change nothing.
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(redis.ConnectionError,))
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    store = BanditStore(client, namespace=config.cache_namespace, ttl_s=config.decision_ttl_s)
    return RoutingState(
        pool.names,
        dim,
        store,
        hyperparameters=hyper,
        seed=config.bandit_seed,
        compact_every=config.compact_every,
    )


def method_scopes() -> dict[str, str]:
    """The token scope each RewardService method needs."""
    return {f"/{SERVICE_NAME}/Score": SCORE, f"/{SERVICE_NAME}/Feedback": FEEDBACK}


def security(config: RouterConfig):
    """(server credentials of the public port, interceptors, channel credentials to
    the experts and aggregator) from the flags; exits naming a file that cannot be used."""
    try:
        public = TlsFiles(config.public_tls_cert, config.public_tls_key)
        internal = TlsFiles(config.tls_cert, config.tls_key, config.tls_ca)
        internal.check("router_svc (to experts and aggregator)", server=False)
        server_credentials = serving_credentials(public, "router_svc (public port)")
        client_credentials = channel_credentials(internal) if internal.enabled else None
        tokens = TokenFile(config.auth_tokens) if config.auth_tokens else None
    except SecurityConfigError as error:
        raise SystemExit(f"router_svc: {error}") from None
    if tokens is None:
        log.warning("no --auth-tokens: any caller that reaches the port may call Score and Feedback")
    else:
        log.info("token authentication: %d tokens from %s", len(tokens), config.auth_tokens)
    interceptors = [TokenAuthInterceptor(tokens, method_scopes())] if tokens is not None else []
    return server_credentials, interceptors, client_credentials


def build_router(config: RouterConfig, embedder=None) -> RouterApp:
    """Must run inside the event loop (it opens grpc.aio channels)."""
    if config.cluster and config.redis_url in ("", "off"):
        raise SystemExit("router_svc: cluster mode needs a shared Redis (--redis-url)")
    server_credentials, auth, client_credentials = security(config)
    metrics = ServiceMetrics([SERVICE_NAME], {"Score": count_items, "Feedback": count_items})
    bundle = Bundle.load(config.bundle)
    try:
        pool = build_pool(bundle.manifest, externals=config.external_endpoints, norms=config.norms)
    except ValueError as error:
        raise SystemExit(f"router_svc: {error}") from None
    embedded = None
    url: str | None = config.redis_url
    if url == "off":
        url = None
    elif not url:
        embedded = EmbeddedRedis().start()
        url = embedded.url
        log.info("score cache: embedded server at %s", url)
    state_url = None
    embedded_state = None
    if url is not None:
        # Bandit state never shares the cache's eviction: a flood of new scores must not
        # evict feedback markers (a retried Feedback would apply twice) or decisions.
        state_url = config.state_redis_url or (config.redis_url if embedded is None else "")
        if not state_url:
            embedded_state = EmbeddedRedis.for_state(config.state_dir or None).start()
            state_url = embedded_state.url
            where = (
                f"persisted in {config.state_dir}"
                if config.state_dir
                else "in memory only (--state-dir keeps it)"
            )
            log.info("bandit state: embedded server at %s that never evicts, %s", state_url, where)
    cache = ScoreCache(
        url,
        ttl_s=config.cache_ttl_s,
        timeout_s=config.cache_timeout_ms / 1000.0,
        namespace=config.cache_namespace,
        metrics=CacheMetrics(metrics.registry),
    )
    dim = bundle.manifest.router.embed_dim
    hyper = hyperparameters(config, pool, dim)
    state = bandit_state(config, state_url, pool, hyper, dim) if state_url else None
    downstream = Downstream(
        config.expert_endpoints,
        config.aggregator,
        config.external_endpoints,
        credentials=client_credentials,
        server_name=config.tls_server_name,
        wait_for_ready=config.cluster,
    )
    try:
        placement = resolve("cpu", config.embed_dtype)
    except ValueError as error:
        raise SystemExit(f"router_svc: {error}") from None
    classifier = TaskClassifier(
        bundle,
        embedder,
        max_tokens=config.embed_max_tokens,
        placement=placement,
        threads=config.torch_threads,
    )
    log.info("prompt embedder: %s, %d tokens", placement, classifier.max_tokens)
    router = Router(
        config,
        bundle,
        classifier,
        cache,
        downstream,
        pool,
        state,
        hyper,
        metrics=RouterMetrics(metrics.registry),
    )
    servicer = RewardServicer(router)
    server = create_server(
        lambda s: reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=config.host,
        port=config.port,
        serving=False,
        max_message_bytes=config.max_message_mb * 1024 * 1024,
        max_concurrent_rpcs=config.max_concurrent_rpcs or None,
        interceptors=[metrics.rpc.interceptor(), *auth],
        credentials=server_credentials,
    )
    return RouterApp(
        server=server,
        router=router,
        metrics=metrics,
        config=config,
        embedded_redis=embedded,
        embedded_state=embedded_state,
    )
