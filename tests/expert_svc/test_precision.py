"""bf16 against float32 on the shared data's held-out test pairs.

The expert service serves bf16 weights by default where the hardware computes bf16
natively (the residual stream stays float32 under autocast; heads, pooling and the
aggregator run in float32). This test holds that to a stated tolerance on a bundle
trained by the recipe (synthetic data; its trained adapters and heads): for every output
of one task (each capability expert, the base model, DMoERM's reward) on every non-tie
test pair of the shared data, chosen and rejected,

- the largest |bf16 - float32| is at most MAX_DIFF of the float32 scores' standard
  deviation and the median at most MEDIAN_DIFF;
- the pair's order (chosen above rejected or not) is the same on at least 99% of pairs.
"""

from __future__ import annotations

import pytest

from expert_svc.precision import compare, score_pairs

pytestmark = pytest.mark.slow

MAX_DIFF = 0.10  # of the float32 scores' standard deviation
MEDIAN_DIFF = 0.02
MIN_AGREEMENT = 0.99
MAX_LENGTH = 256  # tokens per item: long enough for most test pairs, short enough for CI


def test_bf16_scores_stay_within_tolerance_of_float32(trained, shared, device) -> None:
    _, bundle = trained
    pairs = [p for p in shared.split(seed=0).select(shared.pairs, "test") if not p.tie]
    task = max(bundle.manifest.tasks, key=lambda name: len(bundle.manifest.task(name).capabilities))
    f32 = score_pairs(bundle, task, pairs, dtype="float32", max_length=MAX_LENGTH, device=device)
    bf16 = score_pairs(bundle, task, pairs, dtype="bfloat16", max_length=MAX_LENGTH, device=device)
    rows = compare(f32, bf16)
    table = "\n".join(
        f"{r.output}: order {r.same_order}/{r.pairs} = {r.agreement:.4f}, "
        f"max {r.max_diff:.4f}, median {r.median_diff:.5f} (of the float32 std)"
        for r in rows
    )
    print(f"{len(pairs)} pairs, task {task!r}:\n{table}")
    assert len(rows) == len(bundle.manifest.task(task).capabilities) + 2, table  # K experts, base, reward
    for row in rows:
        assert row.agreement >= MIN_AGREEMENT, table
        assert row.max_diff <= MAX_DIFF, table
        assert row.median_diff <= MEDIAN_DIFF, table
