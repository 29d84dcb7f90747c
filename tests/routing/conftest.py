"""Fixtures of the routing tests: async Redis clients on the session's server and a
fresh key namespace per test, deleted afterwards (the server may be shared)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from moerm.routing.store import BanditStore


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[[], redis.Redis]]:
    """Makes independent async clients (a replica each); all closed after the test."""
    made: list[redis.Redis] = []

    def make() -> redis.Redis:
        made.append(redis.Redis.from_url(redis_url))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
async def namespace(redis_url: str) -> AsyncIterator[str]:
    name = f"test-{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{{{name}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def store(clients: Callable[[], redis.Redis], namespace: str) -> BanditStore:
    return BanditStore(clients(), namespace=namespace, ttl_s=600)
