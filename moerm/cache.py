"""The score cache: Redis (redis-py asyncio), one MGET per request and one
pipelined write of the new scores, behind an in-process LRU of recent entries.

The local tier answers repeated lookups (a trainer re-scoring its items, the
embeddings of a GRPO group's prompt) with no round trip and no decoding; Redis
shares entries between router replicas and restarts. Entries never change once
written (the key holds everything the value depends on), so the two tiers cannot
disagree; the local tier keeps Redis's TTL.

A cache that is down or slow never fails a request: the call is bypassed,
counted (:class:`moerm.metrics.CacheMetrics`), and the cache is skipped for ``backoff_s``
so that a dead server does not add a timeout to every request. redis-py is imported
only when a URL is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from moerm.metrics import CacheMetrics
from moerm.text import Turn

log = logging.getLogger(__name__)

KEY_PREFIX = "moerm:v1:score:"


def _field(digest, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


class KeyHasher:
    """Cache keys of many (reward model, response) pairs of one conversation, hashing
    the conversation once (a GRPO group's prompt is hashed once, not per response and
    per reward model).

    Each field is length-prefixed before it goes into sha256, so no two different
    inputs share a key."""

    def __init__(self, bundle_version: str, entry: str, turns: Sequence[Turn]):
        self._digest = hashlib.sha256()
        for text in (bundle_version, entry, str(len(turns))):
            _field(self._digest, text)
        for turn in turns:
            _field(self._digest, turn.role)
            _field(self._digest, turn.content)

    def key(self, reward_model: str, response: str) -> str:
        digest = self._digest.copy()
        _field(digest, response)
        _field(digest, reward_model)
        return KEY_PREFIX + digest.hexdigest()


def cache_key(
    bundle_version: str, policy: str, reward_model: str, turns: Sequence[Turn], response: str
) -> str:
    """Key of one scored item (``policy``: the kind of entry). Inputs must already be
    normalized (:func:`moerm.text.normalize`)."""
    return KeyHasher(bundle_version, policy, turns).key(reward_model, response)


class ScoreCache:
    """Async score cache. ``url=None`` disables it (every lookup misses)."""

    def __init__(
        self,
        url: str | None,
        *,
        ttl_s: int = 3600,
        timeout_s: float = 0.25,
        backoff_s: float = 2.0,
        namespace: str = "",
        local_entries: int = 32768,
        metrics: CacheMetrics | None = None,
    ):
        self.url = url
        # Prepended to every key: lets several clusters (or test runs) share one Redis.
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.backoff_s = backoff_s
        self.metrics = metrics if metrics is not None else CacheMetrics()
        self._down_until = 0.0
        self._client = None
        self.local_entries = local_entries
        self._local: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # key -> (expiry, value)
        if url:
            import redis.asyncio as redis

            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry_on_timeout=False,
                health_check_interval=30,
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def _available(self) -> bool:
        if self._client is None:
            return False
        if time.monotonic() < self._down_until:
            self.metrics.bypasses.inc()
            return False
        return True

    def _failed(self, what: str, error: Exception) -> None:
        self.metrics.errors.labels(what).inc()
        self._down_until = time.monotonic() + self.backoff_s
        log.warning("score cache %s failed, bypassing for %.1fs: %s", what, self.backoff_s, error)

    def _local_get(self, key: str, now: float) -> dict | None:
        entry = self._local.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._local[key]
            return None
        self._local.move_to_end(key)
        return entry[1]

    def _local_put(self, entries: dict[str, dict], expires: float) -> None:
        if self.local_entries <= 0:
            return
        for key, value in entries.items():
            self._local[key] = (expires, value)
            self._local.move_to_end(key)
        while len(self._local) > self.local_entries:
            self._local.popitem(last=False)

    async def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        """Cached values for ``keys`` (None for a miss): the in-process tier first,
        the rest in one round trip. Treat the values as read-only."""
        if not keys or self._client is None:
            return [None] * len(keys)
        now = time.monotonic()
        values = [self._local_get(key, now) for key in keys]
        local = sum(v is not None for v in values)
        remote = [i for i, v in enumerate(values) if v is None]
        if remote and self._available():
            try:
                raw = await self._client.mget([self.namespace + keys[i] for i in remote])
            except Exception as error:  # any failure of the cache is bypassed
                self._failed("read", error)
                raw = [None] * len(remote)
            found = {}
            for i, blob in zip(remote, raw, strict=True):
                if blob is None:
                    continue
                try:
                    value = json.loads(blob)
                except (ValueError, UnicodeDecodeError):
                    continue  # a foreign or damaged entry is a miss
                if isinstance(value, dict):
                    values[i] = found[keys[i]] = value
            # Redis's remaining TTL is not fetched: a local copy lives at most ttl_s more.
            self._local_put(found, now + self.ttl_s)
        hits = sum(v is not None for v in values)
        self.metrics.hits.labels("local").inc(local)
        self.metrics.hits.labels("redis").inc(hits - local)
        self.metrics.misses.inc(len(values) - hits)
        return values

    async def set_many(self, entries: dict[str, dict]) -> None:
        """Write ``key -> value`` with the TTL: the local tier at once, Redis pipelined
        in one round trip."""
        if not entries or self._client is None:
            return
        self._local_put(entries, time.monotonic() + self.ttl_s)
        if not self._available():
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in entries.items():
                    pipe.set(self.namespace + key, json.dumps(value, separators=(",", ":")), ex=self.ttl_s)
                await pipe.execute()
            self.metrics.writes.inc(len(entries))
        except Exception as error:
            self._failed("write", error)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
