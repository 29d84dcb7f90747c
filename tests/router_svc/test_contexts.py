"""PromptContexts: the prompts of concurrent requests are embedded together, on the real
MiniLM embedder, and come back to their callers unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from moerm.bundle import Bundle
from moerm.cache import ScoreCache
from moerm.models.classifier import TaskClassifier
from moerm.models.embed import PromptEmbedder
from router_svc.contexts import PromptContexts


class CountingEmbedder(PromptEmbedder):
    """The real embedder, recording the size of every call."""

    def __init__(self) -> None:
        super().__init__("minilm")
        self.calls: list[int] = []

    def _embed_distinct(self, texts):
        self.calls.append(len(texts))
        return super()._embed_distinct(texts)


async def test_concurrent_prompts_are_embedded_in_few_calls(minilm_bundle: Path) -> None:
    embedder = CountingEmbedder()
    bundle = Bundle.load(minilm_bundle)
    classifier = TaskClassifier(bundle, embedder)
    contexts = PromptContexts(classifier, ScoreCache(None), bundle.version)
    contexts.start()
    prompts = [f"user: question number {i} about sorting lists in Python" for i in range(20)]
    prompts[7] = prompts[3]  # two callers with the same prompt
    try:
        vectors = await asyncio.gather(*(contexts.embed_prompts([p]) for p in prompts))
    finally:
        await contexts.close()
    assert len(embedder.calls) < 5, embedder.calls
    assert sum(embedder.calls) == 19  # the shared prompt once; every caller gets its own row
    alone = PromptEmbedder("minilm").embed(prompts)
    np.testing.assert_allclose(np.concatenate(vectors), alone, atol=1e-5)
    np.testing.assert_array_equal(vectors[7], vectors[3])
