"""The Kubernetes objects of one bundle, built with the ``kubernetes`` client's
typed models, and their YAML.

Per task of the bundle: an expert Deployment, a headless Service (the router
balances over its endpoints with client-side round_robin), an autoscaler on
the task's queue depth (a KEDA ScaledObject on a Prometheus query, or an HPA
on the same metric through prometheus-adapter) and a PodDisruptionBudget.
Once: the router (Deployment, Service, CPU HPA, PDB), the aggregator
(Deployment, headless Service, PDB), Redis (a StatefulSet with a volume, or an
external URL), NetworkPolicies, ServiceMonitors, a ServiceAccount, the
``moerm-bundle`` ConfigMap (the version every pod's init container checks) and
the Namespace.

KEDA's ScaledObject and the Prometheus operator's ServiceMonitor have no typed
models in the client; they are plain mappings here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k

from moerm.bundle import Bundle
from moerm.deploy.values import DNS_LABEL, ExpertValues, Resources, Values, ValuesError, dns_name

GRPC_PORT = 50051
METRICS_PORT = 9090
REDIS_PORT = 6379
UID = 10001
BUNDLE_MOUNT = "/bundle"
TLS_DIR = "/etc/moerm/tls"
PUBLIC_TLS_DIR = "/etc/moerm/public-tls"
TOKENS_DIR = "/etc/moerm/tokens"
BUNDLE_CONFIGMAP = "moerm-bundle"
SERVICE_ACCOUNT = "moerm"
TASK_LABEL = "moerm/task"
VERSION_ANNOTATION = "moerm/bundle-version"
QUEUE_METRIC = "moerm_expert_queue_items"
MANAGER = "moerm-deploy"
METRICS_LABEL = {"moerm/metrics": "true"}  # Services with the metrics port (ServiceMonitors select them)


@dataclass(frozen=True)
class BundleInfo:
    """What the manifests need from a bundle."""

    version: str
    tasks: tuple[str, ...]
    backbone: str
    embedder: str

    @classmethod
    def from_bundle(cls, path: str | Path, *, verify: bool = True) -> BundleInfo:
        bundle = Bundle.load(path, verify=verify)
        manifest = bundle.manifest
        return cls(bundle.version, tuple(manifest.tasks), manifest.backbone.ref, manifest.router.embedder)


# --- names and labels --------------------------------------------------------------------------


def expert_name(task: str) -> str:
    return f"moerm-expert-{dns_name(task)}"


def selector_labels(component: str, task: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "moerm", "app.kubernetes.io/component": component}
    if task is not None:
        labels[TASK_LABEL] = task
    return labels


def object_labels(component: str, task: str | None = None) -> dict[str, str]:
    return {
        **selector_labels(component, task),
        "app.kubernetes.io/part-of": "moerm",
        "app.kubernetes.io/managed-by": MANAGER,
    }


def meta(name: str, values: Values, component: str, task: str | None = None, **extra) -> k.V1ObjectMeta:
    return k.V1ObjectMeta(
        name=name, namespace=values.namespace, labels=object_labels(component, task), **extra
    )


def metrics_meta(name: str, values: Values, component: str, task: str | None = None) -> k.V1ObjectMeta:
    metadata = meta(name, values, component, task)
    metadata.labels.update(METRICS_LABEL)
    return metadata


def service_host(name: str, values: Values) -> str:
    return f"{name}.{values.namespace}.svc.{values.cluster_domain}"


def cpu_count(quantity: str) -> int:
    """A CPU quantity ("4", "3500m", "0.5") rounded up to whole cores (at least 1)."""
    text = str(quantity).strip()
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(cores))


# --- containers --------------------------------------------------------------------------------


def container_security() -> k.V1SecurityContext:
    return k.V1SecurityContext(
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        capabilities=k.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
    )


def pod_security() -> k.V1PodSecurityContext:
    return k.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        fs_group=UID,
        seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
    )


def requirements(resources: Resources, gpus: int = 0, gpu_resource: str = "") -> k.V1ResourceRequirements:
    requests, limits = dict(resources.requests), dict(resources.limits)
    if gpus:
        requests[gpu_resource] = limits[gpu_resource] = str(gpus)
    return k.V1ResourceRequirements(requests=requests, limits=limits)


def env(name: str, value: str | int | bool) -> k.V1EnvVar:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return k.V1EnvVar(name=name, value=str(value))


def secret_env(name: str, secret: str, key: str) -> k.V1EnvVar:
    return k.V1EnvVar(
        name=name, value_from=k.V1EnvVarSource(secret_key_ref=k.V1SecretKeySelector(name=secret, key=key))
    )


def common_env(values: Values, grace_seconds: int, threads: int) -> list[k.V1EnvVar]:
    """Settings of every moerm service (flags as MOERM_* variables)."""
    out = [
        env("MOERM_BUNDLE", BUNDLE_MOUNT),
        env("MOERM_HOST", "0.0.0.0"),
        env("MOERM_PORT", GRPC_PORT),
        env("MOERM_METRICS_PORT", METRICS_PORT),
        env("MOERM_GRACE_S", grace_seconds),
        env("MOERM_LOG_LEVEL", values.log_level),
        env("HF_HUB_OFFLINE", "1"),
        env("HOME", "/tmp"),
        env("OMP_NUM_THREADS", threads),
    ]
    if values.tls.enabled:
        out += [
            env("MOERM_TLS_CERT", f"{TLS_DIR}/tls.crt"),
            env("MOERM_TLS_KEY", f"{TLS_DIR}/tls.key"),
            env("MOERM_TLS_CA", f"{TLS_DIR}/ca.crt"),
        ]
    return out


def probe_args(values: Values, component: str, server_name: str) -> list[str] | None:
    """How ``component``'s health is probed: None for kubelet's native gRPC probe,
    else the arguments of an exec of :mod:`moerm.deploy.probe`.

    Kubelet's gRPC probe speaks plaintext only. Experts and the aggregator
    require client certificates under mTLS, so there the probe is an exec that
    presents the pod's own certificate. The router's port is the public one:
    plaintext unless ``router.publicTlsSecret`` (server-only TLS, tokens for
    callers), so it keeps the native probe unless public TLS is on.
    """
    kind = values.probes.kind
    if component == "router":
        if values.router.public_tls_secret:
            return ["--public", "--server-name", server_name]
        return ["--plaintext"] if kind == "exec" else None
    if kind == "grpc" or (kind == "auto" and not values.tls.enabled):
        return None
    return ["--server-name", server_name] if values.tls.enabled else ["--plaintext"]


def grpc_probes(values: Values, startup_seconds: int, grace_seconds: int, exec_args: list[str] | None):
    """Startup, readiness and liveness probes on the gRPC health service.

    The startup probe waits up to ``startup_seconds`` (an expert reports
    NOT_SERVING until its model is loaded). Liveness tolerates the drain: it
    fails only after longer than preStop + grace, so a draining pod (health
    NOT_SERVING) is never restarted by its liveness probe.
    """
    period = 10
    if exec_args is None:
        handler: dict[str, Any] = {"grpc": k.V1GRPCAction(port=GRPC_PORT)}
        timeout, ready_period, ready_failures = 3, 5, 2
    else:
        # A Python process per probe: slower to start in a CPU-throttled pod, so
        # more time and one more try before a busy pod leaves the endpoints.
        command = ["python", "-m", "moerm.deploy.probe", "--address", f"127.0.0.1:{GRPC_PORT}", *exec_args]
        handler = {"_exec": k.V1ExecAction(command=command)}
        timeout, ready_period, ready_failures = 8, 10, 3
    drain = values.probes.pre_stop_seconds + grace_seconds
    startup = k.V1Probe(
        **handler,
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=max(3, math.ceil(startup_seconds / period)),
    )
    readiness = k.V1Probe(
        **handler, period_seconds=ready_period, timeout_seconds=timeout, failure_threshold=ready_failures
    )
    liveness = k.V1Probe(
        **handler,
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=max(3, math.ceil(drain / period) + 2),
    )
    return startup, readiness, liveness


def ports() -> list[k.V1ContainerPort]:
    return [
        k.V1ContainerPort(name="grpc", container_port=GRPC_PORT, protocol="TCP"),
        k.V1ContainerPort(name="metrics", container_port=METRICS_PORT, protocol="TCP"),
    ]


def bundle_volume(values: Values) -> k.V1Volume:
    if values.bundle.source == "pvc":
        return k.V1Volume(
            name="bundle",
            persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
                claim_name=values.bundle.claim_name, read_only=True
            ),
        )
    return k.V1Volume(
        name="bundle", empty_dir=k.V1EmptyDirVolumeSource(size_limit=values.bundle.fetch_size_limit)
    )


def bundle_mount(values: Values, *, read_only: bool = True) -> k.V1VolumeMount:
    sub_path = values.bundle.sub_path if values.bundle.source == "pvc" else ""
    return k.V1VolumeMount(
        name="bundle", mount_path=BUNDLE_MOUNT, read_only=read_only, sub_path=sub_path or None
    )


def secret_volume(name: str, secret: str) -> k.V1Volume:
    return k.V1Volume(name=name, secret=k.V1SecretVolumeSource(secret_name=secret, default_mode=0o440))


def tmp_volume() -> k.V1Volume:
    return k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource(size_limit="1Gi"))


TMP_MOUNT = k.V1VolumeMount(name="tmp", mount_path="/tmp")


def bundle_check_container(values: Values, image: str, task: str | None) -> k.V1Container:
    """The init container: fetch the bundle (source url), verify it and check
    its version against the ``moerm-bundle`` ConfigMap before the service starts."""
    command = ["python", "-m", "moerm.deploy.bundle_check", "--bundle", BUNDLE_MOUNT]
    variables = [
        k.V1EnvVar(
            name="MOERM_EXPECT_BUNDLE_VERSION",
            value_from=k.V1EnvVarSource(
                config_map_key_ref=k.V1ConfigMapKeySelector(name=BUNDLE_CONFIGMAP, key="version")
            ),
        ),
        env("HOME", "/tmp"),
    ]
    if task is not None:
        command += ["--task", task]
    if not values.bundle.verify:
        command.append("--no-verify")
    fetching = values.bundle.source == "url"
    if fetching:
        command += ["--fetch", "$(MOERM_BUNDLE_URL)"]
        if values.bundle.url_secret:
            variables.append(secret_env("MOERM_BUNDLE_URL", values.bundle.url_secret, "url"))
        else:
            variables.append(env("MOERM_BUNDLE_URL", values.bundle.url))
    return k.V1Container(
        name="bundle-check",
        image=image,
        image_pull_policy=values.images.pull_policy,
        command=command,
        env=variables,
        resources=k.V1ResourceRequirements(
            requests={"cpu": "100m", "memory": "128Mi"}, limits={"cpu": "1", "memory": "512Mi"}
        ),
        security_context=container_security(),
        volume_mounts=[bundle_mount(values, read_only=not fetching), TMP_MOUNT],
    )


def pod_template(
    values: Values,
    info: BundleInfo,
    component: str,
    container: k.V1Container,
    init: k.V1Container,
    volumes: list[k.V1Volume],
    grace_seconds: int,
    task: str | None = None,
    **spec,
) -> k.V1PodTemplateSpec:
    return k.V1PodTemplateSpec(
        metadata=k.V1ObjectMeta(
            labels=object_labels(component, task),
            annotations={VERSION_ANNOTATION: info.version},
        ),
        spec=k.V1PodSpec(
            service_account_name=SERVICE_ACCOUNT,
            automount_service_account_token=False,
            enable_service_links=False,
            security_context=pod_security(),
            termination_grace_period_seconds=values.probes.pre_stop_seconds + grace_seconds + 5,
            init_containers=[init],
            containers=[container],
            volumes=volumes,
            image_pull_secrets=[k.V1LocalObjectReference(name=s) for s in values.images.pull_secrets] or None,
            topology_spread_constraints=[
                k.V1TopologySpreadConstraint(
                    max_skew=1,
                    topology_key="kubernetes.io/hostname",
                    when_unsatisfiable="ScheduleAnyway",
                    label_selector=k.V1LabelSelector(match_labels=selector_labels(component, task)),
                )
            ],
            **spec,
        ),
    )


def service_container(
    values: Values,
    name: str,
    image: str,
    module: str,
    variables: list[k.V1EnvVar],
    resources: k.V1ResourceRequirements,
    probes,
    mounts: list[k.V1VolumeMount],
) -> k.V1Container:
    startup, readiness, liveness = probes
    return k.V1Container(
        name=name,
        image=image,
        image_pull_policy=values.images.pull_policy,
        command=["python", "-m", module],
        env=variables,
        ports=ports(),
        resources=resources,
        startup_probe=startup,
        readiness_probe=readiness,
        liveness_probe=liveness,
        # Endpoints drop the pod while it still serves; SIGTERM (drain) comes after.
        lifecycle=k.V1Lifecycle(
            pre_stop=k.V1LifecycleHandler(sleep=k.V1SleepAction(seconds=values.probes.pre_stop_seconds))
        ),
        security_context=container_security(),
        volume_mounts=mounts,
    )


def service_mounts(values: Values) -> tuple[list[k.V1Volume], list[k.V1VolumeMount]]:
    volumes = [bundle_volume(values), tmp_volume()]
    mounts = [bundle_mount(values), TMP_MOUNT]
    if values.tls.enabled:
        volumes.append(secret_volume("tls", values.tls.secret))
        mounts.append(k.V1VolumeMount(name="tls", mount_path=TLS_DIR, read_only=True))
    return volumes, mounts


def strategy() -> k.V1DeploymentStrategy:
    return k.V1DeploymentStrategy(
        type="RollingUpdate", rolling_update=k.V1RollingUpdateDeployment(max_surge=1, max_unavailable=0)
    )


def deployment(
    name: str, values: Values, component: str, template: k.V1PodTemplateSpec, replicas: int | None, task=None
) -> k.V1Deployment:
    """``replicas`` None: an autoscaler owns the count (so applying again does not reset it)."""
    return k.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta(name, values, component, task),
        spec=k.V1DeploymentSpec(
            replicas=replicas,
            revision_history_limit=3,
            selector=k.V1LabelSelector(match_labels=selector_labels(component, task)),
            strategy=strategy(),
            template=template,
        ),
    )


def headless_service(name: str, values: Values, component: str, task: str | None = None) -> k.V1Service:
    return k.V1Service(
        api_version="v1",
        kind="Service",
        metadata=metrics_meta(name, values, component, task),
        spec=k.V1ServiceSpec(
            cluster_ip="None",
            selector=selector_labels(component, task),
            ports=[
                k.V1ServicePort(name="grpc", port=GRPC_PORT, target_port="grpc", protocol="TCP"),
                k.V1ServicePort(name="metrics", port=METRICS_PORT, target_port="metrics", protocol="TCP"),
            ],
        ),
    )


def pdb(name: str, values: Values, component: str, task: str | None = None) -> k.V1PodDisruptionBudget:
    """At most one pod of the component disrupted at a time; a pod that is not
    ready (e.g. still loading) may always be evicted."""
    return k.V1PodDisruptionBudget(
        api_version="policy/v1",
        kind="PodDisruptionBudget",
        metadata=meta(name, values, component, task),
        spec=k.V1PodDisruptionBudgetSpec(
            max_unavailable=1,
            selector=k.V1LabelSelector(match_labels=selector_labels(component, task)),
            unhealthy_pod_eviction_policy="AlwaysAllow",
        ),
    )


def scale_down_behavior(values: Values) -> k.V2HorizontalPodAutoscalerBehavior:
    return k.V2HorizontalPodAutoscalerBehavior(
        scale_down=k.V2HPAScalingRules(
            stabilization_window_seconds=values.autoscaling.scale_down_stabilization_seconds,
            policies=[k.V2HPAScalingPolicy(type="Pods", value=1, period_seconds=60)],
        )
    )


# --- components --------------------------------------------------------------------------------


def expert_image(values: Values, expert: ExpertValues) -> str:
    if expert.image:
        return expert.image
    return values.images.gpu if expert.gpus else values.images.model


def expert_objects(info: BundleInfo, values: Values, task: str) -> list[Any]:
    expert = values.expert(task)
    name = expert_name(task)
    image = expert_image(values, expert)
    threads = expert.torch_threads or cpu_count(expert.resources.limits["cpu"])
    device = expert.device or ("cuda" if expert.gpus else "cpu")
    variables = common_env(values, expert.grace_seconds, threads) + [
        env("MOERM_TASK", task),
        env("MOERM_DEVICE", device),
        env("MOERM_DTYPE", expert.dtype),
        env("MOERM_TORCH_THREADS", threads),
    ]
    if expert.max_batch_tokens:
        variables.append(env("MOERM_MAX_BATCH_TOKENS", expert.max_batch_tokens))
    variables += [env(key, value) for key, value in sorted(expert.env.items())]
    volumes, mounts = service_mounts(values)
    probes = grpc_probes(
        values,
        expert.startup_seconds,
        expert.grace_seconds,
        probe_args(values, "expert", service_host(name, values)),
    )
    container = service_container(
        values,
        "expert",
        image,
        "expert_svc",
        variables,
        requirements(expert.resources, expert.gpus, expert.gpu_resource),
        probes,
        mounts,
    )
    tolerations = [k.V1Toleration(**_snake(t)) for t in expert.tolerations] or None
    template = pod_template(
        values,
        info,
        "expert",
        container,
        bundle_check_container(values, image, task),
        volumes,
        expert.grace_seconds,
        task,
        node_selector=dict(expert.node_selector) or None,
        tolerations=tolerations,
        runtime_class_name=expert.runtime_class_name or None,
    )
    autoscaled = values.autoscaling.experts != "none"
    objects: list[Any] = [
        deployment(name, values, "expert", template, None if autoscaled else expert.min_replicas, task),
        headless_service(name, values, "expert", task),
    ]
    if values.autoscaling.experts == "keda":
        objects.append(scaled_object(values, task, expert))
    elif values.autoscaling.experts == "hpa":
        objects.append(expert_hpa(values, task, expert))
    objects.append(pdb(name, values, "expert", task))
    return objects


def queue_query(values: Values, task: str) -> str:
    """Items queued at ``task``'s experts, summed over its pods (0 with no data)."""
    return f'sum({QUEUE_METRIC}{{namespace="{values.namespace}",task="{task}"}}) or vector(0)'


