"""The outer layer of DMoERM: prompt -> task, top-1 with a confidence.

A linear layer + softmax in numpy over prompt embeddings (:mod:`moerm.models.embed`,
torch, loaded on first use). Blocking; the router runs the embedder on a thread of
its own (``router_svc.contexts``). torch is imported by :meth:`TaskClassifier.load`, so
that the offline tools that only need the weights, and the router's start-up, stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moerm.bundle import Bundle, load_numpy
from moerm.devices import Placement
from moerm.errors import BundleError


@dataclass(frozen=True)
class Route:
    task: str
    confidence: float  # classifier probability of ``task``
    fallback: bool = False  # True when confidence was too low and the default task was used


class TaskClassifier:
    """``max_tokens``: prompt tokens the embedder reads (0: what the classifier was
    trained with, the bundle's ``embed_max_tokens``); ``placement``: where and in
    which dtype the embedder runs (default float32 on the CPU); ``threads``: torch
    threads (0: torch's default)."""

    def __init__(
        self,
        bundle: Bundle,
        embedder=None,
        *,
        max_tokens: int = 0,
        placement: Placement | None = None,
        threads: int = 0,
    ):
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
        self.max_tokens = max_tokens or spec.embed_max_tokens
        self.placement = placement or Placement("cpu", "float32", "default")
        self.threads = threads
        self._embedder = embedder

    @property
    def embedding_id(self) -> str:
        """What an embedding depends on besides the prompt (part of its cache key)."""
        return f"{self.embedder_ref}/{self.max_tokens}/{self.placement.dtype}"

    def load(self) -> None:
        if self._embedder is None:
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            from moerm.models.embed import PromptEmbedder

            self._embedder = PromptEmbedder(self.embedder_ref, self.max_tokens, placement=self.placement)

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
