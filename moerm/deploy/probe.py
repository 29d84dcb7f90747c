"""A gRPC health check for exec probes: ``python -m moerm.deploy.probe``.

Kubelet's native gRPC probe speaks plaintext only, so under mTLS (servers that
require client certificates) the pods probe themselves with this: it presents
the pod's own certificate (``MOERM_TLS_CERT`` / ``MOERM_TLS_KEY`` /
``MOERM_TLS_CA``, the variables the services read) and exits 0 only when
``grpc.health.v1.Health/Check`` answers SERVING.

Modes: mTLS when those variables are set (the default), ``--plaintext``, or
``--public`` (server-only TLS as on the router's public port: trusts
``ca.crt`` beside ``MOERM_PUBLIC_TLS_CERT`` when there, else the system roots).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def credentials(args: argparse.Namespace):
    """Channel credentials for the chosen mode, or None for plaintext."""

    if args.plaintext:
        return None
    if args.public:
        cert = os.environ.get("MOERM_PUBLIC_TLS_CERT", "")
        ca = Path(cert).with_name("ca.crt") if cert else None
        roots = ca.read_bytes() if ca is not None and ca.is_file() else None
        return grpc.ssl_channel_credentials(root_certificates=roots)
    cert, key, ca = (os.environ.get(f"MOERM_TLS_{part}", "") for part in ("CERT", "KEY", "CA"))
    if not (cert and key and ca):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def check(args: argparse.Namespace) -> str:
    """The health status name (SERVING, NOT_SERVING, ...); raises grpc.RpcError."""

    creds = credentials(args)
    if creds is None:
        channel = grpc.insecure_channel(args.address)
    else:
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.address, creds, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moerm.deploy.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--service", default="", help="health service name ('' = the whole server)")
    parser.add_argument("--server-name", default="", help="name the server certificate must carry")
    parser.add_argument("--timeout", type=float, default=3.0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plaintext", action="store_true", help="no TLS")
    mode.add_argument("--public", action="store_true", help="server-only TLS (the router's public port)")
    args = parser.parse_args(argv)

    try:
        status = check(args)
    except grpc.RpcError as error:
        print(f"health check failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"health check failed: {error}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"health: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
