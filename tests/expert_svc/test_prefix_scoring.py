"""The expert scorer with shared prefixes, token-budget chunks and duplicate items
gives every item the scores whole-sequence scoring gives it (SmolLM2, float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expert_svc.scorer import ExpertInput, ExpertScorer
from moerm.bundle import Bundle
from moerm.text import Turn

pytestmark = pytest.mark.slow

GROUP_PROMPT = (
    "Write a Python function that returns the median of a list of numbers. It must not modify the "
    "input, must raise ValueError on an empty list, and should run in O(n log n)."
)
RESPONSES = [
    "def median(xs):\n    s = sorted(xs)\n    n = len(s)\n    return s[n // 2]",
    "Sort a copy and take the middle element; average the two middle ones for even lengths.",
    "def median(xs):\n    if not xs:\n        raise ValueError('empty')\n    s = sorted(xs)\n"
    "    m = len(s) // 2\n    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2",
    "statistics.median(xs)",
    "xs.sort(); return xs[len(xs)//2]",
    "I cannot help with that.",
    "Use numpy: np.median(xs). It handles even lengths by averaging.",
    "def median(xs): return sorted(xs)[len(xs) // 2]  # wrong for even lengths",
]


def items() -> list[ExpertInput]:
    group = (Turn("system", "You are a careful reviewer."), Turn("user", GROUP_PROMPT))
    pair = (Turn("user", "Explain what a race condition is, with a short example in Go."),)
    out = [ExpertInput(group, r, experts=True, base=True) for r in RESPONSES]
    out += [
        ExpertInput(pair, r, experts=True, base=True) for r in ("Two goroutines write x.", "A data race.")
    ]
    out += [
        ExpertInput((Turn("user", "Say hi."),), "Hi!", experts=True, base=False),
        ExpertInput((Turn("user", "Add 2 and 3."),), "5", experts=False, base=True),
        ExpertInput(group, RESPONSES[2], experts=True, base=True),  # a duplicate of item 2
    ]
    return out


@pytest.fixture(scope="module")
def scorers(smollm2_bundle: Path, device: str) -> dict[str, ExpertScorer]:
    bundle = Bundle.load(smollm2_bundle)
    common = {"dtype": "float32", "device": device}
    out = {
        "whole": ExpertScorer(bundle, "code", prefix_sharing=False, **common),
        "shared": ExpertScorer(bundle, "code", **common),
        "chunked": ExpertScorer(bundle, "code", max_batch_tokens=300, **common),
    }
    for scorer in out.values():
        scorer.load()
    return out


def test_shared_prefixes_and_chunks_give_whole_sequence_scores(scorers) -> None:
    prepared = scorers["whole"].prepare(items())
    reference = scorers["whole"].score(prepared)
    for name in ("shared", "chunked"):
        got = scorers[name].score(prepared)
        for a, b in zip(got, reference, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=name)
    scores, hidden, base = reference
    assert np.isnan(scores[11]).all() and np.isnan(hidden[11]).all() and np.isnan(base[10])
    np.testing.assert_array_equal(scores[2], scores[12])  # the duplicate
    assert np.abs(scores[0] - scores[1]).max() > 1e-3  # responses differ, so the match is not vacuous
    # The group's prompt is counted once: the batch costs far fewer tokens than its sequences.
    whole_tokens = sum(len(item.ids) for item in prepared)
    assert sum(scorers["shared"].costs(prepared)) < 0.7 * whole_tokens
    assert sum(scorers["whole"].costs(prepared)) == whole_tokens
    # With a 300-token budget the batch really ran in several chunks.
    plan = scorers["chunked"]._plan(prepared)
    assert len(plan.chunks(300)) > 2


def test_the_context_limit_is_the_backbones_and_keeps_the_response(scorers, smollm2_bundle: Path) -> None:
    assert scorers["whole"].max_length == 8192  # SmolLM2's max_position_embeddings, not a fixed 1,024
    narrow = ExpertScorer(Bundle.load(smollm2_bundle), "code", max_length=64, dtype="float32")
    narrow.tokenizer = scorers["whole"].tokenizer
    long_prompt = "Tell me everything about the history of tea. " * 40
    item = ExpertInput((Turn("user", long_prompt),), "Tea came from China.", experts=True, base=False)
    (full,) = scorers["whole"].prepare([item])
    (cut,) = narrow.prepare([item])
    assert len(full.ids) > 64 and len(cut.ids) == 64
    assert cut.ids == full.ids[-64:]  # the oldest tokens go, the response stays
