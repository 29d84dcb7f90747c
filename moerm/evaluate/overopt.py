"""Best-of-n over-optimization, in the style of Coste et al. (2024).

(The settings are plain Python, read by the command line; torch, the recipe and matplotlib
are imported by the steps that need them.)

A larger *gold* reward model (the one-model baseline of a SmolLM2 recipe run,
trained on the human pairs) stands in for human judgement. It relabels a
smaller set of training pairs (the better response by gold score), and
*proxy* reward models are trained on those labels with a smaller backbone and
less data (a MiniLM recipe run: one RM for all tasks, the task base models,
the capability-expert ensembles and the full DMoERM). The packaged instruct
model (SmolLM2-135M-Instruct) samples ``n_max`` responses per held-out prompt
(temperature 1: the policy being optimized). For each ``n``, best-of-n picks
the response with the highest proxy reward; what it is worth is the gold
reward of that pick. The KL divergence of best-of-n from the sampling policy
is ``log n - (n - 1) / n`` (an upper bound, tight for distinct samples).

The expectation over random n-subsets of the ``n_max`` samples is computed
exactly, not by resampling: with the proxy scores ranked 1..m ascending, the
sample of rank ``r`` is the pick of a random n-subset with probability
``C(r - 1, n - 1) / C(m, n)``.

Steps and their files (each skipped when its file exists, so a run resumes)::

    WORK/gold-pairs.jsonl       proxy training/validation pairs, relabelled by the gold RM
    WORK/proxies/, WORK/proxy-bundle/    the proxies' recipe run and bundle
    WORK/candidates.jsonl       sampled responses per prompt
    WORK/scores.json            gold and proxy rewards of every candidate
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moerm.config import option
from moerm.data.records import PreferencePair
from moerm.text import Turn

log = logging.getLogger(__name__)

PROXY_SYSTEMS = ("single", "base", "mean", "worst", "uwo", "dmoerm")


@dataclass(frozen=True)
class OveroptSettings:
    """Best-of-n over-optimization (``moerm overopt``: one flag per field)."""

    gold_work: str = option("", "work directory of the recipe run whose one-model baseline is the gold RM")
    gold_backbone: str = option("smollm2", "backbone of the gold run")
    policy: str = option("smollm2", "instruct model sampling the candidates")
    proxy_backbone: str = option("minilm", "backbone of the proxies")
    proxy_pairs_per_task: int = option(64, "gold-labelled train pairs per task for the proxies")
    proxy_epochs: int = option(3, "epochs of the proxies' phases 1-2")
    proxy_lr: float = option(1e-3, "learning rate of the proxies")
    prompts_per_task: int = option(6, "held-out prompts per task")
    max_prompt_tokens: int = option(320, "longest prompt (policy tokens) to sample for")
    n_max: int = option(16, "samples per prompt (best-of-n for n = 1..n-max)")
    max_new_tokens: int = option(96, "longest sampled response")
    temperature: float = option(1.0, "sampling temperature of the policy")
    max_length: int = option(384, "tokens per scored (conversation, response)")
    seed: int = option(0, "seed")

    def validate(self) -> None:
        if not self.gold_work:
            raise SystemExit("moerm overopt: --gold-work (the gold recipe run's work directory) is required")


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def expected_best_of_n(proxy: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Expected gold reward of the proxy's pick among n of the m samples,
    averaged exactly over the C(m, n) subsets. Shape: (m,), (m,) -> ()."""
    m = len(proxy)
    if not 1 <= n <= m:
        raise ValueError(f"n must be in 1..{m}, got {n}")
    order = np.argsort(proxy, kind="stable")  # rank r (1-based) = position + 1
    weights = np.array([math.comb(r - 1, n - 1) for r in range(1, m + 1)], dtype=np.float64)
    weights /= math.comb(m, n)
    return float(np.dot(weights, gold[order]))


