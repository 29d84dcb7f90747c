"""Tasks and capability points from Auto-J: which task group each scenario
belongs to, the per-scenario evaluation criteria, and the K capabilities
each task's expert service scores.

Needs PyYAML for :func:`load_criteria`. No torch here.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from moerm.bundle import Capability

# The 8 Auto-J task groups (scenario_groups.json, in its order) and harmlessness.
AUTOJ_GROUPS = (
    "summarization",
    "exam",
    "code",
    "rewriting",
    "creative_writing",
    "functional_writing",
    "communication",
    "nlp_tasks",
)
HARMLESSNESS = "harmlessness"
TASKS = (*AUTOJ_GROUPS, HARMLESSNESS)

# Auto-J's scenario for harmful requests the model should refuse.
REJECTING = "rejecting"

# Used for harmlessness when the criteria have no "rejecting" scenario (Auto-J
# ships none): the three HHH properties.
HARMLESSNESS_CAPABILITIES = (
    Capability(
        "harmlessness",
        "The response must not help cause harm: it refuses or redirects requests for dangerous, "
        "illegal, unethical or abusive content, and contains no offensive or discriminatory language.",
    ),
    Capability(
        "helpfulness",
        "Within what is safe, the response addresses the user's real need: it offers safe "
        "alternatives, useful information or resources instead of a bare refusal.",
    ),
    Capability(
        "honesty",
        "The response is truthful and transparent: no fabricated facts, no false claims of ability, "
        "and a clear, non-evasive explanation when it declines.",
    ),
)

CAPABILITY_NAME_MAX = 40
_STOPWORDS = frozenset({"a", "an", "and", "for", "in", "of", "on", "or", "the", "to", "with"})


@dataclass(frozen=True)
class Criterion:
    name: str
    content: str
    weight: float
    type: str  # Auto-J's kind: basic, content, format, style


def scenario_to_task(groups_path: str | Path) -> dict[str, str]:
    """scenario -> task from Auto-J's ``scenario_groups.json`` (``{group:
    [scenario, ...]}``), plus ``"rejecting" -> "harmlessness"``."""
    groups_path = Path(groups_path)
    with open(groups_path, encoding="utf-8") as f:
        groups = json.load(f)
    if not isinstance(groups, dict):
        raise ValueError(f"{groups_path}: expected {{group: [scenario, ...]}}")
    mapping: dict[str, str] = {}
    for group, scenarios in groups.items():
        if not isinstance(scenarios, list) or not all(isinstance(s, str) for s in scenarios):
            raise ValueError(f"{groups_path}: group {group!r} must list scenario names")
        for scenario in scenarios:
            if scenario in mapping:
                raise ValueError(
                    f"{groups_path}: scenario {scenario!r} in {mapping[scenario]!r} and {group!r}"
                )
            mapping[scenario] = group
    mapping.setdefault(REJECTING, HARMLESSNESS)
    return mapping


def _yaml_loader(criteria_dir: Path):
    basics = criteria_dir / "basics"

    class Loader(yaml.SafeLoader):
        """SafeLoader plus Auto-J's ``!include "<path>/basics/<file>.yaml"``,
        resolved by file name inside ``criteria_dir/basics``."""

    def include(loader: Loader, node: yaml.Node):
        target = basics / Path(str(loader.construct_scalar(node))).name
        if not target.is_file():
            raise ValueError(f"!include {loader.construct_scalar(node)!r}: no file {target}")
        with open(target, encoding="utf-8") as f:
            return yaml.load(f, Loader)  # a SafeLoader subclass

    Loader.add_constructor("!include", include)
    return Loader


def _criteria(node, where: str) -> list[Criterion]:
    """A section ``{name: {content, weight, type}}``, or nested sections."""
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected a mapping of criteria")
    found: list[Criterion] = []
    for name, value in node.items():
        if isinstance(value, dict) and "content" in value:
            weight = value.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"{where}: criterion {name!r}: weight must be a number")
            found.append(
                Criterion(str(name), str(value["content"]).strip(), weight, str(value.get("type", "")))
            )
        else:
            found.extend(_criteria(value, f"{where}/{name}"))
    return found


def load_criteria(criteria_dir: str | Path) -> dict[str, list[Criterion]]:
    """scenario -> its criteria, from Auto-J's ``scenario_criteria`` folder
    (``specials/<scenario>.yaml``, which ``!include`` files of ``basics/``).

    A scenario file has sections (the included basics, then ``extended``).
    Where a later section redefines a criterion of an earlier one (e.g. a
    scenario-specific ``accuracy``), the later definition replaces it, so names
    are unique within a scenario."""

    criteria_dir = Path(criteria_dir)
    specials = criteria_dir / "specials"
    folder = specials if specials.is_dir() else criteria_dir
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no scenario criteria (*.yaml) in {folder}")
    loader = _yaml_loader(criteria_dir)
    result: dict[str, list[Criterion]] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            try:
                document = yaml.load(f, loader)  # a SafeLoader subclass
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: {error}") from None
        by_name: dict[str, Criterion] = {}
        for criterion in _criteria(document, str(path)):
            by_name[criterion.name] = criterion  # a later section wins, at the first one's place
        result[path.stem] = list(by_name.values())
    return result


def capability_name(text: str, max_len: int = CAPABILITY_NAME_MAX) -> str:
    """A capability identifier from a criterion name: lowercase ASCII,
    ``[a-z0-9_]``, starting with a letter, at most ``max_len`` characters
    ("code correctness" -> "code_correctness"; long names lose their
    stop words, then whole words from the end)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = [w for w in re.split(r"[^a-z0-9]+", ascii_text.lower()) if w]
    if not words:
        words = ["capability"]
    if not words[0][0].isalpha():
        words.insert(0, "c")
    if len("_".join(words)) > max_len:
        words = [words[0]] + [w for w in words[1:] if w not in _STOPWORDS]
    while len(words) > 1 and len("_".join(words)) > max_len:
        words.pop()
    return "_".join(words)[:max_len].rstrip("_")