def scaled_object(values: Values, task: str, expert: ExpertValues) -> dict[str, Any]:
    """KEDA: replicas = ceil(queued items / queueItemsTarget), within min..max."""
    name = expert_name(task)
    scaling = values.autoscaling
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _plain(meta(name, values, "expert", task)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": expert.min_replicas,
            "maxReplicaCount": expert.max_replicas,
            "pollingInterval": scaling.polling_seconds,
            "cooldownPeriod": scaling.cooldown_seconds,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "name": name,
                    "behavior": _plain(scale_down_behavior(values)),
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": scaling.prometheus_url,
                        "query": queue_query(values, task),
                        "threshold": str(expert.queue_items_target),
                    },
                }
            ],
        },
    }


def expert_hpa(values: Values, task: str, expert: ExpertValues) -> k.V2HorizontalPodAutoscaler:
    """The prometheus-adapter alternative: each pod's own queue gauge, averaged
    (the adapter rule is in docs/deploy.md)."""
    name = expert_name(task)
    return k.V2HorizontalPodAutoscaler(
        api_version="autoscaling/v2",
        kind="HorizontalPodAutoscaler",
        metadata=meta(name, values, "expert", task),
        spec=k.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=k.V2CrossVersionObjectReference(
                api_version="apps/v1", kind="Deployment", name=name
            ),
            min_replicas=expert.min_replicas,
            max_replicas=expert.max_replicas,
            metrics=[
                k.V2MetricSpec(
                    type="Pods",
                    pods=k.V2PodsMetricSource(
                        metric=k.V2MetricIdentifier(name=QUEUE_METRIC),
                        target=k.V2MetricTarget(
                            type="AverageValue", average_value=str(expert.queue_items_target)
                        ),
                    ),
                )
            ],
            behavior=scale_down_behavior(values),
        ),
    )


