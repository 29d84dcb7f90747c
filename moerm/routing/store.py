"""Bandit state in Redis (redis.asyncio). The feedback log is the source of truth:
every router replica replays it into its own in-memory bandits (:mod:`moerm.routing.state`).

Keys, all under ``{<namespace>moerm:v1:bandit}:`` (the braces are a Redis Cluster hash
tag, so the keys one Lua call touches share a slot):

- ``decision:<request id>:<item id>``: JSON {arm, policy, context (base64 float32 LE)},
  TTL ``ttl_s``; what the router chose for an item, until its feedback arrives;
- ``done:<request id>:<item id>``: "1", TTL ``ttl_s``; set with NX when the item's
  feedback is logged;
- ``log``: list of JSON events {id, arm, reward, context}, no TTL;
- ``log:base``: how many events compaction has cut from the log's head (absent: 0). Offsets
  are absolute: event ``offset`` is list index ``offset - base``;
- ``snapshot``: the bandits' state after the first ``base`` events (bytes, see
  :mod:`moerm.routing.state`), written in the same atomic step as the cut;
- ``raw``: list of the normalizer's baseline-subtracted feedback values, capped, no TTL.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KEY_PREFIX = "moerm:v1:bandit"
_F32 = np.dtype("<f4")

# KEYS[1] = log, KEYS[2..] = done keys; ARGV[1] = TTL, ARGV[2..] = events (aligned with KEYS).
# One atomic step per call: an id whose done key already exists is not appended again.
_APPEND_ONCE = """
local applied = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    applied[i - 1] = 1
  else
    applied[i - 1] = 0
  end
end
return applied
"""

# KEYS[1] = log, KEYS[2] = log:base; ARGV[1] = absolute offset, ARGV[2] = count.
# Returns {base, events}: events from the offset on, or none when the offset is below the
# base (compacted away: the caller needs the snapshot). One call, so a compaction cannot
# fall between reading the base and the list.
_READ_LOG = """
local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local start = tonumber(ARGV[1]) - base
if start < 0 then
  return {base, {}}
