"""The Redis score cache, against a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis

from moerm.cache import KEY_PREFIX, ScoreCache, cache_key
from moerm.embedded_redis import free_port
from moerm.metrics import sample
from moerm.text import Turn

TURNS = (Turn("system", "be brief"), Turn("user", "hello"))


def counts(cache: ScoreCache) -> SimpleNamespace:
    """The cache's counters, read from its Prometheus registry."""
    r = cache.metrics.registry
    local = sample(r, "moerm_cache_hits_total", tier="local")
    return SimpleNamespace(
        hits=local + sample(r, "moerm_cache_hits_total", tier="redis"),
        local_hits=local,
        misses=sample(r, "moerm_cache_misses_total"),
        writes=sample(r, "moerm_cache_writes_total"),
        errors=sample(r, "moerm_cache_errors_total", op="read")
        + sample(r, "moerm_cache_errors_total", op="write"),
        bypassed=sample(r, "moerm_cache_bypasses_total"),
    )


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain (sync) client on the same server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def created(raw: redis.Redis) -> Iterator[list[str]]:
    """Keys a test adds here are deleted after it (the server may be shared)."""
    keys: list[str] = []
    yield keys
    if keys:
        raw.delete(*keys)


def unique_keys(n: int) -> list[str]:
    version = uuid.uuid4().hex  # a fresh bundle version: keys no earlier run wrote
    return [cache_key(version, "task", "", TURNS, f"response {i}") for i in range(n)]


# -- keys -----------------------------------------------------------------------------


def test_cache_key_is_deterministic_and_prefixed() -> None:
    key = cache_key("v1", "task", "", TURNS, "hi")
    assert key == cache_key("v1", "task", "", (Turn("system", "be brief"), Turn("user", "hello")), "hi")
    assert key.startswith(KEY_PREFIX)
    assert len(key) == len(KEY_PREFIX) + 64


@pytest.mark.parametrize(
    "changed",
    [
        {"bundle_version": "v2"},
        {"policy": "fixed"},
        {"reward_model": "dmoerm:code"},
        {"turns": (Turn("system", "be brief"), Turn("user", "hello!"))},
        {"turns": (Turn("system", "be brief"), Turn("assistant", "hello"))},
        {"turns": (Turn("user", "hello"),)},
        {"response": "hi!"},
    ],
    ids=["bundle_version", "policy", "reward_model", "content", "role", "turn_count", "response"],
)
def test_cache_key_changes_with_each_input(changed: dict) -> None:
    base = {"bundle_version": "v1", "policy": "task", "reward_model": "", "turns": TURNS, "response": "hi"}
    assert cache_key(**{**base, **changed}) != cache_key(**base)


def test_cache_key_fields_do_not_run_together() -> None:
    # Moving text between neighbouring fields must give another key.
    assert cache_key("v1", "ab", "c", TURNS, "r") != cache_key("v1", "a", "bc", TURNS, "r")
    assert cache_key("v1", "t", "", (Turn("user", "a\nb"),), "c") != cache_key(
        "v1", "t", "", (Turn("user", "a"),), "b\nc"
    )


# -- a live cache -------------------------------------------------------------------


async def test_round_trip_with_ttl(redis_url: str, raw: redis.Redis, created: list[str]) -> None:
    cache = ScoreCache(redis_url, ttl_s=120)
    try:
        keys = unique_keys(3)
        created += keys
        assert cache.enabled
        assert await cache.get_many(keys) == [None, None, None]
        values = {keys[0]: {"reward": 0.5, "task": "code"}, keys[2]: {"reward": -1.25, "caps": [1.0, 2.0]}}
        await cache.set_many(values)
        assert await cache.get_many(keys) == [values[keys[0]], None, values[keys[2]]]
        assert (counts(cache).hits, counts(cache).misses, counts(cache).writes) == (2, 4, 2)
        assert counts(cache).errors == counts(cache).bypassed == 0
        for key in (keys[0], keys[2]):
            assert 0 < raw.ttl(key) <= 120
        assert raw.exists(keys[1]) == 0
        assert await cache.get_many([]) == []
    finally:
        await cache.close()


async def test_namespace_prefixes_every_key(redis_url: str, raw: redis.Redis, created: list[str]) -> None:
    namespace = f"test-{uuid.uuid4().hex}:"
    spaced, plain = ScoreCache(redis_url, namespace=namespace), ScoreCache(redis_url)
    try:
        (key,) = unique_keys(1)
        created += [namespace + key, key]
        await spaced.set_many({key: {"reward": 1.0}})
        assert raw.exists(namespace + key) == 1
        assert await plain.get_many([key]) == [None]
        assert await spaced.get_many([key]) == [{"reward": 1.0}]
    finally:
        await spaced.close()
        await plain.close()


