"""router_svc configuration (flags, or MOERM_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from moerm.config import option

POLICIES = ("task", "fixed")


def parse_endpoints(pairs: tuple[str, ...]) -> dict[str, str]:
    """("code=host:port", ...) -> {"code": "host:port"}."""
    endpoints = {}
    for pair in pairs:
        task, sep, address = pair.partition("=")
        if not sep or not task or not address:
            raise SystemExit(f"router_svc: expected TASK=HOST:PORT, got {pair!r}")
        endpoints[task.strip()] = address.strip()
    return endpoints


@dataclass(frozen=True)
class RouterConfig:
    """Serve moerm.v1.RewardService: validate, cache, route, fan out to experts."""

    bundle: str = option("", "bundle directory")
    experts: tuple[str, ...] = option(
        (), "expert addresses, TASK=HOST:PORT, comma-separated (dns:/// targets round-robin)"
    )
    aggregator: str = option("", "aggregator address HOST:PORT")
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(0, "port to bind (0: any free port)")
    port_file: str = option("", "write the bound port to this file once listening")
    redis_url: str = option(
        "", "score cache: redis://HOST:PORT/DB; empty starts an embedded server; 'off' disables"
    )
    cache_ttl_s: int = option(86400, "seconds a cached score lives")
    cache_namespace: str = option("", "prefix of every cache key (clusters sharing one Redis)")
    cache_timeout_ms: float = option(250.0, "a cache call slower than this is bypassed")
    default_policy: str = option("task", f"routing policy when a request names none ({', '.join(POLICIES)})")
    max_items: int = option(1024, "most items in one Score request")
    max_text_chars: int = option(32768, "longest prompt, message or response, in characters")
    default_timeout_s: float = option(60.0, "deadline for downstream calls when the caller sets none")
    grace_s: float = option(10.0, "seconds to drain in-flight calls on shutdown")
    log_level: str = option("INFO", "logging level")

    def validate(self) -> None:
        if not self.bundle:
            raise SystemExit("router_svc: --bundle (or MOERM_BUNDLE) is required")
        if not self.aggregator:
            raise SystemExit("router_svc: --aggregator (or MOERM_AGGREGATOR) is required")
        if self.default_policy not in POLICIES:
            raise SystemExit(f"router_svc: unknown default policy {self.default_policy!r}")
        parse_endpoints(self.experts)
        if self.max_items < 1 or self.max_text_chars < 1:
            raise SystemExit("router_svc: max_items and max_text_chars must be positive")

    @property
    def expert_endpoints(self) -> dict[str, str]:
        return parse_endpoints(self.experts)
