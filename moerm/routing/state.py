"""One router process's bandits, kept in sync with the shared feedback log.

Every replica (and a restarted router) starts from the prior and replays the store's log
in order; since bandit updates apply events one by one, replicas that have applied the
same log prefix hold bitwise-equal state (given the same arms, dim and hyperparameters).

Compaction keeps the log, and so memory and restart time, bounded: once a replica has
read ``compact_every`` events past the log's base, it writes its bandits' state as the
snapshot and cuts those events, in one atomic step. A replica whose offset falls below
the base loads the snapshot instead of the events. The snapshot is an ``.npz`` file (no
pickles): every bandit's state arrays plus ``meta``, JSON with the offset it covers and a
fingerprint of the state the bandits start from (arms, dim and every array of the fresh
bandits: the prior mean, lam and lam0 are inside). A replica only loads a snapshot with its
own fingerprint; another pool skips the compacted events, as it skips events of arms it
does not have.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
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
        compact_every: int = 10_000,
    ):
        if compact_every < 0:
            raise ValueError(f"compact_every must be >= 0 (0: never), got {compact_every}")
        self.arms = tuple(arms)
        self.dim = int(dim)
        self.store = store
        self.compact_every = int(compact_every)
        hyper = hyperparameters or Hyperparameters()
        # Every bandit policy of the table, each learning from every event of the log.
        self.bandits = {name: policy(name).build(self.arms, self.dim, hyper) for name in names(BANDIT)}
        self.fingerprint = self._fingerprint()
        self.normalizer_params = {"min_history": min_history, "window": window}
        FeedbackNormalizer(**self.normalizer_params)  # fail early on bad parameters
        self.rng = np.random.default_rng(seed)
        self.offset = 0  # log events read so far (applied, skipped or loaded from a snapshot)
        self.base = 0  # the log's base as last read: events below it are in the snapshot
        self.skipped = 0  # log events naming an arm outside this pool, or another dim
        self.compactions = 0  # snapshots this replica wrote
        self._index = {name: k for k, name in enumerate(self.arms)}
        self._sync_lock = asyncio.Lock()

    def _fingerprint(self) -> str:
        """sha256 of what the bandits start from: arms, dim and the fresh state arrays."""
        digest = hashlib.sha256(json.dumps([self.arms, self.dim, sorted(self.bandits)]).encode())
        for name in sorted(self.bandits):
            for key, array in sorted(self.bandits[name].state().items()):
                digest.update(f"{name}.{key}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    async def sync(self) -> int:
        """Apply the log events this replica has not read yet to every bandit (from the
        snapshot first when they were compacted); returns how many events were applied."""
        async with self._sync_lock:
            return await self._sync()

    async def _sync(self) -> int:
        applied = 0
        while True:
            events, offset, self.base = await self.store.events_since(self.offset)
            if self.offset < self.base:
                applied += await self._restore()
                continue
            if not events:
                return applied
            applied += self._apply(events)
            self.offset = offset

    async def _restore(self) -> int:
        """Catch up to the snapshot, or past the compacted events when the snapshot is
        not this replica's (another pool or hyperparameters). Returns events applied."""
        data = await self.store.snapshot()
        states, meta = _decode_snapshot(data) if data is not None else ({}, {})
        covered = int(meta.get("offset", 0))
        if meta.get("fingerprint") == self.fingerprint and covered > self.offset:
            for name, bandit in self.bandits.items():
                bandit.load_state(states[name])
            applied = covered - self.offset - (int(meta["skipped"]) - self.skipped)
            self.skipped = int(meta["skipped"])
            self.offset = covered
            return max(applied, 0)
        missed = max(self.base, covered) - self.offset
        log.warning(
            "%d compacted log events skipped: the snapshot was written by another pool or "
            "other hyperparameters",
            missed,
        )
        self.skipped += missed
        self.offset += missed
        return 0

    async def compact(self) -> bool:
        """Sync, then write this replica's state as the snapshot and cut the events it
        covers from the log, when at least ``compact_every`` events lie past the base.
        True when this call compacted (False also when another replica did it first)."""
        async with self._sync_lock:
            await self._sync()
            if not self.compact_every or self.offset - self.base < self.compact_every:
                return False
            done = await self.store.compact(self.base, self.offset, self._encode_snapshot())
            if done:
                self.base = self.offset
                self.compactions += 1
            return done

    def _encode_snapshot(self) -> bytes:
        meta = {"offset": self.offset, "skipped": self.skipped, "fingerprint": self.fingerprint}
        arrays = {
            f"{name}.{key}": array
            for name, bandit in self.bandits.items()
            for key, array in bandit.state().items()
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

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
        if self.compact_every and self.offset - self.base >= self.compact_every:
            await self.compact()
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


def _decode_snapshot(data: bytes) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Per bandit its state arrays, and the meta dict; ({}, {}) for unreadable bytes."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes())
            states: dict[str, dict[str, np.ndarray]] = {}
            for name in archive.files:
                if name != "meta":
                    bandit, key = name.split(".", 1)
                    states.setdefault(bandit, {})[key] = archive[name]
        return states, meta
    except (ValueError, KeyError, OSError) as error:
        log.warning("unreadable bandit snapshot: %s", error)
        return {}, {}
