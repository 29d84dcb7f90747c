"""`moerm deploy apply` and `status` with stand-ins for the API server (none can
run here): the calls the client would make, not a cluster's answers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as NS

import pytest
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from moerm.deploy.cluster import DeployError, apply, collect, format_status, parse_queue
from tests.deploy.conftest import render_docs


class FakeDynamic:
    """The parts of kubernetes.dynamic.DynamicClient that apply uses."""

    def __init__(self, unknown: set[str] = frozenset()):
        self.unknown = unknown
        self.calls: list[dict] = []
        self.resources = self

    def get(self, *, api_version: str, kind: str):
        if kind in self.unknown:
            raise ResourceNotFoundError(f"no {kind}")
        return NS(api_version=api_version, kind=kind)

    def server_side_apply(self, resource, body, name, namespace, **kwargs):
        self.calls.append({"kind": resource.kind, "name": name, "namespace": namespace, **kwargs})


def test_apply_is_server_side_in_order(demo_bundle: Path) -> None:
    docs = render_docs(demo_bundle)
    dynamic = FakeDynamic()
    applied = apply(docs, dynamic, log=lambda line: None)
    assert len(applied) == len(docs) == len(dynamic.calls)
    assert dynamic.calls[0]["kind"] == "Namespace" and dynamic.calls[0]["namespace"] is None
    assert {c["field_manager"] for c in dynamic.calls} == {"moerm"}
    assert all(c["force_conflicts"] is True and c["dry_run"] is None for c in dynamic.calls)
    assert {c["namespace"] for c in dynamic.calls[1:]} == {"moerm"}
    apply(docs, dry := FakeDynamic(), dry_run=True, log=lambda line: None)
    assert {c["dry_run"] for c in dry.calls} == {"All"}


def test_apply_stops_before_anything_when_a_crd_is_missing(demo_bundle: Path) -> None:
    dynamic = FakeDynamic(unknown={"ScaledObject"})
    with pytest.raises(DeployError, match="ScaledObject"):
        apply(render_docs(demo_bundle), dynamic, log=lambda line: None)
    assert dynamic.calls == []


METRICS = """\
# HELP moerm_expert_queue_items Items waiting in the batcher.
# TYPE moerm_expert_queue_items gauge
moerm_expert_queue_items{task="code"} 12.0
moerm_expert_queue_requests{task="code"} 3.0
"""


def test_parse_queue() -> None:
    assert parse_queue(METRICS) == {"code": 12.0}
    assert parse_queue('moerm_expert_queue_items{pod="a",task="exam"} 2\nother 5\n') == {"exam": 2.0}


def _workload(name: str, component: str, task: str | None, desired: int, ready: int | None):
    labels = {"app.kubernetes.io/name": "moerm", "app.kubernetes.io/component": component}
    if task:
        labels["moerm/task"] = task
    return NS(
        metadata=NS(name=name, labels=labels),
        spec=NS(replicas=desired),
        status=NS(ready_replicas=ready, updated_replicas=desired),
    )


class FakeApps:
    def list_namespaced_deployment(self, namespace, label_selector):
        assert label_selector == "app.kubernetes.io/name=moerm"
        return NS(
            items=[
                _workload("moerm-expert-code", "expert", "code", 3, 2),
                _workload("moerm-router", "router", None, 2, 2),
                _workload("moerm-expert-exam", "expert", "exam", 1, None),
                _workload("moerm-aggregator", "aggregator", None, 2, 2),
            ]
        )

    def list_namespaced_stateful_set(self, namespace, label_selector):
        return NS(items=[_workload("moerm-redis", "redis", None, 1, 1)])


class FakeCore:
    def __init__(self):
        self.proxied = []

    def read_namespaced_config_map(self, name, namespace):
        assert name == "moerm-bundle"
        return NS(data={"version": "abcdef0123456789"})

    def list_namespaced_pod(self, namespace, label_selector):
        ready = [NS(type="Ready", status="True")]
        return NS(
            items=[
                NS(metadata=NS(name="code-1"), status=NS(conditions=ready)),
                NS(metadata=NS(name="code-2"), status=NS(conditions=ready)),
                NS(metadata=NS(name="exam-1"), status=NS(conditions=[NS(type="Ready", status="False")])),
            ]
        )

    def connect_get_namespaced_pod_proxy_with_path(self, name, namespace, path):
        self.proxied.append((name, path))
        return METRICS


def test_status_table() -> None:
    core = FakeCore()
    version, rows = collect(FakeApps(), core, "moerm")
    assert version == "abcdef0123456789"
    assert [r.component for r in rows] == ["router", "aggregator", "redis", "code", "exam"]
    code = rows[3]
    assert (code.desired, code.ready, code.queue_items) == (3, 2, 24.0)  # two ready pods, 12 each
    assert rows[4].ready == 0 and rows[4].queue_items == 0.0
    assert rows[0].queue_items is None  # not an expert
    assert core.proxied == [("code-1:9090", "metrics"), ("code-2:9090", "metrics")]
    table = format_status("moerm", version, rows)
    assert "moerm-expert-code" in table and "24" in table and "bundle abcdef0123456789" in table


def test_status_queue_from_prometheus(monkeypatch) -> None:
    import moerm.deploy.cluster as cluster

    asked = []

    def query(url, namespace):
        asked.append((url, namespace))
        return {"exam": 7.0}

    monkeypatch.setattr(cluster, "queue_from_prometheus", query)
    _, rows = collect(FakeApps(), FakeCore(), "moerm", prometheus="http://prom:9090")
    assert asked == [("http://prom:9090", "moerm")]
    assert {r.component: r.queue_items for r in rows if r.name.startswith("moerm-expert")} == {
        "code": 0.0,
        "exam": 7.0,
    }


def test_cli_wiring(demo_bundle: Path, tmp_path: Path, capsys) -> None:
    from moerm.cli import main

    assert (
        main(["deploy", "render", "--bundle", str(demo_bundle), "--set", "experts.tasks.code.minReplicas=2"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines().count("kind: Deployment") == 6 and "minReplicaCount: 2" in out
    assert (
        main(
            [
                "deploy",
                "render",
                "--bundle",
                str(demo_bundle),
                "--layout",
                "kustomize",
                "--out",
                str(tmp_path / "k"),
            ]
        )
        == 0
    )
    assert (tmp_path / "k" / "kustomization.yaml").is_file() and (
        tmp_path / "k" / "expert-code.yaml"
    ).is_file()
    assert main(["deploy", "render", "--bundle", str(demo_bundle), "--set", "router.replicas=1"]) == 2
    assert "router.replicas" in capsys.readouterr().err
    assert main(["deploy", "apply"]) == 2  # neither --bundle nor --manifests
