"""Shared-prefix scoring (moerm.models.prefix, CapabilityExperts.forward_shared) equals
whole-sequence scoring: a conversation computed once, its keys and values reused by
every response, gives each response the scores it gets alone."""

from __future__ import annotations

import pytest
import torch

from moerm.models.prefix import pass_inputs, plan
from moerm.text import Turn, render
from tests.models.test_experts import build_experts

ATOL = 1e-4  # float32

PROMPT = (
    "You are reviewing a pull request. The function below should return the n-th Fibonacci number "
    "but the tests fail for n = 0 and for large n it is slow. Explain the bug and give a fixed version."
)
RESPONSES = [
    "The base case is wrong.",
    "For n = 0 the loop never runs and returns 1; start from (0, 1) and iterate n times.",
    "Use memoization.",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "It recurses twice per call, which is exponential; iterate instead and handle n = 0 first.",
    "No bug.",
    "The off-by-one in the range makes fib(0) wrong; the recursion makes it slow. Here is a loop.",
    "Return a when n == 0.",
]


def test_plan_shares_the_longest_common_token_prefix() -> None:
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 7], [8, 8]]
    p = plan(ids, ["a", "a", "a", "b"], min_prefix=1)
    assert p.prefixes == ((1, 2),)
    assert p.prefix_of == (0, 0, 0, -1)
    assert p.suffixes == ((3, 4, 5), (3, 9), (7,), (8, 8))
    assert p.tokens == 2 + 3 + 2 + 1 + 2
    # Identical sequences keep one token of their own; a short common prefix is not shared.
    p = plan([[1, 2, 3], [1, 2, 3]], ["a", "a"], min_prefix=1)
    assert p.prefixes == ((1, 2),) and p.suffixes == ((3,), (3,))
    assert plan(ids, ["a", "a", "a", "b"], min_prefix=3).prefixes == ()
    # Groups are conversations: equal tokens in different groups are not shared.
    assert plan([[1, 2, 3], [1, 2, 4]], ["a", "b"], min_prefix=1).prefixes == ()


def test_pass_inputs_mask_and_positions() -> None:
    inputs = pass_inputs(torch.tensor([2, 1]), 2, torch.tensor([3, 1]))
    mask = inputs.mask[:, 0].int().tolist()
    # row 0: prefix of 3 (all seen), own tokens causal
    assert mask[0] == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # row 1: prefix of 1 (two padding slots hidden), one real token, one padding query
    assert mask[1] == [[1, 0, 0, 1, 0], [1, 0, 0, 1, 0]]
    assert inputs.positions.tolist() == [[3, 4], [1, 2]]


@pytest.fixture(scope="module")
def tokenizer_and_texts():
    _, tokenizer = build_experts("smollm2", (29,))
    texts = [render(tokenizer, (Turn("user", PROMPT),), r) for r in RESPONSES]
    return tokenizer, texts


def whole(experts, tokenizer, texts, head, device):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return experts.forward_with_base(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), head
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "layers", [None, (22, 23, 24, 25, 26, 27, 28, 29)], ids=["all-layers", "top-quarter"]
)
@pytest.mark.parametrize("group", [1, 2, 8])
def test_shared_prefix_equals_whole_sequences_smollm2(layers, group, tokenizer_and_texts, device) -> None:
    tokenizer, texts = tokenizer_and_texts
    experts, _ = build_experts("smollm2", layers)
    experts.to(device)
    torch.manual_seed(3)
    head = torch.nn.Linear(576, 1).to(device)
    # One GRPO group of `group` responses of different lengths, plus an unrelated item.
    items = texts[:group] + [render(tokenizer, (Turn("user", "Say hi."),), "Hi!")]
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in items]
    p = plan(ids, ["fib"] * group + ["hi"])
    if group > 1:
        assert len(p.prefixes) == 1 and len(p.prefixes[0]) > 30
        assert p.tokens < sum(map(len, ids))
    else:
        assert p.prefixes == ()
    with torch.inference_mode():
        scores, hidden, base = experts.forward_shared(p, tokenizer.pad_token_id, head)
    ref_scores, ref_hidden, ref_base = whole(experts, tokenizer, items, head, device)
    torch.testing.assert_close(scores, ref_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(hidden, ref_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(base, ref_base, atol=ATOL, rtol=0)
    assert scores.dtype == torch.float32 and scores.shape == (group + 1, 3)
    # The responses' scores differ, so matching them is not vacuous.
    if group > 1:
        assert (scores[0] - scores[1]).abs().max() > 1e-3
