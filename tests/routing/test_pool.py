"""The reward-model pool (moerm.routing.pool): members from a bundle manifest and the
router's flags, their order, names and normalizations. No servers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moerm.bundle import BackboneSpec, Capability, LoraSpec, Manifest, RouterSpec, TaskSpec
from moerm.routing.pool import BASE, DMOERM, EXTERNAL, RewardModelPool, RewardScale, build_pool
from router_svc.config import RouterConfig

LORA = LoraSpec(r=4, alpha=8, target_modules=("query", "value"), layers=(4, 5))


def manifest(*, trained: tuple[str, ...] = ()) -> Manifest:
    """Tasks "code" and "writing"; the ``trained`` ones have a base model."""
    tasks = {
        name: TaskSpec(
            name=name,
            capabilities=(Capability("a"), Capability("b")),
            lora=LORA,
            aggregator_hidden=8,
            norm_mean=1.5,
            norm_std=3.0,
            base_lora=LORA if name in trained else None,
        )
        for name in ("code", "writing")
    }
    return Manifest(
        backbone=BackboneSpec("minilm", "encoder", "mean", 384, 6, 256),
        router=RouterSpec("minilm", 384, ("code", "writing"), "code"),
        tasks=tasks,
    )


def test_untrained_bundle_offers_only_its_expert_sets() -> None:
    pool = build_pool(manifest())
    assert pool.names == ("dmoerm:code", "dmoerm:writing")
    assert [spec.kind for spec in pool] == [DMOERM, DMOERM]
    assert [spec.task for spec in pool] == ["code", "writing"]
    # The aggregator already applies TaskSpec.norm_mean/std: the pool adds nothing.
    assert pool["dmoerm:code"].scale == RewardScale(0.0, 1.0, "aggregator")
    assert pool["dmoerm:code"].scaled(np.array([2.0])).tolist() == [2.0]


def test_base_members_only_for_tasks_with_a_base_model() -> None:
    pool = build_pool(manifest(trained=("writing",)))
    assert pool.names == ("dmoerm:code", "dmoerm:writing", "base:writing")
    assert pool["base:writing"].kind == BASE and pool["base:writing"].task == "writing"
    assert "base:code" not in pool


def test_externals_follow_in_the_configured_order() -> None:
    pool = build_pool(
        manifest(trained=("code", "writing")),
        externals={"skywork": "h1:1", "armo-rm.v2": "h2:2"},
    )
    assert pool.names == (
        "dmoerm:code",
        "dmoerm:writing",
        "base:code",
        "base:writing",
        "skywork",
        "armo-rm.v2",
    )
    assert [spec.name for spec in pool.externals()] == ["skywork", "armo-rm.v2"]
    assert pool["skywork"].kind == EXTERNAL and pool["skywork"].address == "h1:1"
    assert pool["skywork"].task == ""  # known once described


def test_configured_normalizations() -> None:
    pool = build_pool(
        manifest(trained=("code",)),
        externals={"ext": "h:1"},
        norms={"base:code": (0.5, 2.0), "ext": (-1.0, 4.0)},
    )
    assert pool["base:code"].scale == RewardScale(0.5, 2.0, "config")
    assert pool["base:code"].scaled(np.array([0.5, 2.5, -3.5])).tolist() == [0.0, 1.0, -2.0]
    assert pool["ext"].scaled(np.array([3.0])).tolist() == [1.0]


@pytest.mark.parametrize(
    ("externals", "norms", "message"),
    [
        ({"dmoerm:code": "h:1"}, {}, "reserved"),
        ({"base:x": "h:1"}, {}, "reserved"),
        ({"bad name": "h:1"}, {}, "letters, digits"),
        ({"ok": ""}, {}, "empty address"),
        ({}, {"dmoerm:code": (0.0, 1.0)}, "normalized by the aggregator"),
        ({}, {"base:code": (0.0, 1.0)}, "no such reward model"),
        ({}, {"nope": (0.0, 1.0)}, "no such reward model"),
        ({"ext": "h:1"}, {"ext": (0.0, 0.0)}, "std > 0"),
        ({"ext": "h:1"}, {"ext": (float("nan"), 1.0)}, "finite"),
    ],
)
def test_bad_pool_configuration_is_named(externals: dict, norms: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_pool(manifest(), externals=externals, norms=norms)


def test_duplicate_names_are_rejected() -> None:
    spec = build_pool(manifest())["dmoerm:code"]
    with pytest.raises(ValueError, match="duplicate"):
        RewardModelPool([spec, spec])


def test_describing_an_external() -> None:
    pool = build_pool(manifest(), externals={"a": "h:1", "b": "h:2"}, norms={"b": (1.0, 2.0)})
    declared = RewardScale(10.0, 5.0, "describe")
    pool = pool.described("a", task="writing", version="v9", scale=declared)
    pool = pool.described("b", task="code", version="", scale=declared)
    assert pool.names == ("dmoerm:code", "dmoerm:writing", "a", "b")
    assert (pool["a"].task, pool["a"].scale) == ("writing", declared)
    # A normalization from the router's config wins over the external's own.
    assert (pool["b"].task, pool["b"].scale) == ("code", RewardScale(1.0, 2.0, "config"))
    # Cache identity follows the external's version (else its address).
    assert pool["a"].cache_id == "a@v9" and pool["b"].cache_id == "b@h:2"
    assert pool["dmoerm:code"].cache_id == "dmoerm:code"
    with pytest.raises(ValueError, match="not an external"):
        pool.described("dmoerm:code", task="code")


def test_an_http_external_is_named_by_its_url() -> None:
    url = "http://rm.example:5000/get_reward"
    pool = build_pool(manifest(), externals={"openrlhf-rm": url, "grpc-rm": "h:1"}, norms={})
    spec = pool["openrlhf-rm"]
    assert (spec.kind, spec.over_http, pool["grpc-rm"].over_http) == (EXTERNAL, True, False)
    # No Describe over HTTP: no task, and the identity unless the router's config normalizes it.
    assert (spec.task, spec.scale) == ("", RewardScale(0.0, 1.0, "none"))
    assert spec.cache_id == f"openrlhf-rm@{url}"
    scaled = build_pool(manifest(), externals={"rm": "https://rm:443/get_reward"}, norms={"rm": (1.0, 4.0)})
    assert scaled["rm"].scaled(np.array([5.0])).tolist() == [1.0]


@pytest.mark.parametrize(
    ("url", "message"),
    [("http:///get_reward", "not a URL with a host"), ("http://h:99999/get_reward", "out of range")],
)
def test_a_bad_url_is_named(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"'rm'.*{message}"):
        build_pool(manifest(), externals={"rm": url})


def test_router_flags_feed_the_pool() -> None:
    config = RouterConfig(
        bundle="b",
        aggregator="h:1",
        external=("rm1=h:5", "rm2=dns:///rm2.ns.svc:50051", "rm3=http://h:5000/get_reward?x=1"),
        rm_norm=("rm1=0.5:2", "base:code=-1e-3:0.25"),
    )
    config.validate()
    assert config.external_endpoints == {
        "rm1": "h:5",
        "rm2": "dns:///rm2.ns.svc:50051",
        "rm3": "http://h:5000/get_reward?x=1",
    }
    assert config.norms == {"rm1": (0.5, 2.0), "base:code": (-1e-3, 0.25)}
    pool = build_pool(manifest(trained=("code",)), externals=config.external_endpoints, norms=config.norms)
    assert pool["rm1"].scale.mean == 0.5 and pool["base:code"].scale.std == 0.25


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("external", ("rm1",), "NAME=HOST:PORT"),
        ("rm_norm", ("rm1=1",), "NAME=MEAN:STD"),
        ("rm_norm", ("rm1=a:b",), "NAME=MEAN:STD"),
        ("rm_norm", ("rm1=0:-1",), "STD > 0"),
        ("rm_norm", ("rm1=0:inf",), "finite"),
        ("default_policy", "fixed", "needs a reward model"),
        ("default_policy", "best", "unknown default policy"),
        ("uwo_lambda", -0.5, "uwo-lambda"),
        ("linucb_lambda", 0.0, "linucb-lambda"),
    ],
)
def test_bad_router_flags(field: str, value, message: str) -> None:
    config = replace(RouterConfig(bundle="b", aggregator="h:1"), **{field: value})
    with pytest.raises(SystemExit, match=message):
        config.validate()
