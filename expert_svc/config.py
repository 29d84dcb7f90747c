"""expert_svc configuration (flags, or MOERM_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moerm.config import option
from moerm.devices import DTYPES


@dataclass(frozen=True)
class ExpertConfig:
    """Serve one task's capability experts from a bundle."""

    bundle: str = option("", "bundle directory")
    task: str = option("", "the task whose experts this process serves")
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(0, "port to bind (0: any free port)")
    port_file: str = option("", "write the bound port to this file once listening")
    metrics_port: int = option(-1, "HTTP port of Prometheus /metrics on --host (0: any free port, -1: off)")
    tls_cert: str = option("", "PEM certificate this service serves (with --tls-key; mTLS with --tls-ca)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_ca: str = option("", "PEM CA whose client certificates are required (mutual TLS)")
    max_batch_size: int = option(32, "most items in one batch")
    max_batch_tokens: int = option(
        8192, "most tokens in one batch (a shared prefix counts once; padding counts when chunking)"
    )
    max_queue_delay_ms: float = option(5.0, "how long the batcher waits to fill a batch")
    refill_wait_ms: float = option(
        100.0, "how long a batch may wait for as many items as the previous one had (callers coming back)"
    )
    max_queue_items: int = option(4096, "queued items beyond which calls get RESOURCE_EXHAUSTED")
    max_queue_wait_s: float = option(
        60.0,
        "reject a call at once (RESOURCE_EXHAUSTED) when the queue's expected wait exceeds this or its deadline",
    )
    deadline_share: float = option(
        0.5,
        "share of a call's remaining deadline its expected queue wait may take (the rest: aggregation, "
        "replies, and the rate estimate's error)",
    )
    max_request_items: int = option(1024, "most items in one request (more: INVALID_ARGUMENT)")
    max_message_mb: int = option(64, "largest gRPC message received or sent, in MiB")
    max_concurrent_rpcs: int = option(
        0, "calls in progress beyond which new ones get RESOURCE_EXHAUSTED (0: no bound)"
    )
    max_length: int = option(0, "token limit per item (0: the backbone's context length)")
    torch_threads: int = option(0, "torch intra-op threads (0: torch's default)")
    device: str = option("cpu", "where the model runs: cpu, cuda or cuda:N")
    dtype: str = option(
        "auto", "backbone number format: auto (bf16 where the hardware has it), float32, bfloat16, float16"
    )
    prefix_sharing: bool = option(
        True, "decoders: compute a conversation shared by several items once (GRPO groups, best-of-n)"
    )
    min_shared_prefix: int = option(16, "fewest common tokens worth sharing")
    # Describe reports these, for routers that use this service as an external reward model.
    norm_mean: float = option(0.0, "reference mean of the first score column")
    norm_std: float = option(0.0, "reference std of the first score column (0: not declared)")
    grace_s: float = option(10.0, "seconds to drain in-flight calls on shutdown")
    log_level: str = option("INFO", "logging level")
    # Instead of a bundle task: a Hugging Face sequence-classification reward model,
    # served as a pool member the router registers with --external hf:NAME=HOST:PORT.
    hf_model: str = option("", "a Hugging Face sequence-classification model directory (instead of --bundle)")
    hf_name: str = option("", "the name it serves under (ExpertRequest.task; default: the directory's name)")

    @property
    def served_name(self) -> str:
        return self.hf_name or Path(self.hf_model).name

    def validate(self) -> None:
        if self.hf_model and (self.bundle or self.task):
            raise SystemExit("expert_svc: give --hf-model or --bundle and --task, not both")
        if not self.bundle and not self.hf_model:
            raise SystemExit("expert_svc: --bundle (or MOERM_BUNDLE) is required")
        if not self.task and not self.hf_model:
            raise SystemExit("expert_svc: --task (or MOERM_TASK) is required")
        if (
            self.max_batch_size < 1
            or self.max_queue_items < 1
            or min(self.max_queue_delay_ms, self.refill_wait_ms) < 0
        ):
            raise SystemExit("expert_svc: batch size and queue limits must be positive")
        if not 0 < self.deadline_share <= 1:
            raise SystemExit("expert_svc: --deadline-share must be in (0, 1]")
        if self.max_queue_wait_s <= 0 or self.max_request_items < 1 or self.max_message_mb < 1:
            raise SystemExit(
                "expert_svc: --max-queue-wait-s, --max-request-items and --max-message-mb must be positive"
            )
        if self.max_batch_tokens < 1 or self.max_length < 0 or self.min_shared_prefix < 1:
            raise SystemExit("expert_svc: --max-batch-tokens and --min-shared-prefix must be positive")
        if not -1 <= self.metrics_port <= 65535:
            raise SystemExit("expert_svc: --metrics-port must be -1 (off), 0 (any) or a port")
        if self.dtype not in DTYPES:
            raise SystemExit(f"expert_svc: --dtype must be one of {', '.join(DTYPES)}")
        if self.norm_std < 0:
            raise SystemExit("expert_svc: --norm-std must be >= 0 (0: not declared)")
