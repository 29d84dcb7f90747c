"""The gateway: OpenRLHF's remote reward-model protocol over HTTP (starlette + uvicorn).

``POST /get_reward`` takes ``{"query": [...], "prompts": [...], "labels": [...]}``
(``query``: the decoded prompt + response with the chat template kept; ``prompts``
optional, ``labels`` accepted and unused) and answers ``{"rewards": [...], "scores":
[...], "extra_logs": {"moerm_ok": [...], "moerm_truncated": [...]}, "errors": [...]}``.
Each query is split back into turns and a response
(:func:`moerm.integrations.templates.split_query`) so the expert applies its own
backbone's template once. Items are scored with per-item outcomes through a
:class:`~moerm.integrations.coalescing.CoalescingClient`, so concurrent requests of
several trainer workers share Score calls. ``GET /health`` is 200 while the router's
gRPC health check says SERVING, else 503. A router with tokens or TLS is reached with
``MOERM_TOKEN`` (or ``MOERM_TOKEN_FILE``) and ``MOERM_ROUTER_TLS*``
(:func:`moerm.client.connection_from_env`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import asynccontextmanager

import grpc
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway_svc.config import GatewayConfig
from moerm.client import channel_options, connection_from_env
from moerm.integrations.coalescing import CoalescingClient
from moerm.integrations.templates import split_query
from moerm.v1 import reward_pb2, tensor_pb2

log = logging.getLogger(__name__)

# gRPC status of a failed Score call -> HTTP status (OpenRLHF retries on any failure).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
MAX_DETAIL_CHARS = 1024


class BadRequest(Exception):
    def __init__(self, field: str, description: str):
        super().__init__(f"{field}: {description}")
        self.field, self.description = field, description


def error_response(status: int, code: str, message: str, field: str = "") -> JSONResponse:
    body = {"error": {"code": code, "message": message[:MAX_DETAIL_CHARS]}}
    if field:
        body["error"]["field"] = field
    return JSONResponse(body, status_code=status)


def parse_body(data: object) -> tuple[list[str], list[str | None]]:
    """(queries, prompts) of a /get_reward body; BadRequest names the field at fault."""
    if not isinstance(data, dict):
        raise BadRequest("body", "expected a JSON object with a 'query' list")
    queries = data.get("query")
    if not isinstance(queries, list):
        raise BadRequest("query", "expected a list of strings")
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise BadRequest(f"query[{i}]", f"expected a string, got {type(query).__name__}")
    prompts = data.get("prompts")
    if prompts is None:
        prompts = [None] * len(queries)
    if not isinstance(prompts, list) or len(prompts) != len(queries):
        raise BadRequest("prompts", f"expected a list of {len(queries)} strings (one per query) or nothing")
    for i, prompt in enumerate(prompts):
        if prompt is not None and not isinstance(prompt, str):
            raise BadRequest(f"prompts[{i}]", f"expected a string, got {type(prompt).__name__}")
    return queries, prompts


class Gateway:
    """The starlette app (``self.app``) over one :class:`CoalescingClient`."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.client: CoalescingClient | None = None
        self._health_channel: grpc.aio.Channel | None = None
        self.app = Starlette(
            routes=[
                Route("/get_reward", self.get_reward, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app):
        config = self.config
        connection = connection_from_env()
        self.client = CoalescingClient(
            config.router,
            policy=config.policy,
            reward_model=config.reward_model,
            window_ms=config.window_ms,
            max_items=config.max_items,
            timeout_s=config.timeout_s,
            raise_errors=True,
            **connection,
        )
        options = channel_options(connection["server_name"])
        self._health_channel = (
            grpc.aio.insecure_channel(config.router, options=options)
            if connection["credentials"] is None
            else grpc.aio.secure_channel(config.router, connection["credentials"], options=options)
        )
        try:
            yield
        finally:
            await self._health_channel.close()
            self.client.close()

    async def health(self, request: Request) -> JSONResponse:
        stub = health_pb2_grpc.HealthStub(self._health_channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError as error:
            return JSONResponse({"status": "unavailable", "router": error.code().name}, status_code=503)
        return JSONResponse(
            {"status": "ok" if serving else "not_serving"}, status_code=200 if serving else 503
        )

    async def get_reward(self, request: Request) -> JSONResponse:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return error_response(413, "PAYLOAD_TOO_LARGE", f"the body exceeds {limit} bytes")
        body = await request.body()
        if len(body) > limit:
            return error_response(413, "PAYLOAD_TOO_LARGE", f"the body exceeds {limit} bytes")
        try:
            queries, prompts = parse_body(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return error_response(400, "INVALID_ARGUMENT", f"the body is not JSON: {error}", "body")
        except BadRequest as error:
            return error_response(400, "INVALID_ARGUMENT", error.description, error.field)
        started = time.perf_counter()
        items, rows, errors = [], [], {}
        for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
            try:
                split = split_query(query, prompt)
            except ValueError as error:
                errors[i] = {"code": "INVALID_ARGUMENT", "field": f"query[{i}]", "description": str(error)}
                continue
            messages = [tensor_pb2.Message(role=m["role"], content=m["content"]) for m in split.messages]
            items.append(reward_pb2.ScoreItem(messages=messages, response=split.response))
            rows.append(i)
        try:
            outcomes = await self.client.score(items) if items else []
        except grpc.RpcError as error:
            status = HTTP_STATUS.get(error.code(), 503)
            return error_response(status, error.code().name, str(error.details()))
        rewards: list[float] = [self.config.failed_reward] * len(queries)
        ok, truncated = [0.0] * len(queries), [0.0] * len(queries)
        for i, outcome in zip(rows, outcomes, strict=True):
            if outcome.ok:
                rewards[i], ok[i], truncated[i] = outcome.reward, 1.0, float(outcome.truncated)
            else:  # one query is one item; the description names the part at fault
                errors[i] = {"code": outcome.code, "field": f"query[{i}]", "description": outcome.error}
        if errors:
            log.warning("get_reward: %d of %d items not scored", len(errors), len(queries))
        log.debug("get_reward: %d items in %.1f ms", len(queries), 1000 * (time.perf_counter() - started))
        return JSONResponse(
            {
                "rewards": rewards,
                "scores": rewards,
                "extra_logs": {"moerm_ok": ok, "moerm_truncated": truncated},
                "errors": [{"index": i, **errors[i]} for i in sorted(errors)],
            }
        )


class GatewayServer:
    """uvicorn serving a :class:`Gateway` on a thread of its own (tests, notebooks);
    ``python -m gateway_svc`` runs it in the foreground."""

    def __init__(self, config: GatewayConfig):
        self.gateway = Gateway(config)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.gateway.app,
                host=config.host,
                port=config.port,
                log_level=config.log_level.lower(),
                lifespan="on",
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.gateway.config.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> GatewayServer:
        self._thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway_svc did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
