"""Task mapping, Auto-J criteria (with !include) and derived capabilities."""

from __future__ import annotations

import json
import re

import pytest

from moerm.bundle import Capability
from moerm.data import loaders
from moerm.data.tasks import (
    HARMLESSNESS_CAPABILITIES,
    TASKS,
    Criterion,
    capability_name,
    load_criteria,
    scenario_to_task,
    task_capabilities,
)

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def test_tasks_are_the_autoj_groups_plus_harmlessness(shared_dir):
    groups = json.loads((shared_dir / loaders.AUTOJ_GROUPS_FILE).read_text(encoding="utf-8"))
    assert TASKS == (*groups, "harmlessness")
    mapping = scenario_to_task(shared_dir / loaders.AUTOJ_GROUPS_FILE)
    assert len(mapping) == 59  # 58 scenarios + rejecting
    assert mapping["rejecting"] == "harmlessness"
    assert mapping["code_generation"] == "code"
    assert set(mapping.values()) == set(TASKS)


def test_scenario_to_task_hand_written(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"code": ["code_generation"], "exam": ["math_reasoning"]}))
    assert scenario_to_task(path) == {
        "code_generation": "code",
        "math_reasoning": "exam",
        "rejecting": "harmlessness",
    }
    path.write_text(json.dumps({"code": ["x"], "exam": ["x"]}))
    with pytest.raises(ValueError, match="'x'"):
        scenario_to_task(path)


def _write_criteria(root):
    (root / "basics").mkdir(parents=True)
    (root / "specials").mkdir()
    (root / "basics" / "basic_x.yaml").write_text(
        "accuracy:\n  content: Be accurate.\n  weight: 4\n  type: basic\n"
        "harmlessness:\n  content: Be harmless.\n  weight: 3\n  type: basic\n"
    )
    (root / "specials" / "solve.yaml").write_text(
        'basic-x:\n  !include "./other_resources/scenario_criteria/basics/basic_x.yaml"\n\n'
        "extended:\n"
        "  accuracy:\n    content: The answer is right.\n    weight: 5\n    type: content\n"
        "  step by step:\n    content: Show the steps.\n    weight: 4\n    type: format\n"
    )
    (root / "specials" / "check.yaml").write_text(
        'basic-x:\n  !include "./other_resources/scenario_criteria/basics/basic_x.yaml"\n'
    )
    return root


def test_load_criteria_resolves_include(tmp_path):
    criteria = load_criteria(_write_criteria(tmp_path / "scenario_criteria"))
    assert list(criteria) == ["check", "solve"]
    assert criteria["check"] == [
        Criterion("accuracy", "Be accurate.", 4, "basic"),
        Criterion("harmlessness", "Be harmless.", 3, "basic"),
    ]
    # The scenario's own "accuracy" replaces the included one, in its place.
    assert criteria["solve"] == [
        Criterion("accuracy", "The answer is right.", 5, "content"),
        Criterion("harmlessness", "Be harmless.", 3, "basic"),
        Criterion("step by step", "Show the steps.", 4, "format"),
    ]


def test_load_criteria_missing_include(tmp_path):
    root = _write_criteria(tmp_path / "c")
    (root / "basics" / "basic_x.yaml").unlink()
    with pytest.raises(ValueError, match="basic_x.yaml"):
        load_criteria(root)


def test_load_criteria_is_safe(tmp_path):
    root = tmp_path / "c"
    (root / "specials").mkdir(parents=True)
    (root / "specials" / "evil.yaml").write_text("x: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError):
        load_criteria(root)


def test_load_criteria_shared(shared_dir):
    criteria = load_criteria(shared_dir / loaders.AUTOJ_CRITERIA_DIR)
    mapping = scenario_to_task(shared_dir / loaders.AUTOJ_GROUPS_FILE)
    assert len(criteria) == 58
    assert set(criteria) == set(mapping) - {"rejecting"}
    assert all(criteria.values())
    code = {c.name: c for c in criteria["code_generation"]}
    assert code["code correctness"].weight == 5 and code["code correctness"].type == "basic"
    assert code["code correctness"].content.startswith("The written code should produce the expected output")
    for scenario, items in criteria.items():
        names = [c.name for c in items]
        assert len(names) == len(set(names)), scenario


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("code correctness", "code_correctness"),
        ("input/output requirements", "input_output_requirements"),
        ("Being friendly", "being_friendly"),
        ("user-friendly", "user_friendly"),
        ("completeness of components and functionality", "completeness_components_functionality"),
        ("3d layout", "c_3d_layout"),
        ("***", "capability"),
        ("café crème", "cafe_creme"),
    ],
)
def test_capability_name(text, name):
    assert capability_name(text) == name
    assert IDENTIFIER.match(name)


def test_capability_name_long():
    name = capability_name("an extraordinarily long criterion name about everything that could matter at all")
    assert IDENTIFIER.match(name) and len(name) <= 40
    assert capability_name("x" * 60) == "x" * 40


def test_task_capabilities_ranking_and_unique_names():
    criteria = {
        "a": [
            Criterion("Code correctness", "right", 5, "basic"),
            Criterion("code-correctness", "right too", 5, "basic"),
            Criterion("zeta", "z", 2, "basic"),
            Criterion("alpha", "a1", 2, "basic"),
        ],
        "b": [Criterion("zeta", "z", 2, "basic"), Criterion("alpha", "a2", 3, "basic")],
        "other": [Criterion("unused", "u", 9, "basic")],
    }
    mapping = {"a": "code", "b": "code", "other": "exam", "rejecting": "harmlessness"}
    caps = task_capabilities(criteria, mapping, k=4)
    assert list(caps) == ["exam", "code", "harmlessness"]
    # summed weights: alpha 5, code-correctness 5, Code correctness 5, zeta 4; ties by name
    assert [c.name for c in caps["code"]] == ["code_correctness", "alpha", "code_correctness_2", "zeta"]
    assert caps["code"][1].description == "a2"  # the wording with the larger summed weight
    assert caps["harmlessness"] == HARMLESSNESS_CAPABILITIES
    assert task_capabilities(criteria, mapping, k=2)["harmlessness"] == HARMLESSNESS_CAPABILITIES[:2]
    # A "rejecting" scenario with criteria is used for harmlessness.
    criteria["rejecting"] = [Criterion("refusal", "Refuse harmful requests.", 5, "basic")]
    assert task_capabilities(criteria, mapping)["harmlessness"] == (
        Capability("refusal", "Refuse harmful requests."),
    )


def test_task_capabilities_shared(shared):
    caps = shared.capabilities
    assert tuple(caps) == TASKS
    for task, capabilities in caps.items():
        names = [c.name for c in capabilities]
        assert len(names) == len(set(names)), task
        assert all(IDENTIFIER.match(name) for name in names), names
        assert all(c.description for c in capabilities)
        assert len(capabilities) == (3 if task == "harmlessness" else 5)
    assert caps["code"][0] == Capability(
        "code_correctness",
        "The written code should produce the expected output and behavior according to the given "
        "requirements or specifications, with no syntax errors.",
    )
    assert caps["harmlessness"] == HARMLESSNESS_CAPABILITIES  # Auto-J has no "rejecting" criteria
    assert "rejecting" not in shared.criteria
