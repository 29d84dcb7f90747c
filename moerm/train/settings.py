"""Plain settings and example types of the training recipe (no torch here, so
the command line can describe them without loading a model stack)."""

from __future__ import annotations

from dataclasses import dataclass

from moerm.text import Turn


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 2
    batch_size: int = 8  # pairs per step (2x sequences)
    lr: float = 2e-4
    weight_decay: float = 0.0
    max_length: int = 256
    seed: int = 0
    max_pairs: int = 0  # 0: all; else a seeded subsample (quick runs)
    log_every: int = 10
    deepspeed: bool = False  # train through DeepSpeed ZeRO stage 2 (gloo; works on CPU)


@dataclass(frozen=True)
class Comparison:
    """One training example: a conversation, two responses, which is better."""

    turns: tuple[Turn, ...]
    better: str
    worse: str
