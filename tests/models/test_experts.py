"""CapabilityExperts: the shared-trunk K-expert pass equals K sequential
adapter passes, on an encoder (MiniLM) and a decoder (SmolLM2) backbone."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from moerm.models.experts import CapabilityExperts, Trunk, find_layer_list, pool, run_layers

CAPS = ("alpha", "beta", "gamma")
TEXTS = [
    "user: fix my function\nassistant: def f(x):\n    return x * 2",
    "short one",
    "user: write a poem about autumn leaves falling slowly\nassistant: Red and gold, the leaves let go.",
]
ATOL = 1e-5


@functools.cache
def _backbone(ref: str):
    from moerm.models.backbones import load_backbone

    return load_backbone(ref)


def build_experts(ref: str, layers: tuple[int, ...] | None, seed: int = 0):
    """(experts, tokenizer, num_layers) with random, distinct adapters and heads.

    ``layers`` None puts adapters on every layer.
    """
    from peft import LoraConfig, get_peft_model

    from moerm.models.backbones import describe, family

    info = describe(ref)
    num_layers = info["num_layers"]
    layers = tuple(range(num_layers)) if layers is None else layers
    torch.manual_seed(seed)
    cached_base, cached_tokenizer = _backbone(ref)  # loaded once, copied per test
    base, tokenizer = copy.deepcopy(cached_base), copy.deepcopy(cached_tokenizer)
    tokenizer.padding_side = "right"
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(family(base.config.model_type).lora_targets),
        layers_to_transform=list(layers),
        layers_pattern=find_layer_list(base, num_layers)[1],
        init_lora_weights=False,  # random A and B: nonzero, different adapters
    )
    model = get_peft_model(base, config, adapter_name=CAPS[0])
    for cap in CAPS[1:]:
        model.add_adapter(cap, config)
    heads = nn.ModuleDict({cap: nn.Linear(info["hidden_size"], 1) for cap in CAPS})
    experts = CapabilityExperts(model, heads, CAPS, layers, num_layers, info["pooling"]).eval()
    return experts, tokenizer


def reference(experts: CapabilityExperts, input_ids, attention_mask):
    """K full passes through the PeftModel, pooled and scored here."""
    pooled = []
    for cap in experts.capabilities:
        experts.peft_model.set_adapter(cap)
        hidden = experts.peft_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        if experts.pooling == "mean":
            pooled.append((hidden * mask).sum(1) / mask.sum(1))
        else:
            last = attention_mask.sum(1) - 1
            pooled.append(torch.stack([hidden[b, last[b]] for b in range(hidden.shape[0])]))
    hidden = torch.stack(pooled, dim=1)
    scores = torch.stack(
        [experts.heads[c](hidden[:, k])[:, 0] for k, c in enumerate(experts.capabilities)], dim=1
    )
    return scores, hidden


def check_equivalence(experts: CapabilityExperts, tokenizer) -> None:
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert not bool(mask.all()), "the batch should contain padding"
    with torch.inference_mode():
        scores, hidden = experts(ids, mask)
        seq_scores, seq_hidden = experts.forward_sequential(ids, mask)
        ref_scores, ref_hidden = reference(experts, ids, mask)
        with experts.peft_model.disable_adapter():
            plain = experts.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        plain = pool(plain, mask, experts.pooling)
        # Running the trunk path twice gives the same result (layers restored).
        scores_again, _ = experts(ids, mask)

    k, d = len(CAPS), experts.heads[CAPS[0]].in_features
    assert scores.shape == (len(TEXTS), k) and hidden.shape == (len(TEXTS), k, d)
    assert scores.dtype == hidden.dtype == torch.float32
    torch.testing.assert_close(scores, seq_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(hidden, seq_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores, ref_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(hidden, ref_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores_again, scores, atol=0, rtol=0)
    parent, attr = experts._layer_list
    assert len(getattr(parent, attr)) == experts.peft_model.base_model.model.config.num_hidden_layers
    if experts.first_lora_layer > 0:
        # Starting from precomputed lower layers (a training-time trunk cache)
        # gives the same scores, for a trunk below and at the first adapted layer.
        for depth in sorted({max(1, experts.first_lora_layer // 2), experts.first_lora_layer}):
            with torch.inference_mode():
                states = run_layers(experts.transformer, experts._layer_list, ids, mask, stop=depth)
                from_trunk, _ = experts(ids, mask, Trunk(depth, states))
            torch.testing.assert_close(from_trunk, scores, atol=ATOL, rtol=0)
    # The experts differ from each other and from the bare backbone, so the
    # comparisons above can fail.
    for a in range(k):
        assert (hidden[:, a] - plain).abs().max() > 1e-3
        for b in range(a + 1, k):
            assert (hidden[:, a] - hidden[:, b]).abs().max() > 1e-3
            assert (scores[:, a] - scores[:, b]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "layers",
    [None, (4, 5), (2, 3, 4, 5), (5,)],
    ids=["all-layers", "top-2", "top-4", "top-1"],
)
def test_shared_trunk_matches_sequential_minilm(layers) -> None:
    experts, tokenizer = build_experts("minilm", layers)
    assert experts.first_lora_layer == (0 if layers is None else min(layers))
    check_equivalence(experts, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("top", [None, 6], ids=["all-layers", "top-6"])
def test_shared_trunk_matches_sequential_smollm2(top) -> None:
    from moerm.models.backbones import describe

    num_layers = describe("smollm2")["num_layers"]
    layers = None if top is None else tuple(range(num_layers - top, num_layers))
    experts, tokenizer = build_experts("smollm2", layers)
    assert experts.pooling == "last"
    check_equivalence(experts, tokenizer)


@pytest.mark.parametrize("layers", [None, (4, 5)], ids=["all-layers", "top-2"])
def test_forward_with_base_matches_separate_passes(layers) -> None:
    """The base model (every adapter disabled, its own head) computed on the
    experts' shared trunk equals a separate whole-backbone pass, and the experts'
    outputs do not change."""
    experts, tokenizer = build_experts("minilm", layers)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    torch.manual_seed(1)
    head = nn.Linear(384, 1)
    with torch.inference_mode():
        scores, hidden, base = experts.forward_with_base(ids, mask, head)
        ref_scores, ref_hidden = experts(ids, mask)
        with experts.peft_model.disable_adapter():
            plain = experts.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        ref_base = head(pool(plain, mask, experts.pooling)).squeeze(-1)
    torch.testing.assert_close(base, ref_base, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores, ref_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(hidden, ref_hidden, atol=ATOL, rtol=0)
    assert not torch.allclose(base[:, None], scores, atol=1e-3)  # the base differs from every expert


def test_pool_last_picks_last_real_token_with_right_padding() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = pool(hidden, mask, "last")
    assert pooled.shape == (2, 3)
    assert torch.equal(pooled[0], hidden[0, 1])
    assert torch.equal(pooled[1], hidden[1, 3])


def test_pool_mean_ignores_padding() -> None:
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool(hidden, mask, "mean")
    torch.testing.assert_close(pooled[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    # Changing padded positions changes nothing.
    garbage = hidden.clone()
    garbage[0, 3:] = 1e6
    torch.testing.assert_close(pool(garbage, mask, "mean"), pooled)


def test_pool_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")