def redis_url_env(values: Values) -> list[k.V1EnvVar]:
    redis = values.redis
    if redis.mode == "external":
        if redis.url_secret:
            return [secret_env("MOERM_REDIS_URL", redis.url_secret, "url")]
        return [env("MOERM_REDIS_URL", redis.url)]
    host = service_host("moerm-redis", values)
    if redis.password_secret:
        # $(REDIS_PASSWORD) is expanded by the kubelet: it must come first.
        return [
            secret_env("REDIS_PASSWORD", redis.password_secret, "password"),
            env("MOERM_REDIS_URL", f"redis://:$(REDIS_PASSWORD)@{host}:{REDIS_PORT}/0"),
        ]
    return [env("MOERM_REDIS_URL", f"redis://{host}:{REDIS_PORT}/0")]


def router_objects(info: BundleInfo, values: Values) -> list[Any]:
    router = values.router
    name = "moerm-router"
    experts = ",".join(
        f"{task}=dns:///{service_host(expert_name(task), values)}:{GRPC_PORT}" for task in info.tasks
    )
    aggregator = f"dns:///{service_host('moerm-aggregator', values)}:{GRPC_PORT}"
    threads = cpu_count(router.resources.limits.get("cpu", "1"))
    variables = common_env(values, router.grace_seconds, threads) + [
        env("MOERM_EXPERTS", experts),
        env("MOERM_AGGREGATOR", aggregator),
        *redis_url_env(values),
        env("MOERM_CLUSTER", True),
    ]
    volumes, mounts = service_mounts(values)
    if values.auth.tokens_secret:
        variables.append(env("MOERM_AUTH_TOKENS", f"{TOKENS_DIR}/tokens"))
        volumes.append(secret_volume("tokens", values.auth.tokens_secret))
        mounts.append(k.V1VolumeMount(name="tokens", mount_path=TOKENS_DIR, read_only=True))
    if router.public_tls_secret:
        variables += [
            env("MOERM_PUBLIC_TLS_CERT", f"{PUBLIC_TLS_DIR}/tls.crt"),
            env("MOERM_PUBLIC_TLS_KEY", f"{PUBLIC_TLS_DIR}/tls.key"),
        ]
        volumes.append(secret_volume("public-tls", router.public_tls_secret))
        mounts.append(k.V1VolumeMount(name="public-tls", mount_path=PUBLIC_TLS_DIR, read_only=True))
    variables += [env(key, value) for key, value in sorted(router.env.items())]
    probes = grpc_probes(
        values, 300, router.grace_seconds, probe_args(values, "router", service_host(name, values))
    )
    container = service_container(
        values,
        "router",
        values.images.model,
        "router_svc",
        variables,
        requirements(router.resources),
        probes,
        mounts,
    )
    template = pod_template(
        values,
        info,
        "router",
        container,
        bundle_check_container(values, values.images.model, None),
        volumes,
        router.grace_seconds,
    )
    service = k.V1Service(
        api_version="v1",
        kind="Service",
        metadata=meta(name, values, "router"),
        spec=k.V1ServiceSpec(
            type=router.service_type,
            selector=selector_labels("router"),
            ports=[k.V1ServicePort(name="grpc", port=GRPC_PORT, target_port="grpc", protocol="TCP")],
        ),
    )
    metrics_service = k.V1Service(
        api_version="v1",
        kind="Service",
        metadata=metrics_meta("moerm-router-metrics", values, "router"),
        spec=k.V1ServiceSpec(
            cluster_ip="None",
            selector=selector_labels("router"),
            ports=[k.V1ServicePort(name="metrics", port=METRICS_PORT, target_port="metrics", protocol="TCP")],
        ),
    )
    hpa = k.V2HorizontalPodAutoscaler(
        api_version="autoscaling/v2",
        kind="HorizontalPodAutoscaler",
        metadata=meta(name, values, "router"),
        spec=k.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=k.V2CrossVersionObjectReference(
                api_version="apps/v1", kind="Deployment", name=name
            ),
            min_replicas=router.replicas,
            max_replicas=router.max_replicas,
            metrics=[
                k.V2MetricSpec(
                    type="Resource",
                    resource=k.V2ResourceMetricSource(
                        name="cpu",
                        target=k.V2MetricTarget(
                            type="Utilization", average_utilization=router.target_cpu_utilization
                        ),
                    ),
                )
            ],
            behavior=scale_down_behavior(values),
        ),
    )
    router_deployment = deployment(name, values, "router", template, None)
    if any(v.value_from is not None and v.value_from.secret_key_ref is not None for v in variables):
        router_deployment.metadata.annotations = {
            "checkov.io/skip1": "CKV_K8S_35=router_svc takes its Redis URL, password included, "
            "from MOERM_REDIS_URL only (no file flag)"
        }
    return [
        router_deployment,
        service,
        metrics_service,
        hpa,
        pdb(name, values, "router"),
    ]


