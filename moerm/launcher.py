"""``moerm up``: the services of one bundle as separate processes on loopback.

Starts (in order) the embedded cache unless a Redis URL is given, the
aggregator, one expert process per task, then the router; waits until each
reports SERVING on the gRPC health service; stops them in reverse order with
SIGTERM (each drains its in-flight calls).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moerm.bundle import Bundle
from moerm.embedded_redis import EmbeddedRedis

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    port_file: Path
    log_file: Path
    port: int = 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_serving(address: str, timeout_s: float, child: Child | None = None) -> None:
    """Block until ``address`` answers SERVING on the health service."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child is not None and child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not become SERVING within {timeout_s:.0f}s")


class ProcessCluster:
    """Router + aggregator + one expert process per task (+ embedded cache)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        redis_url: str = "",
        torch_threads: int = 0,
        log_dir: str | Path | None = None,
        log_level: str = "INFO",
        expert_args: Sequence[str] = (),
        router_args: Sequence[str] = (),
    ):
        self.bundle = Bundle.load(bundle_dir)
        self.bundle_dir = str(Path(bundle_dir).resolve())
        self.port = port
        self.host = host
        self.redis_url = redis_url
        self.log_level = log_level
        tasks = len(self.bundle.manifest.tasks)
        # The cores go to the experts; the router's prompt embedder runs one torch thread
        # (router_svc --torch-threads 1), so it never oversubscribes them.
        self.torch_threads = torch_threads or max(1, (os.cpu_count() or 1) // max(1, tasks))
        self.expert_args = tuple(expert_args)
        self.router_args = tuple(router_args)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="moerm-up-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        self.router: Child | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.router.port}"

    def _spawn(self, name: str, module: str, *args: str, port: int = 0) -> Child:
        port_file = self.log_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        log_file = self.log_dir / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            module,
            "--bundle",
            self.bundle_dir,
            "--host",
            self.host,
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            "--log-level",
            self.log_level,
            *args,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with log_file.open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        child = Child(name, process, port_file, log_file)
        self.children.append(child)
        return child

    def _wait_port(self, child: Child, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.port_file.is_file():
                child.port = int(child.port_file.read_text())
                return child.port
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{child.name} did not bind a port within {timeout_s:.0f}s:\n{child.log_tail()}")

    def start(self, timeout_s: float = 600) -> ProcessCluster:
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        redis_url = self.redis_url
        if not redis_url:
            self.redis = EmbeddedRedis().start()
            redis_url = self.redis.url
        aggregator = self._spawn("aggregator", "aggregator_svc")
        experts = {
            task: self._spawn(
                f"expert-{task}",
                "expert_svc",
                "--task",
                task,
                "--torch-threads",
                str(self.torch_threads),
                *self.expert_args,
            )
            for task in self.bundle.manifest.tasks
        }
        for child in (aggregator, *experts.values()):
            self._wait_port(child, timeout_s)
            wait_serving(f"{self.host}:{child.port}", timeout_s, child)
        endpoints = ",".join(f"{task}={self.host}:{child.port}" for task, child in experts.items())
        self.router = self._spawn(
            "router",
            "router_svc",
            "--experts",
            endpoints,
            "--aggregator",
            f"{self.host}:{aggregator.port}",
            "--redis-url",
            redis_url,
            *self.router_args,
            port=self.port,
        )
        self._wait_port(self.router, timeout_s)
        wait_serving(self.address, timeout_s, self.router)

    def stop(self, timeout_s: float = 15) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> ProcessCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
