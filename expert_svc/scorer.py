"""The expert scorer: tokenizes a batch and evaluates all K capability experts
of the task in one call (see :class:`moerm.experts.CapabilityExperts`) and, for
the items that ask, the task base reward model (phase 1's base head on the same
backbone with the capability adapters switched off)."""

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
    """One item and what to compute for it: the K experts, the base model, or both."""

    turns: tuple[Turn, ...]
    response: str
    experts: bool = True
    base: bool = False


class ExpertScorer:
    """Loads one task's experts (and base head) once; :meth:`score` is called from one thread."""

    def __init__(self, bundle: Bundle, task: str, *, max_length: int = 0, torch_threads: int = 0):
        self.bundle = bundle
        self.task = bundle.manifest.task(task)
        self.max_length = max_length or bundle.manifest.backbone.max_length
        self.torch_threads = torch_threads
        self.experts = None
        self.base_model = None
        self.base_head = None
        self.tokenizer = None

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.task.capability_names

    @property
    def has_base(self) -> bool:
        """The bundle has this task's base reward model (trained bundles do)."""
        return self.task.base_lora is not None

    @property
    def loaded(self) -> bool:
        return self.experts is not None

    def load(self) -> None:
        import torch

        from moerm.experts import RewardModel, load_heads, load_task_experts

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        started = time.perf_counter()
        experts, tokenizer = load_task_experts(self.bundle, self.task.name)
        tokenizer.padding_side = "right"  # pooling reads the last real token
        tokenizer.truncation_side = "left"  # keep the response, drop old turns
        if self.has_base:
            # The experts' backbone already has the base adapter merged in; with the
            # capability adapters disabled it is the base model's backbone.
            manifest = self.bundle.manifest
            self.base_head = load_heads(
                self.bundle.path(self.task.base_head_file), ["base"], manifest.backbone.hidden_size
            )["base"]
            self.base_model = RewardModel(
                experts.transformer, self.base_head, manifest.backbone.pooling
            ).eval()
        self.tokenizer = tokenizer
        self.experts = experts
        log.info(
            "task %r: %d experts%s loaded in %.1fs",
            self.task.name,
            len(self.capabilities),
            " and the base model" if self.has_base else "",
            time.perf_counter() - started,
        )

    def _encode(self, texts: list[str]) -> tuple[list[int], dict]:
        """Length-sorted padded batch of ``texts`` and the sort order."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)
        order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
        batch = self.tokenizer.pad(
            {"input_ids": [encoded["input_ids"][i] for i in order]},
            padding=True,
            return_tensors="pt",
        )
        return order, batch

    def _experts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shape: N texts -> scores (N, K), hidden (N, K, d), in input order."""
        import torch

        order, batch = self._encode(texts)
        with torch.inference_mode():
            scores, hidden = self.experts(batch["input_ids"], batch["attention_mask"])
        inverse = np.argsort(order)
        return scores.numpy()[inverse], hidden.numpy()[inverse]

    def _experts_and_base(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both at once, sharing the trunk. Shape: N texts -> (N, K), (N, K, d), (N,)."""
        import torch

        order, batch = self._encode(texts)
        with torch.inference_mode():
            scores, hidden, base = self.experts.forward_with_base(
                batch["input_ids"], batch["attention_mask"], self.base_head
            )
        inverse = np.argsort(order)
        return scores.numpy()[inverse], hidden.numpy()[inverse], base.numpy()[inverse]

    def _base(self, texts: list[str]) -> np.ndarray:
        """Shape: N texts -> base rewards (N,), in input order."""
        import torch

        order, batch = self._encode(texts)
        with torch.inference_mode(), self.experts.peft_model.disable_adapter():
            rewards = self.base_model(batch["input_ids"], batch["attention_mask"])
        return rewards.numpy()[np.argsort(order)]

    def score(self, items: Sequence[ExpertInput]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shape: B items -> scores (B, K), hidden (B, K, d), base (B,), float32.

        Rows of items that did not ask for the experts (or the base model) are NaN.
        Items are sorted by length and run in that order so that padding stays
        small; results come back in input order.
        """
        k, d = len(self.capabilities), self.bundle.manifest.backbone.hidden_size
        scores = np.full((len(items), k), np.nan, dtype=np.float32)
        hidden = np.full((len(items), k, d), np.nan, dtype=np.float32)
        base = np.full(len(items), np.nan, dtype=np.float32)
        texts = [render(self.tokenizer, item.turns, item.response) for item in items]
        if any(item.base for item in items) and self.base_model is None:
            raise ValueError(f"task {self.task.name!r} has no base model")
        both = [i for i, item in enumerate(items) if item.experts and item.base]
        if both:
            scores[both], hidden[both], base[both] = self._experts_and_base([texts[i] for i in both])
        rows = [i for i, item in enumerate(items) if item.experts and not item.base]
        if rows:
            scores[rows], hidden[rows] = self._experts([texts[i] for i in rows])
        rows = [i for i, item in enumerate(items) if item.base and not item.experts]
        if rows:
            base[rows] = self._base([texts[i] for i in rows])
        return scores, hidden, base
