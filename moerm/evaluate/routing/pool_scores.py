"""Score labelled preference pairs with every in-bundle reward model of the pool.

The routing tier's offline prior and its evaluation need, for each labelled pair n and each
reward model k of the pool, whether k ranks the pair right (margin chosen - rejected > 0), and
the context the router would see: the prompt embedding of the pair's conversation. Every pair
is scored by *every* arm, whatever its task, since a router may send any prompt anywhere.

Arms, in the pool's order (:func:`moerm.routing.pool.build_pool`): ``dmoerm:<task>`` (the
task's experts + aggregator, raw aggregator output: only the margin's sign matters), then
``base:<task>`` (phase 1's task base model), then optionally ``single`` (the recipe's
one-model baseline, which a router can serve as an external reward model of that name).

Cost: one :class:`~moerm.train.trunk.TrunkCache` for the whole run, so the backbone layers
below every adapter run once per text; each task's models are loaded once and score all
pairs (:func:`moerm.evaluate.systems.task_margins`). The arrays are cached in an ``.npz``
(no pickle) so a report can be rebuilt without rescoring. Needs torch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moerm.bundle import Bundle
from moerm.data.records import PreferencePair
from moerm.evaluate.systems import bundle_trunk_depth, single_margins, task_margins
from moerm.models.classifier import TaskClassifier
from moerm.routing.pool import BASE, DMOERM, build_pool
from moerm.text import render_conversation
from moerm.train.recipe import load_reward_model
from moerm.train.settings import Comparison
from moerm.train.trunk import TrunkCache, TrunkPairEncoder

log = logging.getLogger(__name__)

SINGLE = "single"
CACHE_FORMAT = "moerm.pool_scores.v1"


@dataclass(frozen=True)
class PoolScores:
    """Margins of every arm on N non-tie pairs, with the router's contexts.

    Shape: X (N, E) float32 (the router's prompt embeddings), margins (N, K) float64
    (reward(chosen) - reward(rejected) per arm, raw scale). ``routed``: the bundle
    classifier's task per pair (what the ``task`` policy picks). ``seconds``: wall time
    of "embed", "trunk" (the shared lower layers of all texts), "task:<t>" (``dmoerm:<t>``
    and ``base:<t>`` together, one pass) and "single".
    """

    arms: tuple[str, ...]
    pair_ids: tuple[str, ...]
    sources: tuple[str, ...]
    tasks: tuple[str, ...]
    routed: tuple[str, ...]
    X: np.ndarray
    margins: np.ndarray
    bundle_version: str
    max_length: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> np.ndarray:
        """Arm k ranked pair n right. Shape: (N, K) bool."""
        return self.margins > 0

    def __len__(self) -> int:
        return len(self.pair_ids)

    def matches(
        self, bundle_version: str, arms: Sequence[str], pair_ids: Sequence[str], max_length: int
    ) -> bool:
        """True when these scores answer exactly this request (a cache hit)."""
        return (
            self.bundle_version == bundle_version
            and self.arms == tuple(arms)
            and self.pair_ids == tuple(pair_ids)
            and self.max_length == max_length
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CACHE_FORMAT,
            "bundle_version": self.bundle_version,
            "max_length": self.max_length,
            "seconds": self.seconds,
        }
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            meta=np.array(json.dumps(meta)),
            arms=np.array(self.arms, dtype=str),
            pair_ids=np.array(self.pair_ids, dtype=str),
            sources=np.array(self.sources, dtype=str),
            tasks=np.array(self.tasks, dtype=str),
            routed=np.array(self.routed, dtype=str),
            X=np.asarray(self.X, dtype=np.float32),
            margins=np.asarray(self.margins, dtype=np.float64),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PoolScores:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"{path}: not a pool-scores file (format {meta.get('format')!r})")

            def strings(key: str) -> tuple[str, ...]:
                return tuple(str(s) for s in data[key])

            return cls(
                arms=strings("arms"),
                pair_ids=strings("pair_ids"),
                sources=strings("sources"),
                tasks=strings("tasks"),
                routed=strings("routed"),
                X=data["X"].copy(),
                margins=data["margins"].copy(),
                bundle_version=str(meta["bundle_version"]),
                max_length=int(meta["max_length"]),
                seconds={k: float(v) for k, v in meta["seconds"].items()},
            )


def pool_arms(bundle: Bundle, *, with_single: bool = False) -> tuple[str, ...]:
    """The in-bundle members of the router's pool, in its order, then ``single``."""
    names = tuple(spec.name for spec in build_pool(bundle.manifest) if spec.in_bundle)
    return (*names, SINGLE) if with_single else names


def embed_conversations(classifier, pairs: Sequence[PreferencePair]) -> np.ndarray:
    """The router's context of each pair: its classifier's embedding of the rendered
    conversation (router_svc.contexts), each distinct conversation embedded once.
    Shape: N pairs -> (N, E) float32."""
    texts = [render_conversation(p.turns) for p in pairs]
    if not texts:
        return np.zeros((0, classifier.weight.shape[1]), dtype=np.float32)
    distinct = list(dict.fromkeys(texts))
    vectors = dict(zip(distinct, classifier.embed(distinct), strict=True))
    return np.stack([vectors[t] for t in texts]).astype(np.float32)


def _trunk(bundle: Bundle, single, max_length: int):
    """One trunk cache for every model scored (None when some model adapts layer 0)."""

    depth = bundle_trunk_depth(bundle)
    if single is not None:
        depth = min(depth, single[2])
    return TrunkCache(bundle.manifest.backbone.ref, depth, max_length) if depth > 0 else None


def score_pool(
    bundle: Bundle,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int = 256,
    single=None,
    classifier=None,
) -> PoolScores:
    """Every arm's margin on every non-tie pair (ties are dropped).

    Args:
        bundle: a trained bundle (every task has a base model).
        pairs: labelled pairs of any task (or none).
        max_length: tokens per response with its context, as in ``moerm evaluate``.
        single: (RewardModel, tokenizer, lowest adapted layer) of the one-model baseline
            (:func:`load_single`) on the bundle's backbone, scored as arm ``single``; or None.
        classifier: the bundle's :class:`moerm.models.classifier.TaskClassifier` (made here
            when None).
    """

    pairs = [p for p in pairs if not p.tie]
    arms = pool_arms(bundle, with_single=single is not None)
    seconds: dict[str, float] = {}
    classifier = classifier or TaskClassifier(bundle)
    started = time.perf_counter()
    X = embed_conversations(classifier, pairs)
    routed = tuple(r.task for r in classifier.routes(classifier.probabilities(X)))
    seconds["embed"] = time.perf_counter() - started

    margins = np.full((len(pairs), len(arms)), np.nan)
    if pairs:
        # Batches of similar length pad little: score in length order, report in input order.
        order = np.argsort([_length(p) for p in pairs], kind="stable")
        margins[order] = arm_margins(bundle, arms, [pairs[i] for i in order], max_length, single, seconds)
    return PoolScores(
        arms=arms,
        pair_ids=tuple(p.id for p in pairs),
        sources=tuple(p.source for p in pairs),
        tasks=tuple(p.task for p in pairs),
        routed=routed,
        X=X,
        margins=margins,
        bundle_version=bundle.version,
        max_length=max_length,
        seconds=seconds,
    )


def _length(pair: PreferencePair) -> int:
    """Characters of the pair's longer rendered text (a proxy for its token count)."""
    return len(render_conversation(pair.turns)) + max(len(pair.chosen), len(pair.rejected))


def arm_margins(
    bundle: Bundle,
    arms: Sequence[str],
    pairs: Sequence[PreferencePair],
    max_length: int,
    single,
    seconds: dict[str, float],
) -> np.ndarray:
    """Margin of every arm on every pair, through one trunk cache; wall times go to
    ``seconds``. Shape: N non-tie pairs -> (N, K) float64."""

    pool = build_pool(bundle.manifest)
    column = {name: k for k, name in enumerate(arms)}
    margins = np.full((len(pairs), len(arms)), np.nan)
    trunk = _trunk(bundle, single, max_length)
    if trunk is not None:
        started = time.perf_counter()
        TrunkPairEncoder(trunk).prefill([Comparison(p.turns, p.chosen, p.rejected) for p in pairs])
        seconds["trunk"] = time.perf_counter() - started
    for task in dict.fromkeys(pool[name].task for name in arms if name != SINGLE):
        started = time.perf_counter()
        per_system = task_margins(bundle, task, pairs, max_length, trunk)
        seconds[f"task:{task}"] = time.perf_counter() - started
        for kind, system in ((DMOERM, "dmoerm"), (BASE, "base")):
            if f"{kind}:{task}" in column:
                margins[:, column[f"{kind}:{task}"]] = per_system[system]
        log.info("scored %d pairs with task %s in %.0fs", len(pairs), task, seconds[f"task:{task}"])
    if single is not None:
        model, tokenizer, _ = single
        started = time.perf_counter()
        margins[:, column[SINGLE]] = single_margins(model, tokenizer, pairs, max_length, trunk)
        seconds[SINGLE] = time.perf_counter() - started
    return margins


def load_or_score(
    path: str | Path,
    bundle: Bundle,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int = 256,
    single_work: str | Path | None = None,
    classifier=None,
) -> PoolScores:
    """:func:`score_pool`, cached at ``path``: the file is reused when it holds this
    bundle version, arms, non-tie pair ids and max length, else rescored and rewritten.
    ``single_work``: a recipe work directory whose one-model baseline joins as ``single``."""
    path = Path(path)
    arms = pool_arms(bundle, with_single=single_work is not None)
    ids = [p.id for p in pairs if not p.tie]
    if path.is_file():
        cached = PoolScores.load(path)
        if cached.matches(bundle.version, arms, ids, max_length):
            log.info("pool scores from %s", path)
            return cached
        log.info("%s holds other pairs, arms or bundle: rescoring", path)
    single = load_single(single_work, bundle) if single_work is not None else None
    scores = score_pool(bundle, pairs, max_length=max_length, single=single, classifier=classifier)
    scores.save(path)
    return scores


def load_single(work: str | Path, bundle: Bundle):
    """(RewardModel, tokenizer, lowest adapted layer) of a recipe work directory's
    one-model baseline (``WORK/baselines/single/base``, as ``Recipe.load_single``
    reads it; the backbone comes from ``WORK/run.json``). Raises ValueError when it
    is missing or was trained on another backbone than the bundle's."""

    work = Path(work)
    folder = work / "baselines" / "single" / "base"
    run_file = work / "run.json"
    if not (folder / "adapter_model.safetensors").is_file() or not run_file.is_file():
        raise ValueError(f"{work}: no one-model baseline (run `moerm train baseline --work {work}` first)")
    backbone = json.loads(run_file.read_text())["settings"]["backbone"]
    if backbone != bundle.manifest.backbone.ref:
        raise ValueError(
            f"{work}: the baseline's backbone {backbone!r} is not the bundle's "
            f"{bundle.manifest.backbone.ref!r}"
        )
    return load_reward_model(folder, backbone)
