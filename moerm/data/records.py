"""The records every loader produces and every trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

from moerm.text import Turn


@dataclass(frozen=True)
class PreferencePair:
    """Two responses to one conversation, with a human (or gold) preference.

    ``chosen`` is the preferred response. For a tie (``tie=True``) the two are
    in their original order and neither is preferred: ties are excluded from
    pairwise training and counted separately in evaluation.
    """

    id: str  # stable across runs: "<source>:<index in the source file>"
    source: str  # "autoj", "hh-rlhf", "pandalm", "jsonl", "hf:<dataset>"
    task: str  # task group, "" when the source does not say (the router decides)
    turns: tuple[Turn, ...]  # the conversation so far, normalized (moerm.text.normalize)
    chosen: str
    rejected: str
    tie: bool = False
    scenario: str = ""  # finer label where the source has one (Auto-J scenario, PandaLM app)


@dataclass(frozen=True)
class CapabilityLabel:
    """Which response of a pair is better in terms of one capability (phase 2's
    training signal): from a judge that survived the swap check, or by
    construction for synthetic data."""

    pair_id: str
    task: str
    capability: str
    chosen_better: bool  # the pair's human-chosen response is the better one in this capability
    judge: str = ""


@dataclass(frozen=True)
class ClassifierExample:
    """A prompt labelled with its task, for the router's classifier."""

    id: str
    text: str
    task: str
    scenario: str = ""
