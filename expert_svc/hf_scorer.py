"""A Hugging Face sequence-classification reward model as a pool member (``hf:<name>``).

What RL teams already have (an ``AutoModelForSequenceClassification`` directory, e.g.
a Skywork or OpenRLHF reward model) served as an ``ExpertService`` without retraining:
the router registers it like any external reward model
(``--external hf:<name>=HOST:PORT``). Each item is rendered with the model's own chat
template (``role: content`` lines when it has none), the oldest tokens dropped beyond
its context (the first token, e.g. [CLS], kept), and its logits are the score columns
(one per label; the first is the reward).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from expert_svc.scorer import ExpertInput, PreparedItem, leading_special_tokens, prepared
from moerm.devices import Placement, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFTask:
    name: str
    capability_names: tuple[str, ...]


class HFScorer:
    """The scorer interface of :class:`expert_svc.scorer.ExpertScorer` (prepare, costs,
    score, Describe's fields) over one sequence-classification model."""

    has_base = False

    def __init__(
        self,
        path: str,
        name: str,
        *,
        max_length: int = 0,
        torch_threads: int = 0,
        device: str = "cpu",
        dtype: str = "auto",
    ):
        self.path = Path(path)
        self.name = name
        self.requested_max_length = max_length
        self.max_length = max_length
        self.torch_threads = torch_threads
        self.device = device
        self.dtype = dtype
        self.model = None
        self.tokenizer = None
        self.head = 0  # leading special tokens kept when an item is cut
        self.placement: Placement | None = None
        self.task = HFTask(name, ("score",))
        self.version = ""

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.task.capability_names

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            placement = resolve(self.device, self.dtype)
        except ValueError as error:
            raise SystemExit(f"expert_svc: {error}") from None
        if not (self.path / "config.json").is_file():
            raise SystemExit(f"expert_svc: {self.path}: no config.json (a Hugging Face model directory)")
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=placement.torch_dtype)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # the last real token is pooled
        config = model.config
        limit = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.max_length = min(self.requested_max_length or limit, limit)
        labels = (
            [config.id2label[i] for i in range(config.num_labels)] if config.num_labels > 1 else ["score"]
        )
        self.task = HFTask(self.name, tuple(str(label) for label in labels))
        self.version = f"{config.model_type}@{int((self.path / 'config.json').stat().st_mtime)}"
        self.tokenizer, self.placement = tokenizer, placement
        self.head = leading_special_tokens(tokenizer)
        self.model = model.to(placement.device).eval()
        log.info(
            "%s: %s (%s, %d score columns) loaded in %.1fs on %s, context %d tokens",
            self.name,
            self.path,
            config.model_type,
            len(labels),
            time.perf_counter() - started,
            placement,
            self.max_length,
        )

    def prepare(self, items: Sequence[ExpertInput]) -> list[PreparedItem]:
        return prepared(self.tokenizer, items, self.max_length, self.head)

    def costs(self, items: Sequence[PreparedItem]) -> list[float]:
        return [float(len(item.ids)) for item in items]

    def score(self, items: Sequence[PreparedItem]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shape: B items -> scores (B, K) (the logits), hidden (B, K, 0), base (B,) NaN."""
        n, k = len(items), len(self.capabilities)
        longest = max(len(item.ids) for item in items)
        ids = torch.full((n, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item.ids)] = torch.tensor(item.ids)
            mask[row, : len(item.ids)] = 1
        device = self.placement.device
        with torch.inference_mode(), self.placement.autocast():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores = logits.float().cpu().numpy().reshape(n, k)
        return scores, np.zeros((n, k, 0), dtype=np.float32), np.full(n, np.nan, dtype=np.float32)

    def description(self) -> dict:
        config = self.model.config if self.model is not None else None
        return {
            "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
            "backbone": str(self.path),
            "bundle_version": self.version,
            "lora_layers": [],
        }
