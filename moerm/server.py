"""Server start-up shared by the three services: health, reflection, the
error interceptor, binding, and graceful shutdown that drains in-flight calls.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from moerm.errors import ErrorMappingInterceptor

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Default size bound of one message (each service's --max-message-mb): large enough
# for a batch of hidden states between internal services.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def message_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC channel/server options bounding a message in both directions."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


@dataclass
class Server:
    """A bound, not yet started gRPC server and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: tuple[str, ...]
    initially_serving: bool = True

    async def start(self) -> None:
        """Set the initial health status, then start accepting calls (so an
        expert never answers SERVING before its model is loaded)."""
        await self.set_serving(self.initially_serving)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)


def create_server(
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    serving: bool = True,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> Server:
    """Build a grpc.aio server with health, reflection and error mapping.

    ``register`` adds the service's servicers; ``service_names`` are their full
    names (e.g. ``moerm.v1.RewardService``). ``port=0`` binds a free port; the
    bound port is returned. With ``serving=False`` health starts NOT_SERVING
    (an expert until its model is loaded). ``max_message_bytes`` bounds a message;
    beyond ``max_concurrent_rpcs`` calls in progress, new calls are answered
    RESOURCE_EXHAUSTED at once (None: no bound). ``interceptors`` run before the error
    mapping, in order (metrics first, then authentication: :mod:`moerm.metrics`,
    :mod:`moerm.security`). ``credentials``: TLS (:func:`moerm.security.server_credentials`);
    None binds plaintext.
    """
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorMappingInterceptor()],
        options=message_options(max_message_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = tuple(service_names)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    return Server(server=server, port=bound, health=health, service_names=names, initially_serving=serving)


async def run_until_signalled(
    handle: Server,
    *,
    grace_s: float,
    port_file: str | None = None,
    warm_up: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], object] | None = None,
) -> None:
    """Start, serve until SIGINT/SIGTERM, then drain in-flight calls and stop.

    ``warm_up`` (e.g. loading a model) runs after the port is bound; health
    turns SERVING once it returns. On a signal health turns NOT_SERVING first
    (so load balancers stop sending new calls), then ``server.stop(grace_s)``
    lets running calls finish.
    """
    await handle.start()
    if port_file:
        tmp = Path(port_file).with_suffix(".tmp")
        tmp.write_text(str(handle.port))
        tmp.replace(port_file)
    log.info("listening on port %d", handle.port)
    if warm_up is not None:
        await warm_up()
        await handle.set_serving(True)
        log.info("serving")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %.1fs", grace_s)
    await handle.set_serving(False)
    await handle.server.stop(grace_s)
    if on_stop is not None:
        result = on_stop()
        if asyncio.iscoroutine(result):
            await result


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
