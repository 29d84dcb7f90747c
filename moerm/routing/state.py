"""One router process's bandits, kept in sync with the shared feedback log.

Every replica (and a restarted router) starts from the prior and replays the store's log
in order; since bandit updates apply events one by one, replicas that have applied the
same log prefix hold bitwise-equal state (given the same arms, dim and hyperparameters).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np

from moerm.errors import FieldViolation, InvalidArgument
from moerm.routing.feedback import FeedbackNormalizer
from moerm.routing.policies import BANDIT, Hyperparameters, names, policy
from moerm.routing.store import BanditStore, Decision

log = logging.getLogger(__name__)

APPLIED, DUPLICATE, NOT_FOUND, NO_ARM = "applied", "duplicate", "not_found", "no_arm"


class RoutingState:
    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        store: BanditStore,
        *,
        hyperparameters: Hyperparameters | None = None,
        seed: int = 0,
        min_history: int = 32,
        window: int = 2048,
    ):
        self.arms = tuple(arms)
        self.dim = int(dim)
        self.store = store
        hyper = hyperparameters or Hyperparameters()
        # Every bandit policy of the table, each learning from every event of the log.
        self.bandits = {name: policy(name).build(self.arms, self.dim, hyper) for name in names(BANDIT)}
        self.normalizer_params = {"min_history": min_history, "window": window}
        FeedbackNormalizer(**self.normalizer_params)  # fail early on bad parameters
        self.rng = np.random.default_rng(seed)
        self.offset = 0  # log events read so far (applied or skipped)
        self.skipped = 0  # log events naming an arm outside this pool, or another dim
        self._index = {name: k for k, name in enumerate(self.arms)}
        self._sync_lock = asyncio.Lock()

    async def sync(self) -> int:
        """Apply the log events this replica has not read yet to every bandit; returns how
        many were applied."""
        async with self._sync_lock:
            applied = 0
            while True:
                events, offset = await self.store.events_since(self.offset)
                if not events:
                    return applied
                applied += self._apply(events)
                self.offset = offset

    def _apply(self, events: list[tuple[str, np.ndarray, float]]) -> int:
        usable = [(self._index.get(arm), x, r) for arm, x, r in events]
        usable = [
            (k, x, r)
            for k, x, r in usable
            if k is not None and x.shape == (self.dim,) and np.isfinite(r) and np.isfinite(x).all()
        ]
        if len(usable) < len(events):
            self.skipped += len(events) - len(usable)
            log.warning(
                "skipped %d log events: arms outside %s, another dim, or not finite",
                len(events) - len(usable),
                self.arms,
            )
        if not usable:
            return 0
        arms = np.array([k for k, _, _ in usable], dtype=np.int64)
        X = np.stack([x for _, x, _ in usable]).astype(np.float64)
        rewards = np.array([r for _, _, r in usable])
        for bandit in self.bandits.values():
            bandit.update_many(arms, X, rewards)
        return len(usable)

    async def choose(self, name: str, X: np.ndarray, *, live: np.ndarray | None = None) -> np.ndarray:
        """Sync, then each row's arm index under the bandit policy ``name``; with
        ``live`` ((K,) bool), the best arm among the live ones.
        Shape: X (N, d) -> (N,) int64."""
        if name not in self.bandits:
            raise InvalidArgument.field(
                "policy", f"{name!r} is not a bandit policy ({', '.join(self.bandits)})"
            )
        await self.sync()
        return self.choose_unsynced(name, X, live=live)

    def choose_unsynced(self, name: str, X: np.ndarray, *, live: np.ndarray | None = None) -> np.ndarray:
        """Choose from this replica's state as it is (the store is unreachable)."""
        bandit = self.bandits[name]
        if live is None:
            return np.asarray(bandit.choose(X, self.rng), dtype=np.int64)
        return np.asarray(bandit.choose(X, self.rng, live=np.asarray(live, dtype=bool)), dtype=np.int64)

    async def feedback(self, ids: Sequence[str], raw: np.ndarray) -> dict[str, str]:
        """Turn raw feedback per item into bandit updates shared through the store.

        Recalls each item's decision, normalizes the raw values of the items with an arm
        (batch baseline over those items, quantiles of the shared history), appends one
        event per item at most once, pushes the newly logged items' values to the shared
        history and syncs. Returns per distinct id, in order of first appearance, one of
        "applied", "duplicate" (already logged, also an id repeated in this call),
        "not_found" (never remembered or expired) or "no_arm" (no single arm of this pool
        scored it, e.g. an ensemble). Shape: raw (N,) aligned with ids.
        """
        raw = self._validated(ids, raw)
        decisions = await self.store.recall(list(dict.fromkeys(ids)))
        status: dict[str, str] = {}
        usable: list[int] = []  # positions of first occurrences with an arm
        for i, item_id in enumerate(ids):
            if item_id in status:
                continue
            status[item_id] = self._classify(decisions[item_id])
            if status[item_id] == APPLIED:
                usable.append(i)
        if usable:
            events = [(ids[i], decisions[ids[i]]) for i in usable]
            logged = await self._log(events, raw[usable])
            for (item_id, _), ok in zip(events, logged, strict=True):
                status[item_id] = APPLIED if ok else DUPLICATE
        await self.sync()
        return status

    def _validated(self, ids: Sequence[str], raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if raw.shape != (len(ids),):
            raise InvalidArgument.field("items", f"{raw.shape} rewards for {len(ids)} ids")
        violations = [FieldViolation(f"items[{i}].id", "empty id") for i, item in enumerate(ids) if not item]
        violations += [
            FieldViolation(f"items[{i}].reward", f"not a finite number: {r}")
            for i, r in enumerate(raw)
            if not np.isfinite(r)
        ]
        if violations:
            raise InvalidArgument(violations)
        return raw

    def _classify(self, decision: Decision | None) -> str:
        """APPLIED for a decision whose arm can be updated (provisional), else why not."""
        if decision is None:
            return NOT_FOUND
        if decision.arm not in self._index or decision.context.shape != (self.dim,):
            return NO_ARM
        return APPLIED

    async def _log(self, events: list[tuple[str, Decision]], raw: np.ndarray) -> list[bool]:
        """Normalize against the shared history, append once per id, extend the history
        with the newly logged values. Returns per event whether it was logged."""
        normalizer = FeedbackNormalizer.from_state(
            {"history": await self.store.raw_history(self.normalizer_params["window"])},
            **self.normalizer_params,
        )
        centered = normalizer.center(raw)
        rewards = normalizer.rescale(centered)
        if not (np.isfinite(centered).all() and np.isfinite(rewards).all()):  # the bound on |raw| prevents it
            raise InvalidArgument.field("items", "feedback rewards too large to normalize")
        logged = await self.store.append_feedback(
            [(item_id, d.arm, d.context, float(r)) for (item_id, d), r in zip(events, rewards, strict=True)]
        )
        await self.store.push_raw(
            centered[np.array(logged, dtype=bool)], cap=self.normalizer_params["window"]
        )
        return logged
