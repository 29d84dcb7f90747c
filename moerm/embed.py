"""Prompt embeddings for routing (MiniLM by default): mean-pooled, L2-normalized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PromptEmbedder:
    """Embeds prompts with a small encoder. Not thread-safe: one caller at a time.

    Shape: ``embed(texts)`` -> (N, E) float32, unit norm.
    """

    def __init__(self, ref: str = "minilm", max_length: int = 256, batch_size: int = 64):
        import torch

        from moerm.backbones import load_backbone

        self._torch = torch
        self.model, self.tokenizer = load_backbone(ref)
        self.tokenizer.truncation_side = "left"  # the latest turns matter most
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from moerm.experts import pool

        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                batch = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                hidden = self.model(**batch).last_hidden_state
                vectors = pool(hidden, batch["attention_mask"], "mean")
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
                out[start : start + len(chunk)] = vectors.numpy()
        return out
