"""What `moerm deploy render` writes: one expert set per task, probes and
resources on every container, the security context, the network policies, the
autoscalers, and the values file's layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from moerm.bundle_build import DEMO_TASKS
from moerm.deploy.values import ValuesError, load_values
from tests.deploy.conftest import DEPLOY, by_kind, env_of, named, pod_specs, render_docs

DEMO = tuple(DEMO_TASKS)


def expert_deployments(docs) -> dict[str, dict[str, Any]]:
    out = {}
    for doc in by_kind(docs, "Deployment"):
        labels = doc["metadata"]["labels"]
        if labels["app.kubernetes.io/component"] == "expert":
            out[labels["moerm/task"]] = doc
    return out


def container(doc: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


@pytest.mark.parametrize("fixture", ["demo_docs", "demo_gpu_docs"])
def test_one_expert_set_per_task(fixture: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(fixture)
    experts = expert_deployments(docs)
    assert sorted(experts) == sorted(DEMO)
    for task in DEMO:
        name = f"moerm-expert-{task}"
        assert experts[task]["metadata"]["name"] == name
        assert named(docs, "Service", name)["spec"]["clusterIP"] == "None"  # headless: client-side balancing
        assert named(docs, "ScaledObject", name)["spec"]["scaleTargetRef"]["name"] == name
        assert named(docs, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1
        assert env_of(container(experts[task]))["MOERM_TASK"] == task
    for name in ("moerm-router", "moerm-aggregator"):
        named(docs, "Deployment", name)
        named(docs, "PodDisruptionBudget", name)
    named(docs, "StatefulSet", "moerm-redis")


def test_the_fixture_bundle_gets_its_own_tasks(minilm_bundle: Path) -> None:
    docs = render_docs(minilm_bundle)
    assert sorted(expert_deployments(docs)) == ["code", "writing"]
    router = env_of(container(named(docs, "Deployment", "moerm-router")))
    assert router["MOERM_EXPERTS"] == (
        "code=dns:///moerm-expert-code.moerm.svc.cluster.local:50051,"
        "writing=dns:///moerm-expert-writing.moerm.svc.cluster.local:50051"
    )


@pytest.mark.parametrize("fixture", ["demo_docs", "demo_gpu_docs"])
def test_probes_and_resources_on_every_container(fixture: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(fixture)
    specs = pod_specs(docs)
    assert len(specs) == len(DEMO) + 3
    for where, spec in specs:
        for c in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where} {c['name']}: no {probe}"
        for c in spec["containers"] + spec.get("initContainers", []):
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where} {c['name']}: {part}"


@pytest.mark.parametrize("fixture", ["demo_docs", "demo_gpu_docs"])
def test_non_root_read_only_containers(fixture: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(fixture)
    for where, spec in pod_specs(docs):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where} {c['name']}"
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["runAsNonRoot"] is True
    namespace = by_kind(docs, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_drain_fits_the_termination_grace(demo_docs) -> None:
    """preStop (endpoints drop) + the drain grace fit in terminationGracePeriodSeconds,
    and liveness cannot kill a draining pod (NOT_SERVING) before the drain ends."""
    for doc in by_kind(demo_docs, "Deployment"):
        spec = doc["spec"]["template"]["spec"]
        c = spec["containers"][0]
        grace = float(env_of(c)["MOERM_GRACE_S"])
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop >= 1
        assert spec["terminationGracePeriodSeconds"] >= grace + pre_stop, doc["metadata"]["name"]
        live = c["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > grace + pre_stop


def test_bundle_read_only_and_version_checked(demo_docs, demo_bundle: Path) -> None:
    from moerm.bundle import Bundle

    version = Bundle.load(demo_bundle).version
    assert named(demo_docs, "ConfigMap", "moerm-bundle")["data"]["version"] == version
    for where, spec in pod_specs(demo_docs):
        if "redis" in where:
            continue
        (volume,) = [v for v in spec["volumes"] if v["name"] == "bundle"]
        assert volume["persistentVolumeClaim"] == {"claimName": "moerm-bundle", "readOnly": True}
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "bundle")
        assert mount == {"mountPath": "/bundle", "name": "bundle", "readOnly": True}
        (init,) = spec["initContainers"]
        assert init["command"][:5] == ["python", "-m", "moerm.deploy.bundle_check", "--bundle", "/bundle"]
        ref = env_of(init)["MOERM_EXPECT_BUNDLE_VERSION"]["configMapKeyRef"]
        assert ref == {"name": "moerm-bundle", "key": "version"}
    doc = named(demo_docs, "Deployment", "moerm-expert-code")
    assert doc["spec"]["template"]["metadata"]["annotations"]["moerm/bundle-version"] == version
    assert "--task" in doc["spec"]["template"]["spec"]["initContainers"][0]["command"]


def test_bundle_fetched_from_a_url(demo_bundle: Path) -> None:
    docs = render_docs(demo_bundle, bundle={"source": "url", "urlSecret": "bundle-url"})
    spec = named(docs, "Deployment", "moerm-expert-exam")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "bundle"]
    assert "emptyDir" in volume
    init = spec["initContainers"][0]
    assert init["command"][-2:] == ["--fetch", "$(MOERM_BUNDLE_URL)"]
    assert env_of(init)["MOERM_BUNDLE_URL"]["secretKeyRef"] == {"name": "bundle-url", "key": "url"}
    assert not next(m for m in init["volumeMounts"] if m["name"] == "bundle")["readOnly"]
    assert next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "bundle")["readOnly"]


# --- network policies ---------------------------------------------------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def allowed(docs, src: dict[str, str], src_namespace: str, dst: dict[str, str], port: int) -> bool:
    """NetworkPolicy ingress semantics for pods of the moerm namespace: isolated
    when any policy selects the pod, then allowed when one rule admits the peer."""
    selecting = [p for p in by_kind(docs, "NetworkPolicy") if _matches(p["spec"]["podSelector"], dst)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_ok = (
                    _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src_namespace})
                    if "namespaceSelector" in peer
                    else src_namespace == "moerm"
                )
                pod_ok = _matches(peer["podSelector"], src) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


def pod(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "moerm", "app.kubernetes.io/component": component}


@pytest.mark.parametrize(
    ("src", "namespace", "dst", "port", "expected"),
    [
        ("router", "moerm", "expert", 50051, True),
        ("router", "moerm", "aggregator", 50051, True),
        ("router", "moerm", "redis", 6379, True),
        ("expert", "moerm", "redis", 6379, False),
        ("aggregator", "moerm", "expert", 50051, False),
        ("expert", "moerm", "aggregator", 50051, False),
        ("client", "trainers", "router", 50051, True),
        ("client", "trainers", "expert", 50051, False),
        ("client", "trainers", "aggregator", 50051, False),
        ("client", "trainers", "redis", 6379, False),
        ("client", "trainers", "router", 9090, False),
        ("prometheus", "monitoring", "expert", 9090, True),
        ("prometheus", "monitoring", "router", 9090, True),
        ("prometheus", "monitoring", "expert", 50051, False),
        ("prometheus", "monitoring", "redis", 6379, False),
    ],
)
def test_network_policies(demo_docs, src, namespace, dst, port, expected) -> None:
    assert allowed(demo_docs, pod(src), namespace, pod(dst), port) is expected


def test_router_allow_from_narrows_the_public_port(demo_bundle: Path) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trainers"}}}
    docs = render_docs(demo_bundle, router={"allowFrom": [peer]})
    assert allowed(docs, pod("client"), "trainers", pod("router"), 50051)
    assert not allowed(docs, pod("client"), "elsewhere", pod("router"), 50051)


# --- autoscaling and per-task values ------------------------------------------------------------


def test_keda_scales_each_task_on_its_queue(demo_docs) -> None:
    for task in DEMO:
        scaled = named(demo_docs, "ScaledObject", f"moerm-expert-{task}")["spec"]
        assert scaled["minReplicaCount"] >= 1
        (trigger,) = scaled["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert f'moerm_expert_queue_items{{namespace="moerm",task="{task}"}}' in query
        assert isinstance(trigger["metadata"]["threshold"], str)  # KEDA wants a string
        assert "replicas" not in named(demo_docs, "Deployment", f"moerm-expert-{task}")["spec"]


def test_per_task_values(demo_bundle: Path) -> None:
    docs = render_docs(
        demo_bundle,
        experts={
            "defaults": {"maxReplicas": 3},
            "tasks": {
                "code": {
                    "minReplicas": 2,
                    "maxReplicas": 8,
                    "gpus": 2,
                    "resources": {"limits": {"cpu": "8", "memory": "24Gi"}},
                }
            },
        },
    )
    code = named(docs, "ScaledObject", "moerm-expert-code")["spec"]
    exam = named(docs, "ScaledObject", "moerm-expert-exam")["spec"]
    assert (code["minReplicaCount"], code["maxReplicaCount"]) == (2, 8)
    assert (exam["minReplicaCount"], exam["maxReplicaCount"]) == (1, 3)
    c = container(named(docs, "Deployment", "moerm-expert-code"))
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "24Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["requests"]["cpu"] == "2"  # requests merged from the defaults
    assert c["image"] == "moerm-gpu:0.1.0"
    assert env_of(c)["MOERM_DEVICE"] == "cuda" and env_of(c)["MOERM_TORCH_THREADS"] == "8"
    e = container(named(docs, "Deployment", "moerm-expert-exam"))
    assert "nvidia.com/gpu" not in e["resources"]["limits"] and e["image"] == "moerm:0.1.0"
    assert env_of(e)["MOERM_DEVICE"] == "cpu"


def test_gpu_profile(demo_gpu_docs) -> None:
    for doc in expert_deployments(demo_gpu_docs).values():
        spec = doc["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["image"] == "moerm-gpu:0.1.0"
        assert env_of(c)["MOERM_DEVICE"] == "cuda" and env_of(c)["MOERM_DTYPE"] == "bfloat16"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    router = container(named(demo_gpu_docs, "Deployment", "moerm-router"))
    assert "nvidia.com/gpu" not in router["resources"]["limits"]


def test_hpa_alternative_and_fixed_replicas(demo_bundle: Path) -> None:
    docs = render_docs(demo_bundle, autoscaling={"experts": "hpa"})
    assert not by_kind(docs, "ScaledObject")
    hpa = named(docs, "HorizontalPodAutoscaler", "moerm-expert-code")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "moerm_expert_queue_items"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "64"}
    docs = render_docs(
        demo_bundle, autoscaling={"experts": "none"}, experts={"tasks": {"exam": {"minReplicas": 3}}}
    )
    assert named(docs, "Deployment", "moerm-expert-exam")["spec"]["replicas"] == 3
    assert [h["metadata"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")] == ["moerm-router"]


def test_router(demo_docs) -> None:
    doc = named(demo_docs, "Deployment", "moerm-router")
    assert "replicas" not in doc["spec"]  # the HPA owns the count
    hpa = named(demo_docs, "HorizontalPodAutoscaler", "moerm-router")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["metrics"][0]["resource"]["name"] == "cpu"
    variables = env_of(container(doc))
    assert variables["MOERM_CLUSTER"] == "true"
    assert variables["MOERM_AGGREGATOR"] == "dns:///moerm-aggregator.moerm.svc.cluster.local:50051"
    assert (
        variables["MOERM_REDIS_URL"]
        == "redis://:$(REDIS_PASSWORD)@moerm-redis.moerm.svc.cluster.local:6379/0"
    )
    names = [e["name"] for e in container(doc)["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("MOERM_REDIS_URL")  # kubelet expands in order
    assert variables["MOERM_AUTH_TOKENS"] == "/etc/moerm/tokens/tokens"
    assert variables["MOERM_TLS_CA"] == "/etc/moerm/tls/ca.crt"
    for name in ("MOERM_HOST", "MOERM_PORT", "MOERM_METRICS_PORT", "MOERM_BUNDLE"):
        assert name in variables
    public = named(demo_docs, "Service", "moerm-router")["spec"]
    assert [p["port"] for p in public["ports"]] == [50051]  # metrics stay off the public Service
    assert named(demo_docs, "Service", "moerm-router-metrics")["spec"]["clusterIP"] == "None"


def test_probe_kinds(demo_bundle: Path, demo_docs) -> None:
    """Kubelet's gRPC probe has no client certificate: under mTLS experts and the
    aggregator are probed by an exec that presents the pod's certificate."""

    def kinds(docs):
        out = {}
        for doc in by_kind(docs, "Deployment"):
            probe = container(doc)["readinessProbe"]
            out[doc["metadata"]["name"]] = (
                "grpc" if "grpc" in probe else " ".join(probe["exec"]["command"][5:])
            )
        return out

    tls = kinds(demo_docs)
    assert tls["moerm-router"] == "grpc"  # its public port is plaintext here
    assert tls["moerm-expert-code"] == "--server-name moerm-expert-code.moerm.svc.cluster.local"
    assert tls["moerm-aggregator"] == "--server-name moerm-aggregator.moerm.svc.cluster.local"
    plain = kinds(render_docs(demo_bundle, tls={"enabled": False}))
    assert set(plain.values()) == {"grpc"}
    public = kinds(render_docs(demo_bundle, router={"publicTlsSecret": "public-cert"}))
    assert public["moerm-router"] == "--public --server-name moerm-router.moerm.svc.cluster.local"
    with pytest.raises(ValuesError, match="gRPC probe"):
        render_docs(demo_bundle, probes={"kind": "grpc"})


