"""K capability experts on one shared backbone, evaluated together.

Every expert is the same backbone with its own LoRA adapter (peft) and its own
scalar head. Adapters sit on a subset of layers (``LoraSpec.layers``); the
layers below the lowest adapted layer compute the same thing for every expert,
so :meth:`CapabilityExperts.forward` runs them once per batch (the *trunk*)
and then runs only the adapted top layers once per expert. With adapters on
every layer this degenerates to K full passes. Measured trade-offs live in
``bench/bench_experts.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from moerm.errors import BundleError
from moerm.models.prefix import DecoderStack, LayerCache, PrefixPlan, pad, pass_inputs


class _TrunkDone(Exception):
    """Raised by a forward hook to stop the backbone after the trunk."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


class _Replay(nn.Module):
    """Stands in for the trunk: returns its stored output, ignoring its input."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


def find_layer_list(model: nn.Module, num_layers: int) -> tuple[nn.Module, str]:
    """(parent, attribute) of the ModuleList holding the transformer layers."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr
    raise ValueError(f"no ModuleList of {num_layers} layers in {type(model).__name__}")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states into one vector per sequence.

    Shape: hidden (B, T, d), attention_mask (B, T) -> (B, d). ``last`` takes
    the last non-padding token (right padding); ``mean`` averages real tokens.
    float32 whatever the dtype of ``hidden`` (heads and the aggregator are float32).
    """
    if how == "last":
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    if how == "mean":
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {how!r}")


@dataclass(frozen=True)
class Trunk:
    """Hidden states after a backbone's first ``depth`` layers, to start a forward
    pass from instead of the embeddings. Shape: states (B, T, d), right padded."""

    depth: int
    states: torch.Tensor


def run_layers(
    model: nn.Module,
    layer_list: tuple[nn.Module, str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    start: Trunk | None = None,
    stop: int | None = None,
) -> torch.Tensor:
    """Run ``model``'s layers from ``start.depth`` (the embeddings when no
    ``start``) up to layer ``stop`` (exclusive; the whole stack and the final
    norm when None). Shape: (B, T) -> (B, T, d).

    ``layer_list`` is ``find_layer_list(model)``: the ModuleList is swapped for
    ``[replay of start.states, *layers[start.depth:]]`` during the call, and a
    forward hook on layer ``stop - 1`` ends the pass there. The model's own
    forward still builds the attention mask and position embeddings, so this
    works for any architecture that calls its layer list in order.
    """
    first = start.depth if start is not None else 0
    if stop is not None and stop <= first:
        if stop < first or start is None:
            raise ValueError(f"cannot stop at layer {stop} when starting at layer {first}")
        return start.states
    parent, attr = layer_list
    layers = getattr(parent, attr)
    handle = None
    if stop is not None:

        def end(module, args, output):
            raise _TrunkDone(output)

        handle = layers[stop - 1].register_forward_hook(end)
    if start is not None and start.depth > 0:
        setattr(parent, attr, nn.ModuleList([_Replay(start.states), *layers[start.depth :]]))
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    except _TrunkDone as done:
        return done.hidden
    finally:
        setattr(parent, attr, layers)
        if handle is not None:
            handle.remove()


class CapabilityExperts(nn.Module):
    """All K capability experts of one task.

    Args:
        peft_model: a ``peft.PeftModel`` over the bare backbone holding one
            adapter per capability, named after the capability.
        heads: ``capability -> nn.Linear(d, 1)``, registered as submodules so
            they are trained and saved with the experts.
        capabilities: the K names, in output order.
        lora_layers: indices of the layers that carry adapters.
        num_layers: layers in the backbone.
        pooling: ``last`` or ``mean`` (see :func:`pool`).
    """

    def __init__(
        self,
        peft_model: nn.Module,
        heads: nn.ModuleDict,
        capabilities: Sequence[str],
        lora_layers: Sequence[int],
        num_layers: int,
        pooling: str,
    ):
        super().__init__()
        missing = [c for c in capabilities if c not in heads]
        if missing:
            raise ValueError(f"no head for capabilities {missing}")
        self.peft_model = peft_model
        self.heads = heads
        self.capabilities = tuple(capabilities)
        self.first_lora_layer = min(lora_layers)
        self.pooling = pooling
        self._layer_list = find_layer_list(self.transformer, num_layers)
        self._stack: DecoderStack | None = None

    @property
    def transformer(self) -> nn.Module:
        """The transformers model with the LoRA layers injected."""
        return self.peft_model.base_model.model

    def _run(self, input_ids, attention_mask, start: Trunk | None = None, stop: int | None = None):
        return run_layers(
            self.transformer, self._layer_list, input_ids, attention_mask, start=start, stop=stop
        )

    def _score(self, pooled: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.stack(pooled, dim=1)  # (B, K, d)
        scores = torch.stack(
            [self.heads[cap](hidden[:, k]).squeeze(-1) for k, cap in enumerate(self.capabilities)],
            dim=1,
        )
        return scores, hidden

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, trunk: Trunk | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and pooled hidden states of all K experts.

        ``trunk``: precomputed states of the bare backbone's lower layers (at
        most up to the first adapted layer), e.g. from a training-time cache.

        Shape: input_ids, attention_mask (B, T) -> scores (B, K), hidden (B, K, d),
        float32.
        """
        scores, hidden, _ = self._forward(input_ids, attention_mask, trunk, None)
        return scores, hidden

    def forward_with_base(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        base_head: nn.Linear,
        trunk: Trunk | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` plus the task base model's rewards (the backbone with
        every capability adapter disabled, under ``base_head``), which share the
        trunk: one more pass over the adapted layers, not a whole backbone pass.

        Shape: (B, T) -> scores (B, K), hidden (B, K, d), base (B,).
        """
        return self._forward(input_ids, attention_mask, trunk, base_head)

    def _forward(self, input_ids, attention_mask, trunk: Trunk | None, base_head: nn.Linear | None):
        if trunk is not None and trunk.depth > self.first_lora_layer:
            raise ValueError(
                f"trunk depth {trunk.depth} is above the first adapted layer {self.first_lora_layer}"
            )
        if self.first_lora_layer == 0:
            scores, hidden = self.forward_sequential(input_ids, attention_mask)
            shared = None
        else:
            shared = Trunk(
                self.first_lora_layer, self._run(input_ids, attention_mask, trunk, self.first_lora_layer)
            )
            pooled = []
            for cap in self.capabilities:
                self.peft_model.set_adapter(cap)
                pooled.append(
                    pool(self._run(input_ids, attention_mask, shared), attention_mask, self.pooling)
                )
            scores, hidden = self._score(pooled)
        base = None
        if base_head is not None:
            with self.peft_model.disable_adapter():
                states = self._run(input_ids, attention_mask, shared)
            base = base_head(pool(states, attention_mask, self.pooling)).squeeze(-1)
        return scores, hidden, base

    def forward_shared(
        self,
        plan: PrefixPlan,
        pad_id: int,
        base_head: nn.Linear | None = None,
        experts: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Scores of the planned items with every shared prefix computed once
        (decoders only, see :mod:`moerm.models.prefix`): the prefixes' trunk layers once, each
        expert's adapted layers over them once per expert, then the items' own tokens
        attending to those keys and values. ``base_head``: also the task base model's
        rewards (every capability adapter disabled) on the same trunk; ``experts``
        False: only those.

        Shape: B planned items -> scores (B, K), hidden (B, K, d), base (B,); None for
        what was not asked. float32 whatever the backbone's dtype.
        """
        heads: list[str | None] = list(self.capabilities) if experts else []
        if base_head is not None:
            heads.append(None)
        if not heads:
            raise ValueError("nothing to compute: no experts and no base head")
        with self.decoder_stack.attention():
            return self._forward_shared(plan, pad_id, base_head, heads)

    def _forward_shared(self, plan: PrefixPlan, pad_id: int, base_head, heads: list[str | None]):
        stack = self.decoder_stack
        first = self.first_lora_layer
        device = self.device
        prefix_trunk, prefix_heads, prefix_lengths = None, [None] * len(heads), None
        if plan.prefixes:
            ids, prefix_lengths = pad(plan.prefixes, pad_id)
            inputs = pass_inputs(prefix_lengths, ids.shape[1], None).to(device)
            hidden = stack.embed(ids.to(device))
            rotary = stack.rotary(hidden, inputs)
            prefix_trunk = LayerCache()
            hidden = stack.run(hidden, 0, first, inputs, rotary, prefix_trunk)
            for h, cap in enumerate(heads):
                prefix_heads[h] = LayerCache()
                with self._active(cap):
                    stack.record(hidden, first, inputs, rotary, prefix_heads[h])

        ids, lengths = pad(plan.suffixes, pad_id)
        own_prefix = None
        if prefix_lengths is not None:
            own_prefix = torch.tensor(
                [int(prefix_lengths[g]) if g >= 0 else 0 for g in plan.prefix_of], dtype=torch.long
            )
        inputs = pass_inputs(lengths, ids.shape[1], own_prefix).to(device)
        rows = torch.tensor([max(g, 0) for g in plan.prefix_of], dtype=torch.long, device=device)

        def cache(recorded: LayerCache | None) -> LayerCache | None:
            return None if recorded is None else LayerCache(recorded, rows)

        hidden = stack.embed(ids.to(device))
        rotary = stack.rotary(hidden, inputs)
        trunk = stack.run(hidden, 0, first, inputs, rotary, cache(prefix_trunk))
        pooled = []
        for h, cap in enumerate(heads):
            with self._active(cap):
                pooled.append(stack.run_to_last(trunk, first, inputs, rotary, cache(prefix_heads[h])))
        base = base_head(pooled.pop()).squeeze(-1) if base_head is not None else None
        scores, hidden = self._score(pooled) if pooled else (None, None)
        return scores, hidden, base

    @contextmanager
    def _active(self, capability: str | None):
        """The capability's adapter active; None: every adapter disabled (the task base model)."""
        if capability is None:
            with self.peft_model.disable_adapter():
                yield
        else:
            self.peft_model.set_adapter(capability)
            yield

    @property
    def decoder_stack(self) -> DecoderStack:
        if self._stack is None:
            self._stack = DecoderStack(self.transformer)
        return self._stack

    @property
    def device(self) -> torch.device:
        return next(self.peft_model.parameters()).device

    def to_backbone_dtype(self, dtype: torch.dtype) -> CapabilityExperts:
        """Cast the backbone and its adapters to ``dtype``; the heads stay float32."""
        self.peft_model.to(dtype)
        return self

    def forward_sequential(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference: K full backbone passes, one ``set_adapter`` each."""
        pooled = []
        for cap in self.capabilities:
            self.peft_model.set_adapter(cap)
            pooled.append(pool(self._run(input_ids, attention_mask), attention_mask, self.pooling))
        return self._score(pooled)


def load_heads(path, capabilities: Sequence[str], hidden_size: int) -> nn.ModuleDict:
    """Scalar heads from ``heads.safetensors`` (``<cap>.weight``, ``<cap>.bias``)."""

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise BundleError(f"{path}: unreadable safetensors file ({error})") from None
    heads = nn.ModuleDict()
    for cap in capabilities:
        head = nn.Linear(hidden_size, 1)
        try:
            head.load_state_dict({"weight": tensors[f"{cap}.weight"], "bias": tensors[f"{cap}.bias"]})
        except (KeyError, RuntimeError) as error:
            raise BundleError(f"{path}: head for capability {cap!r} missing or misshapen ({error})") from None
        heads[cap] = head
    return heads


def new_head(hidden_size: int, seed: int) -> nn.Linear:
    """A fresh scalar head, N(0, 1/d) weights and a zero bias, seeded."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.normal_(0.0, hidden_size**-0.5, generator=generator)
        head.bias.zero_()
    return head


def head_tensors(heads: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """``<name>.weight`` / ``<name>.bias`` tensors, the layout :func:`load_heads` reads."""
    out = {}
    for name, head in heads.items():
        out[f"{name}.weight"] = head.weight.detach().contiguous().clone()
        out[f"{name}.bias"] = head.bias.detach().contiguous().clone()
    return out


class RewardModel(nn.Module):
    """A backbone (possibly peft-wrapped) with one scalar head: a plain reward model.

    Shape: input_ids, attention_mask (B, T) -> rewards (B,) float32. With a
    ``trunk`` (states of the bare backbone's first layers, which this model must
    not adapt) only the layers above it run.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, pooling: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self._layer_list = find_layer_list(backbone, backbone.config.num_hidden_layers)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, trunk: Trunk | None = None
    ) -> torch.Tensor:
        hidden = run_layers(self.backbone, self._layer_list, input_ids, attention_mask, start=trunk)
        return self.head(pool(hidden, attention_mask, self.pooling)).squeeze(-1)
