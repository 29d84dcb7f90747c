"""The expert scorer: tokenizes a batch and evaluates all K capability experts
of the task in one call (see :class:`moerm.experts.CapabilityExperts`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moerm.bundle import Bundle
from moerm.text import Turn, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertInput:
    turns: tuple[Turn, ...]
    response: str


class ExpertScorer:
    """Loads one task's experts once; :meth:`score` is called from one thread."""

    def __init__(self, bundle: Bundle, task: str, *, max_length: int = 0, torch_threads: int = 0):
        self.bundle = bundle
        self.task = bundle.manifest.task(task)
        self.max_length = max_length or bundle.manifest.backbone.max_length
        self.torch_threads = torch_threads
        self.experts = None
        self.tokenizer = None

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.task.capability_names

    @property
    def loaded(self) -> bool:
        return self.experts is not None

    def load(self) -> None:
        import torch

        from moerm.experts import load_task_experts

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        started = time.perf_counter()
        experts, tokenizer = load_task_experts(self.bundle, self.task.name)
        tokenizer.padding_side = "right"  # pooling reads the last real token
        tokenizer.truncation_side = "left"  # keep the response, drop old turns
        self.tokenizer = tokenizer
        self.experts = experts
        log.info(
            "task %r: %d experts loaded in %.1fs",
            self.task.name,
            len(self.capabilities),
            time.perf_counter() - started,
        )

    def score(self, items: Sequence[ExpertInput]) -> tuple[np.ndarray, np.ndarray]:
        """Shape: -> scores (B, K), hidden (B, K, d), float32.

        Items are sorted by length and run in that order so that padding stays
        small; results come back in input order.
        """
        import torch

        texts = [render(self.tokenizer, item.turns, item.response) for item in items]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)
        order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
        batch = self.tokenizer.pad(
            {"input_ids": [encoded["input_ids"][i] for i in order]},
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            scores, hidden = self.experts(batch["input_ids"], batch["attention_mask"])
        inverse = np.argsort(order)
        return scores.numpy()[inverse], hidden.numpy()[inverse]