def test_external_redis(demo_bundle: Path) -> None:
    docs = render_docs(demo_bundle, redis={"mode": "external", "urlSecret": "redis-url"})
    assert not by_kind(docs, "StatefulSet")
    assert "moerm-redis" not in [p["metadata"]["name"] for p in by_kind(docs, "NetworkPolicy")]
    variables = env_of(container(named(docs, "Deployment", "moerm-router")))
    assert variables["MOERM_REDIS_URL"] == {"secretKeyRef": {"name": "redis-url", "key": "url"}}


def test_service_monitors(demo_docs, demo_bundle: Path) -> None:
    monitors = by_kind(demo_docs, "ServiceMonitor")
    assert [m["metadata"]["name"] for m in monitors] == ["moerm-router", "moerm-aggregator", "moerm-experts"]
    for monitor in monitors:
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        selected = [
            s
            for s in by_kind(demo_docs, "Service")
            if all(
                s["metadata"]["labels"].get(k) == v
                for k, v in monitor["spec"]["selector"]["matchLabels"].items()
            )
        ]
        assert selected and all("metrics" in [p["name"] for p in s["spec"]["ports"]] for s in selected)
    assert not by_kind(render_docs(demo_bundle, monitoring={"serviceMonitors": False}), "ServiceMonitor")


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"router": {"replica": 3}}, r"router\.replica"),
        ({"router": {"replicas": 1}}, "router.replicas must be >= 2"),
        ({"experts": {"tasks": {"nosuch": {"gpus": 1}}}}, "tasks the bundle lacks"),
        ({"experts": {"tasks": {"code": {"minReplicas": 0}}}}, "minReplicas"),
        ({"experts": {"defaults": {"gpu": 1}}}, r"experts\.tasks\.code\.gpu"),
        ({"experts": {"defaults": {"dtype": "int8"}}}, "dtype"),
        ({"router": {"replicas": "two"}}, "expected an integer"),
        ({"autoscaling": {"experts": "vpa"}}, "autoscaling.experts"),
    ],
)
def test_bad_values_are_errors(demo_bundle: Path, overrides, message) -> None:
    with pytest.raises(ValuesError, match=message):
        render_docs(demo_bundle, **overrides)


