"""Prompt embeddings, computed once per distinct conversation and cached.

One embedding serves twice: the task classifier's input (the ``task`` policy and the
``task`` field of every result) and the bandits' context (``linucb``, ``thompson``).
It depends only on the conversation and the bundle's embedder, so it is cached (decoded
in this process, and in the score cache under its own key); a fully cached request
embeds nothing. Missing prompts of concurrent requests are embedded together: the
embedder runs on one worker thread behind a batcher that takes whatever is queued
when it is free.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from moerm.batching import DynamicBatcher
from moerm.cache import ScoreCache, cache_key
from moerm.models.classifier import TaskClassifier
from moerm.text import Turn, render_conversation

EMBEDDING_ENTRY = "embedding"  # the key's policy slot: what kind of entry this is
_F32 = np.dtype("<f4")


def _encode(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype=_F32).tobytes()).decode("ascii")


def _decode(value: dict | None, dim: int) -> np.ndarray | None:
    """The cached vector, or None (a miss) for a missing or malformed entry."""
    try:
        vector = np.frombuffer(base64.b64decode(value["x"], validate=True), dtype=_F32)
    except (TypeError, KeyError, ValueError, binascii.Error):
        return None
    return vector if vector.shape == (dim,) and np.isfinite(vector).all() else None


class PromptContexts:
    """``local_entries``: embeddings kept decoded in this process (the score cache
    holds them too, encoded, for other replicas and restarts)."""

    def __init__(
        self, classifier: TaskClassifier, cache: ScoreCache, bundle_version: str, local_entries: int = 16384
    ):
        self.classifier = classifier
        self.cache = cache
        self.bundle_version = bundle_version
        self.dim = classifier.weight.shape[1]
        self.embedded = 0  # conversations embedded (cache misses), for stats
        self.local_entries = local_entries
        self._local: OrderedDict[str, np.ndarray] = OrderedDict()
        self._batcher = DynamicBatcher(
            lambda texts: (classifier.embed(texts),),
            max_batch_size=256,
            max_delay_s=0.0,
            max_queue_items=1 << 30,
        )

    def start(self) -> None:
        """Start the embedding worker (inside the event loop)."""
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.stop()

    async def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """The classifier's embeddings of rendered prompts, on the worker thread, together
        with other callers' prompts. Shape: N -> (N, E)."""
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        (vectors,) = await self._batcher.submit(list(prompts))
        return vectors

    def _key(self, turns: Sequence[Turn]) -> str:
        return cache_key(self.bundle_version, EMBEDDING_ENTRY, self.classifier.embedding_id, turns, "")

    def _remember(self, key: str, vector: np.ndarray) -> None:
        self._local[key] = vector
        if len(self._local) > self.local_entries:
            self._local.popitem(last=False)

    async def embed(self, conversations: Sequence[Sequence[Turn]]) -> np.ndarray:
        """Embeddings of normalized conversations; each distinct uncached one is embedded once.

        Shape: N conversations -> (N, E) float32.
        """
        keys = {turns: self._key(turns) for turns in dict.fromkeys(map(tuple, conversations))}
        vectors: dict[str, np.ndarray | None] = {}
        for key in keys.values():
            vector = self._local.get(key)
            if vector is not None:
                self._local.move_to_end(key)
            vectors[key] = vector
        remote = [key for key, vector in vectors.items() if vector is None]
        if remote:
            for key, value in zip(remote, await self.cache.get_many(remote), strict=True):
                vectors[key] = _decode(value, self.dim)
            missing = [key for key in remote if vectors[key] is None]
            if missing:
                text_of = {key: render_conversation(turns) for turns, key in keys.items()}
                fresh = await self.embed_prompts([text_of[key] for key in missing])
                self.embedded += len(missing)
                vectors.update(zip(missing, fresh, strict=True))
                await self.cache.set_many({key: {"x": _encode(vectors[key])} for key in missing})
            for key in remote:
                self._remember(key, vectors[key])
        out = np.empty((len(conversations), self.dim), dtype=np.float32)
        for i, turns in enumerate(conversations):
            out[i] = vectors[keys[tuple(turns)]]
        return out
