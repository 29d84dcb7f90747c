"""The router's core. A Score call:

1. prompt embeddings, cached per conversation (:mod:`router_svc.contexts`), and the
   classifier's routes from them (every policy but ``fixed``);
2. the policy's reward models per item: ``task`` the routed task's ``dmoerm:`` expert
   set, ``fixed`` the named one, ``linucb``/``thompson`` one arm of the pool per
   distinct prompt, ``mean``/``worst``/``uwo`` every member of the pool;
3. scores per (reward model, item) from the cache, the misses from the reward models
   (:mod:`router_svc.fanout`), written back only once all of them succeeded;
4. each item's reward: the member's normalized score, or the ensemble rule over all
   members' normalized scores;
5. for the policies that learn (bandits) or must answer ``no_arm`` (ensembles), the
   decision per item id in the bandit store, for Feedback.

Feedback goes to :class:`moerm.routing.state.RoutingState`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from moerm.bundle import Bundle
from moerm.cache import KeyHasher, ScoreCache
from moerm.errors import MoermError, NotFound, Unavailable, shown
from moerm.metrics import RouterMetrics
from moerm.models.classifier import Route, TaskClassifier
from moerm.routing import policies
from moerm.routing.policies import Hyperparameters
from moerm.routing.pool import RewardModelPool, RewardScale, dmoerm_name
from moerm.routing.state import APPLIED, NOT_FOUND, RoutingState
from moerm.routing.store import Decision
from router_svc.config import RouterConfig
from router_svc.contexts import PromptContexts
from router_svc.fanout import Downstream, Job, MemberScore, target_of
from router_svc.validation import FeedbackCall, Item, ScoreCall

log = logging.getLogger(__name__)

SCORE_ENTRY = "rm"  # the cache key's policy slot: scores are cached per reward model, not per policy


class BanditsDisabled(MoermError):
    """Feedback or a bandit policy on a router without a bandit store."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class ItemScore:
    reward: float  # normalized
    task: str
    confidence: float
    capabilities: dict[str, float]
    reward_models: tuple[str, ...]
    policy: str
    cached: bool = False
    member_rewards: dict[str, float] = field(default_factory=dict)  # ensembles only
    missing: tuple[str, ...] = ()  # ensembles only: members that were unavailable
    truncated: bool = False  # a reward model cut the item to its context


@dataclass(frozen=True)
class ScoredCall:
    request_id: str
    ids: list[str]  # one per item: the caller's, or assigned
    scores: list[ItemScore]


def decision_id(request_id: str, item_id: str) -> str:
    """What an item's decision is kept under: the Score call's request_id (a secret only
    that caller knows) and the item's id, so feedback is bound to the call that scored
    the item and scoring an id again makes a new decision beside the old one."""
    return f"{request_id}:{item_id}"


