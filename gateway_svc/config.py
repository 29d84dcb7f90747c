"""gateway_svc configuration (flags, or MOERM_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from moerm.config import option


@dataclass(frozen=True)
class GatewayConfig:
    """Serve OpenRLHF's POST /get_reward over HTTP, scoring with a moerm router."""

    router: str = option("127.0.0.1:50051", "the router's gRPC address HOST:PORT")
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(5000, "HTTP port to bind (0: any free port)")
    port_file: str = option("", "write the bound port to this file once listening")
    policy: str = option("", "routing policy of every request ('' : the router's default)")
    reward_model: str = option("", "reward model of the pool for the fixed policy")
    failed_reward: float = option(
        0.0, "reward given to an item moerm could not score (OpenRLHF needs a number per item)"
    )
    window_ms: float = option(5.0, "how long a request waits for concurrent ones to share one Score call")
    max_items: int = option(256, "most items in one Score call (at most the router's --max-items)")
    max_body_bytes: int = option(64 * 1024 * 1024, "largest request body; larger ones get 413")
    timeout_s: float = option(170.0, "deadline of a Score call (OpenRLHF waits 180 s)")
    log_level: str = option("INFO", "logging level")

    def validate(self) -> None:
        if not self.router:
            raise SystemExit("gateway_svc: --router (or MOERM_ROUTER) is required")
        if self.max_items < 1 or self.max_body_bytes < 1 or self.window_ms < 0 or self.timeout_s <= 0:
            raise SystemExit(
                "gateway_svc: --max-items, --max-body-bytes and --timeout-s must be positive, --window-ms >= 0"
            )