async def test_damaged_value_is_a_miss(redis_url: str, raw: redis.Redis, created: list[str]) -> None:
    cache = ScoreCache(redis_url)
    try:
        keys = unique_keys(3)
        created += keys
        raw.set(keys[0], b"{not json")
        raw.set(keys[1], b"\xff\xfe\x00")
        await cache.set_many({keys[2]: {"reward": 2.0}})
        assert await cache.get_many(keys) == [None, None, {"reward": 2.0}]
        assert (counts(cache).hits, counts(cache).misses, counts(cache).errors) == (1, 2, 0)
    finally:
        await cache.close()


async def test_disabled_cache_always_misses() -> None:
    cache = ScoreCache(None)
    keys = unique_keys(2)
    assert not cache.enabled
    await cache.set_many({keys[0]: {"reward": 1.0}})
    assert await cache.get_many(keys) == [None, None]
    assert counts(cache).writes == counts(cache).hits == counts(cache).errors == 0
    await cache.close()


async def test_dead_server_is_bypassed_with_backoff() -> None:
    cache = ScoreCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, backoff_s=0.3)
    try:
        keys = unique_keys(2)
        assert await cache.get_many(keys) == [None, None]  # no exception
        assert counts(cache).errors == 1
        assert counts(cache).bypassed == 0
        # During the backoff the cache is not even tried.
        assert await cache.get_many(keys) == [None, None]
        await cache.set_many({keys[0]: {"reward": 1.0}})
        assert counts(cache).errors == 1
        assert counts(cache).bypassed == 2
        assert counts(cache).writes == 0
        # After the backoff it is tried (and fails) again.
        await asyncio.sleep(0.35)
        await cache.set_many({keys[0]: {"reward": 1.0}})
        assert counts(cache).errors == 2
        assert counts(cache).bypassed == 2
        assert counts(cache).hits == 0
    finally:
        await cache.close()


async def test_valid_json_of_another_shape_is_a_miss(redis_url):
    import uuid

    import redis.asyncio as redis

    from moerm.cache import ScoreCache

    cache = ScoreCache(redis_url, namespace=f"shape-{uuid.uuid4().hex}:")
    raw = redis.Redis.from_url(redis_url)
    try:
        for blob in ("42", "[1]", '"text"'):
            await raw.set(cache.namespace + "k", blob)
            assert await cache.get_many(["k"]) == [None]
    finally:
        await raw.aclose()
        await cache.close()


async def test_a_slow_cache_is_bypassed_within_its_timeout():
    """A server that accepts connections but never answers (a hung Redis)."""
    import socket
    import time

    from moerm.cache import ScoreCache

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        cache = ScoreCache(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, backoff_s=30)
        try:
            started = time.monotonic()
            assert await cache.get_many(["a", "b"]) == [None, None]
            await cache.set_many({"a": {"r": 1.0}})  # bypassed during the backoff
            elapsed = time.monotonic() - started
        finally:
            await cache.close()
    assert elapsed < 2.0
    assert counts(cache).errors == 1
    assert counts(cache).bypassed == 1
    assert counts(cache).writes == 0


# -- the in-process tier --------------------------------------------------------------


async def test_local_tier_answers_repeats_without_redis(redis_url: str, raw, created) -> None:
    keys = unique_keys(3)
    created.extend(keys)
    cache = ScoreCache(redis_url, ttl_s=60)
    try:
        await cache.set_many({keys[0]: {"r": 1.0}})
        assert raw.get(keys[0]) is not None  # written through to Redis
        raw.delete(keys[0])  # from now on only the local tier has it
        assert await cache.get_many(keys[:1]) == [{"r": 1.0}]
        assert (counts(cache).hits, counts(cache).local_hits) == (1, 1)
        # A value read from Redis is kept locally too.
        raw.set(keys[1], '{"r": 2.0}')
        assert await cache.get_many([keys[1]]) == [{"r": 2.0}]
        raw.delete(keys[1])
        assert await cache.get_many([keys[1], keys[2]]) == [{"r": 2.0}, None]
        assert counts(cache).local_hits == 2 and counts(cache).misses == 1
    finally:
        await cache.close()


async def test_local_tier_is_bounded_and_expires(redis_url: str, raw, created) -> None:
    keys = unique_keys(3)
    created.extend(keys)
    cache = ScoreCache(redis_url, ttl_s=60, local_entries=2)
    try:
        await cache.set_many({key: {"r": float(i)} for i, key in enumerate(keys)})
        raw.delete(*keys)
        # Only the two most recent entries stay in the process.
        assert await cache.get_many(keys) == [None, {"r": 1.0}, {"r": 2.0}]
    finally:
        await cache.close()
    short = ScoreCache(redis_url, ttl_s=1)
    try:
        await short.set_many({keys[0]: {"r": 0.0}})
        raw.delete(keys[0])
        assert await short.get_many(keys[:1]) == [{"r": 0.0}]
        await asyncio.sleep(1.1)
        assert await short.get_many(keys[:1]) == [None]  # expired with Redis's TTL
    finally:
        await short.close()
