"""Prompt embeddings, computed once per distinct conversation and cached.

One embedding serves twice: the task classifier's input (the ``task`` policy and the
``task`` field of every result) and the bandits' context (``linucb``, ``thompson``).
It depends only on the conversation and the bundle's embedder, so it is cached in the
score cache under its own key; a fully cached request embeds nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np

from moerm.cache import ScoreCache, cache_key
from moerm.text import Turn, render_conversation
from router_svc.classifier import TaskClassifier

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
    def __init__(self, classifier: TaskClassifier, cache: ScoreCache, bundle_version: str):
        self.classifier = classifier
        self.cache = cache
        self.bundle_version = bundle_version
        self.dim = classifier.weight.shape[1]
        self.embedded = 0  # conversations embedded (cache misses), for stats

    def _key(self, turns: Sequence[Turn]) -> str:
        return cache_key(self.bundle_version, EMBEDDING_ENTRY, self.classifier.embedding_id, turns, "")

    async def embed(self, conversations: Sequence[Sequence[Turn]]) -> np.ndarray:
        """Embeddings of normalized conversations; each distinct uncached one is embedded once.

        Shape: N conversations -> (N, E) float32.
        """
        keys = [self._key(turns) for turns in conversations]
        distinct = list(dict.fromkeys(keys))
        found = dict(zip(distinct, await self.cache.get_many(distinct), strict=True))
        vectors = {key: _decode(value, self.dim) for key, value in found.items()}
        missing = [key for key in distinct if vectors[key] is None]
        if missing:
            text_of = {
                key: render_conversation(turns) for key, turns in zip(keys, conversations, strict=True)
            }
            fresh = await self.classifier.embed_prompts([text_of[key] for key in missing])
            self.embedded += len(missing)
            vectors.update(zip(missing, fresh, strict=True))
            await self.cache.set_many({key: {"x": _encode(vectors[key])} for key in missing})
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            out[i] = vectors[key]
        return out
