"""Cluster mode: a router replica without a shared Redis would keep bandits of its
own, so it refuses to start; its expert channels wait for a ready replica."""

from __future__ import annotations

import json

import pytest

from moerm.config import parse_config
from router_svc.config import RouterConfig
from router_svc.fanout import service_config

REQUIRED = ["--bundle", "/bundle", "--aggregator", "dns:///moerm-aggregator:50051"]


@pytest.mark.parametrize("redis", [[], ["--redis-url", "off"]])
def test_cluster_mode_needs_a_shared_redis(redis: list[str], monkeypatch) -> None:
    monkeypatch.delenv("MOERM_REDIS_URL", raising=False)
    with pytest.raises(SystemExit) as caught:
        parse_config(RouterConfig, [*REQUIRED, "--cluster", *redis], prog="router_svc")
    assert "cluster mode needs a shared Redis" in str(caught.value)
    monkeypatch.setenv("MOERM_CLUSTER", "true")
    with pytest.raises(SystemExit):
        parse_config(RouterConfig, [*REQUIRED, *redis], prog="router_svc")


def test_cluster_mode_with_redis_starts(monkeypatch) -> None:
    monkeypatch.setenv("MOERM_CLUSTER", "true")
    monkeypatch.setenv("MOERM_REDIS_URL", "redis://moerm-redis:6379/0")
    config = parse_config(RouterConfig, REQUIRED, prog="router_svc")
    assert config.cluster and config.redis_url == "redis://moerm-redis:6379/0"
    assert (config.host, config.metrics_port, config.auth_tokens) == ("127.0.0.1", -1, "")  # local defaults


@pytest.mark.parametrize("wait", [True, False])
def test_expert_channels_balance_and_retry(wait: bool) -> None:
    config = json.loads(service_config(wait))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["waitForReady"] is wait
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {"service": "moerm.v1.ExpertService"} in method["name"]


def test_replica_address_lists_survive_the_comma_separated_flag() -> None:
    config = parse_config(
        RouterConfig,
        [
            "--bundle",
            "b",
            "--aggregator",
            "a:1",
            "--experts",
            "code=ipv4:127.0.0.1:1,127.0.0.1:2,writing=h:3",
        ],
        prog="router_svc",
    )
    assert config.expert_endpoints == {"code": "ipv4:127.0.0.1:1,127.0.0.1:2", "writing": "h:3"}
    with pytest.raises(SystemExit, match="TASK=HOST:PORT"):  # a stray part after a plain address
        assert not parse_config(
            RouterConfig,
            ["--bundle", "b", "--aggregator", "a:1", "--experts", "code=h:1,h:2"],
            prog="router_svc",
        ).expert_endpoints
