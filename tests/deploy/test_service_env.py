"""The services read what the manifests give them: every MOERM_* variable of a
rendered container is a flag of that service's config, and the config parsed
from them binds 0.0.0.0, serves metrics on the metrics port, turns on cluster
mode, tokens and (m)TLS as the manifests mean."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from aggregator_svc.config import AggregatorConfig
from expert_svc.config import ExpertConfig
from moerm.config import ENV_PREFIX, env_name, parse_config
from moerm.deploy.render import GRPC_PORT, METRICS_PORT, PUBLIC_TLS_DIR, TLS_DIR, TOKENS_DIR
from router_svc.config import RouterConfig
from tests.deploy.conftest import by_kind, render_docs

CONFIGS = {"router_svc": RouterConfig, "expert_svc": ExpertConfig, "aggregator_svc": AggregatorConfig}


def service_configs(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """module -> the configs its containers' environments parse into."""
    out: dict[str, list[Any]] = {}
    for doc in by_kind(docs, "Deployment"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            module = container["command"][-1]
            cls = CONFIGS[module]
            known = {env_name(f) for f in dataclasses.fields(cls)}
            variables = {
                e["name"]: e.get("value", "redis://:secret@redis:6379/0")  # a Secret's value: a stand-in
                for e in container["env"]
                if e["name"].startswith(ENV_PREFIX)
            }
            unknown = sorted(set(variables) - known)
            assert not unknown, f"{doc['metadata']['name']}: {module} has no flag for {unknown}"
            with monkeypatch.context() as patch:
                for name in known:
                    patch.delenv(name, raising=False)
                for name, value in variables.items():
                    patch.setenv(name, value)
                out.setdefault(module, []).append(parse_config(cls, [], prog=module))
    return out


def test_every_variable_is_a_flag_and_means_what_the_manifest_says(
    demo_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render_docs(demo_bundle, router={"publicTlsSecret": "public-tls"})
    configs = service_configs(docs, monkeypatch)
    assert set(configs) == set(CONFIGS)
    for module, parsed in configs.items():
        for config in parsed:
            assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", GRPC_PORT, METRICS_PORT)
            assert (config.tls_cert, config.tls_key, config.tls_ca) == (
                f"{TLS_DIR}/tls.crt",
                f"{TLS_DIR}/tls.key",
                f"{TLS_DIR}/ca.crt",
            ), module
    (router,) = configs["router_svc"]
    assert router.cluster and router.redis_url.startswith("redis://")
    assert router.auth_tokens == f"{TOKENS_DIR}/tokens"
    assert (router.public_tls_cert, router.public_tls_key) == (
        f"{PUBLIC_TLS_DIR}/tls.crt",
        f"{PUBLIC_TLS_DIR}/tls.key",
    )
    assert all(address.split("=", 1)[1].startswith("dns:///") for address in router.experts)
    assert {config.task for config in configs["expert_svc"]} == set(router.expert_endpoints)


def test_plaintext_render_leaves_tls_off(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = service_configs(render_docs(demo_bundle, tls={"enabled": False}), monkeypatch)
    for parsed in configs.values():
        for config in parsed:
            assert (config.tls_cert, config.tls_key, config.tls_ca) == ("", "", "")
    assert configs["router_svc"][0].public_tls_cert == ""
