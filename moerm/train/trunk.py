"""Training-time trunk cache: the bare backbone's lower layers run once per text.

When every model of a run (the task base models, the one-model baseline, the
capability experts) adapts only layers ``depth`` and above, the first
``depth`` layers compute the same states for a text in every model, every
epoch and every phase. :class:`TrunkCache` computes them once (in
length-sorted batches, so little padding) and keeps them in memory; training
and evaluation then run only the layers above. Nothing changes numerically
except float rounding from different batch shapes.

Memory: ``4 * d`` bytes per token (2.3 KB for SmolLM2, 1.5 KB for MiniLM).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from moerm.models.backbones import load_backbone
from moerm.models.experts import Trunk, find_layer_list, run_layers
from moerm.train.loop import PairTokenizer
from moerm.train.settings import Comparison

log = logging.getLogger(__name__)


class TrunkCache:
    """Per-text states of the bare backbone after its first ``depth`` layers."""

    def __init__(self, backbone_ref: str, depth: int, max_length: int, *, batch_size: int = 16):
        if depth < 1:
            raise ValueError(f"trunk depth must be at least 1, got {depth}")
        self.model, tokenizer = load_backbone(backbone_ref)
        self.model.eval()
        self.encoder = PairTokenizer(tokenizer, max_length)
        num_layers = self.model.config.num_hidden_layers
        if depth > num_layers:
            raise ValueError(f"trunk depth {depth} exceeds the backbone's {num_layers} layers")
        self.depth = depth
        self.batch_size = batch_size
        self._layer_list = find_layer_list(self.model, num_layers)
        self._states: dict[str, torch.Tensor] = {}
        self.computed_tokens = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, text: object) -> bool:
        return text in self._states

    def discard(self, texts: Iterable[str]) -> None:
        """Forget the states of ``texts`` (to bound memory: texts one step alone reads)."""
        for text in texts:
            self._states.pop(text, None)

    def fill(self, texts: Sequence[str]) -> None:
        """Compute the states of every text not cached yet."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._states))
        if not todo:
            return
        lengths = [
            len(ids)
            for ids in self.encoder.tokenizer(todo, truncation=True, max_length=self.encoder.max_length)[
                "input_ids"
            ]
        ]
        todo = [t for _, t in sorted(zip(lengths, todo, strict=True), key=lambda pair: pair[0])]
        with torch.no_grad():
            for begin in range(0, len(todo), self.batch_size):
                chunk = todo[begin : begin + self.batch_size]
                ids, mask = self.encoder.encode(chunk)
                states = run_layers(self.model, self._layer_list, ids, mask, stop=self.depth)
                for row, text in enumerate(chunk):
                    length = int(mask[row].sum())
                    self._states[text] = states[row, :length].clone()
                    self.computed_tokens += length

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, Trunk]:
        """Token ids, mask and the cached trunk states of ``texts``, padded alike.

        Shape: N texts -> (N, T), (N, T), Trunk(states (N, T, d)).
        """
        self.fill(texts)
        ids, mask = self.encoder.encode(texts)
        states = torch.zeros(ids.shape[0], ids.shape[1], self.model.config.hidden_size)
        for row, text in enumerate(texts):
            cached = self._states[text]
            if cached.shape[0] != int(mask[row].sum()):
                raise RuntimeError("trunk cache and tokenizer disagree on a text's length")
            states[row, : cached.shape[0]] = cached
        return ids, mask, Trunk(self.depth, states)


class TrunkPairEncoder:
    """Like :class:`moerm.train.loop.PairTokenizer`, but each batch also carries
    the cached trunk: ``__call__(batch of N)`` -> (ids, mask, Trunk), 2N rows,
    the better responses first."""

    def __init__(self, cache: TrunkCache):
        self.cache = cache

    def texts(self, batch: Sequence[Comparison]) -> list[str]:
        render = self.cache.encoder.texts
        return [render(c.turns, c.better) for c in batch] + [render(c.turns, c.worse) for c in batch]

    def prefill(self, comparisons: Sequence[Comparison]) -> None:
        self.cache.fill(self.texts(comparisons))

    def __call__(self, batch: Sequence[Comparison]) -> tuple[torch.Tensor, torch.Tensor, Trunk]:
        return self.cache.batch(self.texts(batch))