def aggregator_objects(info: BundleInfo, values: Values) -> list[Any]:
    aggregator = values.aggregator
    name = "moerm-aggregator"
    threads = cpu_count(aggregator.resources.limits.get("cpu", "1"))
    variables = common_env(values, aggregator.grace_seconds, threads)
    variables += [env(key, value) for key, value in sorted(aggregator.env.items())]
    volumes, mounts = service_mounts(values)
    probes = grpc_probes(
        values, 120, aggregator.grace_seconds, probe_args(values, "aggregator", service_host(name, values))
    )
    container = service_container(
        values,
        "aggregator",
        values.images.light,
        "aggregator_svc",
        variables,
        requirements(aggregator.resources),
        probes,
        mounts,
    )
    template = pod_template(
        values,
        info,
        "aggregator",
        container,
        bundle_check_container(values, values.images.light, None),
        volumes,
        aggregator.grace_seconds,
    )
    return [
        deployment(name, values, "aggregator", template, aggregator.replicas),
        headless_service(name, values, "aggregator"),
        pdb(name, values, "aggregator"),
    ]


def redis_objects(values: Values) -> list[Any]:
    redis = values.redis
    if redis.mode != "statefulset":
        return []
    name = "moerm-redis"
    options = f"--port {REDIS_PORT} --dir /data --appendonly yes"
    volumes = [tmp_volume()]
    mounts = [k.V1VolumeMount(name="data", mount_path="/data"), TMP_MOUNT]
    if redis.password_secret:
        # The password stays a file, neither an environment variable nor an argument:
        # the config holding it is written into the pod's own /tmp at start.
        password = "/etc/moerm/redis/password"
        script = (
            f'umask 077 && printf \'requirepass "%s"\\n\' "$(cat {password})" > /tmp/redis.conf '
            f"&& exec redis-server /tmp/redis.conf {options}"
        )
        ping = f'REDISCLI_AUTH="$(cat {password})" redis-cli ping | grep -q PONG'
        volumes.append(secret_volume("redis-auth", redis.password_secret))
        mounts.append(k.V1VolumeMount(name="redis-auth", mount_path="/etc/moerm/redis", read_only=True))
    else:
        script = f"exec redis-server {options} --protected-mode no"  # only the router reaches it
        ping = "redis-cli ping | grep -q PONG"
    command = ["sh", "-c", script]
    tcp = k.V1TCPSocketAction(port=REDIS_PORT)
    container = k.V1Container(
        name="redis",
        image=values.images.redis,
        image_pull_policy=values.images.pull_policy,
        command=command,
        ports=[k.V1ContainerPort(name="redis", container_port=REDIS_PORT, protocol="TCP")],
        resources=requirements(redis.resources),
        startup_probe=k.V1Probe(tcp_socket=tcp, period_seconds=5, failure_threshold=24),
        readiness_probe=k.V1Probe(
            _exec=k.V1ExecAction(command=["sh", "-c", ping]),
            period_seconds=5,
            timeout_seconds=3,
        ),
        liveness_probe=k.V1Probe(tcp_socket=tcp, period_seconds=10, timeout_seconds=3, failure_threshold=3),
        security_context=container_security(),
        volume_mounts=mounts,
    )
    template = k.V1PodTemplateSpec(
        metadata=k.V1ObjectMeta(labels=object_labels("redis")),
        spec=k.V1PodSpec(
            service_account_name=SERVICE_ACCOUNT,
            automount_service_account_token=False,
            enable_service_links=False,
            security_context=pod_security(),
            termination_grace_period_seconds=30,
            containers=[container],
            volumes=volumes,
            image_pull_secrets=[k.V1LocalObjectReference(name=s) for s in values.images.pull_secrets] or None,
        ),
    )
    claim = k.V1PersistentVolumeClaim(
        metadata=k.V1ObjectMeta(name="data", labels=object_labels("redis")),
        spec=k.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            storage_class_name=redis.storage_class or None,
            resources=k.V1VolumeResourceRequirements(requests={"storage": redis.storage}),
        ),
    )
    statefulset = k.V1StatefulSet(
        api_version="apps/v1",
        kind="StatefulSet",
        metadata=meta(name, values, "redis"),
        spec=k.V1StatefulSetSpec(
            service_name=name,
            replicas=1,
            selector=k.V1LabelSelector(match_labels=selector_labels("redis")),
            template=template,
            volume_claim_templates=[claim],
            persistent_volume_claim_retention_policy=k.V1StatefulSetPersistentVolumeClaimRetentionPolicy(
                when_deleted="Retain", when_scaled="Retain"
            ),
        ),
    )
    service = k.V1Service(
        api_version="v1",
        kind="Service",
        metadata=meta(name, values, "redis"),
        spec=k.V1ServiceSpec(
            cluster_ip="None",
            selector=selector_labels("redis"),
            ports=[k.V1ServicePort(name="redis", port=REDIS_PORT, target_port="redis", protocol="TCP")],
        ),
    )
    return [statefulset, service]