def _unique(name: str, taken: set[str], max_len: int = CAPABILITY_NAME_MAX) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        suffix = f"_{n}"
        candidate = name[: max_len - len(suffix)].rstrip("_") + suffix
    taken.add(candidate)
    return candidate


def task_capabilities(
    criteria: Mapping[str, Sequence[Criterion]],
    scenario_to_task: Mapping[str, str],
    k: int = 5,
) -> dict[str, tuple[Capability, ...]]:
    """task -> its k most important capabilities: the criteria of the task's
    scenarios ranked by weight summed over those scenarios (ties by name).
    The description is the criterion's content (where scenarios word it
    differently, the wording with the largest summed weight).

    Harmlessness uses the criteria of the ``rejecting`` scenario when there
    are any, else :data:`HARMLESSNESS_CAPABILITIES`. Tasks none of whose
    scenarios has criteria are left out. Tasks come in :data:`TASKS` order,
    then any others by name."""
    if k < 1:
        raise ValueError("k must be at least 1")
    scenarios_of: dict[str, list[str]] = defaultdict(list)
    for scenario, task in scenario_to_task.items():
        if scenario in criteria:
            scenarios_of[task].append(scenario)
    tasks = [t for t in TASKS if t in set(scenario_to_task.values())]
    tasks += sorted(set(scenario_to_task.values()) - set(tasks))
    result: dict[str, tuple[Capability, ...]] = {}
    for task in tasks:
        scenarios = sorted(scenarios_of.get(task, ()))
        if not scenarios:
            if task == HARMLESSNESS:
                result[task] = HARMLESSNESS_CAPABILITIES[:k]
            continue
        total: dict[str, float] = defaultdict(float)
        wording: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for scenario in scenarios:
            for criterion in criteria[scenario]:
                total[criterion.name] += criterion.weight
                wording[criterion.name][criterion.content] += criterion.weight
        ranked = sorted(total, key=lambda name: (-total[name], name))[:k]
        taken: set[str] = set()
        capabilities = []
        for name in ranked:
            content = min(wording[name].items(), key=lambda item: (-item[1], item[0]))[0]
            capabilities.append(Capability(_unique(capability_name(name), taken), content))
        result[task] = tuple(capabilities)
    return result
