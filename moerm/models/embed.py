"""Prompt embeddings for routing (MiniLM by default): mean-pooled, L2-normalized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from moerm.devices import Placement
from moerm.models.backbones import load_backbone
from moerm.models.experts import pool

DEFAULT_MAX_TOKENS = 256


class PromptEmbedder:
    """Embeds prompts with a small encoder. Not thread-safe: one caller at a time.

    Reads the last ``max_length`` tokens of each prompt (the latest turns matter
    most). Prompts are embedded in chunks of ``batch_size`` sorted by length, so a
    chunk is padded only to its own longest prompt. ``placement`` (default float32 on
    the CPU) sets the device and the weights' dtype (bf16 runs under autocast).

    Shape: ``embed(texts)`` -> (N, E) float32, unit norm.
    """

    def __init__(
        self,
        ref: str = "minilm",
        max_length: int = DEFAULT_MAX_TOKENS,
        batch_size: int = 64,
        placement: Placement | None = None,
    ):
        self._torch = torch
        self.placement = placement or Placement("cpu", "float32", "default")
        self.model, self.tokenizer = load_backbone(ref)
        self.model.to(device=self.placement.device, dtype=self.placement.torch_dtype)
        self.tokenizer.truncation_side = "left"
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Each distinct text once (concurrent requests often share a prompt)."""
        distinct = list(dict.fromkeys(texts))
        row = {text: i for i, text in enumerate(distinct)}
        return self._embed_distinct(distinct)[[row[text] for text in texts]]

    def _embed_distinct(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        with torch.inference_mode(), self.placement.autocast():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                batch = {name: tensor.to(self.placement.device) for name, tensor in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                vectors = pool(hidden, batch["attention_mask"], "mean")
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
                out[rows] = vectors.cpu().numpy()
        return out
