"""aggregator_svc configuration (flags, or MOERM_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from moerm.config import option


@dataclass(frozen=True)
class AggregatorConfig:
    """Serve the bundle's aggregator MLPs and reward normalization."""

    bundle: str = option("", "bundle directory")
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(0, "port to bind (0: any free port)")
    port_file: str = option("", "write the bound port to this file once listening")
    max_message_mb: int = option(64, "largest gRPC message received or sent, in MiB")
    max_concurrent_rpcs: int = option(
        0, "calls in progress beyond which new ones get RESOURCE_EXHAUSTED (0: no bound)"
    )
    metrics_port: int = option(-1, "HTTP port of Prometheus /metrics on --host (0: any free port, -1: off)")
    tls_cert: str = option("", "PEM certificate this service serves (with --tls-key; mTLS with --tls-ca)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_ca: str = option("", "PEM CA whose client certificates are required (mutual TLS)")
    grace_s: float = option(5.0, "seconds to drain in-flight calls on shutdown")
    log_level: str = option("INFO", "logging level")

    def validate(self) -> None:
        if not self.bundle:
            raise SystemExit("aggregator_svc: --bundle (or MOERM_BUNDLE) is required")
        if not -1 <= self.metrics_port <= 65535:
            raise SystemExit("aggregator_svc: --metrics-port must be -1 (off), 0 (any) or a port")
