"""The outer layer of DMoERM: prompt -> task, top-1 with a confidence.

The prompt embedder (torch) runs on one worker thread; the classifier is a
linear layer + softmax in numpy over the embeddings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from moerm.bundle import Bundle, load_numpy
from moerm.errors import BundleError


@dataclass(frozen=True)
class Route:
    task: str
    confidence: float  # classifier probability of ``task``
    fallback: bool = False  # True when confidence was too low and the default task was used


class TaskClassifier:
    def __init__(self, bundle: Bundle, embedder=None):
        spec = bundle.manifest.router
        tensors = load_numpy(bundle, spec.classifier_file)
        try:
            self.weight = tensors["weight"].astype(np.float32)  # (T, E)
            self.bias = tensors["bias"].astype(np.float32)  # (T,)
        except KeyError as error:
            raise BundleError(f"{bundle.path(spec.classifier_file)}: missing tensor {error}") from None
        if self.weight.shape != (len(spec.tasks), spec.embed_dim):
            raise BundleError(
                f"{bundle.path(spec.classifier_file)}: weight shape {self.weight.shape} "
                f"does not fit {len(spec.tasks)} tasks x {spec.embed_dim}"
            )
        self.tasks = spec.tasks
        self.default_task = spec.default_task
        self.min_confidence = spec.min_confidence
        self.embedder_ref = spec.embedder
        self._embedder = embedder
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    def load(self) -> None:
        if self._embedder is None:
            from moerm.embed import PromptEmbedder

            self._embedder = PromptEmbedder(self.embedder_ref)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Shape: (N, E) -> (N, T), rows sum to 1."""
        logits = embeddings @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        expo = np.exp(logits)
        return expo / expo.sum(axis=1, keepdims=True)

    def routes(self, probabilities: np.ndarray) -> list[Route]:
        out = []
        for row in probabilities:
            best = int(row.argmax())
            if row[best] < self.min_confidence:
                default = self.tasks.index(self.default_task)
                out.append(Route(self.default_task, float(row[default]), fallback=True))
            else:
                out.append(Route(self.tasks[best], float(row[best])))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Prompt embeddings of rendered conversations (blocking).

        Shape: N texts -> (N, E) float32, unit norm.
        """
        self.load()
        return self._embedder.embed(list(texts))

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Task probabilities of rendered conversations (blocking; embeds them).

        Shape: N texts -> (N, T).
        """
        return self.probabilities(self.embed(texts))

    async def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """:meth:`embed` on the worker thread, off the event loop. Shape: N -> (N, E)."""
        if not prompts:
            return np.zeros((0, self.weight.shape[1]), dtype=np.float32)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, list(prompts))

    async def route_prompts(self, prompts: Sequence[str]) -> list[Route]:
        """One route per prompt; embeds on the worker thread, off the event loop."""
        if not prompts:
            return []
        return self.routes(self.probabilities(await self.embed_prompts(prompts)))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
