"""Components shared by the training phases.

Every phase trains with the Bradley-Terry pairwise loss
``-log sigmoid(r_chosen - r_rejected)``, averaged over the pairs of a batch;
a pair whose data marks ``chosen`` as better pushes ``r_chosen`` up.

Checkpoints are safetensors (trainable parameters and AdamW state) plus a
JSON file (epoch, step, RNG seed stream position); no pickle. A run that
finds a checkpoint of the same name resumes after its last finished epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from moerm.models.backbones import cache_dir
from moerm.text import Turn, render
from moerm.train.settings import Comparison, TrainSettings  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(chosen - rejected)``. Shape: (N,), (N,) -> ()."""
    return -nn.functional.logsigmoid(chosen - rejected).mean()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Curve:
    name: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "train_loss", "val_accuracy", "seconds"}
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class PairTokenizer:
    """Renders and tokenizes both sides of comparisons into one padded batch.

    Shape: ``__call__(batch of N)`` -> input_ids, attention_mask (2N, T): the
    better responses first, then the worse ones.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the response
        self.max_length = max_length

    def texts(self, turns: Sequence[Turn], response: str) -> str:
        return render(self.tokenizer, turns, response)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        return batch["input_ids"], batch["attention_mask"]

    def __call__(self, batch: Sequence[Comparison]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [self.texts(c.turns, c.better) for c in batch] + [self.texts(c.turns, c.worse) for c in batch]
        return self.encode(texts)


def subsample(items: list, limit: int, seed: int) -> list:
    if not limit or len(items) <= limit:
        return items
    rng = random.Random(seed)
    return rng.sample(items, limit)


def _save_checkpoint(path: Path, params: dict[str, nn.Parameter], optimizer, state: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous().cpu() for n, p in params.items()}, str(path / "params.safetensors"))
    opt = {}
    for name, param in params.items():
        slot = optimizer.state.get(param, {})
        for key, value in slot.items():
            opt[f"{name}::{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    save_file(opt or {"_empty": torch.zeros(1)}, str(path / "optimizer.safetensors"))
    (path / "state.json").write_text(json.dumps(state, indent=2))


def _load_checkpoint(path: Path, params: dict[str, nn.Parameter], optimizer) -> dict | None:
    if not (path / "state.json").is_file():
        return None
    saved = load_file(str(path / "params.safetensors"))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
    opt = load_file(str(path / "optimizer.safetensors"))
    for name, param in params.items():
        slot = {key.split("::", 1)[1]: value for key, value in opt.items() if key.split("::", 1)[0] == name}
        if slot:
            optimizer.state[param] = slot
    return json.loads((path / "state.json").read_text())


def deepspeed_engine(model: nn.Module, optimizer, settings: TrainSettings):
    """Wrap ``model`` and ``optimizer`` in a DeepSpeed ZeRO stage 2 engine.

    Runs as a one-process gloo group when no launcher set one up; DeepSpeed's
    compiled ops go to $TORCH_EXTENSIONS_DIR (default: the moerm cache), so only
    the first run compiles them.
    """

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    if not dist.is_initialized():
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
        for key, value in (
            ("MASTER_ADDR", "127.0.0.1"),
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
        ):
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    config = {
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,  # torch's AdamW, so CPU needs no fused kernels
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def pairwise_accuracy(
    score: Callable[..., torch.Tensor],
    encoder: Callable[[Sequence[Comparison]], tuple],
    comparisons: Sequence[Comparison],
    batch_size: int = 16,
) -> float:
    """Fraction of comparisons where the better response scores strictly higher."""
    if not comparisons:
        return float("nan")
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(comparisons), batch_size):
            chunk = comparisons[start : start + batch_size]
            rewards = score(*encoder(chunk))
            n = len(chunk)
            correct += int((rewards[:n] > rewards[n:]).sum())
    return correct / len(comparisons)


def train_comparisons(
    name: str,
    model: nn.Module,
    score: Callable[..., torch.Tensor],
    encoder: Callable[[Sequence[Comparison]], tuple],
    train: Sequence[Comparison],
    validation: Sequence[Comparison],
    settings: TrainSettings,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> Curve:
    """Bradley-Terry training of ``model``'s trainable parameters.

    ``encoder(batch of N)`` gives the model inputs (:class:`PairTokenizer`:
    ids and mask; :class:`moerm.train.trunk.TrunkPairEncoder` adds the cached
    trunk) and ``score(*inputs) -> (2N,)`` the rewards. Deterministic for a
    given seed; resumes from ``checkpoint_dir/name`` after its last epoch.
    """

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{name}: nothing to train")
    optimizer = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=settings.weight_decay)
    curve = Curve(name)
    start_epoch = 0
    ckpt = checkpoint_dir / name if checkpoint_dir else None
    engine = deepspeed_engine(model, optimizer, settings) if settings.deepspeed else None
    if ckpt is not None:
        if engine is not None:
            # DeepSpeed keeps ZeRO's partitioned optimizer state in its own
            # checkpoint format (torch.save); bundles stay pickle-free.
            state = None
            if (ckpt / "state.json").is_file():
                engine.load_checkpoint(str(ckpt / "deepspeed"))
                state = json.loads((ckpt / "state.json").read_text())
        else:
            state = _load_checkpoint(ckpt, params, optimizer)
        if state is not None:
            start_epoch = state["epoch"] + 1
            curve = Curve(**state["curve"])
            log.info("%s: resuming after epoch %d", name, state["epoch"])
    train = list(train)
    step = curve.steps[-1] if curve.steps else 0
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        order = list(range(len(train)))
        random.Random(settings.seed * 1000 + epoch).shuffle(order)
        # Dropout stays off (eval mode) so that a resumed run matches an
        # uninterrupted one exactly; LoRA dropout is 0 as well.
        losses = []
        batches = range(0, len(order), settings.batch_size)
        bar = tqdm(
            batches, desc=f"{name} epoch {epoch + 1}/{settings.epochs}", disable=not progress, leave=False
        )
        for begin in bar:
            chunk = [train[i] for i in order[begin : begin + settings.batch_size]]
            batch = encoder(chunk)
            n = len(chunk)
            if engine is not None:
                rewards = engine(*batch) if score is model else score(*batch)
                loss = bradley_terry_loss(rewards[:n], rewards[n:])
                engine.backward(loss)
                engine.step()
            else:
                rewards = score(*batch)
                loss = bradley_terry_loss(rewards[:n], rewards[n:])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            step += 1
            losses.append(loss.item())
            if step % settings.log_every == 0:
                curve.steps.append(step)
                curve.losses.append(float(np.mean(losses[-settings.log_every :])))
                bar.set_postfix(loss=f"{curve.losses[-1]:.4f}")
        val = pairwise_accuracy(score, encoder, validation) if validation else float("nan")
        seconds = time.perf_counter() - started
        curve.seconds += seconds
        curve.epochs.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_accuracy": val,
                "seconds": seconds,
            }
        )
        log.info(
            "%s epoch %d: loss %.4f, val acc %.3f, %.0fs",
            name,
            epoch + 1,
            curve.epochs[-1]["train_loss"],
            val,
            seconds,
        )
        if ckpt is not None:
            state = {"epoch": epoch, "curve": curve.to_json()}
            if engine is not None:
                ckpt.mkdir(parents=True, exist_ok=True)
                engine.save_checkpoint(str(ckpt / "deepspeed"))
                (ckpt / "state.json").write_text(json.dumps(state, indent=2))
            else:
                _save_checkpoint(ckpt, params, optimizer, state)
    model.eval()
    return curve
