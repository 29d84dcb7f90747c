"""The values file of ``moerm deploy render``: what differs between clusters.

A values file is YAML with camelCase keys mirroring the dataclasses below
(``experts.defaults.minReplicas`` is :attr:`ExpertValues.min_replicas`).
Layers, later winning: the dataclass defaults, the profile (``cpu`` or
``gpu``, files beside this module), the user's file, then command-line
overrides. Mappings merge key by key; lists and scalars replace. Each task's
expert values are ``experts.defaults`` merged with ``experts.tasks.<task>``.
Unknown keys are errors (a typo must not silently deploy a default).

``deploy/values.example.yaml`` in the repository lists every key with a comment.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

PROFILES_DIR = Path(__file__).with_name("profiles")
PROFILES = ("cpu", "gpu")


class ValuesError(ValueError):
    """A values file that does not fit the format (the message names the key)."""


def _dict() -> Any:
    return field(default_factory=dict)


def _list() -> Any:
    return field(default_factory=list)


@dataclass(frozen=True)
class Resources:
    """Kubernetes resource quantities, as in a container's ``resources``."""

    requests: dict[str, str] = _dict()
    limits: dict[str, str] = _dict()


@dataclass(frozen=True)
class Images:
    light: str = "moerm-light:0.1.0"  # aggregator (no torch)
    model: str = "moerm:0.1.0"  # router and CPU experts (CPU torch)
    gpu: str = "moerm-gpu:0.1.0"  # experts with gpus > 0 (CUDA torch)
    redis: str = "redis:7.4-alpine"
    pull_policy: str = "IfNotPresent"
    pull_secrets: list[str] = _list()


@dataclass(frozen=True)
class BundleValues:
    source: str = "pvc"  # pvc: a PersistentVolumeClaim holding the bundle; url: fetched at start
    claim_name: str = "moerm-bundle"
    sub_path: str = ""  # the bundle's folder inside the claim ("" = its root)
    url: str = ""  # source url: a .tar.gz of the bundle (http, https or file)
    url_secret: str = ""  # source url: take the URL from this Secret's key "url" instead
    fetch_size_limit: str = "2Gi"  # source url: size of the emptyDir the bundle is fetched into
    verify: bool = True  # the init container checks every file's sha256, not only the version


@dataclass(frozen=True)
class TlsValues:
    enabled: bool = True
    secret: str = "moerm-tls"  # tls.crt, tls.key, ca.crt (cert-manager's layout)


@dataclass(frozen=True)
class AuthValues:
    tokens_secret: str = "moerm-tokens"  # key "tokens": one "TOKEN SCOPE[,SCOPE]" a line; "" = no tokens


@dataclass(frozen=True)
class RedisValues:
    mode: str = "statefulset"  # statefulset | external
    url: str = ""  # external: redis://HOST:PORT/DB
    url_secret: str = ""  # external: the URL (with its password) from this Secret's key "url"
    password_secret: str = "moerm-redis"  # statefulset: key "password"; "" = no password
    storage: str = "1Gi"
    storage_class: str = ""
    resources: Resources = field(
        default_factory=lambda: Resources(
            requests={"cpu": "100m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "1Gi"}
        )
    )


@dataclass(frozen=True)
class RouterValues:
    replicas: int = 2  # also the autoscaler's minimum
    max_replicas: int = 6
    target_cpu_utilization: int = 70
    grace_seconds: int = 10
    service_type: str = "ClusterIP"  # ClusterIP | LoadBalancer | NodePort
    public_tls_secret: str = ""  # TLS on the public port (tls.crt, tls.key); "" = the port is plaintext
    allow_from: list[dict[str, Any]] = _list()  # NetworkPolicy peers for the public port; [] = anyone
    env: dict[str, str] = _dict()  # further MOERM_* settings (e.g. MOERM_DEFAULT_POLICY)
    resources: Resources = field(
        default_factory=lambda: Resources(
            requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "2", "memory": "2Gi"}
        )
    )


