"""Decoder passes in which a conversation shared by several responses runs once.

A GRPO group, a best-of-n set or concurrent requests about the same prompt send one
conversation with several responses. Scored as whole sequences, the conversation's
tokens are recomputed for every response (and, in the expert service, for every
capability expert). In a causal decoder the states of a prefix do not depend on what
follows it, so the prefix can run once and every response attend to its keys and
values instead:

1. the *prefix pass* runs each distinct shared prefix once (the batch's prefixes,
   right padded) and records every layer's keys and values (:class:`LayerCache`);
2. the *suffix pass* runs only the responses' tokens; at every layer each row's
   attention reads its prefix's recorded keys and values (gathered by row) followed by
   its own, under a mask that hides the prefix's padding and keeps the suffix causal;
   positions continue after the prefix.

Both passes drive the backbone's own decoder layers (:class:`DecoderStack`), so
LoRA adapters injected by peft apply as usual, and a stack of layers can run in
slices: the trunk below the adapters once, the adapted layers once per expert.

What is shared is found on tokens, not text (:func:`plan`): items of one
conversation share the longest common prefix of their token ids, so the result is
the same token sequence as whole-sequence scoring and the same numbers up to float
rounding. Encoders attend in both directions, so a prefix's states depend on what
follows it: they keep whole sequences.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

ATTENTION = "moerm_sdpa"


def grouped_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention as transformers' ``sdpa``, but over grouped key /
    value heads without copying them (``enable_gqa``, also with a mask: on the CPU the
    copy of a long prefix's keys three times over cost more than the attention), in
    the values' dtype (under autocast the rotary positions leave queries and keys
    float32; the stock path casts them too). Causal when there is no mask.

    Shape: query (B, H, S, D), key/value (B, H_kv, T, D) -> (B, S, H, D).
    """
    dtype = value.dtype
    groups = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(
        query.to(dtype),
        key.to(dtype),
        value,
        attn_mask=attention_mask,
        scale=scaling,
        is_causal=attention_mask is None and query.shape[2] > 1,
        enable_gqa=groups > 1,
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, grouped_attention)


@dataclass(frozen=True)
class PrefixPlan:
    """Which items share which prefix, on token ids.

    ``prefixes``: the shared prefixes' token ids; ``prefix_of[i]``: item i's prefix
    (an index into ``prefixes``) or -1; ``suffixes[i]``: item i's tokens after it
    (the whole sequence when -1). Every suffix has at least one token, the one whose
    state is pooled.
    """

    prefixes: tuple[tuple[int, ...], ...]
    prefix_of: tuple[int, ...]
    suffixes: tuple[tuple[int, ...], ...]

    @property
    def tokens(self) -> int:
        """Tokens that run: each prefix once, every suffix."""
        return sum(map(len, self.prefixes)) + sum(map(len, self.suffixes))

    def item_costs(self) -> list[float]:
        """Each item's share of :attr:`tokens`: its suffix plus its prefix divided among
        the items that share it."""
        sharing = [0] * len(self.prefixes)
        for g in self.prefix_of:
            if g >= 0:
                sharing[g] += 1
        return [
            len(suffix) + (len(self.prefixes[g]) / sharing[g] if g >= 0 else 0)
            for suffix, g in zip(self.suffixes, self.prefix_of, strict=True)
        ]

    def take(self, rows: Sequence[int]) -> PrefixPlan:
        """The plan of items ``rows`` (in that order), with only their prefixes."""
        used = {g: None for g in (self.prefix_of[i] for i in rows) if g >= 0}
        index = {g: k for k, g in enumerate(used)}
        return PrefixPlan(
            tuple(self.prefixes[g] for g in used),
            tuple(index.get(self.prefix_of[i], -1) for i in rows),
            tuple(self.suffixes[i] for i in rows),
        )

    def chunks(self, max_tokens: int) -> list[list[int]]:
        """Item rows split into runs of at most ``max_tokens`` padded tokens each (a
        single item may exceed it). Items sharing a prefix stay together where they fit,
        so the prefix runs once; runs group items of similar length, each run sorted
        by length, so little of it is padding.
        """
        units: dict[int, list[int]] = {}
        for i, g in enumerate(self.prefix_of):
            units.setdefault(g if g >= 0 else -1 - i, []).append(i)
        ordered = sorted(units.values(), key=lambda rows: max(len(self.suffixes[i]) for i in rows))
        out: list[list[int]] = []
        rows: list[int] = []
        prefixes: set[int] = set()

        def cost(candidate: list[int], shared: set[int]) -> int:
            width = max(len(self.suffixes[i]) for i in candidate)
            prefix_width = max((len(self.prefixes[g]) for g in shared), default=0)
            return len(candidate) * width + len(shared) * prefix_width

        for unit in ordered:
            for i in sorted(unit, key=lambda i: len(self.suffixes[i])):
                g = self.prefix_of[i]
                shared = prefixes | ({g} if g >= 0 else set())
                if rows and cost([*rows, i], shared) > max_tokens:
                    out.append(rows)
                    rows, prefixes = [], set()
                    shared = {g} if g >= 0 else set()
                rows.append(i)
                prefixes = shared
        if rows:
            out.append(rows)
        return [sorted(chunk, key=lambda i: len(self.suffixes[i])) for chunk in out]


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    n = min(map(len, sequences))
    for other in sequences[1:]:
        k = 0
        while k < n and other[k] == first[k]:
            k += 1
        n = k
    return n