def network_policies(values: Values) -> list[k.V1NetworkPolicy]:
    """Deny all ingress, then: anyone (or ``router.allowFrom``) to the router's
    gRPC port; only the router to experts, aggregator and Redis; Prometheus's
    namespace to the metrics ports."""
    router_peer = k.V1NetworkPolicyPeer(
        pod_selector=k.V1LabelSelector(match_labels=selector_labels("router"))
    )
    prometheus_peer = k.V1NetworkPolicyPeer(
        namespace_selector=k.V1LabelSelector(
            match_labels={"kubernetes.io/metadata.name": values.monitoring.prometheus_namespace}
        )
    )

    def port(number: int) -> list[k.V1NetworkPolicyPort]:
        return [k.V1NetworkPolicyPort(port=number, protocol="TCP")]

    def policy(
        name: str, component: str | None, rules: list[k.V1NetworkPolicyIngressRule]
    ) -> k.V1NetworkPolicy:
        selector = (
            k.V1LabelSelector(match_labels=selector_labels(component)) if component else k.V1LabelSelector()
        )
        return k.V1NetworkPolicy(
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(name, values, component or "network"),
            spec=k.V1NetworkPolicySpec(pod_selector=selector, policy_types=["Ingress"], ingress=rules),
        )

    metrics = k.V1NetworkPolicyIngressRule(_from=[prometheus_peer], ports=port(METRICS_PORT))
    public_from = [k.V1NetworkPolicyPeer(**_snake(peer)) for peer in values.router.allow_from] or None
    policies = [
        policy("moerm-default-deny", None, []),
        policy(
            "moerm-router",
            "router",
            [k.V1NetworkPolicyIngressRule(_from=public_from, ports=port(GRPC_PORT)), metrics],
        ),
        policy(
            "moerm-expert",
            "expert",
            [k.V1NetworkPolicyIngressRule(_from=[router_peer], ports=port(GRPC_PORT)), metrics],
        ),
        policy(
            "moerm-aggregator",
            "aggregator",
            [k.V1NetworkPolicyIngressRule(_from=[router_peer], ports=port(GRPC_PORT)), metrics],
        ),
    ]
    if values.redis.mode == "statefulset":
        policies.append(
            policy(
                "moerm-redis",
                "redis",
                [k.V1NetworkPolicyIngressRule(_from=[router_peer], ports=port(REDIS_PORT))],
            )
        )
    return policies


