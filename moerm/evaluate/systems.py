"""Score test pairs with every system being compared.

For each non-tie test pair and each system, the system is right when it gives
the human-chosen response a strictly higher reward. Systems:

- ``single``: one reward model trained on all tasks (the baseline);
- ``base``: the task's phase-1 base model alone;
- ``mean`` / ``worst`` / ``uwo``: ensembles of the task's K capability experts'
  scores: mean, minimum, and mean - 0.5 * variance (population variance over
  the K experts);
- ``dmoerm``: the full model (experts + aggregator MLP).

Routing: ``gold`` uses the task the data gives; ``routed`` uses the bundle's
router classifier (the only choice for pairs without a task, e.g. PandaLM).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from moerm.bundle import Bundle
from moerm.data.records import PreferencePair
from moerm.models.aggregator import Aggregator
from moerm.models.loading import load_task_base_model, load_task_experts
from moerm.routing.ensembles import combine
from moerm.text import render_conversation
from moerm.train.loop import Comparison, PairTokenizer
from moerm.train.trunk import TrunkCache, TrunkPairEncoder

SYSTEMS = ("single", "base", "mean", "worst", "uwo", "dmoerm")


def route(classifier, pairs: Sequence[PreferencePair]) -> list[str]:
    """The router classifier's task for each pair's conversation, as router_svc routes it."""

    return [
        r.task for r in classifier.routes(classifier.classify([render_conversation(p.turns) for p in pairs]))
    ]


def bundle_trunk_depth(bundle: Bundle) -> int:
    """Layers below every adapter of the bundle (task base and expert adapters):
    the part of the backbone every task computes alike."""
    depth = bundle.manifest.backbone.num_layers
    for spec in bundle.manifest.tasks.values():
        depth = min(depth, min(spec.lora.layers))
        depth = min(depth, min(spec.base_lora.layers) if spec.base_lora is not None else 0)
    return depth


def _encoder(tokenizer, max_length: int, trunk: TrunkCache | None):
    return TrunkPairEncoder(trunk) if trunk is not None else PairTokenizer(tokenizer, max_length)


def _margins(score, encoder, pairs: Sequence[PreferencePair], batch_size: int = 16):
    """Per pair (reward(chosen) - reward(rejected)) for a scoring function
    ``score(*encoder(batch))`` returning a dict of system -> (2N,) rewards."""

    out: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = [Comparison(p.turns, p.chosen, p.rejected) for p in pairs[start : start + batch_size]]
            n = len(chunk)
            for system, rewards in score(*encoder(chunk)).items():
                out[system].extend((rewards[:n] - rewards[n:]).tolist())
    return out


def task_systems(bundle: Bundle, task: str):
    """(score, tokenizer) of one task's systems: ``score(ids, mask[, trunk])`` ->
    {"base", "mean", "worst", "uwo", "dmoerm"} -> (B,) rewards."""

    experts, tokenizer = load_task_experts(bundle, task)
    base, _ = load_task_base_model(bundle, task)
    aggregator = Aggregator(bundle).tasks[task]

    def score(ids, mask, *trunk_states):
        scores, hidden = experts(ids, mask, *trunk_states)
        s, h = scores.numpy(), hidden.numpy()
        out = {rule: torch.from_numpy(combine(s, rule)) for rule in ("mean", "worst", "uwo")}
        out["dmoerm"] = torch.from_numpy(aggregator.raw(s, h))
        out["base"] = base(ids, mask, *trunk_states)
        return out

    return score, tokenizer


def task_margins(
    bundle: Bundle,
    task: str,
    pairs: Sequence[PreferencePair],
    max_length: int,
    trunk: TrunkCache | None = None,
) -> dict[str, list[float]]:
    """Margins of ``base``, the ensembles and ``dmoerm`` for pairs sent to ``task``
    (``trunk``: cached lower layers, at most :func:`bundle_trunk_depth` deep)."""
    score, tokenizer = task_systems(bundle, task)
    return _margins(score, _encoder(tokenizer, max_length, trunk), list(pairs))


def single_margins(
    model, tokenizer, pairs: Sequence[PreferencePair], max_length: int, trunk: TrunkCache | None = None
) -> list[float]:
    encoder = _encoder(tokenizer, max_length, trunk)
    return _margins(lambda *batch: {"single": model(*batch)}, encoder, list(pairs))["single"]
