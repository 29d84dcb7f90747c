"""Phase 2 trains each capability expert on its capability's contrast pairs
(a tiny MiniLM run on the synthetic "writing" task)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from moerm.data.synthetic import synthetic_capabilities, synthetic_pairs
from moerm.judges.contrast import build_contrast_pairs, contrast_labels
from moerm.train.loop import TrainSettings
from moerm.train.recipe import Recipe
from moerm.train.settings import RecipeInputs, RecipeSettings

TASK = "writing"  # capabilities: relevance (other_prompt), fluency (typos)
SETTINGS = RecipeSettings(
    phase1=TrainSettings(epochs=1, lr=1e-3, batch_size=8, max_length=64),
    phase2=TrainSettings(epochs=1, lr=1e-3, batch_size=8, max_length=64),
    base_fraction=0.5,  # the trunk cache path: contrast texts are cached for phase 2 and then dropped
    min_labels=8,
)


def test_phase2_trains_each_expert_on_its_contrast_pairs(tmp_path):
    pairs, _ = synthetic_pairs(10)
    pairs = [p for p in pairs if p.task == TASK]
    train, validation = pairs[:8], pairs[8:]
    capabilities = {TASK: synthetic_capabilities()[TASK]}
    train_contrast, _ = build_contrast_pairs(train, capabilities, seed=0)
    validation_contrast, _ = build_contrast_pairs(validation, capabilities, seed=0)
    expected = {
        cap.name: sum(cap.name in item.capabilities for item in train_contrast) for cap in capabilities[TASK]
    }
    assert expected == {"relevance": 16, "fluency": 16}  # every response of the 8 pairs, one edit each
    inputs = RecipeInputs(
        train=train,
        validation=validation,
        classifier_train=[],
        classifier_validation=[],
        capabilities=capabilities,
        labels=contrast_labels(train_contrast + validation_contrast),  # no judge labels at all
        label_pairs=[item.pair for item in train_contrast],
        validation_label_pairs=[item.pair for item in validation_contrast],
    )
    recipe = Recipe(tmp_path / "work", inputs, SETTINGS, progress=False)
    recipe.phase1((TASK,))
    recipe.phase2((TASK,))

    state = json.loads((tmp_path / "work" / "run.json").read_text())
    assert state["labels"][TASK] == {"used": expected, "trained": {"relevance": True, "fluency": True}}
    for cap in expected:  # validated on the validation split's contrast pairs
        assert 0.0 <= state["curves"][f"phase2/{TASK}"][cap]["epochs"][0]["val_accuracy"] <= 1.0
    base = load_file(str(recipe.task_dir(TASK) / "base" / "head.safetensors"))["base.weight"]
    heads = load_file(str(recipe.task_dir(TASK) / "heads.safetensors"))
    for cap in expected:
        assert not torch.equal(heads[f"{cap}.weight"], base)  # each expert's head moved off the base head

    render = recipe.trunk().encoder.texts
    edited = {render(item.pair.turns, item.pair.rejected) for item in train_contrast}
    originals = {render(p.turns, r) for p in train for r in (p.chosen, p.rejected)}
    assert edited - originals and not any(text in recipe.trunk() for text in edited - originals)
    assert all(text in recipe.trunk() for text in originals)  # phase 3 still reads these
