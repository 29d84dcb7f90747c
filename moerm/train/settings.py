"""Plain settings and example types of the training recipe (no torch here, so
the command line can describe them without loading a model stack)."""

from __future__ import annotations

from dataclasses import dataclass, field

from moerm.bundle import Capability
from moerm.data.records import CapabilityLabel, ClassifierExample, PreferencePair
from moerm.text import Turn

# The recipe's steps, in order (moerm train STEP).
STEPS = ("router", "phase1", "phase2", "phase3", "baseline")


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


@dataclass
class RecipeInputs:
    train: list[PreferencePair]
    validation: list[PreferencePair]
    classifier_train: list[ClassifierExample]
    classifier_validation: list[ClassifierExample]
    capabilities: dict[str, tuple[Capability, ...]]
    labels: list[CapabilityLabel]
    description: str = ""  # where the data came from, for the report
    # Pairs that only capability labels reference (the contrast pairs of
    # moerm.judges.contrast), each already in the split of the pairs it was made
    # from: phase 2 trains and validates on them with the labels; no other step sees them.
    label_pairs: list[PreferencePair] = field(default_factory=list)
    validation_label_pairs: list[PreferencePair] = field(default_factory=list)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted(self.capabilities))


@dataclass(frozen=True)
class RecipeSettings:
    backbone: str = "minilm"
    router_embedder: str = "minilm"
    base_r: int = 8
    expert_r: int = 8
    expert_fraction: float = 0.25  # top fraction of layers carrying expert adapters
    # Top fraction of layers carrying the task base adapters (and the baseline's).
    # Below 1, the layers under every adapter are computed once per text
    # (moerm.train.trunk) instead of once per model, epoch and phase.
    base_fraction: float = 1.0
    phase1: TrainSettings = TrainSettings(epochs=2, lr=3e-4)
    phase2: TrainSettings = TrainSettings(epochs=2, lr=3e-4)
    aggregator_width: int = 64
    aggregator_epochs: int = 300
    router_epochs: int = 300
    # Also train the router on the training pairs' conversations (rendered as the
    # router renders requests), not only on the single-turn classifier queries:
    # multi-turn data such as hh-rlhf is otherwise out of its distribution.
    router_pair_prompts: bool = True
    min_labels: int = 8
    seed: int = 0

    @classmethod
    def from_json(cls, raw: dict) -> RecipeSettings:
        raw = dict(raw)
        raw["phase1"] = TrainSettings(**raw["phase1"])
        raw["phase2"] = TrainSettings(**raw["phase2"])
        return cls(**raw)