def _keys(cls, prefix: str = "") -> set[str]:
    import dataclasses

    from moerm.deploy.values import camel

    out = set()
    for f in dataclasses.fields(cls):
        key = prefix + camel(f.name)
        out.add(key)
        if dataclasses.is_dataclass(f.type) or (
            isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)
        ):
            out |= _keys(f.default_factory, key + ".")
    return out


def _flatten(raw: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in raw.items():
        out.add(prefix + key)
        if isinstance(value, dict) and key not in ("tasks", "labels", "env", "nodeSelector"):
            out |= _flatten(value, prefix + key + ".")
    return out


def test_values_example_names_every_key_with_its_default(demo_bundle: Path) -> None:
    from moerm.deploy.values import ExpertValues, Values

    example = yaml.safe_load((DEPLOY / "values.example.yaml").read_text())
    written = _flatten(example)
    for key in _keys(Values) | {"experts.defaults." + k for k in _keys(ExpertValues)}:
        if key.endswith((".requests", ".limits")):
            continue
        assert key in written, f"deploy/values.example.yaml does not name {key}"
    # The example shows the defaults: rendering with it changes nothing.
    assert render_docs(demo_bundle, **example) == render_docs(demo_bundle)
    assert load_values("cpu", (DEPLOY / "values.example.yaml",)) == load_values("cpu", overrides=example)