def service_monitors(values: Values) -> list[dict[str, Any]]:
    if not values.monitoring.service_monitors:
        return []
    out = []
    for name, component in (
        ("moerm-router", "router"),
        ("moerm-aggregator", "aggregator"),
        ("moerm-experts", "expert"),
    ):
        metadata = _plain(meta(name, values, component))
        metadata["labels"].update(values.monitoring.labels)
        out.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": metadata,
                "spec": {
                    "selector": {"matchLabels": {**selector_labels(component), **METRICS_LABEL}},
                    "namespaceSelector": {"matchNames": [values.namespace]},
                    "endpoints": [
                        {"port": "metrics", "path": "/metrics", "interval": values.monitoring.interval}
                    ],
                },
            }
        )
    return out


def shared_objects(info: BundleInfo, values: Values) -> list[Any]:
    objects: list[Any] = []
    if values.create_namespace:
        objects.append(
            k.V1Namespace(
                api_version="v1",
                kind="Namespace",
                metadata=k.V1ObjectMeta(
                    name=values.namespace,
                    labels={
                        "app.kubernetes.io/part-of": "moerm",
                        "app.kubernetes.io/managed-by": MANAGER,
                        # Pod Security Admission: the pods meet the "restricted" profile.
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/warn": "restricted",
                    },
                ),
            )
        )
    objects.append(
        k.V1ServiceAccount(
            api_version="v1",
            kind="ServiceAccount",
            metadata=meta(SERVICE_ACCOUNT, values, "moerm"),
            automount_service_account_token=False,
        )
    )
    objects.append(
        k.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(BUNDLE_CONFIGMAP, values, "moerm"),
            data={"version": info.version, "tasks": ",".join(info.tasks), "backbone": info.backbone},
        )
    )
    return objects


