"""Prometheus metrics of the services (``prometheus_client``), one registry per
service, served as text on an HTTP port (``--metrics-port``, path ``/metrics``).

Every service counts its gRPC calls with :class:`RpcMetrics` (an interceptor):
``moerm_grpc_requests_total`` and ``moerm_grpc_items_total`` by method and
status code, and ``moerm_grpc_request_seconds`` (latency by method). Health and
reflection calls are not counted. The parts add their own:

- :class:`BatcherMetrics` (expert_svc): ``moerm_expert_queue_items`` (gauge:
  items submitted and not yet finished; the experts' autoscaler reads it) and
  ``moerm_expert_queue_requests`` (requests not yet wholly handed to batches), ``moerm_expert_batch_size``,
  ``moerm_expert_batch_tokens`` and ``moerm_expert_queue_seconds`` (histograms),
  ``moerm_expert_rejected_total`` (queue full), all labelled by ``task``;
- :class:`CacheMetrics` (router_svc): ``moerm_cache_hits_total{tier}``,
  ``moerm_cache_misses_total``, ``moerm_cache_bypasses_total``,
  ``moerm_cache_errors_total{op}``, ``moerm_cache_writes_total``;
- :class:`RouterMetrics` (router_svc): routed items per task, classifier
  fallbacks, scores computed per reward model, bandit updates, bandit-store
  errors, Feedback items per outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

log = logging.getLogger(__name__)

# Seconds: 1 ms .. 2 min (a cold expert's first batch on CPU takes seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

# Items of a request, per method name (methods not named count no items).
ItemCounter = Callable[[Any], int]


def count_items(request: Any) -> int:
    """``len(request.items)``: Score, Feedback and ScoreBatch requests."""
    return len(request.items)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The current value of one sample (0.0 when it has not been recorded yet)."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def render(registry: CollectorRegistry) -> str:
    """The registry in Prometheus' text format (what ``/metrics`` serves)."""
    return generate_latest(registry).decode("utf-8")