@dataclass(frozen=True)
class AggregatorValues:
    replicas: int = 2
    grace_seconds: int = 5
    env: dict[str, str] = _dict()
    resources: Resources = field(
        default_factory=lambda: Resources(
            requests={"cpu": "100m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "512Mi"}
        )
    )


@dataclass(frozen=True)
class ExpertValues:
    min_replicas: int = 1
    max_replicas: int = 4
    queue_items_target: int = 64  # queued items per replica the autoscaler aims at
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    device: str = ""  # "" = cuda with gpus, else cpu
    dtype: str = "auto"
    torch_threads: int = 0  # 0 = the CPU limit, rounded up
    max_batch_tokens: int = 0  # 0 = the service's default
    grace_seconds: int = 20
    startup_seconds: int = 600  # longest model load the startup probe waits for
    image: str = ""  # "" = images.gpu with gpus, else images.model
    node_selector: dict[str, str] = _dict()
    tolerations: list[dict[str, Any]] = _list()
    runtime_class_name: str = ""
    env: dict[str, str] = _dict()
    resources: Resources = field(
        default_factory=lambda: Resources(
            requests={"cpu": "2", "memory": "3Gi"}, limits={"cpu": "4", "memory": "4Gi"}
        )
    )


@dataclass(frozen=True)
class ExpertsValues:
    defaults: dict[str, Any] = _dict()  # ExpertValues keys
    tasks: dict[str, dict[str, Any]] = _dict()  # task -> ExpertValues keys over the defaults


@dataclass(frozen=True)
class AutoscalingValues:
    experts: str = "keda"  # keda | hpa (prometheus-adapter) | none
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    polling_seconds: int = 15
    cooldown_seconds: int = 300
    scale_down_stabilization_seconds: int = 300


@dataclass(frozen=True)
class MonitoringValues:
    service_monitors: bool = True
    prometheus_namespace: str = "monitoring"  # may scrape the metrics ports (NetworkPolicy)
    labels: dict[str, str] = _dict()  # on the ServiceMonitors (e.g. release: prometheus)
    interval: str = "15s"


@dataclass(frozen=True)
class ProbeValues:
    # grpc: kubelet's native probe (plaintext only); exec: moerm.deploy.probe (speaks mTLS);
    # auto: exec where the port requires TLS, else grpc.
    kind: str = "auto"
    pre_stop_seconds: int = 5


@dataclass(frozen=True)
class Values:
    namespace: str = "moerm"
    create_namespace: bool = True
    cluster_domain: str = "cluster.local"
    log_level: str = "INFO"
    images: Images = field(default_factory=Images)
    bundle: BundleValues = field(default_factory=BundleValues)
    tls: TlsValues = field(default_factory=TlsValues)
    auth: AuthValues = field(default_factory=AuthValues)
    redis: RedisValues = field(default_factory=RedisValues)
    router: RouterValues = field(default_factory=RouterValues)
    aggregator: AggregatorValues = field(default_factory=AggregatorValues)
    experts: ExpertsValues = field(default_factory=ExpertsValues)
    autoscaling: AutoscalingValues = field(default_factory=AutoscalingValues)
    monitoring: MonitoringValues = field(default_factory=MonitoringValues)
    probes: ProbeValues = field(default_factory=ProbeValues)

    def expert(self, task: str) -> ExpertValues:
        """The expert values of ``task``: defaults, then the task's own keys."""
        raw = merge(to_raw(ExpertValues()), self.experts.defaults)
        return build(ExpertValues, merge(raw, self.experts.tasks.get(task, {})), f"experts.tasks.{task}")

    def validate(self, tasks: tuple[str, ...]) -> None:
        problems = []
        unknown = sorted(set(self.experts.tasks) - set(tasks))
        if unknown:
            problems.append(f"experts.tasks names tasks the bundle lacks: {unknown} (bundle: {list(tasks)})")
        if self.router.replicas < 2:
            problems.append("router.replicas must be >= 2")
        if self.router.max_replicas < self.router.replicas:
            problems.append("router.maxReplicas must be >= router.replicas")
        if self.aggregator.replicas < 1:
            problems.append("aggregator.replicas must be >= 1")
        if self.bundle.source not in ("pvc", "url"):
            problems.append(f"bundle.source must be pvc or url, not {self.bundle.source!r}")
        if self.bundle.source == "url" and not (self.bundle.url or self.bundle.url_secret):
            problems.append("bundle.source url needs bundle.url or bundle.urlSecret")
        if self.redis.mode not in ("statefulset", "external"):
            problems.append(f"redis.mode must be statefulset or external, not {self.redis.mode!r}")
        if self.redis.mode == "external" and not (self.redis.url or self.redis.url_secret):
            problems.append("redis.mode external needs redis.url or redis.urlSecret")
        if self.autoscaling.experts not in ("keda", "hpa", "none"):
            problems.append(
                f"autoscaling.experts must be keda, hpa or none, not {self.autoscaling.experts!r}"
            )
        if self.probes.kind not in ("auto", "grpc", "exec"):
            problems.append(f"probes.kind must be auto, grpc or exec, not {self.probes.kind!r}")
        if self.probes.kind == "grpc" and self.tls.enabled:
            problems.append(
                "probes.kind grpc cannot work with tls.enabled: kubelet's gRPC probe has no client certificate"
            )
        for part, resources in (
            ("router", self.router.resources),
            ("aggregator", self.aggregator.resources),
            ("redis", self.redis.resources),
        ):
            if not all({"cpu", "memory"} <= set(r) for r in (resources.requests, resources.limits)):
                problems.append(f"{part}.resources need cpu and memory requests and limits")
        if self.router.service_type not in ("ClusterIP", "LoadBalancer", "NodePort"):
            problems.append(f"router.serviceType {self.router.service_type!r} is not a Service type")
        for task in tasks:
            try:
                expert = self.expert(task)
            except ValuesError as error:
                problems.append(str(error))
                continue
            if not 1 <= expert.min_replicas <= expert.max_replicas:
                problems.append(f"task {task}: need 1 <= minReplicas <= maxReplicas")
            if expert.queue_items_target < 1 or expert.gpus < 0 or expert.startup_seconds < 10:
                problems.append(f"task {task}: queueItemsTarget >= 1, gpus >= 0, startupSeconds >= 10")
            if expert.dtype not in ("auto", "float32", "bfloat16", "float16"):
                problems.append(f"task {task}: dtype {expert.dtype!r} is not auto|float32|bfloat16|float16")
            if expert.device.startswith("cuda") and expert.gpus < 1:
                problems.append(f"task {task}: device {expert.device} needs gpus >= 1")
            for resources in (expert.resources.requests, expert.resources.limits):
                if "cpu" not in resources or "memory" not in resources:
                    problems.append(f"task {task}: resources need cpu and memory requests and limits")
                    break
        if problems:
            raise ValuesError("; ".join(problems))


# --- loading ---------------------------------------------------------------------------------


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _check(kind: Any, value: Any, where: str) -> Any:
    origin = get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ValuesError(f"{where}: expected a mapping, got {value!r}")
        return build(kind, value, where)
    if origin in (Union, types.UnionType):
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValuesError(f"{where}: expected a mapping, got {value!r}")
        _, item = get_args(kind)
        if item is str:
            return {str(k): str(v) for k, v in value.items()}
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ValuesError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(kind)
        return [str(v) for v in value] if item is str else list(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValuesError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValuesError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValuesError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def to_raw(obj: Any) -> Any:
    """A values dataclass as its camelCase mapping (the inverse of :func:`build`)."""
    if dataclasses.is_dataclass(obj):
        return {camel(f.name): to_raw(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_raw(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_raw(v) for v in obj]
    return obj


def build(cls: type, raw: Mapping[str, Any], where: str = "") -> Any:
    """``cls`` from camelCase ``raw``; missing keys take the field defaults."""
    hints = get_type_hints(cls)
    fields = {camel(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValuesError(f"unknown key(s) {[prefix + k for k in unknown]} (known: {sorted(fields)})")
    kwargs = {}
    for key, value in raw.items():
        f = fields[key]
        kwargs[f.name] = _check(hints[f.name], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValuesError(f"{path}: unreadable values file ({error})") from None
    if not isinstance(raw, dict):
        raise ValuesError(f"{path}: a values file is a mapping at the top")
    return raw


def profile_path(name: str) -> Path:
    if name not in PROFILES:
        raise ValuesError(f"unknown overlay {name!r} (known: {', '.join(PROFILES)})")
    return PROFILES_DIR / f"{name}.yaml"


def load_values(
    overlay: str = "cpu",
    files: tuple[str | Path, ...] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Values:
    """Profile ``overlay``, then each file, then ``overrides`` (camelCase, nested)."""
    raw = merge(to_raw(Values()), read_yaml(profile_path(overlay)))
    for path in files:
        raw = merge(raw, read_yaml(path))
    raw = merge(raw, overrides or {})
    return build(Values, raw)


DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def dns_name(text: str) -> str:
    """A task name as a DNS label part (underscores are not allowed there)."""
    return text.replace("_", "-")
