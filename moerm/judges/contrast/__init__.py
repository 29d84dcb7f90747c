"""Capability-contrast pairs: labels that need no judge, right by construction.

A real response (chosen) against the same response after one controlled edit
(rejected) that makes it worse in one capability and, as far as the edit can
ensure, leaves the others as they were. :mod:`.families` lists the edit
families and the capabilities they label; :mod:`.build` makes the pairs, their
labels and statistics, and keeps each split's pairs apart. See docs/judges.md.
"""

from moerm.judges.contrast.build import (
    ContrastPair,
    ContrastStats,
    build_contrast_pairs,
    by_capability,
    contrast_labels,
    heldout_contrast_pairs,
    pairs_path,
    read_contrast_pairs,
    split_contrast_pairs,
    split_of,
    write_contrast_pairs,
)
from moerm.judges.contrast.families import (
    FAMILIES,
    FAMILY_NAMES,
    EditFamily,
    capability_map,
    family,
    unreached,
)

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "ContrastPair",
    "ContrastStats",
    "EditFamily",
    "build_contrast_pairs",
    "by_capability",
    "capability_map",
    "contrast_labels",
    "family",
    "heldout_contrast_pairs",
    "pairs_path",
    "read_contrast_pairs",
    "split_contrast_pairs",
    "split_of",
    "unreached",
    "write_contrast_pairs",
]
