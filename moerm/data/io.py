"""JSON lines for preference pairs and the capability lists of tasks, as the
``label`` command reads them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moerm.bundle import Capability
from moerm.data.records import PreferencePair
from moerm.text import ROLES, Turn, normalize


def pair_to_json(pair: PreferencePair) -> dict[str, Any]:
    return {
        "id": pair.id,
        "source": pair.source,
        "task": pair.task,
        "turns": [{"role": turn.role, "content": turn.content} for turn in pair.turns],
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "tie": pair.tie,
        "scenario": pair.scenario,
    }


def pair_from_json(raw: Mapping[str, Any]) -> PreferencePair:
    """A pair from :func:`pair_to_json`'s form. ``turns`` may also be given as
    ``messages`` ([{role, content}]) or as a ``prompt`` string (one user
    turn); turn texts are normalized (:func:`moerm.text.normalize`)."""
    if "turns" in raw or "messages" in raw:
        raw_turns = raw["turns"] if "turns" in raw else raw["messages"]
        if not isinstance(raw_turns, list):
            raise ValueError("turns must be a list of {role, content}")
        turns = []
        for index, turn in enumerate(raw_turns):
            if not isinstance(turn, Mapping) or turn.get("role") not in ROLES:
                raise ValueError(f"turns[{index}] needs a role in {ROLES}")
            if not isinstance(turn.get("content"), str):
                raise ValueError(f"turns[{index}].content must be a string")
            turns.append(Turn(turn["role"], normalize(turn["content"])))
    elif isinstance(raw.get("prompt"), str):
        turns = [Turn("user", normalize(raw["prompt"]))]
    else:
        raise ValueError("a pair needs turns, messages or prompt")
    for name in ("id", "chosen", "rejected"):
        if not isinstance(raw.get(name), str):
            raise ValueError(f"{name} must be a string")
    return PreferencePair(
        id=raw["id"],
        source=str(raw.get("source", "jsonl")),
        task=str(raw.get("task", "")),
        turns=tuple(turns),
        chosen=raw["chosen"],
        rejected=raw["rejected"],
        tie=bool(raw.get("tie", False)),
        scenario=str(raw.get("scenario", "")),
    )


def write_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair_to_json(pair), ensure_ascii=False) + "\n")


def read_pairs(path: str | Path) -> list[PreferencePair]:
    pairs = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                pairs.append(pair_from_json(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a preference pair ({error})") from None
    return pairs


def capabilities_from_json(raw: Any) -> dict[str, tuple[Capability, ...]]:
    """``{task: [{name, description}, ...]}`` (a bare string is a name)."""
    if not isinstance(raw, Mapping):
        raise ValueError("capabilities must map each task to a list of {name, description}")
    result = {}
    for task, caps in raw.items():
        if not isinstance(caps, list):
            raise ValueError(f"task {task!r}: capabilities must be a list")
        parsed = []
        for cap in caps:
            if isinstance(cap, str):
                parsed.append(Capability(cap))
            elif isinstance(cap, Mapping) and isinstance(cap.get("name"), str):
                parsed.append(Capability(cap["name"], str(cap.get("description", ""))))
            else:
                raise ValueError(f"task {task!r}: each capability needs a name")
        result[str(task)] = tuple(parsed)
    return result


def capabilities_to_json(capabilities: Mapping[str, Sequence[Capability]]) -> dict[str, list[dict[str, str]]]:
    return {
        task: [{"name": cap.name, "description": cap.description} for cap in caps]
        for task, caps in capabilities.items()
    }


def read_capabilities(path: str | Path) -> dict[str, tuple[Capability, ...]]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return capabilities_from_json(raw)
    except (json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