def plan(token_ids: Sequence[Sequence[int]], groups: Sequence[Hashable], min_prefix: int = 16) -> PrefixPlan:
    """Share the longest common token prefix within each group of items.

    ``groups[i]`` names item i's conversation; items of one group with a common
    prefix of at least ``min_prefix`` tokens share it (capped so every item keeps one
    token of its own). A group of one shares nothing.
    """
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    prefixes: list[tuple[int, ...]] = []
    prefix_of = [-1] * len(token_ids)
    suffixes = [tuple(ids) for ids in token_ids]
    for rows in members.values():
        if len(rows) < 2:
            continue
        sequences = [token_ids[i] for i in rows]
        shared = min(_common_prefix(sequences), min(map(len, sequences)) - 1)
        if shared < max(1, min_prefix):
            continue
        index = len(prefixes)
        prefixes.append(tuple(sequences[0][:shared]))
        for i in rows:
            prefix_of[i] = index
            suffixes[i] = tuple(token_ids[i][shared:])
    return PrefixPlan(tuple(prefixes), tuple(prefix_of), tuple(suffixes))


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padded ids and lengths. Shape: N sequences -> (N, T) long, (N,) long."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in sequences], dtype=torch.long)


class LayerCache:
    """Each layer's attention keys and values, as transformers' attention modules use a
    cache (``update(key, value, layer_idx)`` returns what to attend to).

    Recording (no ``prefix``): keeps what the pass computes, for a later suffix pass.
    Extending: returns ``prefix``'s keys and values of the layer, rows gathered by
    ``rows``, followed by the pass's own. Shape: key, value (B, H_kv, T, D).
    """

    def __init__(
        self,
        prefix: LayerCache | None = None,
        rows: torch.Tensor | None = None,
    ):
        self.prefix = prefix
        self.rows = rows
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        key = key.to(value.dtype)  # what the attention reads anyway; half the bytes to gather
        if self.prefix is None:
            self.layers[layer_idx] = (key, value)
            return key, value
        past_key, past_value = self.past(layer_idx)
        return torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)

    def past(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix's keys and values of a layer, one row per extended row."""
        past_key, past_value = self.prefix.layers[layer_idx]
        return past_key.index_select(0, self.rows), past_value.index_select(0, self.rows)


@dataclass(frozen=True)
class PassInputs:
    """What every layer of one pass needs. Shape: positions (B, S) long; ``lengths``
    (B,) real tokens per row; ``mask`` (B, 1, S, P + S) bool (True: attend) when rows
    follow prefixes, None otherwise (plain causal attention: with right padding a real
    token never sees a padding one); ``prefix_lengths`` (B,) or None."""

    mask: torch.Tensor | None
    positions: torch.Tensor
    lengths: torch.Tensor
    prefix_lengths: torch.Tensor | None = None

    def to(self, device: torch.device) -> PassInputs:
        def move(tensor):
            return None if tensor is None else tensor.to(device)

        return PassInputs(
            move(self.mask), move(self.positions), move(self.lengths), move(self.prefix_lengths)
        )

    def last_token_mask(self) -> torch.Tensor:
        """The mask of each row's last real token alone. Shape: (B, 1, 1, P + S)."""
        width = self.positions.shape[1]
        steps = torch.arange(width, device=self.lengths.device)
        own = steps[None, :] < self.lengths[:, None]
        if self.prefix_lengths is not None:
            span = self.mask.shape[-1] - width
            seen = torch.arange(span, device=self.lengths.device)[None, :] < self.prefix_lengths[:, None]
            own = torch.cat([seen, own], dim=1)
        return own[:, None, None, :]


def pass_inputs(lengths: torch.Tensor, width: int, prefix_lengths: torch.Tensor | None) -> PassInputs:
    """Mask and positions of right-padded rows of ``width`` tokens that follow
    prefixes of ``prefix_lengths`` (None: no prefix; rows start at position 0).

    A row attends to its prefix's real tokens and causally to its own real tokens.
    Padding query rows also see real tokens only, so no row is fully masked.
    """
    steps = torch.arange(width)
    if prefix_lengths is None:
        return PassInputs(None, steps[None, :].expand(len(lengths), width), lengths)
    own = (steps[None, :] <= steps[:, None])[None] & (steps[None, None, :] < lengths[:, None, None])
    span = int(prefix_lengths.max()) if len(prefix_lengths) else 0
    seen = (torch.arange(span)[None, :] < prefix_lengths[:, None])[:, None, :].expand(-1, width, -1)
    mask = torch.cat([seen, own], dim=2)[:, None]
    return PassInputs(mask, prefix_lengths[:, None] + steps[None, :], lengths, prefix_lengths)


class _Given:
    """A cache that hands a layer the keys and values to attend to, computed outside it."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key, self.value = key, value

    def update(self, key, value, layer_idx, *args, **kwargs):
        return self.key, self.value


class DecoderStack:
    """Runs a transformers decoder model (Llama, Mistral, Qwen2 families: a list of
    decoder layers taking ``position_embeddings`` and a cache) layer by layer.

    Only each row's last token is pooled, so in the final layer the other tokens need
    their keys and values and nothing more: :meth:`run_to_last` computes the final
    layer's keys and values for every token and the rest of the layer (query,
    attention output, MLP) for the last token alone, about 1/8 of the top layers of
    an expert pass when adapters sit on the top quarter. Families whose attention is
    not q/k/v projections with rotary positions run the final layer whole.

    Shape: ``embed`` (B, S) -> (B, S, d); ``run`` (B, S, d) -> (B, S, d);
    ``run_to_last`` (B, S, d) -> (B, d); float32.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        for part in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(model, part):
                raise ValueError(f"{type(model).__name__} has no {part}: not a supported decoder")
        self.num_layers = len(model.layers)
        final = model.layers[-1]
        attention = getattr(final, "self_attn", None)
        module = sys.modules.get(type(attention).__module__) if attention is not None else None
        self._rotate_half = getattr(module, "rotate_half", None)
        self.final_shortcut = (
            self._rotate_half is not None
            and hasattr(final, "input_layernorm")
            and all(hasattr(attention, name) for name in ("k_proj", "v_proj", "head_dim"))
            and not hasattr(attention, "k_norm")  # Qwen3-style norms on keys: not handled here
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings as float32: the residual stream stays float32 whatever the
        weights' dtype. With bf16 weights under ``torch.autocast`` the matrix products
        run in bf16 while the sums between layers keep float32, which halves the
        rounding error of an all-bf16 pass (3.1% -> 1.7% relative on SmolLM2's last
        hidden state) for about 3% more time."""
        return self.model.embed_tokens(ids).float()

    def rotary(self, hidden: torch.Tensor, inputs: PassInputs):
        """Position embeddings of a pass, computed once and shared by every slice."""
        return self.model.rotary_emb(hidden, position_ids=inputs.positions)

    def run(
        self,
        hidden: torch.Tensor,
        start: int,
        stop: int,
        inputs: PassInputs,
        rotary,
        cache: LayerCache | None,
    ) -> torch.Tensor:
        """Layers ``start`` .. ``stop - 1``, and the final norm when ``stop`` is the last."""
        for index in range(start, stop):
            hidden = self.model.layers[index](
                hidden,
                attention_mask=inputs.mask,
                position_embeddings=rotary,
                position_ids=inputs.positions,
                cache=cache,
            )
        if stop == self.num_layers:
            hidden = self.model.norm(hidden)
        return hidden

    def record(self, hidden: torch.Tensor, start: int, inputs: PassInputs, rotary, cache: LayerCache) -> None:
        """Layers ``start`` .. the last for a prefix: only their keys and values are
        kept (in ``cache``), so the final layer computes nothing else."""
        if not self.final_shortcut:
            self.run(hidden, start, self.num_layers, inputs, rotary, cache)
            return
        hidden = self.run(hidden, start, self.num_layers - 1, inputs, rotary, cache)
        cache.layers[self.num_layers - 1] = self._final_keys(hidden, rotary)

    def run_to_last(
        self, hidden: torch.Tensor, start: int, inputs: PassInputs, rotary, cache: LayerCache | None
    ) -> torch.Tensor:
        """Layers ``start`` .. the last and the final norm, for each row's last real token."""
        if not self.final_shortcut:
            return last_states(
                self.run(hidden, start, self.num_layers, inputs, rotary, cache), inputs.lengths
            )
        last_index = self.num_layers - 1
        hidden = self.run(hidden, start, last_index, inputs, rotary, cache)
        key, value = self._final_keys(hidden, rotary)
        if cache is not None:
            past_key, past_value = cache.past(last_index)
            key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = inputs.lengths - 1
        cos, sin = rotary
        out = self.model.layers[last_index](
            hidden[rows, last][:, None],
            attention_mask=inputs.last_token_mask(),
            position_embeddings=(cos[rows, last][:, None], sin[rows, last][:, None]),
            position_ids=inputs.positions[rows, last][:, None],
            cache=_Given(key, value),
        )
        return self.model.norm(out)[:, 0].float()

    def _final_keys(self, hidden: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """The final layer's keys and values of every token, as its attention makes them.
        Shape: (B, S, d) -> (B, H_kv, S, D) each."""
        layer = self.model.layers[-1]
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        shape = (*normed.shape[:-1], -1, attention.head_dim)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        cos, sin = (part.unsqueeze(1) for part in rotary)
        return (key * cos + self._rotate_half(key) * sin).to(value.dtype), value

    @contextmanager
    def attention(self) -> Iterator[None]:
        """The layers use :func:`grouped_attention` inside this context (the model's own
        attention otherwise, e.g. for training)."""
        config = self.model.config
        before = config._attn_implementation
        config._attn_implementation = ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = before


def last_states(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's last real token, as float32. Shape: (B, S, d), (B,) -> (B, d)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, lengths.to(hidden.device) - 1].float()
