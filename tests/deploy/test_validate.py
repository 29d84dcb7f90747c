"""The offline validators over every manifest set: `kustomize build` of each
overlay, `moerm deploy render` of the demo-task bundle and of a SmolLM2 bundle
(cpu and gpu) pass `kubernetes-validate` (strict) for Kubernetes 1.30 and the
newest release it knows, and checkov with no failed check.

Checkov (open-source) gives its Kubernetes checks no severity, so the bar is
stricter than "no high finding": no failed check at all. Two checks are about
how the operator names images (CKV_K8S_43 "image should use digest",
CKV_K8S_15 "pull policy Always"): the default values use tags, so those two are
skipped for the default render and must pass for a render with images pinned
by digest. The router carries one in-manifest skip with its reason
(CKV_K8S_35: its Redis URL holds the password and the router takes it from an
environment variable only).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from moerm.bundle_build import DEMO_TASKS
from tests.deploy.conftest import (
    CRD_KINDS,
    DEPLOY,
    REPO,
    checkov_command,
    kustomize_build,
    render_docs,
)

OLDEST = "1.30.0"
NEWEST = kubernetes_validate.utils.latest_version()
IMAGE_NAMING_CHECKS = ("CKV_K8S_43", "CKV_K8S_15")
DIGEST = "sha256:" + "0" * 64
PINNED = {
    "images": {
        "light": f"registry.example/moerm-light@{DIGEST}",
        "model": f"registry.example/moerm@{DIGEST}",
        "gpu": f"registry.example/moerm-gpu@{DIGEST}",
        "redis": f"registry.example/redis@{DIGEST}",
        "pullPolicy": "Always",
    }
}


def validate(docs: list[dict[str, Any]], version: str) -> None:
    """Strict schema validation of every built-in object; the CRD objects
    (KEDA, Prometheus operator) have no schema here and are checked by shape in
    test_render."""
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {error.message}")
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"} <= kinds


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize_build(DEPLOY / "overlays" / name) for name in ("cpu", "gpu")}


@pytest.fixture(scope="module")
def smollm2_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SmolLM2 bundle as `moerm bundle create --backbone smollm2` makes it
    (untrained: render reads only its manifest, and verifies its files)."""
    from moerm.bundle import Capability
    from moerm.bundle_build import TaskDefinition, create_bundle

    tasks = [
        TaskDefinition("code", "programming", (Capability("correctness"), Capability("readability"))),
        TaskDefinition("open_qa", "questions", (Capability("accuracy"), Capability("helpfulness"))),
    ]
    out = tmp_path_factory.mktemp("deploy") / "smollm2"
    create_bundle(out, tasks, backbone="smollm2", lora_fraction=0.1)
    return out


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_validate(overlays, overlay: str, version: str) -> None:
    validate(overlays[overlay], version)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_demo_render_validates(demo_docs, demo_gpu_docs, demo_bundle: Path, version: str) -> None:
    validate(demo_docs, version)
    validate(demo_gpu_docs, version)
    for variant in (
        {"autoscaling": {"experts": "hpa"}, "tls": {"enabled": False}},
        {
            "bundle": {"source": "url", "url": "https://objects.example/b.tar.gz"},
            "redis": {"mode": "external", "url": "redis://r:6379/0"},
        },
        {
            "router": {"publicTlsSecret": "public", "serviceType": "LoadBalancer"},
            "autoscaling": {"experts": "none"},
        },
    ):
        validate(render_docs(demo_bundle, **variant), version)


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_smollm2_render_validates(smollm2_bundle: Path, overlay: str, tmp_path: Path) -> None:
    docs = render_docs(smollm2_bundle, overlay)
    deployments = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]
    assert {"moerm-expert-code", "moerm-expert-open-qa"} <= set(deployments)
    for version in (OLDEST, NEWEST):
        validate(docs, version)
    (tmp_path / "smollm2.yaml").write_text(yaml.safe_dump_all(docs))
    assert run_checkov(tmp_path, skip=IMAGE_NAMING_CHECKS) == []


def run_checkov(folder: Path, *, skip: tuple[str, ...] = (), framework: str = "kubernetes") -> list[str]:
    """Failed checks as "CHECK resource" lines (checkov exits non-zero on any)."""
    command = [
        *checkov_command(),
        "-d",
        str(folder),
        "--framework",
        framework,
        "-o",
        "json",
        "--skip-download",
    ]
    if skip:
        command += ["--skip-check", ",".join(skip)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.stdout.strip(), result.stderr
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = []
    passed = 0
    for report in reports:
        if "results" not in report:
            continue
        passed += len(report["results"]["passed_checks"])
        for check in report["results"]["failed_checks"]:
            failed.append(f"{check['check_id']} {check['resource']}: {check['check_name']}")
    assert passed > 0, "checkov checked nothing"
    assert (result.returncode != 0) == bool(failed), result.stderr[-2000:]
    return failed


def test_checkov(demo_docs, demo_bundle: Path, overlays, tmp_path: Path) -> None:
    default = tmp_path / "default"
    default.mkdir()
    (default / "demo.yaml").write_text(yaml.safe_dump_all(demo_docs))
    for name, docs in overlays.items():
        (default / f"overlay-{name}.yaml").write_text(yaml.safe_dump_all(docs))
    assert run_checkov(default, skip=IMAGE_NAMING_CHECKS) == []
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    for overlay in ("cpu", "gpu"):
        (pinned / f"{overlay}.yaml").write_text(
            yaml.safe_dump_all(render_docs(demo_bundle, overlay, **PINNED))
        )
    assert run_checkov(pinned) == []


def test_checkov_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text((REPO / "Dockerfile").read_text())
    assert run_checkov(tmp_path, framework="dockerfile") == []


# --- kustomize overlays = render ------------------------------------------------------------------


def base_info():
    """The bundle deploy/base was rendered for: the demo tasks, its version."""
    from moerm.deploy.render import BundleInfo

    shared = list(yaml.safe_load_all((DEPLOY / "base" / "shared.yaml").read_text()))
    config = next(doc for doc in shared if doc and doc["kind"] == "ConfigMap")
    tasks = tuple(config["data"]["tasks"].split(","))
    assert sorted(tasks) == sorted(DEMO_TASKS)
    return BundleInfo(config["data"]["version"], tasks, "minilm", "minilm")


def render_base(overlay: str) -> list[dict[str, Any]]:
    from moerm.deploy.render import render, to_dicts
    from moerm.deploy.values import load_values

    return to_dicts(render(base_info(), load_values(overlay)))


def test_base_is_what_render_writes(tmp_path: Path) -> None:
    """deploy/base is generated (`make deploy-base`): it must match the code."""
    from moerm.deploy.render import write

    write(render_base("cpu"), tmp_path, "kustomize")
    expected = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    actual = {p.name: p.read_text() for p in (DEPLOY / "base").glob("*.yaml")}
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name] == expected[name], f"deploy/base/{name} is stale: run `make deploy-base`"


def _normalized(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """By kind and name; env lists by name (a strategic-merge patch moves the entries
    it changes to the front; none of these refer to another)."""
    out = {}
    for doc in docs:
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in template.get("containers", []) + template.get("initContainers", []):
            if "env" in c:
                c["env"] = sorted(c["env"], key=lambda e: e["name"])
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_equals_render(overlays, overlay: str) -> None:
    built, rendered = _normalized(overlays[overlay]), _normalized(render_base(overlay))
    assert sorted(built) == sorted(rendered)
    for key in built:
        assert built[key] == rendered[key], (
            f"{key}: deploy/overlays/{overlay} differs from render --overlay {overlay}"
        )
