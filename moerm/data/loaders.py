"""Loaders: the shared preference sets (hh-rlhf, Auto-J, PandaLM), a generic
JSONL format and Hugging Face datasets, all into :class:`PreferencePair`.

Every loader normalizes text with :func:`moerm.text.normalize`, gives each
record a stable id ``"<source>:<index>"`` (the index of the record in its
file, from 0) and raises ``ValueError`` naming ``file:line`` for input it
cannot read. No torch here.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from moerm.data.records import ClassifierExample, PreferencePair
from moerm.text import ROLES, Turn, normalize

log = logging.getLogger(__name__)

# The shared sets, relative to the shared data directory (see shared_data_dir).
HH_RLHF_FILE = "hh-rlhf/harmless-base-test.jsonl.gz"
AUTOJ_PAIRWISE_FILE = "auto-j/testdata_pairwise.jsonl"
AUTOJ_CLASSIFIER_TRAIN_FILE = "auto-j/scenario_classifier_train.jsonl"
AUTOJ_CLASSIFIER_TEST_FILE = "auto-j/scenario_classifier_test.jsonl"
AUTOJ_GROUPS_FILE = "auto-j/scenario_groups.json"
AUTOJ_CRITERIA_DIR = "auto-j/scenario_criteria"
PANDALM_FILE = "pandalm/testset-v1.json"
SHARED_FILES = (
    HH_RLHF_FILE,
    AUTOJ_PAIRWISE_FILE,
    AUTOJ_CLASSIFIER_TRAIN_FILE,
    AUTOJ_CLASSIFIER_TEST_FILE,
    AUTOJ_GROUPS_FILE,
    AUTOJ_CRITERIA_DIR,
    PANDALM_FILE,
)

# Auto-J classifier categories that name no task (an open-ended default and
# paper reviewing, which no task group covers).
AUTOJ_NO_TASK = ("default", "peer_review")


def shared_data_dir() -> Path | None:
    """Where the shared data lives: ``$MOERM_DATA_DIR`` when set, else
    ``<repo root>/../shared/data``; None when that is not a directory."""
    env = os.environ.get("MOERM_DATA_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        repo_root = Path(__file__).resolve().parent.parent.parent
        path = repo_root.parent / "shared" / "data"
    return path if path.is_dir() else None


def missing_shared_files(data_dir: Path | None) -> list[str]:
    """The shared files (relative paths) not found under ``data_dir``."""
    if data_dir is None:
        return list(SHARED_FILES)
    return [name for name in SHARED_FILES if not (Path(data_dir) / name).exists()]


class LoadedPairs(list):
    """A list of pairs plus ``skipped``: why rows were left out, with counts."""

    def __init__(self, pairs=(), skipped: Mapping[str, int] | None = None):
        super().__init__(pairs)
        self.skipped: dict[str, int] = dict(skipped or {})


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed object) for each non-blank line."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {error.msg}") from None


def _scalar_text(value: Any, where: str) -> str:
    """A text field; PandaLM stores some responses as JSON ``true``, so
    booleans and numbers become their Python text ("True", "3")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    raise ValueError(f"{where}: expected text, got {type(value).__name__}")


def _user(prompt: str) -> tuple[Turn, ...]:
    return (Turn("user", normalize(prompt)),)


# ---------------------------------------------------------------------------
# hh-rlhf


