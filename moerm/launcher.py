"""``moerm up``: the services of one bundle as separate processes on loopback.

Starts (in order) the embedded cache and bandit-state servers unless a Redis URL is
given, the aggregator, one expert process per task, the router and, when asked
(``gateway_port``), the HTTP gateway in front of it (OpenRLHF's ``/get_reward``); waits
until each reports SERVING on the gRPC health service (the gateway: ``GET /health``
answers 200); stops them in reverse order with SIGTERM (each drains its in-flight calls).

Supervision: a service that dies is started again with the same command on the same
port, after a backoff that doubles with each restart in a row (1 s up to 30 s; a
service that stayed up for a minute starts over at 1 s); ``restarts`` counts them.
Every service (and embedded server) receives SIGTERM when the launcher dies, whatever
signal killed it (:mod:`moerm.processes`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moerm.bundle import Bundle
from moerm.embedded_redis import EmbeddedRedis
from moerm.processes import child_env

log = logging.getLogger(__name__)


MIN_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
STABLE_AFTER_S = 60.0  # up this long: the next failure starts the backoff over


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    port_file: Path
    log_file: Path
    port: int = 0
    module: str = ""
    args: tuple[str, ...] = field(default_factory=tuple)
    restarts: int = 0  # restarts by the supervisor
    failures_in_a_row: int = 0
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # when a dead child is due to start again

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


def wait_http_ok(url: str, timeout_s: float, child: Child | None = None) -> None:
    """Block until a GET of ``url`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f}s")


class ProcessCluster:
    """Router + aggregator + ``replicas`` expert processes per task (+ embedded cache), and
    the HTTP gateway on ``gateway_port`` (0: any free port; None: no gateway). An expert is
    named ``expert-<task>``, or ``expert-<task>-<k>`` with several replicas."""

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
        state_dir: str | Path | None = None,
        supervise: bool = True,
        replicas: int = 1,
        gateway_port: int | None = None,
    ):
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.bundle = Bundle.load(bundle_dir)
        self.bundle_dir = str(Path(bundle_dir).resolve())
        self.port = port
        self.host = host
        self.redis_url = redis_url
        self.log_level = log_level
        tasks = len(self.bundle.manifest.tasks)
        # The cores go to the experts; the router's prompt embedder runs one torch thread
        # (router_svc --torch-threads 1), so it never oversubscribes them.
        self.torch_threads = torch_threads or max(1, (os.cpu_count() or 1) // max(1, tasks * replicas))
        self.expert_args = tuple(expert_args)
        self.router_args = tuple(router_args)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="moerm-up-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        self.state_redis: EmbeddedRedis | None = None
        self.state_dir = state_dir
        self.router: Child | None = None
        self.gateway_port = gateway_port
        self.gateway: Child | None = None
        self.supervise = supervise
        self.replicas = replicas
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts per service by the supervisor."""
        return {child.name: child.restarts for child in self.children}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.router.port}"

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL (``/get_reward``, ``/health`` under it)."""
        return f"http://{self.host}:{self.gateway.port}"

    def _spawn(self, name: str, module: str, *args: str, port: int = 0) -> Child:
        port_file = self.log_dir / f"{name}.port"
        log_file = self.log_dir / f"{name}.log"
        child = Child(name, None, port_file, log_file, port=port, module=module, args=tuple(args))  # type: ignore[arg-type]
        self._launch(child)
        self.children.append(child)
        return child

    def _launch(self, child: Child) -> None:
        """Start ``child``'s command (on its port once it has one), its output appended to its log."""
        child.port_file.unlink(missing_ok=True)
        module, args, port, port_file = child.module, child.args, child.port, child.port_file
        command = [
            sys.executable,
            "-m",
            module,
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
        env = child_env({**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        with child.log_file.open("ab") as sink:
            child.process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        child.started_at = time.monotonic()

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
        if self.supervise:
            self._supervisor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _watch(self) -> None:
        """Restart children that died, each on its own port, with backoff."""
        while not self._stopping.wait(0.2):
            with self._lock:
                for child in self.children:
                    if self._stopping.is_set() or child.process.poll() is None:
                        continue
                    now = time.monotonic()
                    if child.restart_at is None:
                        up = now - child.started_at
                        child.failures_in_a_row = 1 if up >= STABLE_AFTER_S else child.failures_in_a_row + 1
                        backoff = min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2 ** (child.failures_in_a_row - 1))
                        child.restart_at = now + backoff
                        log.warning(
                            "%s exited with code %s after %.0fs; restarting on port %d in %.0fs:\n%s",
                            child.name,
                            child.process.returncode,
                            up,
                            child.port,
                            backoff,
                            child.log_tail(10),
                        )
                    elif now >= child.restart_at:
                        child.restart_at = None
                        child.restarts += 1
                        self._launch(child)
                        log.warning("%s restarted (restart %d)", child.name, child.restarts)

    def _start(self, timeout_s: float) -> None:
        redis_url = self.redis_url
        state_url = ""
        if not redis_url:
            self.redis = EmbeddedRedis().start()
            redis_url = self.redis.url
            self.state_redis = EmbeddedRedis.for_state(self.state_dir).start()
            state_url = self.state_redis.url
        aggregator = self._spawn("aggregator", "aggregator_svc", "--bundle", self.bundle_dir)
        experts = {
            task: [
                self._spawn(
                    f"expert-{task}" if self.replicas == 1 else f"expert-{task}-{k}",
                    "expert_svc",
                    "--bundle",
                    self.bundle_dir,
                    "--task",
                    task,
                    "--torch-threads",
                    str(self.torch_threads),
                    *self.expert_args,
                )
                for k in range(self.replicas)
            ]
            for task in self.bundle.manifest.tasks
        }
        for child in (aggregator, *(c for replicas in experts.values() for c in replicas)):
            self._wait_port(child, timeout_s)
            wait_serving(f"{self.host}:{child.port}", timeout_s, child)
        endpoints = ",".join(f"{task}={self._target(replicas)}" for task, replicas in experts.items())
        self.router = self._spawn(
            "router",
            "router_svc",
            "--bundle",
            self.bundle_dir,
            "--experts",
            endpoints,
            "--aggregator",
            f"{self.host}:{aggregator.port}",
            "--redis-url",
            redis_url,
            *(("--state-redis-url", state_url) if state_url else ()),
            *self.router_args,
            port=self.port,
        )
        self._wait_port(self.router, timeout_s)
        wait_serving(self.address, timeout_s, self.router)
        if self.gateway_port is not None:
            self.gateway = self._spawn(
                "gateway", "gateway_svc", "--router", self.address, port=self.gateway_port
            )
            self._wait_port(self.gateway, timeout_s)
            wait_http_ok(f"{self.gateway_url}/health", timeout_s, self.gateway)

    def _target(self, replicas: list[Child]) -> str:
        """The router's address of a task's experts: one, or an ``ipv4:`` list (round robin)."""
        if len(replicas) == 1:
            return f"{self.host}:{replicas[0].port}"
        return "ipv4:" + ",".join(f"{self.host}:{child.port}" for child in replicas)

    def stop(self, timeout_s: float = 15) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
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
        for server in (self.redis, self.state_redis):
            if server is not None:
                server.stop()
        self.redis = self.state_redis = None

    def __enter__(self) -> ProcessCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
