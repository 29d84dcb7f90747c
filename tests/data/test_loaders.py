"""Loaders: the shared sets (counts as their README gives them), hand-written
hh-rlhf transcripts, the generic JSONL format and its errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from moerm.data import loaders
from moerm.data.loaders import (
    load_autoj_classifier,
    load_autoj_pairwise,
    load_hf_dataset,
    load_hh_rlhf,
    load_jsonl,
    load_pandalm,
    majority_vote,
    parse_hh_transcript,
    shared_data_dir,
    split_hh_pair,
)
from moerm.data.tasks import scenario_to_task
from moerm.text import Turn, normalize

AUTOJ_NON_TIE = {
    "communication": 203,
    "nlp_tasks": 195,
    "functional_writing": 184,
    "creative_writing": 162,
    "rewriting": 88,
    "code": 84,
    "summarization": 61,
    "exam": 42,
}


def _write_jsonl(path: Path, rows, gz: bool = False) -> Path:
    text = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# shared_data_dir


def test_shared_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MOERM_DATA_DIR", str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert loaders.missing_shared_files(tmp_path) == list(loaders.SHARED_FILES)
    monkeypatch.setenv("MOERM_DATA_DIR", str(tmp_path / "absent"))
    assert shared_data_dir() is None


def test_shared_data_dir_default_is_next_to_the_repo(monkeypatch):
    monkeypatch.delenv("MOERM_DATA_DIR", raising=False)
    expected = Path(loaders.__file__).resolve().parents[2].parent / "shared" / "data"
    assert shared_data_dir() == (expected if expected.is_dir() else None)


@pytest.mark.skipif(os.environ.get("MOERM_DATA_TESTS_NESTED") == "1", reason="already nested")
def test_data_tests_skip_cleanly_without_shared_data(tmp_path):
    """The whole tests/data suite with $MOERM_DATA_DIR on an empty folder:
    nothing fails, the tests that need the data are skipped."""
    env = {**os.environ, "MOERM_DATA_DIR": str(tmp_path), "MOERM_DATA_TESTS_NESTED": "1"}
    tests_dir = Path(__file__).resolve().parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(tests_dir), "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=tests_dir.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "skipped" in result.stdout
    assert "lacks hh-rlhf/harmless-base-test.jsonl.gz" in result.stdout
    assert " failed" not in result.stdout and " error" not in result.stdout


# ---------------------------------------------------------------------------
# hh-rlhf


def test_hh_transcript_parsing():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman:  How do I pick a lock?  "
    assert parse_hh_transcript(text) == (
        Turn("user", "Hi there"),
        Turn("assistant", "Hello!"),
        Turn("user", "How do I pick a lock?"),
    )
    with pytest.raises(ValueError):
        parse_hh_transcript("preamble\n\nHuman: hi")

    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant:"
    turns, chosen, rejected = split_hh_pair(prefix + " I can't help with that.", prefix + " Sure: first, ...")
    assert turns == parse_hh_transcript(text)
    assert (chosen, rejected) == ("I can't help with that.", "Sure: first, ...")


def test_hh_response_with_turn_markers_stays_whole():
    prefix = "\n\nHuman: Tell me a joke\n\nAssistant:"
    chosen = prefix + " Why did the chicken cross the road?\n\nHuman: why?\n\nAssistant: To get across."
    rejected = prefix + " No."
    turns, good, bad = split_hh_pair(chosen, rejected)
    assert turns == (Turn("user", "Tell me a joke"),)
    assert good == "Why did the chicken cross the road?\n\nHuman: why?\n\nAssistant: To get across."
    assert bad == "No."


def test_hh_rlhf_skips_and_counts_bad_rows(tmp_path):
    prefix = "\n\nHuman: What is the capital of France?\n\nAssistant:"
    path = _write_jsonl(
        tmp_path / "hh.jsonl.gz",
        [
            {"chosen": prefix + " Paris.", "rejected": prefix + " Lyon."},
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: b"},
            {"chosen": prefix + " Paris."},
            {"chosen": prefix + " Same.", "rejected": prefix + " Same."},
            {"chosen": prefix + " ", "rejected": prefix + " How to make a bomb: ..."},
        ],
        gz=True,
    )
    pairs = load_hh_rlhf(path)
    assert [p.id for p in pairs] == ["hh-rlhf:0", "hh-rlhf:4"]
    assert pairs.skipped == {"no shared conversation": 2, "malformed": 1}
    first = pairs[0]
    assert (first.task, first.source, first.tie) == ("harmlessness", "hh-rlhf", False)
    assert first.turns == (Turn("user", "What is the capital of France?"),)
    assert (first.chosen, first.rejected) == ("Paris.", "Lyon.")
    assert pairs[1].chosen == ""  # an empty answer preferred to a harmful one is kept


def test_hh_rlhf_shared(shared_dir):
    pairs = load_hh_rlhf(shared_dir / loaders.HH_RLHF_FILE)
    assert len(pairs) == 2312  # README
    assert pairs.skipped == {}
    assert [p.id for p in pairs] == [f"hh-rlhf:{i}" for i in range(2312)]
    assert {p.task for p in pairs} == {"harmlessness"}
    assert all(p.turns and p.turns[0].role == "user" for p in pairs)
    assert all(p.chosen != p.rejected for p in pairs)
    assert not any(p.tie for p in pairs)


# ---------------------------------------------------------------------------
# Auto-J


@pytest.fixture(scope="module")
def mapping(shared_dir):
    return scenario_to_task(shared_dir / loaders.AUTOJ_GROUPS_FILE)


def test_autoj_pairwise_shared(shared_dir, mapping):
    pairs = load_autoj_pairwise(shared_dir / loaders.AUTOJ_PAIRWISE_FILE, mapping)
    assert len(pairs) == 1392
    assert sum(p.tie for p in pairs) == 373
    assert dict(Counter(p.task for p in pairs if not p.tie)) == AUTOJ_NON_TIE
    scenarios = Counter(p.scenario for p in pairs)
    assert len(scenarios) == 58 and set(scenarios.values()) == {24}
    assert all(p.source == "autoj" and len(p.turns) == 1 and p.turns[0].role == "user" for p in pairs)
    assert len({p.id for p in pairs}) == 1392


def test_autoj_direction(shared_dir, mapping):
    """label 0: response 1 chosen; 1: response 2 chosen; 2: tie in file order."""
    path = shared_dir / loaders.AUTOJ_PAIRWISE_FILE
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    pairs = load_autoj_pairwise(path, mapping)
    for label in (0, 1, 2):
        index = next(i for i, row in enumerate(rows) if row["label"] == label)
        row, pair = rows[index], pairs[index]
        assert pair.id == f"autoj:{index}"
        first, second = normalize(row["response 1"]), normalize(row["response 2"])
        expected = (second, first) if label == 1 else (first, second)
        assert (pair.chosen, pair.rejected) == expected
        assert pair.tie == (label == 2)
        assert pair.turns == (Turn("user", normalize(row["prompt"])),)
        assert pair.scenario == row["scenario"] and pair.task == mapping[row["scenario"]]


def test_autoj_pairwise_hand_written(tmp_path):
    mapping = {"code_generation": "code"}
    row = {"scenario": "code_generation", "prompt": " p\r\n", "response 1": "one", "response 2": "two"}
    path = _write_jsonl(tmp_path / "p.jsonl", [{**row, "label": 1}, {**row, "label": 2}])
    pairs = load_autoj_pairwise(path, mapping)
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].tie) == ("two", "one", False)
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].tie) == ("one", "two", True)
    assert pairs[0].turns == (Turn("user", "p"),)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{**row, "label": 1}, {**row, "label": 3}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: label"):
        load_autoj_pairwise(bad, mapping)
    unknown = _write_jsonl(tmp_path / "unknown.jsonl", [{**row, "label": 0, "scenario": "x"}])
    with pytest.raises(ValueError, match=r"unknown\.jsonl:1: scenario 'x'"):
        load_autoj_pairwise(unknown, mapping)


def test_autoj_classifier_shared(shared_dir, mapping):
    train, dropped_train = load_autoj_classifier(shared_dir / loaders.AUTOJ_CLASSIFIER_TRAIN_FILE, mapping)
    test, dropped_test = load_autoj_classifier(shared_dir / loaders.AUTOJ_CLASSIFIER_TEST_FILE, mapping)
    assert dropped_train == {"default": 317, "peer_review": 7}
    assert dropped_test == {"default": 79, "peer_review": 2}
    assert len(train) + sum(dropped_train.values()) == 2383  # README
    assert len(test) + sum(dropped_test.values()) == 623
    assert Counter(e.task for e in train)["harmlessness"] == 45  # the "rejecting" queries
    assert all(e.task == mapping[e.scenario] for e in [*train, *test])
    assert train[0].id.startswith("scenario_classifier_train:")


def test_autoj_classifier_joins_input(tmp_path):
    path = _write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"category": "default", "instruction": "hi", "input": ""},
            {"category": "text_correction", "instruction": "Fix this:", "input": "teh cat"},
            {"category": "peer_review", "instruction": "review"},
        ],
    )
    examples, dropped = load_autoj_classifier(path, {"text_correction": "rewriting"}, source="cls")
    assert dropped == {"default": 1, "peer_review": 1}
    assert [(e.id, e.text, e.task, e.scenario) for e in examples] == [
        ("cls:1", "Fix this:\n\nteh cat", "rewriting", "text_correction")
    ]


# ---------------------------------------------------------------------------
# PandaLM


def test_majority_vote():
    assert majority_vote([1, 1, 2]) == 1
    assert majority_vote([2, 0, 2]) == 2
    assert majority_vote([0, 0, 1]) == 0
    assert majority_vote([0, 1, 2]) == 0  # no majority: tie


def test_pandalm_shared(shared_dir):
    path = shared_dir / loaders.PANDALM_FILE
    rows = json.loads(path.read_text(encoding="utf-8"))
    pairs = load_pandalm(path)
    assert len(pairs) == 999
    labels = [majority_vote([r["annotator1"], r["annotator2"], r["annotator3"]]) for r in rows]
    # README: "majority: 422 / 472 / 105 ties" (response 1 better / response 2 better / tie)
    assert Counter(labels) == {1: 422, 2: 472, 0: 105}
    assert sum(p.tie for p in pairs) == 105
    for label, row, pair in zip(labels, rows, pairs, strict=True):
        first, second = normalize(str(row["response1"])), normalize(str(row["response2"]))
        assert (pair.chosen, pair.rejected) == ((second, first) if label == 2 else (first, second))
    assert {p.task for p in pairs} == {""}
    assert len({p.scenario for p in pairs}) == 50


def test_pandalm_hand_written(tmp_path):
    base = {"instruction": "Add.", "response1": "a", "response2": "b", "motivation_app": "Calc"}
    rows = [
        {**base, "input": "1+1", "annotator1": 2, "annotator2": 2, "annotator3": 1},
        {**base, "input": "", "annotator1": 0, "annotator2": 1, "annotator3": 2},
        {**base, "response1": True, "annotator1": 0, "annotator2": 0, "annotator3": 1},
    ]
    path = tmp_path / "panda.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    pairs = load_pandalm(path)
    assert pairs[0].turns == (Turn("user", "Add.\n\n1+1"),)
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].tie) == ("b", "a", False)
    assert pairs[1].turns == (Turn("user", "Add."),)
    assert (pairs[1].chosen, pairs[1].tie) == ("a", True)  # no majority
    assert (pairs[2].chosen, pairs[2].tie) == ("True", True)  # majority tie; JSON true as text
    assert (pairs[0].id, pairs[0].task, pairs[0].scenario) == ("pandalm:0", "", "Calc")


# ---------------------------------------------------------------------------
# Generic JSONL


def test_jsonl_pairs_and_ranked_lists(tmp_path):
    path = _write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {
                "prompt": "Write a haiku.",
                "chosen": "Leaves fall",
                "rejected": "No.",
                "task": "creative_writing",
            },
            "",
            {
                "id": "conv",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "2+2?"},
                ],
                "chosen": "4",
                "rejected": "5",
                "tie": False,
            },
            {"prompt": "Rank these", "responses": ["best", "middle", "worst"], "task": "exam"},
        ],
    )
    pairs = load_jsonl(path, source="mine")
    assert [p.id for p in pairs] == ["mine:0", "mine:conv", "mine:2:0-1", "mine:2:0-2", "mine:2:1-2"]
    assert pairs[0].turns == (Turn("user", "Write a haiku."),)
    assert (pairs[0].task, pairs[0].source) == ("creative_writing", "mine")
    assert pairs[1].turns == (Turn("system", "Be brief."), Turn("user", "2+2?"))
    assert (pairs[1].task, pairs[1].chosen, pairs[1].rejected) == ("", "4", "5")
    assert [(p.chosen, p.rejected) for p in pairs[2:]] == [
        ("best", "middle"),
        ("best", "worst"),
        ("middle", "worst"),
    ]
    assert {p.task for p in pairs[2:]} == {"exam"}


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"chosen": "a", "rejected": "b"}), "exactly one of 'prompt' or 'messages'"),
        (json.dumps({**GOOD, "messages": []}), "exactly one of 'prompt' or 'messages'"),
        (json.dumps({"messages": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}), "role"),
        (json.dumps({"prompt": "p", "chosen": "a"}), "'rejected' must be a string"),
        (json.dumps({"prompt": "p", "chosen": 1, "rejected": "b"}), "'chosen' must be a string"),
        (json.dumps({"prompt": "p", "responses": ["only one"]}), "at least 2 strings"),
        (json.dumps({**GOOD, "responses": ["a", "b"]}), "either 'chosen' and 'rejected' or 'responses'"),
        (json.dumps({**GOOD, "task": 3}), "'task' must be a string"),
        (json.dumps({**GOOD, "id": "0"}), "duplicate id"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad_line, problem):
    path = _write_jsonl(tmp_path / "data.jsonl", [GOOD, "", bad_line])
    with pytest.raises(ValueError) as error:
        load_jsonl(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: "), message
    assert problem in message


# ---------------------------------------------------------------------------
# Hugging Face datasets


def test_hf_dataset_without_datasets_package_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_dataset("Anthropic/hh-rlhf", "test", "prompt", "chosen", "rejected")
