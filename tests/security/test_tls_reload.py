"""A server's certificate files replaced while it runs: the next handshake uses
the new certificate (no restart), and a broken replacement keeps the old one."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moerm.security import SecurityConfigError, TlsFiles, channel_credentials, server_credentials
from moerm.server import create_server
from tests.security.certs import Authority

NAME = "localhost"


async def check(port: int, ca: Path) -> int:
    credentials = channel_credentials(TlsFiles(ca=str(ca)))
    options = [("grpc.ssl_target_name_override", NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status


def swap_in(source: Path, target: Path) -> None:
    """Replace ``target`` as a Secret update does: a new file renamed over it."""
    time.sleep(0.01)  # a new modification time even on coarse clocks
    shutil.copy(source, target.with_suffix(".new"))
    os.replace(target.with_suffix(".new"), target)


async def test_renewed_certificate_is_served_without_restart(tmp_path: Path) -> None:
    old, new = Authority(tmp_path, "old"), Authority(tmp_path, "new")
    first, second = old.issue("first"), new.issue("second")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    handle = create_server(
        lambda server: None, [], credentials=server_credentials(TlsFiles(str(cert), str(key)))
    )
    await handle.start()
    try:
        assert await check(handle.port, old.path) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError):
            await check(handle.port, new.path)
        swap_in(second.cert, cert)
        swap_in(second.key, key)
        assert await check(handle.port, new.path) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError):
            await check(handle.port, old.path)
        # A broken certificate file: the server keeps serving the last good one.
        (tmp_path / "broken").write_text("")
        swap_in(tmp_path / "broken", cert)
        assert await check(handle.port, new.path) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await handle.server.stop(0)


def test_unusable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError, match="a TLS certificate needs its key"):
        TlsFiles(cert=str(tmp_path / "c")).check("expert_svc", server=True)
    with pytest.raises(SecurityConfigError, match=f"expert_svc: TLS certificate {tmp_path / 'missing'}"):
        TlsFiles(str(tmp_path / "missing"), str(tmp_path / "k")).check("expert_svc", server=True)
