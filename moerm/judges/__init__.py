"""Capability labels for DMoERM's phase 2: pairwise judges (an OpenAI-compatible
endpoint, a local SmolLM2 server, programmatic rules) and the swap-consistency
filter. See docs/judges.md."""

from moerm.judges.base import (
    CapabilityLabel,
    CapabilityStats,
    Judge,
    LabelStats,
    Verdict,
    label_pairs,
    load_labels,
    save_labels,
)

__all__ = [
    "CapabilityLabel",
    "CapabilityStats",
    "Judge",
    "LabelStats",
    "Verdict",
    "label_pairs",
    "load_labels",
    "save_labels",
]
