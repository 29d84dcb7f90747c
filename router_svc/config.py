"""router_svc configuration (flags, or MOERM_* environment variables)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from moerm.config import option
from moerm.devices import DTYPES
from moerm.routing import policies


def parse_endpoints(pairs: tuple[str, ...], what: str = "TASK") -> dict[str, str]:
    """("code=host:port", ...) -> {"code": "host:port"}. An address list of replicas,
    ``code=ipv4:HOST:PORT,HOST:PORT``, arrives split at its commas: a part without ``=``
    after an ``ipv4:``/``ipv6:`` address continues that list."""
    endpoints: dict[str, str] = {}
    last = ""
    for pair in pairs:
        name, sep, address = pair.partition("=")
        if not sep and last and endpoints[last].startswith(("ipv4:", "ipv6:")) and pair.strip():
            endpoints[last] += "," + pair.strip()
            continue
        if not sep or not name.strip() or not address.strip():
            raise SystemExit(f"router_svc: expected {what}=HOST:PORT, got {pair!r}")
        last = name.strip()
        endpoints[last] = address.strip()
    return endpoints


def parse_norms(pairs: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """("base:code=0.1:2.0", ...) -> {"base:code": (0.1, 2.0)}: a reward model's
    reference mean and standard deviation."""
    norms = {}
    for pair in pairs:
        name, _, values = pair.rpartition("=")
        mean, sep, std = values.partition(":")
        try:
            parsed = (float(mean), float(std))
        except ValueError:
            parsed = None
        if not name or not sep or parsed is None or not all(map(math.isfinite, parsed)) or parsed[1] <= 0:
            raise SystemExit(
                f"router_svc: expected NAME=MEAN:STD with a finite mean and STD > 0, got {pair!r}"
            )
        norms[name.strip()] = parsed
    return norms


@dataclass(frozen=True)
class RouterConfig:
    """Serve moerm.v1.RewardService: validate, cache, route, fan out to experts."""

    bundle: str = option("", "bundle directory")
    experts: tuple[str, ...] = option(
        (),
        "expert addresses, TASK=HOST:PORT, comma-separated; replicas: TASK=ipv4:HOST:PORT,HOST:PORT "
        "or a dns:/// target (round-robin)",
    )
    aggregator: str = option("", "aggregator address HOST:PORT")
    external: tuple[str, ...] = option(
        (),
        "external reward models, comma-separated: NAME=HOST:PORT (moerm.v1.ExpertService) or "
        "NAME=http(s)://HOST:PORT/PATH (OpenRLHF's /get_reward protocol)",
    )
    rm_norm: tuple[str, ...] = option(
        (), "reward-model normalization, NAME=MEAN:STD, comma-separated (base: and external members)"
    )
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(0, "port to bind (0: any free port)")
    port_file: str = option("", "write the bound port to this file once listening")
    metrics_port: int = option(-1, "HTTP port of Prometheus /metrics on --host (0: any free port, -1: off)")
    cluster: bool = option(
        False, "cluster mode: refuse to start without a shared --redis-url (replicas share bandit state)"
    )
    auth_tokens: str = option(
        "", "token file, 'TOKEN SCOPE[,SCOPE]' a line (scopes score, feedback); '' = no authentication"
    )
    public_tls_cert: str = option("", "PEM certificate of the public port (TLS; '' = plaintext)")
    public_tls_key: str = option("", "PEM private key of --public-tls-cert")
    tls_cert: str = option("", "PEM client certificate presented to experts and aggregator (mTLS)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_ca: str = option("", "PEM CA that signed the experts' and aggregator's certificates (TLS to them)")
    tls_server_name: str = option(
        "", "name the internal services' certificates must carry ('' = each address's host name)"
    )
    redis_url: str = option(
        "",
        "score cache and bandit state: redis://HOST:PORT/DB; empty starts an embedded server; "
        "'off' disables both (no bandit policies, no Feedback)",
    )
    cache_ttl_s: int = option(86400, "seconds a cached score lives")
    cache_namespace: str = option(
        "", "prefix of every cache and bandit key (clusters sharing one Redis; replicas share it)"
    )
    cache_timeout_ms: float = option(250.0, "a cache call slower than this is bypassed")
    default_policy: str = option(
        "task", "routing policy when a request names none (any policy of moerm.routing.policies but fixed)"
    )
    linucb_alpha: float = option(0.1, "LinUCB exploration weight alpha")
    linucb_lambda: float = option(1.0, "LinUCB ridge regularization lambda")
    thompson_lambda0: float = option(10.0, "Thompson sampling prior precision lambda0")
    thompson_prior: str = option("", "offline router file (moerm.routing.prior) giving Thompson's prior mean")
    bandit_seed: int = option(0, "seed of Thompson sampling's random generator")
    uwo_lambda: float = option(0.5, "uwo ensemble: mean - lambda * variance over the members")
    decision_ttl_s: int = option(86400, "seconds a scored item's routing decision waits for its feedback")
    bandit_timeout_ms: float = option(2000.0, "deadline of a bandit-state call to Redis")
    compact_every: int = option(
        10000,
        "compact the feedback log into a snapshot once this many events lie past the last one "
        "(bounds the state's memory and the replay at start-up; 0: never)",
    )
    describe_timeout_s: float = option(30.0, "how long start-up waits for each external reward model")
    torch_threads: int = option(1, "torch threads of the prompt embedder (0: torch's default)")
    embed_dtype: str = option(
        "auto", "prompt embedder number format: auto (bf16 where the CPU has it), float32, bfloat16"
    )
    embed_max_tokens: int = option(
        0,
        "prompt tokens the embedder reads, the latest ones (0: what the bundle's classifier was trained on)",
    )
    max_items: int = option(1024, "most items in one Score or Feedback request")
    max_text_chars: int = option(32768, "longest prompt, message or response, in characters")
    max_item_chars: int = option(
        131072, "most characters of one item in all (its prompt or messages and its response)"
    )
    max_messages: int = option(256, "most messages of one item")
    max_feedback_abs: float = option(
        1e6, "largest |reward| a Feedback item may carry (more: INVALID_ARGUMENT)"
    )
    max_message_mb: int = option(64, "largest gRPC message received or sent, in MiB")
    max_concurrent_rpcs: int = option(
        0, "calls in progress beyond which new ones get RESOURCE_EXHAUSTED (0: no bound)"
    )
    state_redis_url: str = option(
        "",
        "bandit state and feedback markers: redis://HOST:PORT/DB, best a server with maxmemory-policy "
        "noeviction; empty: the --redis-url server when one is given, else a second embedded server "
        "that never evicts",
    )
    state_dir: str = option(
        "",
        "embedded state server only: keep the bandit state in this folder across restarts (empty: in memory)",
    )
    default_timeout_s: float = option(60.0, "deadline for downstream calls when the caller sets none")
    grace_s: float = option(10.0, "seconds to drain in-flight calls on shutdown")
    log_level: str = option("INFO", "logging level")

    def validate(self) -> None:
        if not self.bundle:
            raise SystemExit("router_svc: --bundle (or MOERM_BUNDLE) is required")
        if self.cluster and self.redis_url in ("", "off"):
            raise SystemExit(
                "router_svc: cluster mode needs a shared Redis: --redis-url redis://HOST:PORT/DB "
                "(or MOERM_REDIS_URL); an embedded or no Redis would give each replica its own bandits"
            )
        if not self.aggregator:
            raise SystemExit("router_svc: --aggregator (or MOERM_AGGREGATOR) is required")
        if self.default_policy not in policies.POLICIES:
            raise SystemExit(
                f"router_svc: unknown default policy {self.default_policy!r} "
                f"(known: {', '.join(policies.names())})"
            )
        if policies.policy(self.default_policy).kind == policies.FIXED:
            raise SystemExit("router_svc: the fixed policy needs a reward model per request, not as default")
        parse_endpoints(self.experts)
        parse_endpoints(self.external, "NAME")
        parse_norms(self.rm_norm)
        if not -1 <= self.metrics_port <= 65535:
            raise SystemExit("router_svc: --metrics-port must be -1 (off), 0 (any) or a port")
        if self.max_items < 1 or self.max_text_chars < 1 or self.max_message_mb < 1 or self.max_messages < 1:
            raise SystemExit(
                "router_svc: max_items, max_text_chars, max_messages and max_message_mb must be positive"
            )
        if self.max_item_chars <= self.max_text_chars:
            raise SystemExit("router_svc: --max-item-chars must exceed --max-text-chars")
        if not (math.isfinite(self.max_feedback_abs) and 0 < self.max_feedback_abs <= 1e150):
            raise SystemExit("router_svc: --max-feedback-abs must be a finite number in (0, 1e150]")
        if self.linucb_lambda <= 0 or self.thompson_lambda0 <= 0 or self.linucb_alpha < 0:
            raise SystemExit("router_svc: --linucb-lambda and --thompson-lambda0 must be > 0, alpha >= 0")
        if self.embed_dtype not in DTYPES or self.embed_max_tokens < 0 or self.torch_threads < 0:
            raise SystemExit(
                f"router_svc: --embed-dtype must be one of {', '.join(DTYPES)}; "
                "--embed-max-tokens and --torch-threads >= 0"
            )
        if self.uwo_lambda < 0 or self.decision_ttl_s < 1 or self.compact_every < 0:
            raise SystemExit(
                "router_svc: --uwo-lambda and --compact-every must be >= 0, --decision-ttl-s positive"
            )

    @property
    def expert_endpoints(self) -> dict[str, str]:
        return parse_endpoints(self.experts)

    @property
    def external_endpoints(self) -> dict[str, str]:
        return parse_endpoints(self.external, "NAME")

    @property
    def norms(self) -> dict[str, tuple[float, float]]:
        return parse_norms(self.rm_norm)
