"""Router (router_svc/router.py) on its own: which policies it offers and remembers, and
how it turns member scores into a result. The Score path end to end is in
tests/integration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moerm.bundle import Bundle
from moerm.cache import ScoreCache
from moerm.models.classifier import Route, TaskClassifier
from moerm.routing.policies import Hyperparameters
from moerm.routing.pool import build_pool
from router_svc.config import RouterConfig
from router_svc.fanout import Downstream, MemberScore
from router_svc.router import Router


@pytest.fixture
async def router(minilm_bundle: Path) -> Router:
    bundle = Bundle.load(minilm_bundle)
    config = RouterConfig(
        bundle=str(minilm_bundle),
        aggregator="127.0.0.1:1",
        experts=("code=127.0.0.1:1", "writing=127.0.0.1:1"),
    )
    pool = build_pool(bundle.manifest)
    return Router(
        config,
        bundle,
        TaskClassifier(bundle),
        ScoreCache(None),
        Downstream(config.expert_endpoints, config.aggregator, {}),
        pool,
        None,
        Hyperparameters(uwo_lambda=0.5),
    )


def test_without_a_bandit_store_no_bandit_policy_is_offered(router: Router) -> None:
    assert router.policies == ("task", "fixed", "mean", "worst", "uwo")
    assert not any(router.remembers(name) for name in router.policies)  # nothing to remember into


def test_an_ensemble_combines_the_members_scaled_rewards(router: Router) -> None:
    names = router.pool.names
    scores = {name: MemberScore(float(i), {"correctness": 0.1}, cached=True) for i, name in enumerate(names)}
    result = router._ensemble("uwo", scores, Route("code", 0.9))
    values = np.arange(len(names), dtype=float)  # the untrained bundle's scales are identity
    assert result.reward == pytest.approx(values.mean() - 0.5 * values.var())
    assert result.reward_models == names and result.policy == "uwo" and result.cached
    assert result.member_rewards == dict(zip(names, values.tolist(), strict=True))


def test_a_single_member_reports_the_route_confidence_of_its_task(router: Router) -> None:
    scores = {"dmoerm:writing": MemberScore(2.0, {"fluency": 1.0})}
    probabilities = np.array([[0.25, 0.75]])  # the bundle's task order: code, writing
    result = router._single("task", "dmoerm:writing", scores, probabilities, 0)
    assert (result.task, result.confidence, result.reward) == ("writing", 0.75, 2.0)
    assert router._single("fixed", "dmoerm:writing", scores, None, 0).confidence == 1.0


def test_a_router_needs_an_expert_address_for_every_task(minilm_bundle: Path) -> None:
    bundle = Bundle.load(minilm_bundle)
    config = RouterConfig(bundle=str(minilm_bundle), aggregator="127.0.0.1:1", experts=("code=127.0.0.1:1",))
    with pytest.raises(ValueError, match="writing"):
        Router(
            config, bundle, TaskClassifier(bundle), ScoreCache(None), None, build_pool(bundle.manifest), None
        )
