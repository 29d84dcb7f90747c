"""The expert scorer: tokenizes items and evaluates all K capability experts of the
task and, for the items that ask, the task base reward model (phase 1's base head on
the same backbone with the capability adapters switched off) in as few passes as the
math allows:

- the layers below the lowest adapter run once for all experts (the trunk);
- the base model's score comes from the same trunk pass (one more pass over the
  adapted layers, not a second whole pass);
- on decoder backbones, items of one conversation (a GRPO group, best-of-n, a
  prompt repeated across concurrent requests) compute their shared token prefix once
  and attend to its keys and values (:mod:`moerm.models.prefix`); encoders, which attend in
  both directions, keep whole sequences;
- a batch runs in chunks of at most ``max_batch_tokens`` padded tokens, items of
  similar length together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moerm.bundle import Bundle
from moerm.devices import Placement, resolve
from moerm.models.experts import RewardModel, load_heads
from moerm.models.loading import load_task_experts
from moerm.models.prefix import pad, plan
from moerm.text import Turn, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertInput:
    """One item and what to compute for it: the K experts, the base model, or both."""

    turns: tuple[Turn, ...]
    response: str
    experts: bool = True
    base: bool = False


@dataclass(frozen=True)
class PreparedItem:
    """An item as tokens (the rendered conversation and response, the oldest tokens
    dropped beyond the context limit) and what to compute for it. ``truncated``:
    tokens were dropped."""

    ids: tuple[int, ...]
    conversation: tuple[Turn, ...]  # items with the same one may share a prefix
    experts: bool
    base: bool
    truncated: bool = False


def leading_special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer puts before a text ([CLS], <s>; 0 for none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return start
    return 0


def keep_within(ids: Sequence[int], limit: int, head: int = 0) -> tuple[tuple[int, ...], bool]:
    """(at most ``limit`` ids, whether any was dropped): beyond ``limit`` the first
    ``head`` (the leading special tokens) and the latest ``limit - head`` (the
    response's end and the most recent turns), as the training's left truncation
    keeps them."""
    if len(ids) <= limit:
        return tuple(ids), False
    return (*ids[:head], *ids[len(ids) - limit + head :]), True


def prepared(tokenizer, items: Sequence[ExpertInput], limit: int, head: int) -> list[PreparedItem]:
    """Render and tokenize ``items``, each cut to ``limit`` tokens by :func:`keep_within`."""
    texts = [render(tokenizer, item.turns, item.response) for item in items]
    out = []
    for ids, item in zip(tokenizer(texts, add_special_tokens=True)["input_ids"], items, strict=True):
        kept, cut = keep_within(ids, limit, head)
        out.append(PreparedItem(kept, item.turns, item.experts, item.base, cut))
    return out


class ExpertScorer:
    """Loads one task's experts (and base head) once; :meth:`score` is called from one
    thread, :meth:`prepare` from another (each tokenizer call leaves the tokenizer's
    settings as they were, so the two never conflict)."""

    def __init__(
        self,
        bundle: Bundle,
        task: str,
        *,
        max_length: int = 0,
        torch_threads: int = 0,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_tokens: int = 8192,
        prefix_sharing: bool = True,
        min_shared_prefix: int = 16,
    ):
        self.bundle = bundle
        self.task = bundle.manifest.task(task)
        self.requested_max_length = max_length
        self.max_length = max_length or bundle.manifest.backbone.max_length
        self.torch_threads = torch_threads
        self.device = device
        self.dtype = dtype
        self.max_batch_tokens = max_batch_tokens
        self.prefix_sharing = prefix_sharing
        self.min_shared_prefix = min_shared_prefix
        self.placement: Placement | None = None
        self.experts = None
        self.base_model = None
        self.base_head = None
        self.tokenizer = None
        self.head = 0  # leading special tokens kept when an item is cut

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

    @property
    def version(self) -> str:
        """What ScoreBatch answers as bundle_version."""
        return self.bundle.version

    def description(self) -> dict:
        """Describe's fields about the model (the servicer adds task, capabilities, norm)."""
        manifest = self.bundle.manifest
        return {
            "hidden_size": manifest.backbone.hidden_size,
            "backbone": manifest.backbone.ref,
            "bundle_version": manifest.bundle_version,
            "lora_layers": list(self.task.lora.layers),
        }

    @property
    def decoder(self) -> bool:
        return self.bundle.manifest.backbone.kind == "decoder"

    @property
    def shares_prefixes(self) -> bool:
        return self.prefix_sharing and self.decoder

    def load(self) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            placement = resolve(self.device, self.dtype)
        except ValueError as error:
            raise SystemExit(f"expert_svc: {error}") from None
        started = time.perf_counter()
        experts, tokenizer = load_task_experts(self.bundle, self.task.name, placement.torch_dtype)
        config = experts.transformer.config
        # The context limit is the backbone's own unless --max-length narrows it.
        limit = int(getattr(config, "max_position_embeddings", 0) or self.bundle.manifest.backbone.max_length)
        self.max_length = min(self.requested_max_length or limit, limit)
        experts.to_backbone_dtype(placement.torch_dtype).to(placement.device)
        if self.has_base:
            # The experts' backbone already has the base adapter merged in; with the
            # capability adapters disabled it is the base model's backbone.
            manifest = self.bundle.manifest
            self.base_head = load_heads(
                self.bundle.path(self.task.base_head_file), ["base"], manifest.backbone.hidden_size
            )["base"].to(placement.device)
            self.base_model = RewardModel(
                experts.transformer, self.base_head, manifest.backbone.pooling
            ).eval()
        if tokenizer.pad_token_id is None:
            raise SystemExit(
                f"expert_svc: the tokenizer of {self.bundle.manifest.backbone.ref} has no pad token"
            )
        self.tokenizer = tokenizer
        self.head = leading_special_tokens(tokenizer)
        self.placement = placement
        self.experts = experts
        log.info(
            "task %r: %d experts%s loaded in %.1fs on %s, attention %s, context %d tokens, "
            "shared prefixes %s, batches of at most %d tokens",
            self.task.name,
            len(self.capabilities),
            " and the base model" if self.has_base else "",
            time.perf_counter() - started,
            placement,
            getattr(config, "_attn_implementation", "?"),
            self.max_length,
            "on" if self.shares_prefixes else "off" + ("" if self.decoder else " (encoder backbone)"),
            self.max_batch_tokens,
        )

    def prepare(self, items: Sequence[ExpertInput]) -> list[PreparedItem]:
        """Render and tokenize; beyond the context limit the oldest tokens are dropped
        (the leading special tokens and the response's end are kept) and the item is
        marked truncated."""
        return prepared(self.tokenizer, items, self.max_length, self.head)

    def costs(self, items: Sequence[PreparedItem]) -> list[float]:
        """Tokens each item will cost in a batch (its share of a prefix it shares)."""
        return self._plan(items).item_costs()

    def _plan(self, items: Sequence[PreparedItem]):
        if self.shares_prefixes:
            groups = [(item.conversation, item.experts, item.base) for item in items]
            return plan([item.ids for item in items], groups, self.min_shared_prefix)
        return plan([item.ids for item in items], range(len(items)))

    def score(self, items: Sequence[PreparedItem]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shape: B items -> scores (B, K), hidden (B, K, d), base (B,), float32.

        Rows of items that did not ask for the experts (or the base model) are NaN.
        Identical items are computed once.
        """

        k, d = len(self.capabilities), self.bundle.manifest.backbone.hidden_size
        scores = np.full((len(items), k), np.nan, dtype=np.float32)
        hidden = np.full((len(items), k, d), np.nan, dtype=np.float32)
        base = np.full(len(items), np.nan, dtype=np.float32)
        if any(item.base for item in items) and self.base_head is None:
            raise ValueError(f"task {self.task.name!r} has no base model")
        first: dict[tuple, int] = {}
        copies = [first.setdefault((item.ids, item.experts, item.base), i) for i, item in enumerate(items)]
        unique = sorted(set(copies))
        plan = self._plan([items[i] for i in unique])
        with torch.inference_mode(), self.placement.autocast():
            for chunk in plan.chunks(self.max_batch_tokens):
                rows = [unique[c] for c in chunk]
                wants = {(items[i].experts, items[i].base) for i in rows}
                for experts, with_base in wants:
                    part = [
                        c
                        for c in chunk
                        if (items[unique[c]].experts, items[unique[c]].base) == (experts, with_base)
                    ]
                    s, h, b = self._run(plan.take(part), experts, with_base)
                    targets = [unique[c] for c in part]
                    if s is not None:
                        scores[targets], hidden[targets] = s, h
                    if b is not None:
                        base[targets] = b
        return scores[copies], hidden[copies], base[copies]

    def _run(self, plan, experts: bool, with_base: bool):
        """One chunk on the model: numpy (scores, hidden, base), None where not asked."""
        head = self.base_head if with_base else None
        if self.decoder:
            s, h, b = self.experts.forward_shared(plan, self.tokenizer.pad_token_id, head, experts=experts)
        else:
            s, h, b = self._run_whole(plan, experts, head)

        def out(tensor):
            return None if tensor is None else tensor.float().cpu().numpy()

        return out(s), out(h), out(b)

    def _run_whole(self, plan, experts: bool, head):
        """Whole sequences (encoders: no shared prefixes)."""

        ids, lengths = pad(plan.suffixes, self.tokenizer.pad_token_id)
        mask = (np.arange(ids.shape[1])[None, :] < lengths.numpy()[:, None]).astype(np.int64)

        device = self.experts.device
        ids, mask = ids.to(device), torch.from_numpy(mask).to(device)
        if not experts:
            with self.experts.peft_model.disable_adapter():
                return None, None, self.base_model(ids, mask)
        if head is None:
            s, h = self.experts(ids, mask)
            return s, h, None
        return self.experts.forward_with_base(ids, mask, head)