class RpcMetrics:
    """Calls, items and latency of one service's gRPC methods.

    ``services``: full names of the services counted (``moerm.v1.RewardService``);
    ``items``: method name -> how many items its request holds.
    """

    def __init__(
        self, registry: CollectorRegistry, services: Iterable[str], items: Mapping[str, ItemCounter]
    ):
        self.services = tuple(services)
        self.items_of = dict(items)
        self.requests = Counter(
            "moerm_grpc_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.items = Counter(
            "moerm_grpc_items",
            "items in the gRPC calls' requests, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "moerm_grpc_request_seconds",
            "time from a call's arrival to its answer, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def method_name(self, full_method: str) -> str | None:
        """``/moerm.v1.RewardService/Score`` -> ``Score``; None for services not counted."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        return method if service in self.services else None

    def record(self, method: str, code: grpc.StatusCode, items: int, seconds: float) -> None:
        self.requests.labels(method, code.name).inc()
        if items:
            self.items.labels(method, code.name).inc(items)
        self.latency.labels(method).observe(seconds)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return MetricsInterceptor(self)


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The call's final status: what the handler or an abort set, else OK for a
    return, CANCELLED for a cancelled call, UNKNOWN for any other exception."""
    code = context.code()
    if isinstance(code, int):  # the status as a number
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if code is not None and code != grpc.StatusCode.OK:
        return code
    if error is None:
        return grpc.StatusCode.OK
    return grpc.StatusCode.CANCELLED if isinstance(error, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary call of the services of :class:`RpcMetrics`. Put it first
    (outermost), so that calls refused by later interceptors (authentication) and
    errors mapped to statuses are counted with their final code."""

    def __init__(self, metrics: RpcMetrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = self.metrics.method_name(handler_call_details.method)
        if handler is None or handler.unary_unary is None or method is None:
            return handler
        behavior = handler.unary_unary
        metrics = self.metrics
        items_of = metrics.items_of.get(method)

        async def counted(request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            error = None
            try:
                return await behavior(request, context)
            except BaseException as raised:  # counted, then raised on
                error = raised
                raise
            finally:
                try:
                    items = items_of(request) if items_of is not None else 0
                except Exception:  # a malformed request still counts as a call
                    items = 0
                metrics.record(method, _code(context, error), items, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class BatcherMetrics:
    """A :class:`moerm.batching.DynamicBatcher`'s queue and batches. ``prefix``
    names the metrics (``moerm_expert`` -> ``moerm_expert_queue_items``);
    ``labels`` are constant labels of every sample (``{"task": "code"}``)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        prefix: str = "moerm_batcher",
        labels: Mapping[str, str] | None = None,
    ):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = dict(labels or {})
        names = list(self.labels)

        def labelled(metric):
            return metric.labels(**self.labels) if names else metric

        r = self.registry
        self.queue_items = labelled(
            Gauge(f"{prefix}_queue_items", "items submitted and not yet finished", names, registry=r)
        )
        self.queue_requests = labelled(
            Gauge(f"{prefix}_queue_requests", "requests not yet wholly handed to batches", names, registry=r)
        )
        self.batch_size = labelled(
            Histogram(
                f"{prefix}_batch_size", "items per batch", names, buckets=BATCH_SIZE_BUCKETS, registry=r
            )
        )
        self.batch_tokens = labelled(
            Histogram(
                f"{prefix}_batch_tokens",
                "tokens per batch (the cost the batcher packs by)",
                names,
                buckets=BATCH_TOKEN_BUCKETS,
                registry=r,
            )
        )
        self.queue_seconds = labelled(
            Histogram(
                f"{prefix}_queue_seconds",
                "time from a request's arrival until its first items run",
                names,
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.rejected = labelled(
            Counter(f"{prefix}_rejected", "requests refused because the queue was full", names, registry=r)
        )
        self.rejected_late = labelled(
            Counter(
                f"{prefix}_rejected_late",
                "requests refused at once: not expected to finish within their deadline or max_wait_s",
                names,
                registry=r,
            )
        )

    def watch(self, queued_items: Callable[[], float], queued_requests: Callable[[], float]) -> None:
        """Read the queue gauges from the batcher at scrape time."""
        self.queue_items.set_function(queued_items)
        self.queue_requests.set_function(queued_requests)


class CacheMetrics:
    """Lookups and writes of :class:`moerm.cache.ScoreCache` (scores and prompt
    embeddings alike: one lookup per key)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.hits = Counter(
            "moerm_cache_hits", "keys found, by tier (local: in-process, redis)", ["tier"], registry=r
        )
        self.misses = Counter("moerm_cache_misses", "keys not found", registry=r)
        self.bypasses = Counter(
            "moerm_cache_bypasses", "cache calls skipped while backing off after an error", registry=r
        )
        self.errors = Counter("moerm_cache_errors", "cache calls that failed, by op", ["op"], registry=r)
        self.writes = Counter("moerm_cache_writes", "entries written to Redis", registry=r)
        for tier in ("local", "redis"):
            self.hits.labels(tier)
        for op in ("read", "write"):
            self.errors.labels(op)


class RouterMetrics:
    """What the router decides: routes, reward models, bandits, Feedback."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.routed = Counter(
            "moerm_router_routed_items", "scored items by the task of their result", ["task"], registry=r
        )
        self.fallbacks = Counter(
            "moerm_router_fallbacks", "items the classifier routed by its fallback rule", registry=r
        )
        self.scores_computed = Counter(
            "moerm_router_scores_computed",
            "scores computed by a reward model (cache misses), by reward model",
            ["reward_model"],
            registry=r,
        )
        self.bandit_updates = Counter(
            "moerm_bandit_updates", "Feedback rewards applied to a bandit by this replica", registry=r
        )
        self.bandit_store_errors = Counter(
            "moerm_bandit_store_errors",
            "bandit-store calls that failed (choices fell back to local state)",
            registry=r,
        )
        self.feedback = Counter("moerm_feedback_items", "Feedback items by outcome", ["outcome"], registry=r)
        self.task_live = Gauge(
            "moerm_router_task_live",
            "1 while a task's experts are reachable, 0 while none is (its calls fail fast)",
            ["task"],
            registry=r,
        )


@dataclass
class MetricsServer:
    """The HTTP server of ``/metrics`` (a daemon thread)."""

    server: Any
    thread: Any

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` (port 0: any free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    handle = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", host, handle.port)
    return handle


class ServiceMetrics:
    """One service's registry, its gRPC call metrics and its ``/metrics`` server."""

    def __init__(self, services: Iterable[str], items: Mapping[str, ItemCounter]):
        self.registry = CollectorRegistry()
        self.rpc = RpcMetrics(self.registry, services, items)
        self.http: MetricsServer | None = None

    def serve(self, host: str, port: int) -> int | None:
        """Start ``/metrics`` on ``host:port`` unless ``port`` is negative (off);
        returns the bound port. Starting twice serves once."""
        if self.http is None and port >= 0:
            self.http = serve_metrics(self.registry, host, port)
        return None if self.http is None else self.http.port

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
