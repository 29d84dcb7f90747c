"""Service configuration: flags over MOERM_* environment variables over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from aggregator_svc.config import AggregatorConfig
from expert_svc.config import ExpertConfig
from moerm.config import env_name, option, parse_config
from router_svc.config import RouterConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MOERM_* variable of the calling shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("MOERM_"):
            monkeypatch.delenv(name)


@dataclass(frozen=True)
class Toggles:
    """A config with the field types the real ones lack (bools, custom env names)."""

    verbose: bool = option(False, "talk more")
    fast: bool = option(True, "go fast")
    token: str = option("", "secret", env="TOGGLES_TOKEN")


def test_defaults() -> None:
    config = parse_config(ExpertConfig, ["--bundle", "b", "--task", "code"], prog="expert_svc")
    assert config == ExpertConfig(bundle="b", task="code")
    assert (config.host, config.port, config.max_batch_size, config.max_queue_delay_ms) == (
        "127.0.0.1",
        0,
        32,
        5.0,
    )


def test_env_overrides_default_and_flag_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOERM_BUNDLE", "/env/bundle")
    monkeypatch.setenv("MOERM_TASK", "writing")
    monkeypatch.setenv("MOERM_PORT", "5001")
    monkeypatch.setenv("MOERM_MAX_QUEUE_DELAY_MS", "2.5")
    config = parse_config(ExpertConfig, [], prog="expert_svc")
    assert (config.bundle, config.task, config.port, config.max_queue_delay_ms) == (
        "/env/bundle",
        "writing",
        5001,
        2.5,
    )
    assert isinstance(config.port, int) and isinstance(config.max_queue_delay_ms, float)
    assert config.max_batch_size == 32  # no env var: the default

    config = parse_config(ExpertConfig, ["--port", "6001", "--task", "code"], prog="expert_svc")
    assert (config.port, config.task) == (6001, "code")
    assert config.bundle == "/env/bundle"  # the env var still fills what no flag sets


def test_aggregator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOERM_GRACE_S", "1.5")
    config = parse_config(AggregatorConfig, ["--bundle", "b", "--log-level", "DEBUG"], prog="aggregator_svc")
    assert (config.bundle, config.grace_s, config.log_level, config.port) == ("b", 1.5, "DEBUG", 0)


def test_tuple_field_from_env_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--bundle", "b", "--aggregator", "localhost:1"]
    assert parse_config(RouterConfig, base, prog="router_svc").experts == ()

    monkeypatch.setenv("MOERM_EXPERTS", " code=h1:1, writing=h2:2 ,,")
    config = parse_config(RouterConfig, base, prog="router_svc")
    assert config.experts == ("code=h1:1", "writing=h2:2")
    assert config.expert_endpoints == {"code": "h1:1", "writing": "h2:2"}

    config = parse_config(RouterConfig, [*base, "--experts", "exam=h3:3"], prog="router_svc")
    assert config.experts == ("exam=h3:3",)


def test_bool_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config(Toggles, [], prog="t") == Toggles(verbose=False, fast=True)
    assert parse_config(Toggles, ["--verbose", "--no-fast"], prog="t") == Toggles(verbose=True, fast=False)
    for raw, expected in [
        ("1", True),
        ("yes", True),
        ("ON", True),
        ("true", True),
        ("0", False),
        ("no", False),
        ("off", False),
        ("", False),
    ]:
        monkeypatch.setenv("MOERM_VERBOSE", raw)
        assert parse_config(Toggles, [], prog="t").verbose is expected, raw
    monkeypatch.setenv("MOERM_VERBOSE", "yes")
    assert parse_config(Toggles, ["--no-verbose"], prog="t").verbose is False  # flag beats env
    monkeypatch.setenv("MOERM_VERBOSE", "maybe")
    with pytest.raises(ValueError, match="MOERM_VERBOSE: expected a boolean"):
        parse_config(Toggles, [], prog="t")


def test_custom_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = Toggles.__dataclass_fields__
    assert env_name(fields["token"]) == "TOGGLES_TOKEN"
    assert env_name(fields["verbose"]) == "MOERM_VERBOSE"
    monkeypatch.setenv("TOGGLES_TOKEN", "s3cret")
    monkeypatch.setenv("MOERM_TOKEN", "ignored")
    assert parse_config(Toggles, [], prog="t").token == "s3cret"


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        parse_config(ExpertConfig, ["--bundle", "b", "--task", "t", "--port", "eighty"], prog="expert_svc")
    monkeypatch.setenv("MOERM_PORT", "eighty")
    with pytest.raises(ValueError):
        parse_config(ExpertConfig, ["--bundle", "b", "--task", "t"], prog="expert_svc")


@pytest.mark.parametrize(
    ("cls", "argv", "message"),
    [
        (ExpertConfig, ["--task", "code"], "--bundle"),
        (ExpertConfig, ["--bundle", "b"], "--task"),
        (ExpertConfig, ["--bundle", "b", "--task", "t", "--max-batch-size", "0"], "must be positive"),
        (AggregatorConfig, [], "--bundle"),
        (RouterConfig, ["--aggregator", "h:1"], "--bundle"),
        (RouterConfig, ["--bundle", "b"], "--aggregator"),
        (
            RouterConfig,
            ["--bundle", "b", "--aggregator", "h:1", "--default-policy", "best"],
            "unknown default policy",
        ),
        (
            RouterConfig,
            ["--bundle", "b", "--aggregator", "h:1", "--experts", "code"],
            "expected TASK=HOST:PORT",
        ),
        (RouterConfig, ["--bundle", "b", "--aggregator", "h:1", "--max-items", "0"], "must be positive"),
    ],
)
def test_validate_rejects_bad_configs(cls: type, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        parse_config(cls, argv, prog="svc")


def test_required_fields_can_come_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOERM_BUNDLE", "/b")
    monkeypatch.setenv("MOERM_AGGREGATOR", "agg:50051")
    config = parse_config(RouterConfig, [], prog="router_svc")
    assert (config.bundle, config.aggregator) == ("/b", "agg:50051")