_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> tuple[Turn, ...]:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into turns (user / assistant).
    Raises ValueError when the text does not start with a turn marker."""
    parts = _HH_MARKER.split(text)
    if parts[0].strip():
        raise ValueError("text before the first Human:/Assistant: marker")
    if len(parts) < 3:
        raise ValueError("no Human:/Assistant: turns")
    return tuple(Turn(_HH_ROLES[parts[i]], normalize(parts[i + 1])) for i in range(1, len(parts), 2))


def split_hh_pair(chosen: str, rejected: str) -> tuple[tuple[Turn, ...], str, str]:
    """The conversation both transcripts share and the two final assistant
    responses. The shared part ends at the last ``"\\n\\nAssistant:"`` of the
    longest common prefix, so a response that itself contains turn markers
    (a model that kept writing the dialogue) stays whole.
    Raises ValueError when the two do not share a conversation."""
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical")
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise ValueError("the two transcripts share no conversation")
    turns = parse_hh_transcript(chosen[:cut])
    if turns[0].role != "user":
        raise ValueError("the shared conversation does not start with a Human turn")
    start = cut + len(_HH_ASSISTANT)
    return turns, normalize(chosen[start:]), normalize(rejected[start:])


def load_hh_rlhf(path: str | Path, source: str = "hh-rlhf") -> LoadedPairs:
    """Anthropic hh-rlhf (gzipped or plain JSONL of ``{chosen, rejected}``
    transcripts). task="harmlessness". Rows that are malformed or whose two
    transcripts share no conversation are skipped and counted in
    ``result.skipped``. Responses may be empty (a labeller preferred saying
    nothing to a harmful answer): such pairs are kept."""
    path = Path(path)
    pairs: list[PreferencePair] = []
    skipped: Counter[str] = Counter()
    index = -1
    for lineno, row in _read_jsonl(path):
        index += 1
        if not (isinstance(row, dict) and isinstance(row.get("chosen"), str)) or not isinstance(
            row.get("rejected"), str
        ):
            skipped["malformed"] += 1
            log.warning("%s:%d: skipped: not {chosen: str, rejected: str}", path, lineno)
            continue
        try:
            turns, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
        except ValueError as error:
            skipped["no shared conversation"] += 1
            log.warning("%s:%d: skipped: %s", path, lineno, error)
            continue
        pairs.append(
            PreferencePair(
                id=f"{source}:{index}",
                source=source,
                task="harmlessness",
                turns=turns,
                chosen=chosen,
                rejected=rejected,
            )
        )
    return LoadedPairs(pairs, skipped)


# ---------------------------------------------------------------------------
# Auto-J


def load_autoj_pairwise(
    path: str | Path, scenario_to_task: Mapping[str, str], source: str = "autoj"
) -> LoadedPairs:
    """Auto-J ``testdata_pairwise.jsonl``: ``{scenario, label, prompt,
    "response 1", "response 2"}``; label 0: response 1 better, 1: response 2
    better, 2: tie (``tie=True``, chosen = response 1). The task comes from the
    scenario (see :func:`moerm.data.tasks.scenario_to_task`)."""
    path = Path(path)
    pairs: list[PreferencePair] = []
    for index, (lineno, row) in enumerate(_read_jsonl(path)):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object")
        missing = [k for k in ("scenario", "label", "prompt", "response 1", "response 2") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        scenario, label = row["scenario"], row["label"]
        if scenario not in scenario_to_task:
            raise ValueError(f"{where}: scenario {scenario!r} is in no task group")
        if label not in (0, 1, 2) or isinstance(label, bool):
            raise ValueError(f"{where}: label must be 0, 1 or 2, got {label!r}")
        first, second = normalize(row["response 1"]), normalize(row["response 2"])
        chosen, rejected = (second, first) if label == 1 else (first, second)
        pairs.append(
            PreferencePair(
                id=f"{source}:{index}",
                source=source,
                task=scenario_to_task[scenario],
                turns=_user(row["prompt"]),
                chosen=chosen,
                rejected=rejected,
                tie=label == 2,
                scenario=scenario,
            )
        )
    return LoadedPairs(pairs)


def load_autoj_classifier(
    path: str | Path, scenario_to_task: Mapping[str, str], source: str | None = None
) -> tuple[list[ClassifierExample], dict[str, int]]:
    """Auto-J ``scenario_classifier_{train,test}.jsonl`` (``{category,
    instruction, input}``) as task-labelled prompts; text = instruction, plus
    ``"\\n\\n" + input`` when there is one. Categories without a task
    (``default``, ``peer_review`` and any other scenario outside the mapping)
    are dropped; returns (examples, {category: number dropped}).
    Ids are ``"<source>:<index>"``, source defaulting to the file's stem."""
    path = Path(path)
    source = source or path.name.split(".")[0]
    examples: list[ClassifierExample] = []
    dropped: Counter[str] = Counter()
    for index, (lineno, row) in enumerate(_read_jsonl(path)):
        if not (isinstance(row, dict) and isinstance(row.get("category"), str)) or not isinstance(
            row.get("instruction"), str
        ):
            raise ValueError(f"{path}:{lineno}: expected {{category: str, instruction: str, input?: str}}")
        category = row["category"]
        task = scenario_to_task.get(category)
        if task is None:
            dropped[category] += 1
            continue
        text = row["instruction"]
        if row.get("input"):
            text = f"{text}\n\n{row['input']}"
        examples.append(ClassifierExample(f"{source}:{index}", normalize(text), task, category))
    return examples, dict(sorted(dropped.items()))