class Router:
    def __init__(
        self,
        config: RouterConfig,
        bundle: Bundle,
        classifier: TaskClassifier,
        cache: ScoreCache,
        downstream: Downstream,
        pool: RewardModelPool,
        state: RoutingState | None,
        hyperparameters: Hyperparameters | None = None,
        metrics: RouterMetrics | None = None,
    ):
        missing = sorted(set(bundle.manifest.tasks) - set(config.expert_endpoints))
        if missing:
            raise ValueError(f"router_svc: no expert address for tasks {missing} (--experts TASK=HOST:PORT)")
        self.config = config
        self.bundle = bundle
        self.classifier = classifier
        self.cache = cache
        self.downstream = downstream
        self.pool = pool
        self.state = state
        self.hyperparameters = hyperparameters or Hyperparameters(uwo_lambda=config.uwo_lambda)
        self.contexts = PromptContexts(classifier, cache, bundle.version)
        self.metrics = metrics if metrics is not None else RouterMetrics()
        self.loaded = False

    async def load(self) -> None:
        """Load the embedder, describe the external reward models (those over gRPC),
        catch up with the bandit log. Score answers UNAVAILABLE until this is done."""
        await asyncio.to_thread(self.classifier.load)
        self.contexts.start()
        for spec in self.pool.externals():
            if spec.over_http:  # OpenRLHF's protocol has no Describe
                if spec.scale.source == "none":
                    log.warning("HTTP reward model %r: no --rm-norm given; using raw rewards", spec.name)
                continue
            description = await self.downstream.describe(spec.name, self.config.describe_timeout_s)
            declared = (
                RewardScale(description.norm_mean, description.norm_std, "describe")
                if description.norm_std > 0
                else None
            )
            self.pool = self.pool.described(
                spec.name, task=description.task, version=description.bundle_version, scale=declared
            )
            if self.pool[spec.name].scale.source == "none":
                log.warning("external reward model %r declares no normalization; using raw scores", spec.name)
        if self.state is not None:
            try:
                applied = await self.state.sync()
                log.info("bandit state: %d feedback events replayed", applied)
            except Exception as error:  # the store may come up later; choices sync again
                self.metrics.bandit_store_errors.inc()
                log.warning("bandit store unreachable at start-up: %s", error)
        self.loaded = True

    @property
    def policies(self) -> tuple[str, ...]:
        """The policies this router offers: every one of the table, bandits only with a store."""
        return tuple(
            name
            for name in policies.names()
            if self.state is not None or policies.policy(name).kind != policies.BANDIT
        )

    @property
    def reward_models(self) -> tuple[str, ...]:
        return self.pool.names

    def remembers(self, name: str) -> bool:
        """Whether Score keeps a decision per item for Feedback under policy ``name``."""
        return self.state is not None and policies.policy(name).remembers

    async def score(self, call: ScoreCall, time_remaining: float | None) -> ScoredCall:
        """Scores in item order. Nothing is cached unless every item scored."""
        if not self.loaded:
            raise Unavailable("the router is still starting")
        deadline = time.monotonic() + (
            time_remaining if time_remaining is not None else self.config.default_timeout_s
        )
        request_id = uuid.uuid4().hex
        remembered = self.remembers(call.policy)
        ids = [item.id or (f"{request_id}/{i}" if remembered else "") for i, item in enumerate(call.items)]
        kind = policies.policy(call.policy).kind
        contexts, probabilities, routes = None, None, None
        if kind != policies.FIXED:
            contexts = await self.contexts.embed([item.turns for item in call.items])
            probabilities = self.classifier.probabilities(contexts)
            routes = self.classifier.routes(probabilities)
            self.metrics.fallbacks.inc(sum(route.fallback for route in routes))
        members = await self._members(call, contexts, routes)
        scores = await self._member_scores(call.items, members, deadline, partial=kind == policies.ENSEMBLE)
        results = [
            self._ensemble(call.policy, scores[i], routes[i])
            if kind == policies.ENSEMBLE
            else self._single(call.policy, members[i][0], scores[i], probabilities, i)
            for i in range(len(call.items))
        ]
        for result in results:
            if result.task:
                self.metrics.routed.labels(result.task).inc()
        if remembered:
            await self._remember(call.policy, [decision_id(request_id, i) for i in ids], members, contexts)
        return ScoredCall(request_id, ids, results)

    async def _members(
        self, call: ScoreCall, contexts: np.ndarray | None, routes: list[Route] | None
    ) -> list[tuple[str, ...]]:
        """The reward models that score each item under the call's policy."""
        n = len(call.items)
        kind = policies.policy(call.policy).kind
        if kind == policies.FIXED:
            return [(call.reward_model,)] * n
        if kind == policies.TASK:
            return [(dmoerm_name(route.task),) for route in routes]
        if kind == policies.ENSEMBLE:
            live = tuple(name for name in self.pool.names if self._live(name))
            if not live:
                raise Unavailable("no reward model of the pool is available for the ensemble")
            return [live] * n
        return [(arm,) for arm in await self._choose(call.policy, call.items, contexts)]

    def _live(self, name: str) -> bool:
        return self.downstream.live(target_of(self.pool[name]))

    async def _choose(self, policy: str, items: Sequence[Item], contexts: np.ndarray) -> list[str]:
        """One bandit arm per distinct prompt, shared by all of its responses (a GRPO
        group or best-of-n set is scored by one reward model)."""
        if self.state is None:
            raise BanditsDisabled(f"the {policy} policy needs the bandit store (--redis-url is off)")
        first: dict[tuple, int] = {}
        rows = [first.setdefault(item.turns, i) for i, item in enumerate(items)]
        distinct = sorted(set(rows))
        live = np.array([self._live(arm) for arm in self.state.arms])
        if not live.any():
            raise Unavailable("no reward model of the pool is available")
        mask = None if live.all() else live  # a bandit chooses the best live arm
        try:
            arms = await self.state.choose(policy, contexts[distinct], live=mask)
        except MoermError:
            raise
        except Exception as error:  # store down: choose from this replica's state as it is
            self.metrics.bandit_store_errors.inc()
            log.warning("bandit store unreachable, choosing without syncing: %s", error)
            arms = self.state.choose_unsynced(policy, contexts[distinct], live=mask)
        arm_of = dict(zip(distinct, arms, strict=True))
        return [self.state.arms[arm_of[row]] for row in rows]

    async def _member_scores(
        self,
        items: Sequence[Item],
        members: Sequence[tuple[str, ...]],
        deadline: float,
        *,
        partial: bool = False,
    ) -> list[dict[str, MemberScore]]:
        """Per item, reward model -> its score: cached per (reward model, item); each
        distinct miss is computed once. With ``partial`` (ensembles) a reward model that
        is unavailable is left out of the item's dict instead of failing the call."""
        owner: dict[str, tuple[str, Item]] = {}  # cache key -> (reward model, item)
        per_item: list[dict[str, str]] = []  # reward model -> cache key
        hashers: dict[tuple, KeyHasher] = {}  # one per conversation
        for item, names in zip(items, members, strict=True):
            hasher = hashers.get(item.turns)
            if hasher is None:
                hasher = hashers[item.turns] = KeyHasher(self.bundle.version, SCORE_ENTRY, item.turns)
            keys = {}
            for name in names:
                keys[name] = hasher.key(self.pool[name].cache_id, item.response)
                owner.setdefault(keys[name], (name, item))
            per_item.append(keys)
        distinct = list(owner)
        found = {
            key: MemberScore.from_cache(value)
            for key, value in zip(distinct, await self.cache.get_many(distinct), strict=True)
        }
        misses = [key for key in distinct if found[key] is None]
        if misses:
            item_keys = {item: k for k, item in enumerate(dict.fromkeys(items))}
            jobs = [Job(self.pool[name], item, item_keys[item]) for name, item in map(owner.get, misses)]
            fresh = await self.downstream.score(jobs, deadline, partial=partial)
            found.update(zip(misses, fresh, strict=True))
            for job, score in zip(jobs, fresh, strict=True):
                if score is not None:
                    self.metrics.scores_computed.labels(job.spec.name).inc()
            await self.cache.set_many(
                {key: found[key].to_cache() for key in misses if found[key] is not None}
            )
        return [
            {name: found[key] for name, key in keys.items() if found[key] is not None} for keys in per_item
        ]

    def _single(
        self,
        policy: str,
        name: str,
        scores: dict[str, MemberScore],
        probabilities: np.ndarray | None,
        row: int,
    ) -> ItemScore:
        """The result of one reward model. ``route_confidence`` is the classifier's
        probability of the reward model's task (1.0 for fixed, 0.0 for an external)."""
        spec, score = self.pool[name], scores[name]
        task = spec.task if spec.in_bundle else ""
        if policies.policy(policy).kind == policies.FIXED:
            confidence = 1.0
        elif not task:
            confidence = 0.0
        else:
            confidence = float(probabilities[row, self.classifier.tasks.index(task)])
        return ItemScore(
            reward=float(spec.scaled(score.raw)),
            task=task,
            confidence=confidence,
            capabilities=score.capabilities,
            reward_models=(name,),
            policy=policy,
            cached=score.cached,
            truncated=score.truncated,
        )

    def _ensemble(self, rule: str, scores: dict[str, MemberScore], route: Route) -> ItemScore:
        """The ensemble rule over the normalized scores of the members that answered
        (the others are ``missing``); ``task`` and the breakdown are the classifier's
        route and its task's expert set (empty when that member is missing)."""
        names = tuple(name for name in self.pool.names if name in scores)
        if not names:
            raise Unavailable("no reward model of the ensemble answered")
        normalized = np.array([self.pool[name].scaled(scores[name].raw) for name in names])
        reward = policies.policy(rule).combine(normalized[None, :], self.hyperparameters)[0]
        routed = scores.get(dmoerm_name(route.task))
        return ItemScore(
            reward=float(reward),
            task=route.task,
            confidence=route.confidence,
            capabilities=routed.capabilities if routed is not None else {},
            reward_models=names,
            policy=rule,
            cached=all(scores[name].cached for name in names),
            member_rewards=dict(zip(names, normalized.tolist(), strict=True)),
            missing=tuple(name for name in self.pool.names if name not in scores),
            truncated=any(scores[name].truncated for name in names),
        )

    async def _remember(
        self, policy: str, ids: Sequence[str], members: Sequence[tuple[str, ...]], contexts: np.ndarray
    ) -> None:
        """The decision per item id, for Feedback (one pipeline). A store failure does
        not fail the call: that feedback will answer not_found."""
        kind = policies.policy(policy).kind
        decisions = {
            item_id: Decision(names[0] if kind == policies.BANDIT else "", contexts[i], policy)
            for i, (item_id, names) in enumerate(zip(ids, members, strict=True))
        }
        try:
            await self.state.store.remember(decisions)
        except Exception as error:
            self.metrics.bandit_store_errors.inc()
            log.warning("bandit store unreachable, %d decisions not remembered: %s", len(decisions), error)

    async def feedback(self, call: FeedbackCall) -> dict[tuple[str, str], str]:
        """Outcome per (request_id, id) (see :meth:`RoutingState.feedback`). NOT_FOUND when
        no item is known; otherwise the known ones are applied and the rest reported per item."""
        if self.state is None:
            raise BanditsDisabled("Feedback needs the bandit store; this router runs with --redis-url off")
        try:
            scoped = await self.state.feedback([decision_id(*key) for key in call.keys], call.rewards)
            outcomes = {key: scoped[decision_id(*key)] for key in call.keys}
        except MoermError:
            raise
        except Exception as error:
            self.metrics.bandit_store_errors.inc()
            raise Unavailable(f"bandit store unavailable ({type(error).__name__}: {error})") from error
        for outcome in outcomes.values():
            self.metrics.feedback.labels(outcome).inc()
        self.metrics.bandit_updates.inc(sum(outcome == APPLIED for outcome in outcomes.values()))
        unknown = [
            item_id for key, item_id in zip(call.keys, call.ids, strict=True) if outcomes[key] == NOT_FOUND
        ]
        if len(unknown) == len(call.ids):
            listed = ", ".join(shown(i, 40) for i in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise NotFound(
                f"no scored item with ids {listed} under their request_id: unknown, expired (--decision-ttl-s "
                f"{self.config.decision_ttl_s}), scored by another call, or by a policy that keeps no "
                "decisions (task, fixed)"
            )
        return outcomes

    async def close(self) -> None:
        await self.downstream.close()
        await self.cache.close()
        if self.state is not None:
            await self.state.store.redis.aclose()
        await self.contexts.close()