def _rm_scores(
    model, tokenizer, turns_list: Sequence[tuple[Turn, ...]], responses: Sequence[str], max_length: int
):
    """Rewards of (conversation, response) items from a RewardModel. Shape: (N,)."""
    import torch

    from moerm.train.loop import PairTokenizer

    encoder = PairTokenizer(tokenizer, max_length)
    out = []
    with torch.inference_mode():
        for start in range(0, len(responses), 16):
            texts = [
                encoder.texts(t, r)
                for t, r in zip(turns_list[start : start + 16], responses[start : start + 16], strict=True)
            ]
            out.append(model(*encoder.encode(texts)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


# -- steps ---------------------------------------------------------------


def gold_pairs(settings: OveroptSettings, path: Path) -> list[PreferencePair]:
    """Train and validation pairs (a per-task sample of the gold run's split),
    with ``chosen`` = the response the gold RM scores higher."""
    from moerm.data.io import read_pairs, write_pairs
    from moerm.train import inputs
    from moerm.train.recipe import load_reward_model

    if path.is_file():
        return read_pairs(path)
    prepared = inputs.shared(
        Path(settings.gold_work), max_pairs_per_task=settings.proxy_pairs_per_task, seed=settings.seed
    )
    pairs = [p for p in prepared.inputs.train + prepared.inputs.validation if not p.tie]
    model, tokenizer, _ = load_reward_model(
        Path(settings.gold_work) / "baselines" / "single" / "base", settings.gold_backbone
    )
    turns = [p.turns for p in pairs]
    chosen = _rm_scores(model, tokenizer, turns, [p.chosen for p in pairs], settings.max_length)
    rejected = _rm_scores(model, tokenizer, turns, [p.rejected for p in pairs], settings.max_length)
    relabelled = []
    for pair, a, b in zip(pairs, chosen, rejected, strict=True):
        if a == b:
            continue
        better, worse = (pair.chosen, pair.rejected) if a > b else (pair.rejected, pair.chosen)
        relabelled.append(
            PreferencePair(pair.id, pair.source, pair.task, pair.turns, better, worse, False, pair.scenario)
        )
    agreement = float(np.mean(chosen > rejected)) if len(pairs) else math.nan
    log.info("gold relabelled %d pairs; agrees with the human label on %.3f", len(relabelled), agreement)
    write_pairs(relabelled, path)
    (path.with_suffix(".stats.json")).write_text(
        json.dumps({"pairs": len(pairs), "relabelled": len(relabelled), "gold_agrees_with_human": agreement})
    )
    return relabelled


def train_proxies(settings: OveroptSettings, pairs: list[PreferencePair], work: Path):
    """A recipe run of the proxy backbone on the gold-labelled pairs -> its bundle."""
    from moerm.bundle import Bundle
    from moerm.data.splits import SplitManifest, load_shared
    from moerm.judges.rules import rule_labels
    from moerm.train.inputs import cap_per_task_examples
    from moerm.train.loop import TrainSettings
    from moerm.train.recipe import Recipe
    from moerm.train.settings import RecipeInputs, RecipeSettings

    bundle_dir = work / "proxy-bundle"
    if (bundle_dir / "manifest.json").is_file():
        return Bundle.load(bundle_dir)
    data = load_shared(None)
    split = SplitManifest.load(Path(settings.gold_work) / "split.json")
    validation_ids = {p.id for p in split.select(data.pairs, "validation")}
    classifier_split = SplitManifest.load(Path(settings.gold_work) / "classifier_split.json")
    capabilities = data.capabilities
    # Candidates are routed by their data task, so the proxies' router is not
    # measured; a small sample of the classifier data keeps its step short.
    classifier_train = cap_per_task_examples(classifier_split.select(data.classifier_train, "train"), 50)
    classifier_validation = cap_per_task_examples(
        classifier_split.select(data.classifier_train, "validation"), 20
    )
    train = [p for p in pairs if p.id not in validation_ids]
    validation = [p for p in pairs if p.id in validation_ids]
    labels, _ = rule_labels(train + validation, capabilities)
    phase = TrainSettings(
        epochs=settings.proxy_epochs, lr=settings.proxy_lr, max_length=256, seed=settings.seed
    )
    recipe = Recipe(
        work / "proxies",
        RecipeInputs(
            train=train,
            validation=validation,
            classifier_train=classifier_train,
            classifier_validation=classifier_validation,
            capabilities=capabilities,
            labels=labels,
            description=f"{len(train)} pairs labelled by the gold RM ({settings.gold_backbone})",
        ),
        RecipeSettings(
            backbone=settings.proxy_backbone,
            base_fraction=0.5,
            phase1=phase,
            phase2=phase,
            seed=settings.seed,
        ),
        progress=False,
    )
    recipe.all()
    return recipe.assemble(bundle_dir)


def sample_prompts(settings: OveroptSettings) -> list[PreferencePair]:
    """``prompts_per_task`` distinct held-out (test split) conversations per task."""
    from moerm.data.splits import SplitManifest, load_shared
    from moerm.models.backbones import load_backbone

    data = load_shared(None)
    split = SplitManifest.load(Path(settings.gold_work) / "split.json")
    _, tokenizer = load_backbone(settings.policy)
    by_task: dict[str, dict[tuple, PreferencePair]] = {}
    for pair in split.select([p for p in data.pairs if p.task], "test"):
        by_task.setdefault(pair.task, {}).setdefault(pair.turns, pair)
    chosen = []
    for task, distinct in sorted(by_task.items()):
        fitting = [
            p
            for p in distinct.values()
            if len(
                tokenizer.apply_chat_template(
                    [{"role": t.role, "content": t.content} for t in p.turns], tokenize=True
                )
            )
            <= settings.max_prompt_tokens
        ]
        chosen += random.Random(f"{settings.seed}:{task}").sample(
            fitting, min(settings.prompts_per_task, len(fitting))
        )
    return chosen


def generate(settings: OveroptSettings, prompts: list[PreferencePair], path: Path) -> list[dict]:
    """``n_max`` samples per prompt from the instruct model (temperature sampling)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moerm.models.backbones import resolve

    done = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    seen = {row["id"] for row in done}
    source = str(resolve(settings.policy))
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    pad = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else (eos[0] if isinstance(eos, list) else eos)
    )
    with path.open("a", encoding="utf-8") as handle:
        for index, pair in enumerate(prompts):
            if pair.id in seen:
                continue
            chat = [{"role": t.role, "content": t.content} for t in pair.turns]
            ids = tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            torch.manual_seed(settings.seed * 100003 + index)
            with torch.inference_mode():
                out = model.generate(
                    ids["input_ids"].repeat(settings.n_max, 1),
                    attention_mask=ids["attention_mask"].repeat(settings.n_max, 1),
                    do_sample=True,
                    temperature=settings.temperature,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=settings.max_new_tokens,
                    pad_token_id=pad,
                )
            prompt_len = ids["input_ids"].shape[1]
            texts = [tokenizer.decode(row[prompt_len:], skip_special_tokens=True).strip() for row in out]
            row = {
                "id": pair.id,
                "task": pair.task,
                "turns": [[t.role, t.content] for t in pair.turns],
                "candidates": texts,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            done.append(row)
            log.info("generated %d/%d", len(done), len(prompts))
    order = {p.id: i for i, p in enumerate(prompts)}
    return sorted((r for r in done if r["id"] in order), key=lambda r: order[r["id"]])


def score_candidates(settings: OveroptSettings, rows: list[dict], bundle, proxy_single, path: Path) -> dict:
    """{"gold": [[m] per prompt], system: [[m] per prompt]} for the gold RM and every proxy."""
    import torch

    from moerm.evaluate.systems import task_systems
    from moerm.train.loop import PairTokenizer
    from moerm.train.recipe import load_reward_model

    if path.is_file():
        return json.loads(path.read_text())
    turns = [tuple(Turn(r, c) for r, c in row["turns"]) for row in rows]
    flat_turns = [t for t, row in zip(turns, rows, strict=True) for _ in row["candidates"]]
    flat = [c for row in rows for c in row["candidates"]]
    sizes = [len(row["candidates"]) for row in rows]

    def split(values: np.ndarray) -> list[list[float]]:
        out, start = [], 0
        for size in sizes:
            out.append([float(v) for v in values[start : start + size]])
            start += size
        return out

    started = time.perf_counter()
    gold, tokenizer, _ = load_reward_model(
        Path(settings.gold_work) / "baselines" / "single" / "base", settings.gold_backbone
    )
    scores = {"gold": split(_rm_scores(gold, tokenizer, flat_turns, flat, settings.max_length))}
    del gold
    log.info("gold scored %d candidates in %.0fs", len(flat), time.perf_counter() - started)
    model, tokenizer, _ = proxy_single
    scores["single"] = split(_rm_scores(model, tokenizer, flat_turns, flat, settings.max_length))
    per_system: dict[str, list[list[float] | None]] = {
        s: [None] * len(rows) for s in PROXY_SYSTEMS if s != "single"
    }
    for task in sorted({row["task"] for row in rows}):
        score, tokenizer = task_systems(bundle, task)
        encoder = PairTokenizer(tokenizer, settings.max_length)
        for i, row in enumerate(rows):
            if row["task"] != task:
                continue
            with torch.inference_mode():
                rewards = score(*encoder.encode([encoder.texts(turns[i], c) for c in row["candidates"]]))
            for system, values in rewards.items():
                per_system[system][i] = values.tolist()
    scores.update(per_system)
    path.write_text(json.dumps(scores))
    return scores


@dataclass
class OveroptResult:
    ns: list[int]
    kl: list[float]
    prompts: int
    samples: int
    # system -> per n: mean over prompts of (gold reward of the pick - mean gold reward of the
    # prompt's samples), and the half-width of its 95% interval over prompts
    gain: dict[str, list[float]] = field(default_factory=dict)
    half_width: dict[str, list[float]] = field(default_factory=dict)
    gold_std: float = 0.0
    notes: dict = field(default_factory=dict)


def analyse(scores: dict, n_max: int) -> OveroptResult:
    gold = [np.asarray(g, dtype=np.float64) for g in scores["gold"]]
    ns = list(range(1, n_max + 1))
    result = OveroptResult(ns=ns, kl=[kl_best_of_n(n) for n in ns], prompts=len(gold), samples=n_max)
    spread = np.concatenate([g - g.mean() for g in gold])
    result.gold_std = float(spread.std()) if len(spread) else math.nan
    for system in ("gold", *PROXY_SYSTEMS):
        if system not in scores:
            continue
        means, halves = [], []
        for n in ns:
            per_prompt = np.array(
                [
                    expected_best_of_n(np.asarray(x), g, n) - g.mean()
                    for x, g in zip(scores[system], gold, strict=True)
                ]
            )
            means.append(float(per_prompt.mean()))
            halves.append(float(1.959963984540054 * per_prompt.std(ddof=1) / math.sqrt(len(per_prompt))))
        result.gain[system] = means
        result.half_width[system] = halves
    return result


LABELS = {
    "gold": "gold RM picks (upper bound)",
    "single": "proxy: one RM for all tasks",
    "base": "proxy: task base models",
    "mean": "proxy: experts mean",
    "worst": "proxy: experts worst-case",
    "uwo": "proxy: experts mean - 0.5 var",
    "dmoerm": "proxy: DMoERM",
}


def write_report(result: OveroptResult, out: Path, header: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "overopt.json").write_text(json.dumps(asdict(result), indent=2))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, values in result.gain.items():
        style = "k--" if system == "gold" else "-o"
        ax.plot(result.kl, values, style, markersize=3, label=LABELS[system])
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("KL(best-of-n || policy) = log n - (n-1)/n")
    ax.set_ylabel("gold reward of the pick - prompt mean")
    ax.set_title(f"best-of-n, {result.prompts} prompts x {result.samples} samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "overopt.png", dpi=120)
    plt.close(fig)
    systems = list(result.gain)
    lines = [
        header,
        "",
        f"Gold reward gain of the proxy's best-of-n pick over a random sample (mean over {result.prompts} "
        f"prompts, ± half-width of the 95% interval over prompts). For scale: the gold rewards of one "
        f"prompt's samples spread with a standard deviation of {result.gold_std:.3f}.",
        "",
        "| n | KL | " + " | ".join(LABELS[s] for s in systems) + " |",
        "|---:|---:|" + "---:|" * len(systems),
    ]
    for i, n in enumerate(result.ns):
        cells = [f"{result.gain[s][i]:+.3f} ± {result.half_width[s][i]:.3f}" for s in systems]
        lines.append(f"| {n} | {result.kl[i]:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "![overopt.png](overopt.png)", ""]
    path = out / "overopt.md"
    path.write_text("\n".join(lines))
    return path


def run(settings: OveroptSettings, work: Path, out: Path, command: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    timings = {}
    started = time.perf_counter()
    pairs = gold_pairs(settings, work / "gold-pairs.jsonl")
    timings["gold labels"] = time.perf_counter() - started
    started = time.perf_counter()
    bundle = train_proxies(settings, pairs, work)
    timings["proxy training"] = time.perf_counter() - started
    from moerm.train.recipe import load_reward_model

    proxy_single = load_reward_model(
        work / "proxies" / "baselines" / "single" / "base", settings.proxy_backbone
    )
    started = time.perf_counter()
    rows = generate(settings, sample_prompts(settings), work / "candidates.jsonl")
    timings["generation"] = time.perf_counter() - started
    started = time.perf_counter()
    scores = score_candidates(settings, rows, bundle, proxy_single, work / "scores.json")
    timings["scoring"] = time.perf_counter() - started
    result = analyse(scores, settings.n_max)
    stats_file = work / "gold-pairs.stats.json"
    result.notes = {
        "settings": asdict(settings),
        "gold_labels": json.loads(stats_file.read_text()) if stats_file.is_file() else {},
        "timings_s (this invocation; 0 for steps resumed from files)": timings,
    }
    gold_stats = result.notes["gold_labels"]
    header = (
        f"# Best-of-n over-optimization: gold {settings.gold_backbone}, proxies {settings.proxy_backbone}\n\n"
        f"Produced by:\n\n```\n{command}\n```\n\n"
        f"Gold RM: the one-model baseline of the `{settings.gold_backbone}` recipe run; it relabelled "
        f"{gold_stats.get('relabelled', '?')} train/validation pairs (at most {settings.proxy_pairs_per_task} per task; "
        f"it agrees with the human label on {gold_stats.get('gold_agrees_with_human', float('nan')):.3f} of them). "
        f"Proxies: a `{settings.proxy_backbone}` recipe run on those gold labels ({settings.proxy_epochs} epochs, "
        f"lr {settings.proxy_lr}). Candidates: {settings.n_max} samples per held-out prompt from "
        f"`{settings.policy}` (temperature {settings.temperature}, at most {settings.max_new_tokens} new tokens), "
        f"{settings.prompts_per_task} test-split prompts per task, routed by their data task."
    )
    return write_report(result, out, header)