# ---------------------------------------------------------------------------
# PandaLM


def majority_vote(votes) -> int:
    """The label at least two of three annotators gave (0 tie, 1, 2); 0 when
    there is no majority."""
    label, n = Counter(votes).most_common(1)[0]
    return label if n * 2 > len(votes) else 0


def load_pandalm(path: str | Path, source: str = "pandalm") -> LoadedPairs:
    """PandaLM ``testset-v1.json`` (a JSON list). prompt = instruction, plus
    ``"\\n\\n" + input`` when there is one; the majority of annotator1..3
    (0 tie, 1: response1 better, 2: response2 better) decides, no majority or
    a majority tie gives ``tie=True``. task="" (PandaLM does not say; the
    router decides); scenario = motivation_app. A few responses are JSON
    ``true`` in the file; they become the text "True"."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of items")
    pairs: list[PreferencePair] = []
    for index, row in enumerate(rows):
        where = f"{path}: item {index}"
        keys = ("instruction", "response1", "response2", "annotator1", "annotator2", "annotator3")
        if not isinstance(row, dict) or any(k not in row for k in keys):
            raise ValueError(f"{where}: expected {{{', '.join(keys)}, input?, motivation_app?}}")
        votes = [row[f"annotator{i}"] for i in (1, 2, 3)]
        if any(v not in (0, 1, 2) or isinstance(v, bool) for v in votes):
            raise ValueError(f"{where}: annotator labels must be 0, 1 or 2, got {votes}")
        label = majority_vote(votes)
        prompt = _scalar_text(row["instruction"], where)
        if row.get("input"):
            prompt = f"{prompt}\n\n{_scalar_text(row['input'], where)}"
        first = normalize(_scalar_text(row["response1"], where))
        second = normalize(_scalar_text(row["response2"], where))
        chosen, rejected = (second, first) if label == 2 else (first, second)
        pairs.append(
            PreferencePair(
                id=f"{source}:{index}",
                source=source,
                task="",
                turns=_user(prompt),
                chosen=chosen,
                rejected=rejected,
                tie=label == 0,
                scenario=str(row.get("motivation_app") or ""),
            )
        )
    return LoadedPairs(pairs)


# ---------------------------------------------------------------------------
# Generic JSONL


def _conversation(row: dict, where: str) -> tuple[Turn, ...]:
    if ("prompt" in row) == ("messages" in row):
        raise ValueError(f"{where}: needs exactly one of 'prompt' or 'messages'")
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        return _user(row["prompt"])
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: messages[{i}] must be {{role, content: str}}")
        if message.get("role") not in ROLES:
            raise ValueError(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}")
        turns.append(Turn(message["role"], normalize(message["content"])))
    return tuple(turns)


def _string(row: dict, key: str, where: str, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} must be a string")
    return value


def load_jsonl(path: str | Path, source: str = "jsonl") -> LoadedPairs:
    """One object per line, either a pair::

        {"prompt": str | "messages": [{role, content}], "chosen": str, "rejected": str,
         "task"?: str, "id"?: str, "tie"?: bool, "scenario"?: str}

    or a ranked list, expanded into every ranked pair (i before j)::

        {"prompt" | "messages", "responses": [best, ..., worst], "task"?, "id"?, "scenario"?}

    Ids: ``"<source>:<id or record index>"``, ranked pairs
    ``"<source>:<id or record index>:<i>-<j>"``. Bad lines raise ValueError
    naming ``file:line`` and the problem."""
    path = Path(path)
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for index, (lineno, row) in enumerate(_read_jsonl(path)):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object")
        turns = _conversation(row, where)
        task = _string(row, "task", where, optional=True)
        scenario = _string(row, "scenario", where, optional=True)
        given = row.get("id")
        if given is not None and (isinstance(given, bool) or not isinstance(given, str | int)):
            raise ValueError(f"{where}: 'id' must be a string or an integer")
        base = f"{source}:{index if given is None else given}"
        if base in seen:
            raise ValueError(f"{where}: duplicate id {base!r} (first on line {seen[base]})")
        seen[base] = lineno
        has_pair = "chosen" in row or "rejected" in row
        if has_pair == ("responses" in row):
            raise ValueError(f"{where}: needs either 'chosen' and 'rejected' or 'responses'")
        if has_pair:
            tie = row.get("tie", False)
            if not isinstance(tie, bool):
                raise ValueError(f"{where}: 'tie' must be true or false")
            chosen = _string(row, "chosen", where)
            rejected = _string(row, "rejected", where)
            pairs.append(
                PreferencePair(
                    base, source, task, turns, normalize(chosen), normalize(rejected), tie, scenario
                )
            )
            continue
        responses = row["responses"]
        if (
            not isinstance(responses, list)
            or len(responses) < 2
            or not all(isinstance(r, str) for r in responses)
        ):
            raise ValueError(f"{where}: 'responses' must be a list of at least 2 strings, best first")
        ranked = [normalize(r) for r in responses]
        for i in range(len(ranked)):
            for j in range(i + 1, len(ranked)):
                pairs.append(
                    PreferencePair(
                        f"{base}:{i}-{j}", source, task, turns, ranked[i], ranked[j], False, scenario
                    )
                )
    return LoadedPairs(pairs)


# ---------------------------------------------------------------------------
# Hugging Face datasets


def _hf_conversation(value: Any) -> tuple[Turn, ...]:
    if isinstance(value, str):
        return _user(value)
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return tuple(Turn(str(m.get("role", "user")), normalize(str(m.get("content", "")))) for m in value)
    raise ValueError(f"unsupported prompt value of type {type(value).__name__}")


def _hf_response(value: Any) -> str:
    if isinstance(value, str):
        return normalize(value)
    # Chat-format datasets store the whole conversation; the response is its last message.
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return normalize(str(value[-1].get("content", "")))
    raise ValueError(f"unsupported response value of type {type(value).__name__}")


def load_hf_dataset(
    name: str,
    split: str,
    prompt_field: str,
    chosen_field: str,
    rejected_field: str,
    task: str = "",
) -> LoadedPairs:
    """A preference dataset through the ``datasets`` package (not a moerm
    dependency: ``pip install datasets``). The prompt field may hold a string
    or a list of ``{role, content}`` messages; the response fields a string or
    a message list whose last message is the response. Ids:
    ``"hf:<name>:<split>:<index>"``."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "load_hf_dataset needs the 'datasets' package, which moerm does not install: "
            "pip install datasets (or convert the data to JSONL and use load_jsonl)"
        ) from None
    source = f"hf:{name}"
    rows = datasets.load_dataset(name, split=split)
    pairs: list[PreferencePair] = []
    for index, row in enumerate(rows):
        try:
            turns = _hf_conversation(row[prompt_field])
            chosen, rejected = _hf_response(row[chosen_field]), _hf_response(row[rejected_field])
        except (KeyError, ValueError) as error:
            raise ValueError(f"{name} [{split}] row {index}: {error}") from None
        pairs.append(PreferencePair(f"{source}:{split}:{index}", source, task, turns, chosen, rejected))
    return LoadedPairs(pairs)
