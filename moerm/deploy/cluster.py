"""``moerm deploy apply`` and ``moerm deploy status`` against a real cluster.

Apply is server-side apply (field manager ``moerm``, conflicts forced: the
manifests are the source of truth for the fields they set; the replica counts
of autoscaled Deployments are not among them). Status lists each component's
desired, ready and updated replicas and, for each task, the items queued at
its experts: from Prometheus (``--prometheus URL``) when given, else read from
every ready expert pod's metrics through the API server's pod proxy.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from moerm.deploy.render import BUNDLE_CONFIGMAP, METRICS_PORT, QUEUE_METRIC, TASK_LABEL

FIELD_MANAGER = "moerm"
SELECTOR = "app.kubernetes.io/name=moerm"


class DeployError(RuntimeError):
    pass


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """A client from the kubeconfig (or the in-cluster service account)."""
    from kubernetes import config
    from kubernetes.client import ApiClient
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError, TypeError):
        if kubeconfig or context:
            raise
        config.load_incluster_config()
        return ApiClient()


# --- apply -------------------------------------------------------------------------------------


def apply(documents: list[dict[str, Any]], dynamic, *, dry_run: bool = False, log=print) -> list[str]:
    """Server-side apply each document in order. Checks first that the cluster
    knows every kind (KEDA's and the Prometheus operator's CRDs), so a missing
    CRD stops the run before anything changed."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    resources = []
    missing = set()
    for doc in documents:
        try:
            resources.append(dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"]))
        except ResourceNotFoundError:
            missing.add(f"{doc['kind']} ({doc['apiVersion']})")
    if missing:
        raise DeployError(
            f"the cluster does not know {sorted(missing)}: install the operator that defines it "
            "(KEDA for ScaledObject, the Prometheus operator for ServiceMonitor) or render without it "
            "(autoscaling.experts: hpa or none; monitoring.serviceMonitors: false)"
        )
    applied = []
    for doc, resource in zip(documents, resources, strict=True):
        meta = doc["metadata"]
        dynamic.server_side_apply(
            resource,
            body=doc,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            dry_run="All" if dry_run else None,
        )
        what = f"{doc['kind']}/{meta['name']}"
        applied.append(what)
        log(f"{what} {'checked (dry run)' if dry_run else 'applied'}")
    return applied


# --- status ------------------------------------------------------------------------------------


@dataclass
class Row:
    component: str  # router, aggregator, redis, or the task of an expert
    name: str
    desired: int
    ready: int
    updated: int
    queue_items: float | None = None  # experts only; None: unknown

    def line(self) -> str:
        queue = "-" if self.queue_items is None else f"{self.queue_items:g}"
        return f"{self.component:<16} {self.name:<34} {self.desired:>7} {self.ready:>5} {self.updated:>7} {queue:>7}"


HEADER = f"{'component/task':<16} {'object':<34} {'desired':>7} {'ready':>5} {'updated':>7} {'queue':>7}"

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_queue(text: str) -> dict[str, float]:
    """``moerm_expert_queue_items`` per task from Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != QUEUE_METRIC:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        task = labels.get("task", "")
        out[task] = out.get(task, 0.0) + float(match["value"])
    return out


def queue_from_prometheus(url: str, namespace: str, *, timeout_s: float = 10.0) -> dict[str, float]:
    query = f'sum by (task) ({QUEUE_METRIC}{{namespace="{namespace}"}})'
    full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(full, timeout=timeout_s) as response:  # noqa: S310 (the operator's URL)
        body = json.load(response)
    if body.get("status") != "success":
        raise DeployError(f"prometheus query failed: {body.get('error', body)}")
    return {r["metric"].get("task", ""): float(r["value"][1]) for r in body["data"]["result"]}


def queue_from_pods(core, namespace: str) -> dict[str, float]:
    """Sum of the gauge over every ready expert pod, read through the API server."""
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"{SELECTOR},app.kubernetes.io/component=expert"
    )
    out: dict[str, float] = {}
    for pod in pods.items:
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        if not ready:
            continue
        text = core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod.metadata.name}:{METRICS_PORT}", namespace, "metrics"
        )
        for task, value in parse_queue(text).items():
            out[task] = out.get(task, 0.0) + value
    return out


def _count(value) -> int:
    return int(value or 0)


def collect(apps, core, namespace: str, *, prometheus: str = "") -> tuple[str, list[Row]]:
    """(the deployed bundle version, one row per Deployment / StatefulSet)."""
    try:
        version = core.read_namespaced_config_map(BUNDLE_CONFIGMAP, namespace).data.get("version", "?")
    except Exception:  # noqa: BLE001 (a missing ConfigMap is reported, not fatal)
        version = "(no moerm-bundle ConfigMap)"
    rows = []
    workloads: Iterable = [
        *apps.list_namespaced_deployment(namespace, label_selector=SELECTOR).items,
        *apps.list_namespaced_stateful_set(namespace, label_selector=SELECTOR).items,
    ]
    for item in workloads:
        labels = item.metadata.labels or {}
        component = labels.get("app.kubernetes.io/component", "?")
        if component == "expert":
            component = labels.get(TASK_LABEL, "?")
        rows.append(
            Row(
                component=component,
                name=item.metadata.name,
                desired=_count(item.spec.replicas),
                ready=_count(item.status.ready_replicas),
                updated=_count(getattr(item.status, "updated_replicas", 0)),
            )
        )
    try:
        queues = (
            queue_from_prometheus(prometheus, namespace) if prometheus else queue_from_pods(core, namespace)
        )
    except Exception as error:  # noqa: BLE001 (status still shows the replicas)
        queues = {}
        version += f"  (queue depth unavailable: {type(error).__name__}: {error})"
    for row in rows:
        if row.name.startswith("moerm-expert-"):
            row.queue_items = queues.get(row.component, 0.0 if queues else None)
    order = {"router": 0, "aggregator": 1, "redis": 2}
    rows.sort(key=lambda r: (order.get(r.component, 3), r.component))
    return version, rows


def format_status(namespace: str, version: str, rows: list[Row]) -> str:
    lines = [f"namespace {namespace}, bundle {version}", HEADER, *(row.line() for row in rows)]
    if not rows:
        lines.append("(no moerm workloads in this namespace)")
    return "\n".join(lines)