end
return {base, redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)}
"""

# KEYS[1] = log, KEYS[2] = log:base, KEYS[3] = snapshot; ARGV[1] = the base the caller
# read, ARGV[2] = the new base N, ARGV[3] = the snapshot of the state after N events.
# Compare-and-set: when another replica compacted meanwhile, nothing changes (returns 0).
_COMPACT = """
local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local target = tonumber(ARGV[2])
if base ~= tonumber(ARGV[1]) or target <= base or target - base > redis.call('LLEN', KEYS[1]) then
  return 0
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[1], target - base, -1)
redis.call('SET', KEYS[2], target)
return 1
"""


@dataclass(frozen=True, eq=False)
class Decision:
    """What the router chose for one item: the arm's name ("" when no single arm scored
    it, e.g. an ensemble), the prompt embedding (float32, (d,)) and the policy."""

    arm: str
    context: np.ndarray
    policy: str

    def __post_init__(self) -> None:
        context = np.ascontiguousarray(self.context, dtype=_F32)
        if context.ndim != 1:
            raise ValueError(f"a decision's context must have shape (d,), got {context.shape}")
        object.__setattr__(self, "context", context)


def _encode_array(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=_F32).tobytes()).decode("ascii")


def _decode_array(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=_F32).copy()


class BanditStore:
    """Decisions, the feedback log and the shared normalizer history of one namespace.

    ``redis`` is a ``redis.asyncio.Redis`` client that returns bytes (the default, not
    ``decode_responses``: the snapshot is binary).
    """

    def __init__(self, redis, *, namespace: str = "", ttl_s: int = 86400):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.redis = redis
        self.namespace = namespace
        self.ttl_s = int(ttl_s)
        self.prefix = f"{{{namespace}{KEY_PREFIX}}}:"
        self.log_key = self.prefix + "log"
        self.base_key = self.prefix + "log:base"
        self.snapshot_key = self.prefix + "snapshot"
        self.raw_key = self.prefix + "raw"
        self._append_once = redis.register_script(_APPEND_ONCE)
        self._read_log = redis.register_script(_READ_LOG)
        self._compact = redis.register_script(_COMPACT)

    def decision_key(self, item_id: str) -> str:
        return f"{self.prefix}decision:{item_id}"

    def done_key(self, item_id: str) -> str:
        return f"{self.prefix}done:{item_id}"

    async def remember(self, decisions: dict[str, Decision]) -> None:
        """Store each item's decision with the TTL, in one pipeline; a decision already
        stored under an id is kept (SET NX: never overwritten)."""
        if not decisions:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for item_id, decision in decisions.items():
                value = json.dumps(
                    {
                        "arm": decision.arm,
                        "policy": decision.policy,
                        "context": _encode_array(decision.context),
                    }
                )
                pipe.set(self.decision_key(item_id), value, ex=self.ttl_s, nx=True)
            await pipe.execute()

    async def recall(self, ids: Sequence[str]) -> dict[str, Decision | None]:
        """The decision per id; None for an id never remembered or expired."""
        if not ids:
            return {}
        values = await self.redis.mget([self.decision_key(i) for i in ids])
        out: dict[str, Decision | None] = {}
        for item_id, value in zip(ids, values, strict=True):
            if value is None:
                out[item_id] = None
                continue
            data = json.loads(value)
            out[item_id] = Decision(data["arm"], _decode_array(data["context"]), data["policy"])
        return out

    async def append_feedback(self, events: Sequence[tuple[str, str, np.ndarray, float]]) -> list[bool]:
        """Log (item id, arm, context (d,), normalized reward) events, each id at most once.

        One Lua call: per event, SET NX of its done key (with the TTL) and, only when that
        succeeds, RPUSH to the log. Returns per event whether it was logged (False: the id
        was already done, e.g. a retried Feedback call or an id repeated in ``events``).
        """
        if not events:
            return []
        keys = [self.log_key] + [self.done_key(item_id) for item_id, *_ in events]
        payloads = [
            json.dumps(
                {"id": item_id, "arm": arm, "reward": float(reward), "context": _encode_array(context)}
            )
            for item_id, arm, context, reward in events
        ]
        applied = await self._append_once(keys=keys, args=[self.ttl_s, *payloads])
        return [bool(flag) for flag in applied]

    async def events_since(
        self, offset: int, *, count: int = 4096
    ) -> tuple[list[tuple[str, np.ndarray, float]], int, int]:
        """Up to ``count`` logged (arm, context float32 (d,), reward) events from the
        absolute ``offset`` on, the offset after them, and the log's base. No events when
        ``offset`` is below the base: they were compacted into the snapshot."""
        base, values = await self._read_log(keys=[self.log_key, self.base_key], args=[offset, count])
        base = int(base)
        events = []
        for value in values:
            try:
                data = json.loads(value)
                event = (str(data["arm"]), _decode_array(data["context"]), float(data["reward"]))
            except (ValueError, KeyError, TypeError):
                event = ("", np.zeros(0, dtype=_F32), float("nan"))  # unreadable: skipped by the replica
            events.append(event)
        return events, offset + len(values), base

    async def log_length(self) -> int:
        """Events ever logged (the base plus the events still in the list)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.base_key)
            pipe.llen(self.log_key)
            base, length = await pipe.execute()
        return int(base or 0) + int(length)

    async def base(self) -> int:
        """Events compacted into the snapshot (0 before the first compaction)."""
        return int(await self.redis.get(self.base_key) or 0)

    async def snapshot(self) -> bytes | None:
        """The snapshot of the state after the first :meth:`base` events (None before any)."""
        return await self.redis.get(self.snapshot_key)

    async def compact(self, base: int, offset: int, snapshot: bytes) -> bool:
        """Replace the log's events below ``offset`` with ``snapshot`` (the state after
        them), atomically and only if the base is still ``base``; False when another
        replica compacted first (nothing changed)."""
        done = await self._compact(
            keys=[self.log_key, self.base_key, self.snapshot_key], args=[base, offset, snapshot]
        )
        return bool(done)

    async def raw_history(self, limit: int) -> np.ndarray:
        """The last ``limit`` values of the shared normalizer history. Shape: (<= limit,) float64."""
        values = np.array(
            [float(v) for v in await self.redis.lrange(self.raw_key, -limit, -1)], dtype=np.float64
        )
        return values[np.isfinite(values)]  # a non-finite value (a store written before the bound) is ignored

    async def push_raw(self, values: np.ndarray, *, cap: int) -> None:
        """Append baseline-subtracted feedback values to the shared history and keep the
        last ``cap`` (RPUSH + LTRIM in one MULTI)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if not len(values):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.raw_key, *(repr(float(v)) for v in values))
            pipe.ltrim(self.raw_key, -cap, -1)
            await pipe.execute()