def render(info: BundleInfo, values: Values) -> list[Any]:
    """Every object, in an order that applies cleanly (namespace first)."""
    values.validate(info.tasks)
    for task in info.tasks:
        name = expert_name(task)
        if len(name) > 63 or not DNS_LABEL.match(name):
            raise ValuesError(f"task {task!r}: {name!r} is not a valid Service name (63 characters at most)")
    objects = shared_objects(info, values)
    objects += router_objects(info, values)
    objects += aggregator_objects(info, values)
    objects += redis_objects(values)
    for task in info.tasks:
        objects += expert_objects(info, values, task)
    objects += network_policies(values)
    objects += service_monitors(values)
    return objects


# --- output ------------------------------------------------------------------------------------


def _snake(raw: dict[str, Any]) -> dict[str, Any]:
    """camelCase keys (YAML) -> the typed models' snake_case arguments."""
    out = {}
    for key, value in raw.items():
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        out["_from" if name == "from" else name] = value
    return out


def _plain(obj: Any) -> Any:
    return k.ApiClient().sanitize_for_serialization(obj)


def to_dicts(objects: Iterable[Any]) -> list[dict[str, Any]]:
    return [_plain(obj) for obj in objects]


def dump_yaml(documents: Iterable[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(doc, sort_keys=False, width=120) for doc in documents)


def group_name(doc: dict[str, Any]) -> str:
    """File of an object in the kustomize layout."""
    labels = doc["metadata"].get("labels", {})
    component = labels.get("app.kubernetes.io/component", "")
    if doc["kind"] == "NetworkPolicy":
        return "network-policies.yaml"
    if doc["kind"] == "ServiceMonitor":
        return "service-monitors.yaml"
    if component == "expert":
        return f"expert-{dns_name(labels[TASK_LABEL])}.yaml"
    if component in ("router", "aggregator", "redis"):
        return f"{component}.yaml"
    return "shared.yaml"


HEADER = "# Written by `moerm deploy render`; render again rather than edit.\n"


def write(documents: list[dict[str, Any]], out: Path, layout: str) -> list[Path]:
    """``single``: one multi-document file; ``kustomize``: a folder with a file per
    component and a kustomization.yaml listing them (files of an earlier render
    there are replaced; other files are left alone)."""

    if layout == "single":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(HEADER + dump_yaml(documents))
        return [out]
    groups: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        groups.setdefault(group_name(doc), []).append(doc)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.yaml"):
        if stale.read_text().startswith(HEADER):
            stale.unlink()
    written = []
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(groups),
    }
    files = {name: dump_yaml(docs) for name, docs in groups.items()}
    files["kustomization.yaml"] = yaml.safe_dump(kustomization, sort_keys=False)
    for file_name, text in files.items():
        path = out / file_name
        if path.exists():
            raise FileExistsError(f"{path} exists and was not written by moerm deploy render")
        path.write_text(HEADER + text)
        written.append(path)
    return written
