"""moerm.data.io: preference pairs and capability lists as JSON lines / JSON."""

from __future__ import annotations

import json

import pytest

from moerm.bundle import Capability
from moerm.data.io import (
    capabilities_from_json,
    capabilities_to_json,
    pair_from_json,
    pair_to_json,
    read_capabilities,
    read_pairs,
    write_pairs,
)
from moerm.data.records import PreferencePair
from moerm.text import Turn


def make_pair(index: int, task: str = "code", tie: bool = False) -> PreferencePair:
    return PreferencePair(
        id=f"test:{index}",
        source="test",
        task=task,
        turns=(Turn("user", f"question {index}"),),
        chosen=f"good-{index}",
        rejected=f"bad-{index}",
        tie=tie,
    )


def test_pair_json_roundtrip(tmp_path):
    pairs = [make_pair(0), make_pair(1, tie=True, task="")]
    pairs.append(pairs[0].__class__(**{**pairs[0].__dict__, "id": "x", "scenario": "code_generation"}))
    path = tmp_path / "pairs.jsonl"
    write_pairs(pairs, path)
    assert read_pairs(path) == pairs
    assert pair_from_json(pair_to_json(pairs[2])) == pairs[2]


def test_pair_from_json_accepts_messages_or_prompt():
    from_prompt = pair_from_json({"id": "1", "prompt": "  Hi\r\n ", "chosen": "a", "rejected": "b"})
    assert from_prompt.turns == (Turn("user", "Hi"),) and from_prompt.task == "" and not from_prompt.tie
    from_messages = pair_from_json(
        {
            "id": "2",
            "messages": [{"role": "user", "content": "Q"}],
            "chosen": "a",
            "rejected": "b",
            "tie": True,
        }
    )
    assert from_messages.turns == (Turn("user", "Q"),) and from_messages.tie
    with pytest.raises(ValueError, match="role"):
        pair_from_json(
            {"id": "3", "turns": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}
        )
    with pytest.raises(ValueError, match="chosen"):
        pair_from_json({"id": "3", "prompt": "x", "rejected": "b"})


def test_read_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(pair_to_json(make_pair(0))) + "\n{not json}\n")
    with pytest.raises(ValueError, match="pairs.jsonl:2"):
        read_pairs(path)


def test_capabilities_json(tmp_path):
    caps = {"code": (Capability("correctness", "runs"), Capability("readability"))}
    assert capabilities_from_json(capabilities_to_json(caps)) == caps
    assert capabilities_from_json({"exam": ["correctness"]}) == {"exam": (Capability("correctness"),)}
    path = tmp_path / "caps.json"
    path.write_text('{"exam": [{"description": "no name"}]}')
    with pytest.raises(ValueError, match="caps.json.*needs a name"):
        read_capabilities(path)
