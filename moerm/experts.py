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
from dataclasses import dataclass

import torch
from torch import nn


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
    """
    if how == "last":
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
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
        if trunk is not None and trunk.depth > self.first_lora_layer:
            raise ValueError(
                f"trunk depth {trunk.depth} is above the first adapted layer {self.first_lora_layer}"
            )
        if self.first_lora_layer == 0:
            return self.forward_sequential(input_ids, attention_mask)
        shared = Trunk(
            self.first_lora_layer, self._run(input_ids, attention_mask, trunk, self.first_lora_layer)
        )
        pooled = []
        for cap in self.capabilities:
            self.peft_model.set_adapter(cap)
            hidden = self._run(input_ids, attention_mask, shared)
            pooled.append(pool(hidden, attention_mask, self.pooling))
        return self._score(pooled)

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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from moerm.errors import BundleError

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


def load_task_experts(bundle, task: str):
    """(CapabilityExperts, tokenizer) for one task of a :class:`moerm.bundle.Bundle`.

    Loads the backbone once and attaches the task's K adapters to it.
    """
    from peft import PeftModel

    from moerm.errors import BundleError

    manifest = bundle.manifest
    spec = manifest.task(task)
    backbone, tokenizer = load_task_backbone(bundle, task)
    caps = spec.capability_names
    model = None
    for cap in caps:
        folder = bundle.path(spec.expert_dir(cap))
        try:
            if model is None:
                model = PeftModel.from_pretrained(backbone, str(folder), adapter_name=cap)
            else:
                model.load_adapter(str(folder), adapter_name=cap)
        except Exception as error:  # peft raises several types for bad files
            raise BundleError(
                f"{folder}: cannot load LoRA adapter ({type(error).__name__}: {error})"
            ) from None
    heads = load_heads(bundle.path(spec.heads_file), caps, manifest.backbone.hidden_size)
    experts = CapabilityExperts(
        model, heads, caps, spec.lora.layers, manifest.backbone.num_layers, manifest.backbone.pooling
    )
    experts.eval()
    return experts, tokenizer


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


def load_task_backbone(bundle, task: str):
    """(backbone, tokenizer) of one task: the bundle's backbone with the task's
    phase-1 adapter merged into it when the bundle has one."""
    from peft import PeftModel

    from moerm.backbones import load_backbone
    from moerm.errors import BundleError

    spec = bundle.manifest.task(task)
    backbone, tokenizer = load_backbone(bundle.manifest.backbone.ref)
    if spec.base_lora is not None:
        folder = bundle.path(spec.base_dir)
        try:
            backbone = PeftModel.from_pretrained(
                backbone, str(folder), adapter_name="base"
            ).merge_and_unload()
        except Exception as error:
            raise BundleError(
                f"{folder}: cannot load the task base adapter ({type(error).__name__}: {error})"
            ) from None
    return backbone, tokenizer


def load_task_base_model(bundle, task: str):
    """(RewardModel, tokenizer): phase 1's task base reward model alone."""
    from moerm.errors import BundleError

    spec = bundle.manifest.task(task)
    if spec.base_lora is None:
        raise BundleError(f"{bundle.root}: task {task!r} has no base model (untrained bundle)")
    backbone, tokenizer = load_task_backbone(bundle, task)
    head = load_heads(bundle.path(spec.base_head_file), ["base"], bundle.manifest.backbone.hidden_size)[
        "base"
    ]
    model = RewardModel(backbone, head, bundle.manifest.backbone.pooling)
    model.eval()
    return model, tokenizer
